"""Personal data never reaches a log through an adapter's logger, even when the adapter logs it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest

from adapters.rest_json import RestJsonAdapter
from adapters.sdk import AdapterContext, CanonicalCase, Outcome, Permanent, discover
from gateway.app import Gateway
from gateway.partner_ops import PartnerOps
from gateway.privacy import sensitive_values
from tests.support import (
    HANDLER,
    ORIGIN,
    citizen_id,
    gateway_config,
    medical_filing,
    simulator,
    wait_for,
)


class LeakyAdapter(RestJsonAdapter):
    """An adapter with a careless debug line."""

    async def submit(self, case: CanonicalCase, ctx: AdapterContext) -> Outcome:
        ctx.logger.warning(
            "submitting for %s (%s), phone %s, contact %s",
            case.applicant["name"], case.applicant["id_number"], case.applicant.get("phone"),
            case.payload.get("contact_phone"),
        )  # fmt: skip
        return await super().submit(case, ctx)


@asynccontextmanager
async def gateway_with(tmp_path: Path, rest_json: type[RestJsonAdapter]) -> AsyncIterator[Gateway]:
    """A gateway whose partners speak through ``rest_json`` (a subclass under test), with a
    simulator on loopback for them."""
    handler_sim = simulator(HANDLER, 0)
    port = await handler_sim.start("127.0.0.1", 0)
    config = gateway_config(f"sqlite:///{tmp_path}/gw.db", 0, {ORIGIN: port, HANDLER: port}, port)
    gw = Gateway(config, poll_interval=0.05,
                 adapter_kinds={**discover(), "rest_json": rest_json})  # fmt: skip
    try:
        await gw.start()
        yield gw
    finally:
        await gw.stop()
        await handler_sim.stop()


def test_sensitive_values_follow_the_contract_paths() -> None:
    applicant = {"id_number": citizen_id(), "name": "张三", "phone": "13800000000"}
    payload = {"contact_phone": "13900000000", "migrants": [{"id_number": "X1"}, {"x": 1}]}
    found = sensitive_values(
        applicant, payload, ["payload.contact_phone", "payload.migrants.id_number"]
    )
    assert found == {citizen_id(), "张三", "13800000000", "13900000000", "X1"}


async def test_a_leaky_adapter_logs_masked_values(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with gateway_with(tmp_path, LeakyAdapter) as gw:
        caplog.set_level(logging.INFO)
        status, _ = await gw.service.submit(ORIGIN, orjson.dumps(medical_filing("P-1")))
        assert status == 202
        await wait_for(
            lambda: any("submitting for" in r.getMessage() for r in caplog.records),
            what="the adapter's log line",
        )
        text = "\n".join(r.getMessage() for r in caplog.records)
        for value in (citizen_id(), "张三", "13800000000"):
            assert value not in text
        assert "submitting for *** (***), phone ***, contact ***" in text


class QuotingAdapter(RestJsonAdapter):
    """An adapter that refuses with the partner's own message, which repeats the applicant."""

    async def submit(self, case: CanonicalCase, ctx: AdapterContext) -> Outcome:
        a = case.applicant
        return Permanent(f"E0042 申请人{a['name']}（{a['id_number']}）在本省无参保记录")


async def test_a_refusal_quoting_the_applicant_is_masked_wherever_it_goes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with gateway_with(tmp_path, QuotingAdapter) as gw:
        caplog.set_level(logging.INFO)
        status, case = await gw.service.submit(ORIGIN, orjson.dumps(medical_filing("P-2")))
        assert status == 202

        async def failed() -> bool:
            detail = await gw.store.get_case(case["case_id"]) if gw.store else None
            return detail is not None and detail.case.status.value == "failed"

        await wait_for(failed, what="the case dead-lettered")
        (dead,) = (await gw.service.dead_letters(10))["dead_letters"]
        assert gw.store is not None
        detail = await gw.store.get_case(case["case_id"])
        assert detail is not None
        seen = {
            "log": "\n".join(r.getMessage() for r in caplog.records),
            "dead letter": str(dead),
            "failed event": str(detail.events[-1].data),
            "partner health": str(
                await PartnerOps(gw.config, gw.store, gw.dispatcher.partners, gw.clock).health()
            ),
        }
        for where, text in seen.items():
            assert "张三" not in text and citizen_id() not in text, where
        assert "申请人***（***）在本省无参保记录" in seen["dead letter"]
        assert "申请人***（***）在本省无参保记录" in seen["failed event"]
