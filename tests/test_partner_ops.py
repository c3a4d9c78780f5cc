"""Operators watch partners and pause them: a paused partner's cases wait, none is lost."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from tests.support import (
    HANDLER,
    OPERATOR_TOKEN,
    ORIGIN,
    VIEWER_TOKEN,
    World,
    medical_filing,
    verified_audit,
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
        formats = {f["kind"]: f for f in answer["recipient_formats"]}
        assert {"events", "report_envelope"} <= set(formats)
        assert "sender_code" in formats["report_envelope"]["settings"]["required"]


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


def westward_filing(request_id: str) -> dict[str, Any]:
    """A filing the other way: Sichuan's insured person, handled by Zhejiang (not paused)."""
    body = medical_filing(request_id)
    body["payload"].update(insured_region="330100", treatment_region="510100")
    return body


async def partner(w: World, region: str) -> dict[str, Any]:
    _, health, _ = await ops(w, "GET", "/v1/ops/partners", VIEWER)
    return next(p for p in health["partners"] if p["region"] == region)


async def test_a_pause_is_kept_in_the_store_across_a_restart_and_audited(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        status, _, _ = await ops(w, "POST", f"/v1/ops/partners/{HANDLER}/pause")
        assert status == 200
    async with world(tmp_path) as w:  # a new gateway on the same store
        mine = await partner(w, HANDLER)
        assert mine["paused"] is True and mine["paused_by"] == "ops" and mine["paused_at"]
        status, held, _ = await w.origin.call("POST", "/v1/cases", medical_filing("ZJ-HELD"))
        assert status == 202
        status, other, _ = await w.handler.call("POST", "/v1/cases", westward_filing("SC-GOES"))
        assert status == 202 and other["handling_region"] == ORIGIN

        async def other_sent() -> bool:
            return bool((await w.handler.case(other["case_id"]))["status"] != "received")

        # The dispatcher claimed after the held case was queued: it passed the paused partner.
        await wait_for(other_sent, what="the case for the partner that is not paused sent")
        assert (await w.origin.case(held["case_id"]))["status"] == "received"
        assert w.sims[HANDLER].counters["submits"] == 0
        status, _, _ = await ops(w, "POST", f"/v1/ops/partners/{HANDLER}/resume")
        assert status == 200

        async def completed() -> bool:
            return bool((await w.origin.case(held["case_id"]))["status"] == "completed")

        await wait_for(completed, what="the held case completed after resume")
        assert (await partner(w, HANDLER))["paused"] is False
        await verified_audit(w.origin)
    db = sqlite3.connect(tmp_path / "gw.db")
    try:
        rows = db.execute(
            "SELECT kind, ref, actor FROM audit WHERE kind IN ('pause', 'resume') ORDER BY audit_id"
        ).fetchall()
    finally:
        db.close()
    assert rows == [("pause", HANDLER, "ops"), ("resume", HANDLER, "ops")]
