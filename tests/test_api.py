"""The province-facing HTTP API (SPEC §4, §5, §9) over real loopback HTTP.

Every refusal is checked twice: the answer (status, RFC 9457 problem+json naming the bad fields)
and its effect (nothing stored, nothing sent up to the national hub).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from pathlib import Path
from typing import Any

import orjson

from gateway.identifiers import credit_check_char
from gateway.signing import sign_headers
from tests.support import (
    HANDLER,
    KEYS,
    OPERATOR_TOKEN,
    ORIGIN,
    World,
    citizen_id,
    medical_filing,
    wait_for,
    world,
)

OPS = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
PROBLEM = "application/problem+json"


# ---- helpers ------------------------------------------------------------------------------------


def assert_problem(status: int, body: Any, headers: dict[str, str], expected: int) -> None:
    """An RFC 9457 problem with the expected status."""
    assert status == expected, body
    assert headers["Content-Type"].startswith(PROBLEM), headers
    assert isinstance(body, dict), body
    assert {"type", "title", "status", "detail"} <= body.keys(), body
    assert body["status"] == expected


def locs(body: dict[str, Any]) -> list[list[str | int]]:
    return [list(e["loc"]) for e in body["errors"]]


async def submit(w: World, request_id: str, **overrides: Any) -> str:
    status, case, _ = await w.origin.call(
        "POST", "/v1/cases", medical_filing(request_id, **overrides)
    )
    assert status == 202, case
    return str(case["case_id"])


async def stored_cases(w: World) -> list[dict[str, Any]]:
    """Every case in the gateway, as an operator sees them (operators are not rate-limited)."""
    status, page, _ = await w.origin.call("GET", "/v1/cases?limit=500", sign=False, headers=OPS)
    assert status == 200, page
    assert page["next"] is None
    return list(page["cases"])


async def assert_only_stored(w: World, accepted: set[str]) -> None:
    """Nothing but ``accepted`` (plus a sentinel) is stored or reported up to the hub.

    A sentinel case is submitted and the hub is awaited until it has the sentinel's events: by
    then any event of a refused request would have been delivered too.
    """
    sentinel = await submit(w, "ZJ-SENTINEL")
    await wait_for(lambda: sentinel in w.hub.events, what="sentinel reported to the hub")
    assert set(w.hub.events) <= accepted | {sentinel}
    assert {c["case_id"] for c in await stored_cases(w)} == accepted | {sentinel}


def signed(
    method: str, path: str, body: bytes, *, region: str = ORIGIN, **kw: Any
) -> dict[str, str]:
    key_id, secret = KEYS[region]
    headers = sign_headers(key_id, secret, method, path, body, **kw)
    return {"Content-Type": "application/json", **headers}


async def raw_call(
    w: World, method: str, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, str, dict[str, str]]:
    async with w.session.request(method, w.origin.base + path, data=body, headers=headers) as r:
        return r.status, await r.text(), dict(r.headers)


def legal_person(credit_code: str) -> dict[str, Any]:
    return {
        "kind": "legal_person",
        "credit_code": credit_code,
        "name": "杭州某某科技有限公司",
        "representative": {"id_type": "111", "id_number": citizen_id(), "name": "王五"},
    }


def credit_code(first17: str = "91330106MA2B3C4D5") -> str:
    return first17 + credit_check_char(first17)


# ---- signing ------------------------------------------------------------------------------------


async def test_signing_refusals_are_401_problems_and_store_nothing(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        data = orjson.dumps(medical_filing("ZJ-SIG-1"))
        key_id, secret = KEYS[ORIGIN]
        attempts: dict[str, dict[str, str]] = {
            "bad signature": {
                "Content-Type": "application/json",
                **sign_headers(key_id, "not-the-secret", "POST", "/v1/cases", data),
            },
            "stale timestamp": signed("POST", "/v1/cases", data, now=time.time() - 1000),
            "future timestamp": signed("POST", "/v1/cases", data, now=time.time() + 1000),
            "unknown key id": {
                "Content-Type": "application/json",
                **sign_headers("no-such-key", secret, "POST", "/v1/cases", data),
            },
            "missing headers": {"Content-Type": "application/json"},
            "signed for another body": signed("POST", "/v1/cases", data + b" "),
            "signed for another path": signed("POST", "/v1/cases?x=1", data),
        }
        for what, headers in attempts.items():
            status, problem, h = await w.origin.call(
                "POST", "/v1/cases", raw=data, headers=headers, sign=False
            )
            assert_problem(status, problem, h, 401)
            assert secret not in problem["detail"], what
        partial = signed("POST", "/v1/cases", data)
        del partial["X-Tongban-Signature"]
        status, problem, h = await w.origin.call(
            "POST", "/v1/cases", raw=data, headers=partial, sign=False
        )
        assert_problem(status, problem, h, 401)
        assert "X-Tongban-Signature" in problem["detail"]
        # Reads are refused the same way.
        status, problem, h = await w.origin.call("GET", "/v1/cases", sign=False)
        assert_problem(status, problem, h, 401)
        await assert_only_stored(w, set())


async def test_replayed_request_is_refused_and_the_case_exists_once(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        data = orjson.dumps(medical_filing("ZJ-REPLAY-1"))
        headers = signed("POST", "/v1/cases", data)
        s1, case, _ = await w.origin.call(
            "POST", "/v1/cases", raw=data, headers=headers, sign=False
        )
        s2, problem, h2 = await w.origin.call(
            "POST", "/v1/cases", raw=data, headers=headers, sign=False
        )
        assert s1 == 202, case
        assert_problem(s2, problem, h2, 401)
        assert "X-Tongban-Nonce" in problem["detail"]
        cases = await stored_cases(w)
        assert [c["case_id"] for c in cases] == [case["case_id"]]
        await assert_only_stored(w, {case["case_id"]})


# ---- bad bodies ---------------------------------------------------------------------------------


async def test_bad_bodies_are_problems_naming_the_fields_and_store_nothing(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        status, problem, h = await w.origin.call("POST", "/v1/cases", raw=b'{"request_id": ')
        assert_problem(status, problem, h, 400)
        for raw in (b"[]", b"null", b'"text"', b"{}"):
            status, problem, h = await w.origin.call("POST", "/v1/cases", raw=raw)
            assert_problem(status, problem, h, 422)

        wrong_types = medical_filing("ZJ-BAD-1", contract_version="one", applicant=5)
        status, wrong_problem, h = await w.origin.call("POST", "/v1/cases", wrong_types)
        assert_problem(status, wrong_problem, h, 422)

        missing = medical_filing("ZJ-BAD-2")
        del missing["request_id"], missing["item_code"]
        status, problem, h = await w.origin.call("POST", "/v1/cases", missing)
        assert_problem(status, problem, h, 422)
        assert sorted(locs(problem)) == [["item_code"], ["request_id"]]

        await assert_only_stored(w, set())
        # Each bad field named by its own path (not the union's internal tag).
        assert sorted(locs(wrong_problem)) == [["applicant"], ["contract_version"]], wrong_problem


async def test_payload_breaking_the_contract_names_payload_fields(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        good = medical_filing("ZJ-PAYLOAD-1")["payload"]
        no_start = {k: v for k, v in good.items() if k != "start_date"}
        cases: list[tuple[dict[str, Any], list[list[str | int]]]] = [
            ({**good, "filing_type": "99"}, [["payload", "filing_type"]]),
            ({**good, "insured_region": "990000"}, [["payload", "insured_region"]]),
            (no_start, [["payload", "start_date"]]),
            (
                {**no_start, "filing_type": "99", "insured_region": "990000"},
                [["payload", "filing_type"], ["payload", "insured_region"],
                 ["payload", "start_date"]],
            ),
        ]  # fmt: skip
        for payload, expected in cases:
            status, problem, h = await w.origin.call(
                "POST", "/v1/cases", medical_filing("ZJ-PAYLOAD-1", payload=payload)
            )
            assert_problem(status, problem, h, 422)
            assert sorted(locs(problem)) == expected, problem
        await assert_only_stored(w, set())


async def test_invalid_id_number_is_named_and_never_echoed(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        valid = citizen_id()
        wrong = valid[:17] + ("1" if valid[17] != "1" else "2")
        name = "欧阳测试"
        body = medical_filing(
            "ZJ-ID-1", applicant={"id_type": "111", "id_number": wrong, "name": name}
        )
        data = orjson.dumps(body)
        status, text, h = await raw_call(w, "POST", "/v1/cases", data,
                                         signed("POST", "/v1/cases", data))  # fmt: skip
        problem = orjson.loads(text)
        assert_problem(status, problem, h, 422)
        for secret in (wrong, name):
            assert secret not in text
            assert secret not in orjson.dumps(problem).decode()
        await assert_only_stored(w, set())
        assert locs(problem) == [["applicant", "id_number"]], problem


async def test_unknown_item_version_and_contradicting_route(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        for overrides in (
            {"item_code": "KSTB-NOPE-999"},
            {"contract_version": 99},
            {"contract_version": 2},  # a draft: not accepting cases
        ):
            status, problem, h = await w.origin.call(
                "POST", "/v1/cases", medical_filing("ZJ-404-1", **overrides)
            )
            assert_problem(status, problem, h, 404)
        status, problem, h = await w.origin.call(
            "POST", "/v1/cases", medical_filing("ZJ-ROUTE-1", handling_region="440000")
        )
        assert_problem(status, problem, h, 422)
        assert locs(problem) == [["handling_region"]]
        await assert_only_stored(w, set())


async def test_legal_person_applicant_is_accepted_with_a_valid_credit_code(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        status, case, _ = await w.origin.call(
            "POST", "/v1/cases", medical_filing("ZJ-LEGAL-1", applicant=legal_person(credit_code()))
        )
        assert status == 202, case
        await assert_only_stored(w, {case["case_id"]})


async def test_credit_code_with_a_wrong_check_character_is_refused(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        code = credit_code()
        wrong = code[:17] + ("1" if code[17] != "1" else "2")
        status, problem, h = await w.origin.call(
            "POST", "/v1/cases", medical_filing("ZJ-LEGAL-2", applicant=legal_person(wrong))
        )
        assert_problem(status, problem, h, 422)
        assert locs(problem) == [["applicant", "credit_code"]], problem
        await assert_only_stored(w, set())


async def test_wrong_content_type_is_415_and_stores_nothing(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        status, problem, h = await w.origin.call(
            "POST", "/v1/cases", medical_filing("ZJ-415-1"),
            headers={"Content-Type": "text/plain"},
        )  # fmt: skip
        assert_problem(status, problem, h, 415)
        await assert_only_stored(w, set())


async def test_body_over_the_limit_is_413(tmp_path: Path) -> None:
    async with world(tmp_path, max_body_bytes=2048) as w:
        big = medical_filing("ZJ-413-1")
        big["payload"]["residence_address"] = "杭州市" * 1000
        status, problem, h = await w.origin.call("POST", "/v1/cases", big)
        assert_problem(status, problem, h, 413)
        await assert_only_stored(w, set())


async def test_rate_limit_is_429_with_retry_after(tmp_path: Path) -> None:
    async with world(tmp_path, rate_limit_per_second=1, rate_limit_burst=2) as w:
        answers = [
            await w.origin.call("POST", "/v1/cases", medical_filing(f"ZJ-RATE-{i}"))
            for i in range(3)
        ]
        assert [a[0] for a in answers[:2]] == [202, 202]
        status, problem, h = answers[2]
        assert_problem(status, problem, h, 429)
        assert int(h["Retry-After"]) >= 1
        stored = {c["request_id"] for c in await stored_cases(w)}
        assert stored == {"ZJ-RATE-0", "ZJ-RATE-1"}


# ---- attachments --------------------------------------------------------------------------------


async def test_attachment_digest_must_match_its_content(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        content = "居住证明 330100-2026-001".encode()
        attachment = {
            "name": "residence.pdf",
            "media_type": "application/pdf",
            "sha256": hashlib.sha256(b"something else").hexdigest(),
            "content_base64": base64.b64encode(content).decode(),
        }
        status, problem, h = await w.origin.call(
            "POST", "/v1/cases", medical_filing("ZJ-ATT-1", attachments=[attachment])
        )
        assert_problem(status, problem, h, 422)
        assert locs(problem) == [["attachments", 0, "sha256"]]
        attachment["sha256"] = hashlib.sha256(content).hexdigest()
        status, case, _ = await w.origin.call(
            "POST", "/v1/cases", medical_filing("ZJ-ATT-1", attachments=[attachment])
        )
        assert status == 202, case
        await assert_only_stored(w, {case["case_id"]})


# ---- access -------------------------------------------------------------------------------------


async def test_who_may_read_and_withdraw_a_case(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        w.sims[HANDLER].set_down(True)  # keep the case open
        case_id = await submit(w, "ZJ-ACCESS-1")
        assert (await w.handler.case(case_id))["case_id"] == case_id
        status, case, _ = await w.origin.call(
            "GET", f"/v1/cases/{case_id}", sign=False, headers=OPS
        )
        assert status == 200 and case["case_id"] == case_id
        status, problem, h = await w.origin.call("GET", f"/v1/cases/{case_id}", sign=False)
        assert_problem(status, problem, h, 401)
        wrong_token = {"Authorization": "Bearer wrong"}
        status, problem, h = await w.origin.call(
            "GET", f"/v1/cases/{case_id}", sign=False, headers=wrong_token
        )
        assert_problem(status, problem, h, 401)
        missing = "C" + "0" * 26
        for who in (w.origin, w.handler):
            status, problem, h = await who.call("GET", f"/v1/cases/{missing}")
            assert_problem(status, problem, h, 404)
        status, listed, _ = await w.handler.call("GET", "/v1/cases")
        assert status == 200 and [c["case_id"] for c in listed["cases"]] == [case_id]
        # Only the origin may withdraw: for the handler the case does not exist.
        status, problem, h = await w.handler.call(
            "POST", f"/v1/cases/{case_id}/withdraw", {"reason": "not mine"}
        )
        assert_problem(status, problem, h, 404)
        assert (await w.origin.case(case_id))["status"] == "received"


# ---- listing ------------------------------------------------------------------------------------


async def test_listing_pages_newest_first_and_filters(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        w.sims[HANDLER].set_down(True)  # every case stays "received" until withdrawn
        ids = [await submit(w, f"ZJ-LIST-{i}") for i in range(5)]
        seen: list[dict[str, Any]] = []
        path = "/v1/cases?limit=2"
        for _ in range(10):
            status, page, _ = await w.origin.call("GET", path)
            assert status == 200, page
            assert len(page["cases"]) <= 2
            seen += page["cases"]
            if page["next"] is None:
                break
            path = f"/v1/cases?limit=2&cursor={page['next']}"
        else:
            raise AssertionError("pagination never ended")
        assert [c["case_id"] for c in seen] == ids[::-1]
        created = [c["created_at"] for c in seen]
        assert created == sorted(created, reverse=True)

        status, _, _ = await w.origin.call(
            "POST", f"/v1/cases/{ids[2]}/withdraw", {"reason": "申请人主动撤回"}
        )
        assert status == 200
        status, page, _ = await w.origin.call("GET", "/v1/cases?status=withdrawn")
        assert status == 200 and [c["case_id"] for c in page["cases"]] == [ids[2]]
        status, page, _ = await w.origin.call("GET", "/v1/cases?status=received")
        assert [c["case_id"] for c in page["cases"]] == [ids[4], ids[3], ids[1], ids[0]]
        status, page, _ = await w.origin.call("GET", "/v1/cases?item_code=KSTB-GA-001")
        assert status == 200 and page == {"cases": [], "next": None}
        status, page, _ = await w.handler.call("GET", "/v1/cases")
        assert [c["case_id"] for c in page["cases"]] == ids[::-1]

        status, problem, h = await w.origin.call("GET", "/v1/cases?status=done")
        assert_problem(status, problem, h, 422)
        assert locs(problem) == [["query", "status"]]
        status, problem, h = await w.origin.call("GET", "/v1/cases?limit=many")
        assert_problem(status, problem, h, 422)


# ---- the feed -----------------------------------------------------------------------------------


async def test_event_feed_pages_every_event_once_in_order(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        ids = [await submit(w, f"ZJ-FEED-{i}") for i in range(3)]
        for case_id in ids:

            async def done(c: str = case_id) -> bool:
                return bool((await w.origin.case(c))["status"] == "completed")

            await wait_for(done, what=f"{case_id} completed")
        histories = {c: (await w.origin.case(c))["history"] for c in ids}

        events: list[dict[str, Any]] = []
        path, cursor = "/v1/events?limit=3", ""
        for _ in range(50):
            status, page, _ = await w.origin.call("GET", path)
            assert status == 200, page
            assert len(page["events"]) <= 3
            if not page["events"]:
                assert page["next"] == cursor
                break
            events += page["events"]
            cursor = page["next"]
            path = f"/v1/events?limit=3&after={cursor}"
        else:
            raise AssertionError("the feed never ended")

        assert len({e["event_id"] for e in events}) == len(events)
        for case_id in ids:
            mine = [e for e in events if e["case_id"] == case_id]
            assert [e["seq"] for e in mine] == list(range(1, len(histories[case_id]) + 1))
            assert [e["event_id"] for e in mine] == [e["event_id"] for e in histories[case_id]]
            assert mine[-1]["status"] == "completed"
        assert {e["case_id"] for e in events} == set(ids)

        # Resuming after the last cursor: nothing new, the cursor stays put.
        status, page, _ = await w.origin.call("GET", f"/v1/events?after={cursor}")
        assert status == 200 and page == {"events": [], "next": cursor}
        # The handler sees the same cases' events in its own feed.
        status, page, _ = await w.handler.call("GET", "/v1/events?limit=500")
        assert {e["case_id"] for e in page["events"]} == set(ids)

        for bad in ("abc", "-1", "1.5"):
            status, problem, h = await w.origin.call("GET", f"/v1/events?after={bad}")
            assert_problem(status, problem, h, 422)
            assert locs(problem) == [["query", "after"]]


# ---- operational endpoints ----------------------------------------------------------------------


async def test_health_metrics_openapi_and_unknown_routes(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        case_id = await submit(w, "ZJ-OPS-1")

        async def done() -> bool:
            return bool((await w.origin.case(case_id))["status"] == "completed")

        await wait_for(done, what="case completed")

        status, body, _ = await w.origin.call("GET", "/healthz", sign=False)
        assert status == 200
        status, body, _ = await w.origin.call("GET", "/readyz", sign=False)
        assert status == 200 and body == {"ready": True}

        async with w.session.get(w.origin.base + "/metrics") as r:
            assert r.status == 200
            assert r.content_type == "text/plain"
            text = await r.text()
        assert "# TYPE tongban_cases_submitted_total counter" in text or (
            "# TYPE tongban_cases_submitted counter" in text
        )
        submitted = [
            line for line in text.splitlines() if line.startswith("tongban_cases_submitted_total{")
        ]
        assert submitted and float(submitted[0].rsplit(" ", 1)[1]) >= 1
        # The shipped calendar's last holiday notice, for an alert before the next year starts.
        assert 'tongban_store{what="calendar_last_year"} 2026.0' in text
        applicant = medical_filing("x")["applicant"]
        for secret in (applicant["id_number"], applicant["name"], applicant["phone"]):
            assert secret not in text

        status, doc, _ = await w.origin.call("GET", "/openapi.json", sign=False)
        assert status == 200
        assert str(doc["openapi"]).startswith("3.1")
        for path in ("/v1/cases", "/v1/cases/{case_id}", "/v1/events",
                     "/v1/partners/{region}/inbound"):  # fmt: skip
            assert path in doc["paths"], path
        assert "CaseSubmission" in doc["components"]["schemas"]
        assert "post" in doc["paths"]["/v1/cases"] and "get" in doc["paths"]["/v1/cases"]

        status, problem, h = await w.origin.call("GET", "/v1/nowhere", sign=False)
        assert_problem(status, problem, h, 404)
        status, problem, h = await w.origin.call("DELETE", "/v1/cases")
        assert_problem(status, problem, h, 405)
        assert "POST" in h.get("Allow", ""), "RFC 9110 §15.5.6: a 405 must carry Allow"


# ---- shutdown -----------------------------------------------------------------------------------


async def test_gateway_stops_when_work_arrives_as_it_is_told_to_stop(tmp_path: Path) -> None:
    """Found while running this file in parallel: world() teardown sometimes hung for good.

    The workers park in ``Signal.wait``; a wake-up in the same moment as the stop must not make
    a worker swallow its cancellation and loop on (``asyncio.wait_for`` on Python 3.11 does).
    """
    async with world(tmp_path) as w:
        case_id = await submit(w, "ZJ-STOP-1")

        async def idle() -> bool:
            c = await w.origin.case(case_id)
            return bool(c["status"] == "completed") and all(
                d["waiting"] == 0 for d in c["deliveries"]
            )

        await wait_for(idle, what="case completed and delivered")
        w.gateway.deliverer.wake()
        w.gateway.dispatcher.wake()
        stop = asyncio.create_task(w.gateway.supervisor.stop())
        done, _ = await asyncio.wait({stop}, timeout=5)
        stuck = sorted(
            t.get_name()
            for t in asyncio.all_tasks()
            if t.get_name() in ("dispatcher", "deliverer") and not t.done()
        )
        if stop not in done:  # cancel once more so that the world can be torn down
            for t in asyncio.all_tasks():
                if t.get_name() in ("dispatcher", "deliverer"):
                    t.cancel()
            await asyncio.wait_for(stop, 5)
        assert stuck == [], f"workers ignored their cancellation: {stuck}"
