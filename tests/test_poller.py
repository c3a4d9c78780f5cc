"""Partners that never call back: the gateway polls their adapters and the case completes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import aiohttp

from adapters.sdk import (
    Accepted,
    AdapterContext,
    AdapterSettings,
    CanonicalCase,
    Outcome,
    StatusUpdate,
    discover,
)
from gateway.app import Gateway
from gateway.simulators.rest import ProvinceSimulator, SimulatorSettings
from tests.support import (
    HANDLER,
    HUB_SECRET,
    ORIGIN,
    Client,
    gateway_config,
    medical_filing,
    simulator,
    wait_for,
)

# What KSTB-YB-001's contract promises the origin, and the partner's own decision number.
RESULT = {
    "filing_no": "BA5101002026000001", "filing_type": "11",
    "treatment_region": "330100", "effective_from": "2026-12-01",
    "decision_no": "SC-2026-0001",
}  # fmt: skip


class PolledSettings(AdapterSettings):
    kind: Literal["polled"] = "polled"


class PolledAdapter:
    """A partner that takes a case and answers only when asked: first in progress, then done."""

    kind: ClassVar[str] = "polled"
    Settings: ClassVar[type[AdapterSettings]] = PolledSettings
    poll_interval = 0.02

    def __init__(self, settings: AdapterSettings) -> None:
        self.asked: dict[str, int] = {}

    async def submit(self, case: CanonicalCase, ctx: AdapterContext) -> Outcome:
        return Accepted(partner_ref=f"T-{case.case_id[-6:]}")

    async def supplement(
        self, case: CanonicalCase, material: Mapping[str, Any], ctx: AdapterContext
    ) -> Outcome:
        return Accepted()

    async def withdraw(self, case: CanonicalCase, reason: str, ctx: AdapterContext) -> Outcome:
        return Accepted()

    def parse_inbound(self, body: bytes, headers: Mapping[str, str]) -> list[StatusUpdate]:
        raise ValueError("this partner never calls back")

    async def poll(
        self, open_cases: Sequence[CanonicalCase], ctx: AdapterContext
    ) -> list[StatusUpdate]:
        updates = []
        for case in open_cases:
            n = self.asked[case.case_id] = self.asked.get(case.case_id, 0) + 1
            ref = case.partner_ref
            if n == 1:
                updates.append(StatusUpdate("in_progress", partner_ref=ref))
            elif n == 2:
                updates.append(
                    StatusUpdate(
                        "completed",
                        partner_ref=ref,
                        outcome="approved",
                        data=RESULT,
                    )
                )
        return updates


async def test_a_polled_partner_completes_the_case(tmp_path: Path) -> None:
    origin_sim = simulator(ORIGIN, 0)
    hub = ProvinceSimulator(SimulatorSettings(region="100000", callback_secret=HUB_SECRET))
    origin_port = await origin_sim.start("127.0.0.1", 0)
    hub_port = await hub.start("127.0.0.1", 0)
    config = gateway_config(
        f"sqlite:///{tmp_path}/gw.db", 0, {ORIGIN: origin_port, HANDLER: origin_port}, hub_port
    )
    config.partners[1].adapter = {"kind": "polled"}
    gw = Gateway(config, poll_interval=0.05,
                 adapter_kinds={**discover(), "polled": PolledAdapter})  # fmt: skip
    port = await gw.start()
    try:
        async with aiohttp.ClientSession() as session:
            client = Client(session, f"http://127.0.0.1:{port}", ORIGIN)
            status, case, _ = await client.call("POST", "/v1/cases", medical_filing("ZJ-POLL-1"))
            assert status == 202, case

            async def completed() -> bool:
                c = await client.case(case["case_id"])
                return bool(c["status"] == "completed")

            await wait_for(completed, what="case completed through polling")
            done = await client.case(case["case_id"])
            assert [e["status"] for e in done["history"]] == [
                "received", "dispatched", "in_progress", "completed"
            ]  # fmt: skip
            assert done["partner_ref"].startswith("T-")
            assert done["result"]["decision_no"] == "SC-2026-0001"
            assert done["result"]["filing_no"] == "BA5101002026000001"
    finally:
        await gw.stop()
        await origin_sim.stop()
        await hub.stop()
