"""Multi-site cases (多地联办): legs run in order across two simulated provinces over real
loopback HTTP; a leg's result feeds the next; a rejection anywhere ends the case."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from adapters.sdk import StatusUpdate
from gateway.contracts import ContractVersion
from gateway.service import canonical
from tests.support import (
    HANDLER,
    OPERATOR_TOKEN,
    ORIGIN,
    World,
    pension_transfer,
    wait_for,
    world,
)


async def finished_and_delivered(w: World, case_id: str, status: str) -> dict[str, Any]:
    async def done() -> bool:
        c = await w.origin.case(case_id)
        return c["status"] == status and all(d["waiting"] == 0 for d in c["deliveries"])

    await wait_for(done, what=f"case {status} and every event delivered")
    return await w.origin.case(case_id)


def assert_delivered_in_order(w: World, case: dict[str, Any]) -> None:
    history = [e["event_id"] for e in case["history"]]
    for receiver in (w.sims[ORIGIN], w.hub):
        got = receiver.events[case["case_id"]]
        assert [e["seq"] for e in got] == list(range(1, len(history) + 1))
        assert [e["event_id"] for e in got] == history
        assert receiver.out_of_order == 0


async def test_legs_run_in_order_and_the_first_result_feeds_the_second(
    tmp_path: Path, store_url: str
) -> None:
    async with world(tmp_path, store=store_url) as w:
        status, case, _ = await w.origin.call("POST", "/v1/cases", pension_transfer("ZJ-MS-1"))
        assert status == 202, case
        assert case["mode"] == "multi_site" and case["handling_region"] == HANDLER
        assert [leg["region"] for leg in case["legs"]] == [HANDLER, ORIGIN]
        assert [leg["status"] for leg in case["legs"]] == ["received", "waiting"]

        final = await finished_and_delivered(w, case["case_id"], "completed")
        first, second = final["legs"]
        assert (first["status"], first["outcome"]) == ("completed", "approved")
        assert (second["status"], second["outcome"]) == ("completed", "approved")
        assert final["outcome"] == "approved"
        assert final["handling_region"] == ORIGIN
        assert final["result"]["handling_region"] == ORIGIN  # the last leg's result
        # Each leg went to its own province, one after the other.
        assert w.sims[HANDLER].counters["submits"] == 1
        assert w.sims[ORIGIN].counters["submits"] == 1
        # Every event names its leg; the legs' events do not interleave.
        legs_seen = [e["data"]["leg"]["index"] for e in final["history"][1:]]
        assert legs_seen == sorted(legs_seen) and set(legs_seen) == {1, 2}
        handover = next(e for e in final["history"] if "next_leg" in e["data"])
        assert handover["status"] == "in_progress"
        assert handover["data"]["leg"] == {
            "index": 1, "of": 2, "region": HANDLER, "status": "completed", "outcome": "approved"
        }  # fmt: skip
        assert handover["data"]["next_leg"]["region"] == ORIGIN
        statuses = [e["status"] for e in final["history"]]
        assert statuses[:4] == ["received", "dispatched", "accepted", "in_progress"]
        assert statuses[-1] == "completed" and set(statuses[4:-1]) == {"in_progress"}
        assert_delivered_in_order(w, final)

        # What the second province was sent: the payload plus the first leg's certificate.
        detail = await w.gateway.store.get_case(case["case_id"])
        assert detail is not None
        sent = canonical(detail.case).payload
        assert sent["out_certificate_no"] == first["result"]["decision_no"]
        assert sent["out_decided_at"] == first["result"]["decided_at"]
        assert sent["transfer_in_region"] == "330106"


async def test_a_second_leg_that_rejects_ends_the_case_rejected(
    tmp_path: Path, store_url: str
) -> None:
    async with world(tmp_path, store=store_url) as w:
        w.sims[ORIGIN].settings.reject_rate = 1.0  # the transfer-in province refuses it
        status, case, _ = await w.origin.call("POST", "/v1/cases", pension_transfer("ZJ-MS-2"))
        assert status == 202, case
        final = await finished_and_delivered(w, case["case_id"], "rejected")
        first, second = final["legs"]
        assert (first["status"], first["outcome"]) == ("completed", "approved")
        assert second["status"] == "rejected"
        assert final["outcome"] is None
        last = final["history"][-1]
        assert last["status"] == "rejected" and last["data"]["leg"]["index"] == 2
        assert_delivered_in_order(w, final)


async def test_a_first_leg_denied_completes_the_case_without_the_second(
    tmp_path: Path, store_url: str
) -> None:
    async with world(tmp_path, store=store_url) as w:
        w.sims[HANDLER].settings.deny_rate = 1.0
        status, case, _ = await w.origin.call("POST", "/v1/cases", pension_transfer("ZJ-MS-3"))
        assert status == 202, case
        final = await finished_and_delivered(w, case["case_id"], "completed")
        assert final["outcome"] == "denied"
        assert [leg["status"] for leg in final["legs"]] == ["completed", "waiting"]
        assert w.sims[ORIGIN].counters["submits"] == 0
        assert_delivered_in_order(w, final)


async def test_each_leg_asks_for_its_supplement_and_gets_it(tmp_path: Path, store_url: str) -> None:
    async with world(tmp_path, store=store_url) as w:
        body = pension_transfer("ZJ-MS-5-SUPPLEMENT")  # both provinces ask for 补正
        status, case, _ = await w.origin.call("POST", "/v1/cases", body)
        assert status == 202, case
        case_id, answered = case["case_id"], []

        async def answer_supplements() -> bool:
            c = await w.origin.case(case_id)
            if c["status"] == "supplement_required":
                leg = c["history"][-1]["data"]["leg"]["index"]
                if leg not in answered:
                    path = f"/v1/cases/{case_id}/supplements"
                    s, _, _ = await w.origin.call("POST", path, {"note": "已补充"})
                    assert s == 200
                    answered.append(leg)
            return c["status"] == "completed"

        await wait_for(answer_supplements, what="both legs' supplements answered, case done")
        assert answered == [1, 2]
        final = await finished_and_delivered(w, case_id, "completed")
        asked = [e["data"]["leg"]["index"] for e in final["history"]
                 if e["status"] == "supplement_required"]  # fmt: skip
        assert asked == [1, 2]
        assert all(leg["status"] == "completed" for leg in final["legs"])
        assert_delivered_in_order(w, final)


async def test_a_late_report_from_a_finished_leg_is_recorded_and_ignored(
    tmp_path: Path, store_url: str
) -> None:
    async with world(tmp_path, store=store_url) as w:
        status, case, _ = await w.origin.call("POST", "/v1/cases", pension_transfer("ZJ-MS-4"))
        assert status == 202, case
        case_id = case["case_id"]
        before = await finished_and_delivered(w, case_id, "completed")
        late = StatusUpdate(status="in_progress", case_id=case_id)
        answer = await w.gateway.service.apply_updates(HANDLER, [late])
        assert answer["applied"] == 0
        after = await w.origin.case(case_id)
        assert after["history"] == before["history"]
        assert after["ignored"][-1]["source"] == f"partner:{HANDLER}"
        # The first leg's province may still read the case it worked on.
        status, seen, _ = await w.handler.call("GET", f"/v1/cases/{case_id}")
        assert status == 200 and seen["case_id"] == case_id


@pytest.mark.parametrize(
    ("payload", "field", "words"),
    [
        ({"transfer_in_region": "510107"}, "transfer_in_region", "no other leg"),
        ({"transfer_in_region": "440106"}, "transfer_in_region", "no connected partner"),
    ],
)
async def test_legs_that_cannot_run_are_refused_naming_the_field(
    tmp_path: Path, store_url: str, payload: dict[str, str], field: str, words: str
) -> None:
    async with world(tmp_path, store=store_url) as w:
        body = pension_transfer("ZJ-MS-BAD", **payload)
        status, problem, _ = await w.origin.call("POST", "/v1/cases", body)
        assert status == 422, problem
        (error,) = problem["errors"]
        assert error["loc"][-1] == field and words in error["msg"]
        listed = await w.origin.call("GET", "/v1/cases")
        assert listed[1]["cases"] == []


async def test_a_handling_region_other_than_the_first_leg_is_refused(
    tmp_path: Path, store_url: str
) -> None:
    async with world(tmp_path, store=store_url) as w:
        body = {**pension_transfer("ZJ-MS-HR"), "handling_region": ORIGIN}
        status, problem, _ = await w.origin.call("POST", "/v1/cases", body)
        assert status == 422, problem
        assert problem["errors"][0]["loc"] == ["handling_region"]
        assert HANDLER in problem["errors"][0]["msg"]


def leg_version(**routing: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "mode": "multi_site",
        "fields": {"out": {"type": "region_code"}, "into": {"type": "region_code"}},
        "routing": routing,
    }


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (leg_version(legs=[{"from_field": "out"}]), "at least two legs"),
        ({**leg_version(legs=[{"from_field": "out"}, {"from_field": "into"}]), "mode": "online"},
         "only for the multi_site mode"),
        (leg_version(legs=[{"from_field": "out", "carry": {"a": "b"}}, {"from_field": "into"}]),
         "first leg has no previous leg"),
        (leg_version(legs=[{"from_field": "out"}, {"from_field": "elsewhere"}]),
         "no field 'elsewhere'"),
        (leg_version(legs=[{"from_field": "out", "handling_region": "510000"},
                           {"from_field": "into"}]), "exactly one of"),
    ],
)  # fmt: skip
def test_a_contract_with_unworkable_legs_is_refused(raw: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        ContractVersion.model_validate(raw)


def test_a_multi_site_version_without_legs_still_loads() -> None:
    """Versions published before legs existed stay readable (they run as one exchange)."""
    version = ContractVersion.model_validate(leg_version(from_field="out"))
    assert version.mode == "multi_site" and version.routing.legs == []


async def test_a_case_withdrawn_before_its_second_leg_is_sent_is_live_nowhere(
    tmp_path: Path,
    store_url: str,
) -> None:
    async with world(tmp_path, store=store_url) as w:
        w.sims[ORIGIN].set_down(True)  # the transfer-in province is down: leg 2 waits
        status, case, _ = await w.origin.call("POST", "/v1/cases", pension_transfer("ZJ-MS-6"))
        assert status == 202, case
        case_id = case["case_id"]

        async def handed_over() -> bool:
            legs = (await w.origin.case(case_id))["legs"]
            return [leg["status"] for leg in legs] == ["completed", "received"]

        await wait_for(handed_over, what="leg 1 done, leg 2 waiting to be sent")
        path = f"/v1/cases/{case_id}/withdraw"
        status, withdrawn, _ = await w.origin.call("POST", path, {"reason": "申请人撤回"})
        assert status == 200, withdrawn
        assert withdrawn["status"] == "withdrawn"
        assert [leg["status"] for leg in withdrawn["legs"]] == ["completed", "withdrawn"]
        w.sims[ORIGIN].set_down(False)
        final = await finished_and_delivered(w, case_id, "withdrawn")
        assert_delivered_in_order(w, final)

        # The second province never holds a live case: either it never got it, or (a submit was
        # in flight when the case was withdrawn) it got it and then the withdrawal.
        def not_live() -> bool:
            view = w.sims[ORIGIN].partner_view(case_id)
            return view is None or bool(view["withdrawn"])

        await wait_for(not_live, what="no live case at the second leg's province")
        dead = await w.gateway.store.dead_jobs(10)
        assert not [j for j in dead if j.case_id == case_id]


async def test_a_second_leg_dead_lettered_is_replayed_and_completes(
    tmp_path: Path, store_url: str
) -> None:
    async with world(tmp_path, store=store_url, retry={"base_seconds": 0.01, "cap_seconds": 0.02,
                                                       "max_attempts": 2}) as w:  # fmt: skip
        w.sims[ORIGIN].settings.failure_rate = 1.0  # leg 2's submits fail until it recovers
        status, case, _ = await w.origin.call("POST", "/v1/cases", pension_transfer("ZJ-MS-7"))
        assert status == 202, case
        case_id = case["case_id"]

        async def failed() -> bool:
            return (await w.origin.case(case_id))["status"] == "failed"

        await wait_for(failed, what="leg 2 dead-lettered")
        c = await w.origin.case(case_id)
        assert [leg["status"] for leg in c["legs"]] == ["completed", "failed"]
        w.sims[ORIGIN].settings.failure_rate = 0.0
        admin = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        status, _, _ = await w.origin.call(
            "POST", "/v1/ops/dead-letters/replay", {"case_ids": [case_id]}, sign=False,
            headers=admin,
        )  # fmt: skip
        assert status == 200
        final = await finished_and_delivered(w, case_id, "completed")
        assert [leg["status"] for leg in final["legs"]] == ["completed", "completed"]
        assert_delivered_in_order(w, final)


async def test_a_poll_asks_a_province_only_about_the_legs_it_holds(
    tmp_path: Path, store_url: str
) -> None:
    async with world(tmp_path, store=store_url) as w:
        w.sims[ORIGIN].set_down(True)  # leg 2 cannot be sent: the case waits between legs
        status, case, _ = await w.origin.call("POST", "/v1/cases", pension_transfer("ZJ-MS-8"))
        assert status == 202, case
        case_id = case["case_id"]

        async def handed_over() -> bool:
            legs = (await w.origin.case(case_id))["legs"]
            return [leg["status"] for leg in legs] == ["completed", "received"]

        await wait_for(handed_over, what="leg 1 done, leg 2 waiting to be sent")
        for region in (HANDLER, ORIGIN):
            held = await w.gateway.store.open_cases(region, 10)
            assert case_id not in [c.case_id for c in held], region
        w.sims[ORIGIN].set_down(False)

        async def leg_two_taken() -> bool:
            held = await w.gateway.store.open_cases(ORIGIN, 10)
            return case_id in [c.case_id for c in held] or (
                (await w.origin.case(case_id))["status"] == "completed"
            )

        await wait_for(leg_two_taken, what="leg 2 held by the transfer-in province")
