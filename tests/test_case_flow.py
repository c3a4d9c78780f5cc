"""A case's whole life over real loopback HTTP: origin → gateway → partner → back down and up."""

from __future__ import annotations

from pathlib import Path

from tests.support import HANDLER, ORIGIN, medical_filing, wait_for, world


async def test_case_completes_and_every_event_reaches_origin_and_hub_in_order(
    tmp_path: Path,
    store_url: str,
) -> None:
    async with world(tmp_path, store=store_url) as w:
        status, case, _ = await w.origin.call("POST", "/v1/cases", medical_filing("ZJ-1"))
        assert status == 202, case.get("errors", case)
        assert case["status"] == "received"
        assert case["origin_region"] == ORIGIN and case["handling_region"] == HANDLER
        case_id = case["case_id"]

        async def delivered() -> bool:
            c = await w.origin.case(case_id)
            return c["status"] == "completed" and all(d["waiting"] == 0 for d in c["deliveries"])

        await wait_for(delivered, what="case completed and delivered")
        final = await w.origin.case(case_id)
        statuses = [e["status"] for e in final["history"]]
        assert statuses == ["received", "dispatched", "accepted", "in_progress", "completed"]
        assert final["outcome"] == "approved"
        assert final["result"]["decision_no"]
        seqs = [e["seq"] for e in w.sims[ORIGIN].events[case_id]]
        assert seqs == [1, 2, 3, 4, 5]
        assert [e["seq"] for e in w.hub.events[case_id]] == [1, 2, 3, 4, 5]
        assert w.sims[ORIGIN].out_of_order == 0 and w.hub.out_of_order == 0
        assert {e["event_id"] for e in w.hub.events[case_id]} == {
            e["event_id"] for e in final["history"]
        }


async def test_repeat_is_idempotent_and_changed_body_conflicts(
    tmp_path: Path, store_url: str
) -> None:
    async with world(tmp_path, store=store_url) as w:
        body = medical_filing("ZJ-2")
        s1, c1, _ = await w.origin.call("POST", "/v1/cases", body)
        s2, c2, _ = await w.origin.call("POST", "/v1/cases", body)
        assert (s1, s2) == (202, 200)
        assert c1["case_id"] == c2["case_id"]
        changed = medical_filing("ZJ-2", payload={**body["payload"], "filing_type": "12"})
        s3, problem, headers = await w.origin.call("POST", "/v1/cases", changed)
        assert s3 == 409
        assert headers["Content-Type"].startswith("application/problem+json")
        assert "ZJ-2" in problem["detail"]


async def test_a_case_signed_with_hmac_sm3_is_accepted(tmp_path: Path, store_url: str) -> None:
    async with world(tmp_path, store=store_url) as w:
        body = medical_filing("ZJ-SM3-1")
        status, case, _ = await w.origin.call("POST", "/v1/cases", body, scheme="hmac-sm3")
        assert status == 202, case
        status, same, _ = await w.origin.call(
            "GET", f"/v1/cases/{case['case_id']}", scheme="hmac-sm3"
        )
        assert status == 200 and same["case_id"] == case["case_id"]


async def test_a_region_code_padded_to_twelve_digits_routes_and_is_stored_as_six(
    tmp_path: Path,
    store_url: str,
) -> None:
    async with world(tmp_path, store=store_url) as w:
        body = medical_filing("ZJ-PAD-1")
        body["payload"]["insured_region"] = "510100000000"  # as some platforms send it
        status, case, _ = await w.origin.call("POST", "/v1/cases", body)
        assert status == 202, case
        assert case["handling_region"] == HANDLER
        detail = await w.gateway.store.get_case(case["case_id"])
        assert detail is not None and detail.case.payload["insured_region"] == "510100"
