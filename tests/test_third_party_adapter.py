"""A third-party adapter, installed as a package of its own (examples/adapter-template, installed
by the test set-up), is discovered through the entry point and used with no gateway change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from adapters.sdk import ENTRY_POINT_GROUP, discover
from gateway.app import Gateway
from tests.support import (
    HANDLER,
    ORIGIN,
    Client,
    free_port,
    gateway_config,
    medical_filing,
    simulator,
    wait_for,
)


def test_the_template_package_registers_its_adapter() -> None:
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert names.get("myprov") == "tongban_myprov:MyProvAdapter"
    assert discover()["myprov"].kind == "myprov"


async def test_a_case_completes_through_the_installed_adapter(tmp_path: Path) -> None:
    received: list[dict[str, Any]] = []

    async def submit(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"ret": 0, "data": {"bjbh": "HB2026-0001"}})

    partner = web.Application()
    partner.router.add_post("/api/bj/submit", submit)
    runner = web.AppRunner(partner)
    await runner.setup()
    partner_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", partner_port).start()
    origin = simulator(ORIGIN, 0)
    origin_port = await origin.start("127.0.0.1", 0)
    config = gateway_config(
        f"sqlite:///{tmp_path}/gw.db", 0, {ORIGIN: origin_port, HANDLER: origin_port}, origin_port
    )
    config.partners[1].adapter = {"kind": "myprov", "base_url": f"http://127.0.0.1:{partner_port}"}
    gw = Gateway(config, poll_interval=0.05)  # the kind comes from the entry point alone
    port = await gw.start()
    try:
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{port}"
            status, case, _ = await Client(session, base, ORIGIN).call(
                "POST", "/v1/cases", medical_filing("ZJ-3P-1")
            )
            assert status == 202, case
            await wait_for(lambda: bool(received), what="the partner got the case")
            assert received[0]["wbbh"] == case["case_id"] and received[0]["sqr"]["xm"] == "张三"
            handler = Client(session, base, HANDLER)
            result = {"decision_no": "HB-1", "filing_no": "BA4201002026000001",  # KSTB-YB-001's
                      "filing_type": "11", "treatment_region": "330100",
                      "effective_from": "2026-12-01"}  # fmt: skip
            for zt in ("2", "3", "4"):
                report = {"wbbh": case["case_id"], "bjbh": "HB2026-0001", "zt": zt,
                          "jg": result if zt == "4" else {}}  # fmt: skip
                status, answer, _ = await handler.call(
                    "POST", f"/v1/partners/{HANDLER}/inbound", raw=orjson.dumps(report)
                )
                assert status == 200 and answer["applied"] == 1, answer
            final = await Client(session, base, ORIGIN).case(case["case_id"])
            assert final["status"] == "completed" and final["outcome"] == "approved"
            assert final["partner_ref"] == "HB2026-0001"
    finally:
        await gw.stop()
        await origin.stop()
        await runner.cleanup()
