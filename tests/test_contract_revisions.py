"""The contract list as published revisions: validate, publish, immutability, rollback, and a
revision taking effect in a running gateway without a restart."""

from __future__ import annotations

import base64
import copy
import hashlib
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import revisions
from gateway.contract_ops import ContractOps
from gateway.contracts import ContractList
from gateway.registry import ContractRegistry
from gateway.store import open_store
from gateway.store.base import RevisionMoved
from tests.support import (
    CONTRACTS,
    HANDLER,
    OPERATOR_TOKEN,
    VIEWER_TOKEN,
    World,
    medical_filing,
    wait_for,
    world,
)

ADMIN = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
VIEWER = {"Authorization": f"Bearer {VIEWER_TOKEN}"}


def shipped() -> dict[str, Any]:
    return dict(ContractList.load(CONTRACTS).model_dump(mode="json"))


def with_proof(body: dict[str, Any]) -> dict[str, Any]:
    """Version 2 of 异地就医登记备案 requires a residence proof among the materials."""
    content = b"%PDF-1.7 residence proof"
    proof = {
        "kind": "residence_proof", "name": "居住证明.pdf", "media_type": "application/pdf",
        "sha256": hashlib.sha256(content).hexdigest(),
        "content_base64": base64.b64encode(content).decode(),
    }  # fmt: skip
    return {**body, "attachments": [proof]}


def with_v2_active(lst: dict[str, Any]) -> dict[str, Any]:
    lst = copy.deepcopy(lst)
    for v in lst["items"]["KSTB-YB-001"]["versions"]:
        v["status"] = "active" if v["version"] == 2 else "deprecated"
        if v["version"] == 2:
            v["effective_from"] = "2026-01-01"  # in effect now (the shipped draft says 2027)
    return lst


async def ops(w: World, method: str, path: str, body: Any = None, token: dict[str, str] = ADMIN):
    return await w.origin.call(method, path, body, sign=False, headers=token)


async def test_first_start_publishes_the_shipped_list_as_revision_1(
    tmp_path: Path, store_url: str
) -> None:
    async with world(tmp_path, store=store_url) as w:
        status, active, _ = await ops(w, "GET", "/v1/ops/contracts", token=VIEWER)
        assert status == 200 and active["revision"] == 1
        assert len(active["items"]) >= 12
        status, history, _ = await ops(w, "GET", "/v1/ops/contracts/revisions", token=VIEWER)
        assert [r["revision"] for r in history["revisions"]] == [1]


async def test_validate_reports_a_diff_and_changes_nothing(tmp_path: Path, store_url: str) -> None:
    async with world(tmp_path, store=store_url) as w:
        status, answer, _ = await ops(
            w, "POST", "/v1/ops/contracts/validate", with_v2_active(shipped())
        )
        assert status == 200 and answer["valid"], answer
        assert "~ KSTB-YB-001 v1 status active → deprecated" in answer["diff"]
        assert "~ KSTB-YB-001 v2 status draft → active" in answer["diff"]
        _, active, _ = await ops(w, "GET", "/v1/ops/contracts")
        assert active["revision"] == 1


async def test_a_published_version_cannot_change(tmp_path: Path, store_url: str) -> None:
    async with world(tmp_path, store=store_url) as w:
        changed = shipped()
        changed["items"]["KSTB-YB-001"]["versions"][0]["time_limit_days"] = 3
        status, problem, _ = await ops(w, "POST", "/v1/ops/contracts/publish", changed)
        assert status == 422, problem
        locs = [e["loc"] for e in problem["errors"]]
        assert ["items", "KSTB-YB-001", "versions", 1, "time_limit_days"] in locs
        removed = shipped()
        del removed["items"]["KSTB-GA-001"]
        status, problem, _ = await ops(w, "POST", "/v1/ops/contracts/publish", removed)
        assert status == 422
        assert ["items", "KSTB-GA-001", "versions", 1] in [e["loc"] for e in problem["errors"]]
        _, active, _ = await ops(w, "GET", "/v1/ops/contracts")
        assert active["revision"] == 1


async def test_roles_guard_the_contract_list(tmp_path: Path, store_url: str) -> None:
    async with world(tmp_path, store=store_url) as w:
        status, _, _ = await ops(w, "POST", "/v1/ops/contracts/publish", shipped(), token=VIEWER)
        assert status == 403
        status, _, _ = await ops(w, "GET", "/v1/ops/contracts", token={})
        assert status == 401


async def test_case_keeps_its_version_while_a_new_one_is_published_and_rollback_restores(
    tmp_path: Path,
    store_url: str,
) -> None:
    async with world(tmp_path, store=store_url) as w:
        w.sims[HANDLER].set_down(True)
        status, case, _ = await w.origin.call("POST", "/v1/cases", medical_filing("ZJ-REV-1"))
        assert status == 202 and case["contract_version"] == 1
        status, published, _ = await ops(
            w, "POST", "/v1/ops/contracts/publish", with_v2_active(shipped())
        )
        assert status == 201 and published["revision"] == 2
        status, problem, _ = await w.origin.call("POST", "/v1/cases", medical_filing("ZJ-REV-2"))
        assert status == 422 and problem["errors"][0]["loc"] == ["attachments"]
        body = with_proof(medical_filing("ZJ-REV-2"))
        status, case2, _ = await w.origin.call("POST", "/v1/cases", body)
        assert status == 202 and case2["contract_version"] == 2
        w.sims[HANDLER].set_down(False)

        async def completed() -> bool:
            c = await w.origin.case(case["case_id"])
            return bool(c["status"] == "completed")

        await wait_for(completed, what="the v1 case completed")
        assert (await w.origin.case(case["case_id"]))["contract_version"] == 1

        status, rolled, _ = await ops(w, "POST", "/v1/ops/contracts/rollback", {"revision": 1})
        assert status == 201 and rolled["revision"] == 3
        status, case3, _ = await w.origin.call("POST", "/v1/cases", medical_filing("ZJ-REV-3"))
        assert status == 202 and case3["contract_version"] == 1
        # v2 stays published: a case may still name it explicitly only if it is active again.
        status, _, _ = await w.origin.call(
            "POST", "/v1/cases", medical_filing("ZJ-REV-4", contract_version=2)
        )
        assert status == 404


async def test_a_revision_published_by_another_process_takes_effect_without_restart(
    tmp_path: Path,
    store_url: str,
) -> None:
    # The gateway serves the API; the other process (the workers part, which SQLite lets a
    # second process hold) publishes straight into the store.
    async with world(tmp_path, store=store_url, role="api") as w:
        other = await open_store(store_url, role="workers")
        try:
            registry = ContractRegistry(other, ContractList.load(CONTRACTS))
            await registry.refresh()

            class Clock:
                def now(self) -> float:
                    return time.time()

            body = orjson.dumps(with_v2_active(shipped()))
            result = await ContractOps(other, registry, Clock()).publish(body, "ops-2")
            assert result["revision"] == 2
        finally:
            await other.close()
        await wait_for(lambda: w.gateway.registry.revision == 2, what="revision 2 in force")
        body = with_proof(medical_filing("ZJ-REV-5"))
        status, case, _ = await w.origin.call("POST", "/v1/cases", body)
        assert status == 202 and case["contract_version"] == 2


def test_diff_and_immutability_are_pure() -> None:
    old = ContractList.load(CONTRACTS)
    new = revisions.loads(orjson.dumps(with_v2_active(shipped())))
    assert revisions.immutability_errors(revisions.published_contents(old), new) == []
    assert revisions.diff(old, old) == []


async def test_the_shipped_list_is_published_once_by_processes_starting_together(
    store_url: str,
) -> None:
    shipped_list = ContractList.load(CONTRACTS)
    stores = [await open_store(store_url, role=role) for role in ("api", "workers")]
    try:
        registries = [ContractRegistry(s, shipped_list) for s in stores]
        # Both saw an empty store before either published: the second publish is refused.
        assert [await s.revision_number() for s in stores] == [0, 0]
        await registries[0].bootstrap(shipped_list, time.time())
        with pytest.raises(RevisionMoved):
            await stores[1].publish_revision("{}", {}, "tongban", "late", time.time(), 0)
        await registries[1].bootstrap(shipped_list, time.time())
        assert [r.revision for r in registries] == [1, 1]
        assert len(await stores[1].revisions(10)) == 1
    finally:
        for s in stores:
            await s.close()
