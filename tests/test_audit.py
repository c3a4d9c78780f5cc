"""The audit chain (SPEC §4, operators: "Audit: the entries of a case, and a verification of the
whole chain"), on both store backends, through the operator API of a real gateway.

Tampering is done the way an intruder with database access would: straight SQL on the store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support import (
    HANDLER,
    OPERATOR_TOKEN,
    ORIGIN,
    VIEWER_TOKEN,
    World,
    medical_filing,
    raw_sql,
    wait_for,
    world,
)

VIEWER = {"Authorization": f"Bearer {VIEWER_TOKEN}"}
ADMIN = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


async def ops(w: World, method: str, path: str, body: Any = None, token: dict[str, str] = VIEWER):
    status, answer, _ = await w.origin.call(method, path, body, sign=False, headers=token)
    return status, answer


async def completed_case(w: World, request_id: str) -> dict[str, Any]:
    status, case, _ = await w.origin.call("POST", "/v1/cases", medical_filing(request_id))
    assert status == 202, case
    case_id = case["case_id"]

    async def settled() -> bool:
        c = await w.origin.case(case_id)
        return c["status"] == "completed" and all(d["waiting"] == 0 for d in c["deliveries"])

    await wait_for(settled, what="case completed and delivered")
    return await w.origin.case(case_id)


async def test_a_case_s_entries_are_its_events_in_order_with_who_caused_them(
    tmp_path: Path, store_url: str
) -> None:
    async with world(tmp_path, store=store_url) as w:
        case = await completed_case(w, "ZJ-AUDIT-1")
        status, trail = await ops(w, "GET", f"/v1/ops/audit/cases/{case['case_id']}")
        assert status == 200, trail
        entries = trail["entries"]
        assert [e["ref"] for e in entries] == [e["event_id"] for e in case["history"]]
        assert {e["kind"] for e in entries} == {"event"}
        assert entries[0]["actor"] == f"origin:{ORIGIN}"
        assert entries[1]["actor"] == "gateway"  # dispatched: the gateway's own step
        assert {e["actor"] for e in entries[2:]} == {f"partner:{HANDLER}"}
        ids = [e["audit_id"] for e in entries]
        assert ids == sorted(ids)
        status, verdict = await ops(w, "GET", "/v1/ops/audit/verify")
        assert status == 200 and verdict["verified"] is True, verdict
        # revision 1 of the contract list, then the case's five events
        assert verdict["entries_checked"] == 1 + len(entries)
        assert verdict["last_hash"] == entries[-1]["hash"]


async def test_ignored_reports_replays_and_publishes_are_entries_too(
    tmp_path: Path, store_url: str
) -> None:
    async with world(tmp_path, store=store_url) as w:
        case = await completed_case(w, "ZJ-AUDIT-2")
        case_id = case["case_id"]
        late = {"reports": [{"caseId": case_id, "statusCode": "3", "eventId": "late-1"}]}
        status, _, _ = await w.handler.call("POST", f"/v1/partners/{HANDLER}/inbound", late)
        assert status == 200
        status, _ = await ops(w, "POST", "/v1/ops/dead-letters/replay", {"case_ids": [case_id]},
                              token=ADMIN)  # fmt: skip
        assert status == 200
        status, rolled = await ops(w, "POST", "/v1/ops/contracts/rollback", {"revision": 1},
                                   token=ADMIN)  # fmt: skip
        assert status == 201, rolled
        status, trail = await ops(w, "GET", f"/v1/ops/audit/cases/{case_id}")
        kinds = [(e["kind"], e["actor"]) for e in trail["entries"]][-2:]
        assert kinds == [("ignored", f"partner:{HANDLER}"), ("replay", "ops")]
        status, verdict = await ops(w, "GET", "/v1/ops/audit/verify")
        assert verdict["verified"] is True, verdict
        assert verdict["entries_checked"] == 2 + len(case["history"]) + 2  # two revisions


async def test_a_changed_event_is_found_and_named(tmp_path: Path, store_url: str) -> None:
    async with world(tmp_path, store=store_url) as w:
        case = await completed_case(w, "ZJ-AUDIT-3")
        decision = case["history"][-1]["event_id"]
        await raw_sql(
            store_url, f"UPDATE events SET outcome = 'denied' WHERE event_id = '{decision}'"
        )
        status, verdict = await ops(w, "GET", "/v1/ops/audit/verify")
        assert status == 200 and verdict["verified"] is False
        assert (
            verdict["first_problem"]["reason"]
            == f"event {decision} was changed after it was recorded"
        )
        _, trail = await ops(w, "GET", f"/v1/ops/audit/cases/{case['case_id']}")
        assert verdict["first_problem"]["audit_id"] == trail["entries"][-1]["audit_id"]


async def test_a_removed_or_rewritten_entry_breaks_the_chain(
    tmp_path: Path, store_url: str
) -> None:
    async with world(tmp_path, store=store_url) as w:
        case = await completed_case(w, "ZJ-AUDIT-4")
        _, trail = await ops(w, "GET", f"/v1/ops/audit/cases/{case['case_id']}")
        second, third = trail["entries"][1]["audit_id"], trail["entries"][2]["audit_id"]
        await raw_sql(store_url, f"UPDATE audit SET actor = 'gateway' WHERE audit_id = {third}")
        _, verdict = await ops(w, "GET", "/v1/ops/audit/verify")
        reason = "its hash does not match its fields (the entry was changed)"
        assert verdict["first_problem"] == {"audit_id": third, "reason": reason}
        await raw_sql(store_url, f"DELETE FROM audit WHERE audit_id = {second}")
        _, verdict = await ops(w, "GET", "/v1/ops/audit/verify")
        assert verdict["first_problem"]["audit_id"] == third
        assert "removed or inserted" in verdict["first_problem"]["reason"]


async def test_audit_is_for_operators(tmp_path: Path, store_url: str) -> None:
    async with world(tmp_path, store=store_url) as w:
        status, _, _ = await w.origin.call("GET", "/v1/ops/audit/verify")  # a province's key
        assert status == 401
        status, answer = await ops(w, "GET", "/v1/ops/audit/cases/C01NOSUCHCASE")
        assert status == 404 and answer["status"] == 404
