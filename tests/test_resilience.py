"""Partners and recipients that go away and come back: nothing is lost, nothing reordered."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from adapters.sdk import StatusUpdate
from gateway.store.base import TransitionResult
from tests.support import (
    HANDLER,
    OPERATOR_TOKEN,
    ORIGIN,
    World,
    medical_filing,
    raw_sql,
    wait_for,
    world,
)


async def _settled(w: World, case_id: str, status: str = "completed") -> bool:
    c = await w.origin.case(case_id)
    return c["status"] == status and all(d["waiting"] == 0 for d in c["deliveries"])


async def _submit(w: World, request_id: str, **overrides: Any) -> str:
    status, case, _ = await w.origin.call(
        "POST", "/v1/cases", medical_filing(request_id, **overrides)
    )
    assert status == 202, case
    return str(case["case_id"])


async def test_handling_partner_down_then_up_completes_without_dead_letters(
    tmp_path: Path, store_url: str
) -> None:
    async with world(tmp_path, store=store_url) as w:
        w.sims[HANDLER].set_down(True)
        ids = [await _submit(w, f"ZJ-DOWN-{i}") for i in range(5)]

        async def retried() -> bool:
            c = await w.origin.case(ids[0])
            return bool(c["status"] == "received" and w.sims[HANDLER].counters["submits"] == 0
                        and await _dispatch_errors(w) >= 2)  # fmt: skip

        await wait_for(retried, what="dispatch retried while the partner is down")
        w.sims[HANDLER].set_down(False)
        for case_id in ids:
            await wait_for(lambda c=case_id: _settled(w, c), what=f"{case_id} completed")
        status, dead, _ = await w.origin.call(
            "GET", "/v1/ops/dead-letters", sign=False,
            headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
        )  # fmt: skip
        assert status == 200 and dead["dead_letters"] == []


async def _dispatch_errors(w: World) -> int:
    async with w.session.get(w.origin.base + "/metrics") as r:
        text = await r.text()
    total = 0
    for line in text.splitlines():
        if line.startswith("tongban_dispatch_calls_total") and 'outcome="retryable"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


async def test_origin_callback_down_then_up_gets_every_event_in_order(
    tmp_path: Path, store_url: str
) -> None:
    async with world(tmp_path, store=store_url) as w:
        w.sims[ORIGIN].set_down(True)
        ids = [await _submit(w, f"ZJ-CB-{i}") for i in range(4)]

        async def completed_but_waiting() -> bool:
            cases = [await w.origin.case(i) for i in ids]
            return all(c["status"] == "completed" for c in cases) and all(
                d["waiting"] > 0 and d["attempts"] > 0
                for c in cases
                for d in c["deliveries"]
                if d["recipient"] == f"region:{ORIGIN}"
            )

        await wait_for(completed_but_waiting, what="cases completed while the origin is down")
        assert w.sims[ORIGIN].events == {}
        w.sims[ORIGIN].set_down(False)
        for case_id in ids:
            await wait_for(lambda c=case_id: _settled(w, c), what=f"{case_id} delivered")
            got = w.sims[ORIGIN].events[case_id]
            assert [e["seq"] for e in got] == [1, 2, 3, 4, 5]
        assert w.sims[ORIGIN].out_of_order == 0


async def test_retry_budget_spent_dead_letters_then_replay_completes(
    tmp_path: Path, store_url: str
) -> None:
    async with world(tmp_path, store=store_url, retry={"base_seconds": 0.01, "cap_seconds": 0.02,
                                                       "max_attempts": 2}) as w:  # fmt: skip
        w.sims[HANDLER].set_down(True)
        case_id = await _submit(w, "ZJ-DEAD-1")
        await wait_for(lambda: _settled(w, case_id, "failed"), what="case failed")
        ops = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        status, dead, _ = await w.origin.call(
            "GET", "/v1/ops/dead-letters", sign=False, headers=ops
        )
        assert status == 200
        (letter,) = dead["dead_letters"]
        assert letter["case_id"] == case_id and "retry budget" in letter["last_error"]
        w.sims[HANDLER].set_down(False)
        status, _, _ = await w.origin.call(
            "POST", "/v1/ops/dead-letters/replay", {"case_ids": [case_id]}, sign=False, headers=ops
        )
        assert status == 200
        await wait_for(lambda: _settled(w, case_id), what="replayed case completed")
        history = [e["status"] for e in (await w.origin.case(case_id))["history"]]
        assert history == ["received", "failed", "dispatched", "accepted", "in_progress",
                           "completed"]  # fmt: skip


async def test_partner_refusal_is_rejected_and_delivered(tmp_path: Path, store_url: str) -> None:
    async with world(tmp_path, store=store_url) as w:
        case_id = await _submit(w, "ZJ-1-REJECT")
        await wait_for(lambda: _settled(w, case_id, "rejected"), what="rejection delivered")
        case = await w.origin.case(case_id)
        assert [e["status"] for e in case["history"]] == ["received", "dispatched", "rejected"]
        assert case["history"][-1]["data"]["message"]
        assert [e["status"] for e in w.hub.events[case_id]][-1] == "rejected"


async def test_supplement_round_trip_resumes_the_case(tmp_path: Path, store_url: str) -> None:
    async with world(tmp_path, store=store_url) as w:
        case_id = await _submit(w, "ZJ-1-SUPPLEMENT")
        await wait_for(
            lambda: _settled(w, case_id, "supplement_required"), what="supplement requested"
        )
        waiting = await w.origin.case(case_id)
        assert waiting["time_limit_stopped"] is True and waiting["overdue"] is False
        status, case, _ = await w.origin.call(
            "POST", f"/v1/cases/{case_id}/supplements",
            {"note": "已补充居住证明", "payload": {"residence_proof": "居住证 330100-2026-001"}},
        )  # fmt: skip
        assert status == 200, case
        assert case["history"][-1]["data"]["supplement"] is True
        assert case["time_limit_stopped"] is False
        assert case["deadline"] > waiting["deadline"]  # moved by the time the clock stood
        await wait_for(lambda: _settled(w, case_id), what="case completed after supplement")
        statuses = [e["status"] for e in (await w.origin.case(case_id))["history"]]
        assert statuses == ["received", "dispatched", "accepted", "supplement_required",
                            "accepted", "in_progress", "completed"]  # fmt: skip
        # A second supplement when none is asked for is refused and changes nothing.
        status, _, _ = await w.origin.call("POST", f"/v1/cases/{case_id}/supplements", {})
        assert status == 409


async def test_withdraw_before_completion_stops_the_case(tmp_path: Path, store_url: str) -> None:
    async with world(tmp_path, store=store_url) as w:
        w.sims[HANDLER].set_down(True)
        case_id = await _submit(w, "ZJ-WD-1")
        status, case, _ = await w.origin.call(
            "POST", f"/v1/cases/{case_id}/withdraw", {"reason": "申请人主动撤回"}
        )
        assert status == 200 and case["status"] == "withdrawn"
        status, problem, _ = await w.origin.call("POST", f"/v1/cases/{case_id}/withdraw", {})
        assert status == 409, problem
        w.sims[HANDLER].set_down(False)
        await wait_for(lambda: _settled(w, case_id, "withdrawn"), what="withdrawal delivered")
        assert [e["status"] for e in w.sims[ORIGIN].events[case_id]] == ["received", "withdrawn"]

        # Either the partner never got the case, or (if a call was already in flight when the
        # origin withdrew) it is told of the withdrawal too.
        async def partner_consistent() -> bool:
            held = w.sims[HANDLER].partner_view(case_id)
            return held is None or bool(held["withdrawn"])

        await wait_for(partner_consistent, what="partner holds no live copy of the case")


async def test_late_and_duplicate_partner_reports_are_recorded_and_ignored(
    tmp_path: Path, store_url: str
) -> None:
    async with world(tmp_path, store=store_url) as w:
        case_id = await _submit(w, "ZJ-LATE-1")
        await wait_for(lambda: _settled(w, case_id), what="case completed")
        late = {"reports": [
            {"caseId": case_id, "statusCode": "3", "eventId": "late-1"},
            {"caseId": case_id, "statusCode": "11", "outcome": "denied", "eventId": "dup-1"},
        ]}  # fmt: skip
        status, answer, _ = await w.handler.call("POST", f"/v1/partners/{HANDLER}/inbound", late)
        assert status == 200 and answer["applied"] == 0 and answer["ignored"] == 2
        case = await w.origin.case(case_id)
        assert case["outcome"] == "approved" and len(case["history"]) == 5
        assert [i["status"] for i in case["ignored"]] == ["accepted", "completed"]


async def test_a_report_that_overtakes_the_dispatch_answer_moves_the_case_on(
    tmp_path: Path, store_url: str
) -> None:
    # The partner has the case but the gateway has not written down its answer (the process
    # that sent it died first, or the report simply came quicker): the report is applied, and
    # the dispatch answer that follows is recorded and ignored, never moving the case back.
    async with world(tmp_path, store=store_url) as w:
        w.sims[HANDLER].set_down(True)  # the dispatch answer comes only once it is up again
        case_id = await _submit(w, "ZJ-OVERTAKE-1")
        report = {"reports": [{"caseId": case_id, "statusCode": "6", "eventId": "ask-1",
                               "message": "请补充户口簿首页"}]}  # fmt: skip
        status, answer, _ = await w.handler.call("POST", f"/v1/partners/{HANDLER}/inbound", report)
        assert status == 200 and answer["applied"] == 1, answer
        assert (await w.origin.case(case_id))["status"] == "supplement_required"
        w.sims[HANDLER].set_down(False)

        async def answer_ignored() -> bool:
            case = await w.origin.case(case_id)
            return any(i["status"] == "dispatched" for i in case["ignored"])

        await wait_for(answer_ignored, what="the late dispatch answer recorded and ignored")
        history = [e["status"] for e in (await w.origin.case(case_id))["history"]]
        assert history[:2] == ["received", "supplement_required"]
        assert "dispatched" not in history  # the supplement was not taken as answered


async def test_partner_may_only_touch_its_own_cases(tmp_path: Path, store_url: str) -> None:
    async with world(tmp_path, store=store_url) as w:
        w.sims[HANDLER].set_down(True)
        case_id = await _submit(w, "ZJ-OWN-1")
        forged = {"reports": [{"caseId": case_id, "statusCode": "11", "outcome": "approved"}]}
        # The origin's key signs a message posted as the handler: refused outright.
        status, _, _ = await w.origin.call("POST", f"/v1/partners/{HANDLER}/inbound", forged)
        assert status == 403
        # The origin posting for itself cannot move a case it does not handle.
        status, answer, _ = await w.origin.call("POST", f"/v1/partners/{ORIGIN}/inbound", forged)
        assert status == 200 and answer["applied"] == 0
        assert (await w.origin.case(case_id))["status"] == "received"


async def test_partner_cannot_report_a_withdrawal(tmp_path: Path, store_url: str) -> None:
    async with world(tmp_path, store=store_url) as w:
        w.sims[HANDLER].set_down(True)
        case_id = await _submit(w, "ZJ-PW-1")
        # The rest_json table has no withdrawn code; an adapter that produced one is refused.
        update = StatusUpdate(status="withdrawn", case_id=case_id)
        t = w.gateway.service.update_transition(HANDLER, update, {}, time.time())
        (result,) = await w.gateway.store.write([t], time.time())  # type: ignore[union-attr]
        assert isinstance(result, TransitionResult) and not result.applied
        assert "may not report withdrawn" in result.reason
        assert (await w.origin.case(case_id))["status"] == "received"


async def test_a_store_that_cannot_write_answers_503_and_the_retry_is_accepted_once(
    tmp_path: Path, store_url: str
) -> None:
    async with world(tmp_path, store=store_url) as w:
        await raw_sql(
            store_url, "ALTER TABLE events RENAME TO events_away"
        )  # every write of a case now fails
        body = medical_filing("ZJ-STORE-DOWN-1")
        status, answer, headers = await w.origin.call("POST", "/v1/cases", body)
        assert status == 503 and headers["Retry-After"] == "1", answer
        assert "nothing was acknowledged" in answer["detail"]
        await raw_sql(store_url, "ALTER TABLE events_away RENAME TO events")
        status, case, _ = await w.origin.call("POST", "/v1/cases", body)
        assert status == 202, case
        status, again, _ = await w.origin.call("POST", "/v1/cases", body)
        assert status == 200 and again["case_id"] == case["case_id"]
        await wait_for(lambda: _settled(w, case["case_id"]), what="case completed")


async def test_an_open_case_past_its_deadline_is_counted_overdue_for_monitoring(
    tmp_path: Path, store_url: str
) -> None:
    async with world(tmp_path, store=store_url) as w:
        w.sims[HANDLER].set_down(True)  # the case stays open at the gateway

        async def overdue() -> float:
            async with w.session.get(w.origin.base + "/metrics") as r:
                text = await r.text()
            found = re.search(r'^tongban_store\{what="cases_overdue"\} (\S+)$', text, re.M)
            assert found, "no cases_overdue gauge"
            return float(found.group(1))

        case_id = await _submit(w, "ZJ-OVERDUE-1")
        assert await overdue() == 0
        # Its time limit ran out long ago (as if the handler had sat on it for weeks).
        await raw_sql(store_url, f"UPDATE cases SET deadline = 1000 WHERE case_id = '{case_id}'")
        assert await overdue() == 1
        assert (await w.origin.case(case_id))["overdue"] is True
        status, page, _ = await w.origin.call("GET", "/v1/cases")
        assert status == 200 and [c["overdue"] for c in page["cases"]] == [True]
        status, _, _ = await w.origin.call("POST", f"/v1/cases/{case_id}/withdraw",
                                           {"reason": "申请人撤回"})  # fmt: skip
        assert status == 200
        assert await overdue() == 0  # a withdrawn case is decided: no longer overdue
