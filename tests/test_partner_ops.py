"""Operators watch partners and pause them: a paused partner's cases wait, none is lost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support import (
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


async def ops(w: World, method: str, path: str, token: dict[str, str] = ADMIN) -> Any:
    return await w.origin.call(method, path, sign=False, headers=token)


async def test_pause_holds_cases_and_health_shows_the_queue(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        status, answer, _ = await ops(w, "POST", f"/v1/ops/partners/{HANDLER}/pause", VIEWER)
        assert status == 403
        status, answer, _ = await ops(w, "POST", f"/v1/ops/partners/{HANDLER}/pause")
        assert status == 200 and answer == {"region": HANDLER, "paused": True}
        status, case, _ = await w.origin.call("POST", "/v1/cases", medical_filing("ZJ-PAUSE-1"))
        assert status == 202

        async def queued() -> bool:
            _, health, _ = await ops(w, "GET", "/v1/ops/partners", VIEWER)
            mine = next(p for p in health["partners"] if p["region"] == HANDLER)
            return bool(mine["paused"] and mine["queue_depth"] == 1)

        await wait_for(queued, what="the case waiting in the paused partner's queue")
        assert w.sims[HANDLER].counters["submits"] == 0
        await ops(w, "POST", f"/v1/ops/partners/{HANDLER}/resume")

        async def completed() -> bool:
            return bool((await w.origin.case(case["case_id"]))["status"] == "completed")

        await wait_for(completed, what="the case completed after resume")
        _, health, _ = await ops(w, "GET", "/v1/ops/partners", VIEWER)
        mine = next(p for p in health["partners"] if p["region"] == HANDLER)
        assert mine["queue_depth"] == 0 and mine["circuit"] == "closed"
        assert mine["successes"] >= 1 and mine["adapter"] == "rest_json"
        status, _, _ = await ops(w, "POST", "/v1/ops/partners/999999/pause")
        assert status == 404


async def test_installed_adapter_kinds_describe_their_settings(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        status, answer, _ = await ops(w, "GET", "/v1/ops/adapters", VIEWER)
        assert status == 200
        kinds = {a["kind"]: a for a in answer["adapters"]}
        assert {
            "rest_json",
            "soap_xml",
            "async_ticket",
            "file_exchange",
            "frontdb_exchange",
        } <= set(kinds)
        assert "base_url" in kinds["rest_json"]["settings"]["properties"]


async def test_an_adapter_health_report_joins_the_partner_health(tmp_path: Path) -> None:
    from adapters.rest_json import RestJsonAdapter
    from adapters.sdk import AdapterContext, discover
    from gateway.app import Gateway
    from gateway.partner_ops import PartnerOps
    from tests.support import ORIGIN, gateway_config, simulator

    class Reporting(RestJsonAdapter):
        async def health(self, ctx: AdapterContext) -> dict[str, Any]:
            return {"status_page": "ok", "region": ctx.region}

    sim = simulator(HANDLER, 0)
    port = await sim.start("127.0.0.1", 0)
    config = gateway_config(f"sqlite:///{tmp_path}/gw.db", 0, {ORIGIN: port, HANDLER: port}, port)
    gw = Gateway(config, adapter_kinds={**discover(), "rest_json": Reporting})
    await gw.start()
    try:
        assert gw.store is not None
        health = await PartnerOps(gw.config, gw.store, gw.dispatcher.partners, gw.clock).health()
        mine = next(p for p in health["partners"] if p["region"] == HANDLER)
        assert mine["adapter_health"] == {"status_page": "ok", "region": HANDLER}
    finally:
        await gw.stop()
        await sim.stop()
