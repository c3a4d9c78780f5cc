"""The demo's partners: one province per exchange style, and the same item completing through
each of them, every event delivered back to the origin and up to the hub."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from gateway.app import Gateway
from gateway.config import demo_config
from gateway.demo.partners import DemoPartners
from tests.support import CONTRACTS, Client, free_port, medical_filing, wait_for

ORIGIN = "330000"  # 浙江 (rest_json) submits to every other style


async def test_the_same_item_completes_through_every_exchange_style(tmp_path: Path) -> None:
    config = demo_config()
    ports = {p.region: (free_port(), free_port()) for p in config.partners}
    partners = []
    for p in config.partners:
        handler_port, receiver_port = ports[p.region]
        adapter = dict(p.adapter or {})
        for key in ("base_url", "endpoint"):
            if key in adapter:
                adapter[key] = f"http://127.0.0.1:{handler_port}/ws"
        if adapter["kind"] == "rest_json":
            adapter["base_url"] = f"http://127.0.0.1:{receiver_port}"
        partners.append(
            p.model_copy(
                update={
                    "adapter": adapter,
                    "callback_url": f"http://127.0.0.1:{receiver_port}/events",
                }
            )
        )
    gw_port, hub_port = free_port(), free_port()
    config = config.model_copy(update={
        "partners": partners,
        "gateway": config.gateway.model_copy(update={
            "listen": f"127.0.0.1:{gw_port}", "store": f"sqlite:///{tmp_path}/gw.db",
            "contracts": str(CONTRACTS)}),
        "national_hub": config.national_hub.model_copy(  # type: ignore[union-attr]
            update={"url": f"http://127.0.0.1:{hub_port}/events"}),
    })  # fmt: skip
    demo = DemoPartners(config, f"http://127.0.0.1:{gw_port}", tmp_path / "partners")
    config = await demo.start()
    gateway = Gateway(config, poll_interval=0.05)
    try:
        await gateway.start()
        keys = next(p.keys for p in config.partners if p.region == ORIGIN)
        async with aiohttp.ClientSession() as session:
            client = Client(
                session, f"http://127.0.0.1:{gw_port}", ORIGIN, next(iter(keys.items()))
            )
            cases = {}
            for p in config.partners:
                if p.region == ORIGIN:
                    continue
                body = medical_filing(f"DEMO-{p.region}")
                body["payload"]["insured_region"] = p.region
                status, case, _ = await client.call("POST", "/v1/cases", body)
                assert status == 202, case
                assert case["handling_region"] == p.region
                cases[p.adapter["kind"] if p.adapter else p.region] = case["case_id"]
            for kind, case_id in cases.items():

                async def done(case_id: str = case_id) -> bool:
                    c = await client.case(case_id)
                    return c["status"] == "completed" and all(
                        d["waiting"] == 0 for d in c["deliveries"]
                    )

                await wait_for(done, within=60, what=f"the case handled through {kind}")
            assert set(cases) == {"soap_xml", "async_ticket", "file_exchange", "frontdb_exchange"}
    finally:
        await gateway.stop()
        await demo.stop()
