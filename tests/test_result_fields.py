"""A partner's decision is held to the result fields (办理结果) the case's contract promises.

A ``completed`` report that lacks a required result field or gets one wrong is recorded and
ignored with a reason naming the fields (never a value); the case stays where it was, and a
correct report completes it. A denial needs no result fields.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adapters.sdk import StatusUpdate
from gateway.simulators.results import item_result, shipped
from tests.support import HANDLER, World, medical_filing, wait_for, world

# What KSTB-YB-001 (异地就医登记备案) promises: 备案编号, 备案类型, 就医地, 备案生效日期.
PROMISED = {
    "filing_no": "BA5101002026000001", "filing_type": "11",
    "treatment_region": "330100", "effective_from": "2026-12-01",
}  # fmt: skip


async def _dispatched_case(w: World, request_id: str) -> str:
    w.sims[HANDLER].settings.latency = 600.0  # the simulated partner stays silent after intake
    status, case, _ = await w.origin.call("POST", "/v1/cases", medical_filing(request_id))
    assert status == 202, case

    async def dispatched() -> bool:
        return bool((await w.origin.case(case["case_id"]))["status"] == "dispatched")

    await wait_for(dispatched, what="the case handed to the partner")
    return str(case["case_id"])


async def _report(w: World, case_id: str, outcome: str, data: dict[str, Any]) -> dict[str, Any]:
    update = StatusUpdate("completed", case_id=case_id, outcome=outcome, data=data)
    return await w.gateway.service.apply_updates(HANDLER, [update])


async def test_a_completion_without_the_promised_result_is_refused_until_it_has_it(
    tmp_path: Path, store_url: str
) -> None:
    async with world(tmp_path, store=store_url) as w:
        case_id = await _dispatched_case(w, "ZJ-RF-1")
        wrong = {"decision_no": "川通办决字〔2026〕1号", "filing_type": "99",
                 "treatment_region": "330100", "effective_from": "2026-12-01"}  # fmt: skip
        answer = await _report(w, case_id, "approved", wrong)
        assert answer["applied"] == 0
        reason = answer["details"][0]["reason"]
        assert reason.startswith("the result breaks version 1 of KSTB-YB-001: ")
        assert "result.filing_no (missing)" in reason
        assert "result.filing_type (literal_error)" in reason
        assert "99" not in reason and "川通办" not in reason  # names, never values
        case = await w.origin.case(case_id)
        assert case["status"] == "dispatched" and case["result"] is None
        assert case["ignored"][-1]["reason"] == reason

        answer = await _report(w, case_id, "approved", {"decision_no": "X-1", **PROMISED})
        assert answer["applied"] == 1
        case = await w.origin.case(case_id)
        assert case["status"] == "completed" and case["outcome"] == "approved"
        assert case["result"]["filing_no"] == "BA5101002026000001"
        assert case["result"]["decision_no"] == "X-1"  # fields the contract does not name pass


async def test_a_denial_needs_no_result_fields(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        case_id = await _dispatched_case(w, "ZJ-RF-2")
        answer = await _report(w, case_id, "denied", {"deny_reason": "参保状态异常"})
        assert answer["applied"] == 1
        case = await w.origin.case(case_id)
        assert case["status"] == "completed" and case["outcome"] == "denied"


def test_the_simulators_results_meet_every_shipped_contract() -> None:
    shipped_list = shipped()
    now = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    for code, item in shipped_list.items.items():
        result = item_result(code, ref="SC202611220000011234", region="510000", now=now)
        for version in item.versions:
            given = {k: v for k, v in result.items() if k in version.result_fields}
            shipped_list.result_validator(code, version).validate(given)  # raises if not
