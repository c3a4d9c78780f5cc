"""Recipients a contract names besides origin and hub (审管联动): a supervising department's
system gets every event of the cases of its items, in order, like the origin and the hub."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from gateway.contracts import ContractList
from gateway.simulators.rest import ProvinceSimulator, SimulatorSettings
from tests.support import (
    CONTRACTS,
    OPERATOR_TOKEN,
    ORIGIN,
    World,
    medical_filing,
    wait_for,
    world,
)

SECRET = "supervision-secret-01"


def contracts_naming(tmp_path: Path, *subscribers: str) -> Path:
    """The shipped list, with 异地就医登记备案 naming the given subscribers."""
    folder = tmp_path / "contracts"
    shutil.copytree(CONTRACTS, folder)
    path = folder / "KSTB-YB-001.json"
    item = json.loads(path.read_text("utf-8"))
    for version in item["versions"]:
        version["subscribers"] = list(subscribers)
    path.write_text(json.dumps(item, ensure_ascii=False), "utf-8")
    return folder


@asynccontextmanager
async def supervised_world(
    tmp_path: Path, store: str, names: list[str], subscribers: list[dict[str, Any]]
) -> AsyncIterator[tuple[World, ProvinceSimulator]]:
    receiver = ProvinceSimulator(SimulatorSettings(region="330000", callback_secret=SECRET))
    port = await receiver.start("127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{port}/events"
        top = {"subscribers": [{"url": url, "secret": SECRET, **s} for s in subscribers]}
        folder = contracts_naming(tmp_path, *names)
        async with world(tmp_path, top, store=store, contracts=str(folder)) as w:
            yield w, receiver
    finally:
        await receiver.stop()


async def test_a_named_subscriber_gets_every_event_in_order(tmp_path: Path, store_url: str) -> None:
    subs = [{"name": "zj-supervision", "regions": ["330000"]}]
    async with supervised_world(tmp_path, store_url, ["zj-supervision"], subs) as (w, receiver):
        status, case, _ = await w.origin.call("POST", "/v1/cases", medical_filing("ZJ-SUB-1"))
        assert status == 202, case
        case_id = case["case_id"]
        recipients = {d["recipient"] for d in case["deliveries"]}
        assert recipients == {f"region:{ORIGIN}", "hub", "sub:zj-supervision"}

        async def delivered() -> bool:
            c = await w.origin.case(case_id)
            return c["status"] == "completed" and all(d["waiting"] == 0 for d in c["deliveries"])

        await wait_for(delivered, what="every event delivered to all three recipients")
        final = await w.origin.case(case_id)
        got = receiver.events[case_id]
        assert [e["event_id"] for e in got] == [e["event_id"] for e in final["history"]]
        assert receiver.out_of_order == 0


async def test_a_subscriber_for_other_regions_gets_nothing(tmp_path: Path, store_url: str) -> None:
    subs = [{"name": "gd-supervision", "regions": ["440000"]}]
    async with supervised_world(tmp_path, store_url, ["gd-supervision"], subs) as (w, receiver):
        status, case, _ = await w.origin.call("POST", "/v1/cases", medical_filing("ZJ-SUB-2"))
        assert status == 202, case
        assert {d["recipient"] for d in case["deliveries"]} == {f"region:{ORIGIN}", "hub"}

        async def delivered() -> bool:
            c = await w.origin.case(case["case_id"])
            return c["status"] == "completed" and all(d["waiting"] == 0 for d in c["deliveries"])

        await wait_for(delivered, what="the case delivered to origin and hub")
        assert case["case_id"] not in receiver.events


async def test_a_subscriber_not_configured_keeps_its_events_waiting(
    tmp_path: Path, store_url: str
) -> None:
    async with supervised_world(tmp_path, store_url, ["nobody"], []) as (w, _):
        status, case, _ = await w.origin.call("POST", "/v1/cases", medical_filing("ZJ-SUB-3"))
        assert status == 202, case

        async def waiting() -> bool:
            c = await w.origin.case(case["case_id"])
            sub = next(d for d in c["deliveries"] if d["recipient"] == "sub:nobody")
            return sub["waiting"] > 0 and sub["last_error"] == "recipient is not configured"

        await wait_for(waiting, what="the unconfigured subscriber's events kept, with the reason")


async def test_a_new_version_naming_an_unknown_subscriber_is_not_published(
    tmp_path: Path,
    store_url: str,
) -> None:
    subs = [{"name": "zj-supervision"}]
    async with supervised_world(tmp_path, store_url, [], subs) as (w, _):
        lst = ContractList.load(CONTRACTS).model_dump(mode="json")
        versions = lst["items"]["KSTB-YB-001"]["versions"]
        new = {**versions[0], "version": 3, "subscribers": ["zj-supervision", "nobody"]}
        versions.append(new)
        admin = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        path = "/v1/ops/contracts/publish"
        status, problem, _ = await w.origin.call("POST", path, lst, sign=False, headers=admin)
        assert status == 422, problem
        (error,) = problem["errors"]
        assert error["loc"] == ["items", "KSTB-YB-001", "versions", 3, "subscribers", 1]
        assert "nobody" in error["msg"]
        new["subscribers"] = ["zj-supervision"]
        status, published, _ = await w.origin.call("POST", path, lst, sign=False, headers=admin)
        assert status == 201, published
