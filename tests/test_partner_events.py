"""A partner report that comes again under its own event id is recorded and ignored.

The state machine alone cannot tell a redelivered 补正 request from a new one: after the origin
answered it, the case may legitimately be asked again. The partner's event id can: a report
already applied under that id is refused, on both backends.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from gateway import transition
from gateway.lifecycle import Status
from gateway.store.base import CaseRecord, Transition
from tests.support import HANDLER, World, medical_filing, world

INBOUND = f"/v1/partners/{HANDLER}/inbound"


def _case() -> CaseRecord:
    return CaseRecord(
        case_id="C1", request_id="r1", origin_region="330000", handling_region=HANDLER,
        item_code="KSTB-YB-001", contract_version=1, mode="online", status=Status.ACCEPTED,
        outcome=None, result=None, partner_ref="T1", body_hash="h", applicant={}, payload={},
        attachments=[], recipients=[], created_at=0.0, updated_at=0.0, deadline=None, last_seq=3,
    )  # fmt: skip


def _report(event_id: str | None, region: str = HANDLER) -> Transition:
    return Transition(
        case_id="C1", status=Status.IN_PROGRESS, event_id="E1", at=1.0, source=f"partner:{region}",
        handler=region, partner_event_id=event_id,
    )  # fmt: skip


def test_an_applied_report_id_is_kept_and_a_repeat_refused() -> None:
    done = transition.apply(_case(), _report("evt-7"), 1.0)
    assert isinstance(done, transition.Applied)
    assert done.case.partner_events == [f"{HANDLER}:evt-7"]
    # The same id again, even for a move the state machine would allow from here:
    again = replace(done.case, status=Status.ACCEPTED)
    refused = transition.apply(again, _report("evt-7"), 2.0)
    assert refused == transition.Refused(transition.REPEATED)
    # Another id, or a report without one, is judged by the state machine as before.
    assert isinstance(transition.apply(again, _report("evt-8"), 2.0), transition.Applied)
    assert isinstance(transition.apply(again, _report(None), 2.0), transition.Applied)


def test_the_kept_ids_are_bounded() -> None:
    case = replace(_case(), partner_events=[f"{HANDLER}:{i}" for i in range(64)])
    done = transition.apply(case, _report("new"), 1.0)
    assert isinstance(done, transition.Applied)
    kept = done.case.partner_events
    assert len(kept) == transition.PARTNER_EVENTS_KEPT and kept[-1] == f"{HANDLER}:new"
    assert f"{HANDLER}:0" not in kept


async def _post(w: World, case_id: str, event_id: str, code: str) -> dict[str, object]:
    report = {"reports": [{"caseId": case_id, "statusCode": code, "eventId": event_id,
                           "message": "请补充户口簿首页"}]}  # fmt: skip
    status, answer, _ = await w.handler.call("POST", INBOUND, report)
    assert status == 200, answer
    return dict(answer)


async def test_a_redelivered_supplement_request_does_not_reopen_the_case(
    tmp_path: Path, store_url: str
) -> None:
    async with world(tmp_path, store=store_url) as w:
        w.sims[HANDLER].set_down(True)  # the gateway's own calls wait; the reports are ours
        status, case, _ = await w.origin.call("POST", "/v1/cases", medical_filing("ZJ-PEV-1"))
        assert status == 202, case
        case_id = case["case_id"]
        assert (await _post(w, case_id, "ask-1", "6"))["applied"] == 1
        status, body, _ = await w.origin.call(
            "POST", f"/v1/cases/{case_id}/supplements", {"note": "已补充户口簿首页"}
        )
        assert status == 200 and body["status"] != "supplement_required", body

        # The partner's system sends its first request again (a retry after a lost answer):
        answer = await _post(w, case_id, "ask-1", "6")
        assert answer["applied"] == 0
        assert answer["details"][0]["reason"] == transition.REPEATED  # type: ignore[index]
        after = await w.origin.case(case_id)
        assert after["status"] != "supplement_required"
        assert [e["status"] for e in after["history"]].count("supplement_required") == 1
        assert after["ignored"][-1]["reason"] == transition.REPEATED

        # A new request, under a new id, is a new 补正 and is applied.
        assert (await _post(w, case_id, "ask-2", "6"))["applied"] == 1
        again = await w.origin.case(case_id)
        assert again["status"] == "supplement_required"
        assert [e["status"] for e in again["history"]].count("supplement_required") == 2
