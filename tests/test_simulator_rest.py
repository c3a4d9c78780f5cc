"""The province simulator over real loopback HTTP: both roles, control, chaos and shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from adapters.rest_json import RestJsonAdapter, RestJsonSettings
from adapters.sdk import Accepted, AdapterContext, CanonicalCase, Permanent, Retryable
from gateway.clock import SystemClock
from gateway.signing import NonceCache, SignatureError, SignedRequest, sign_headers, verify
from gateway.simulators.rest import ProvinceSimulator, SimulatorSettings

REGION = "510000"
KEY_ID, SECRET = "sc-key-1", "sc-secret-for-tests"
CALLBACK_SECRET = "callback-secret-for-tests"


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], deadline_s: float = 10.0, what: str = "condition"
) -> None:
    """Poll every 20 ms until ``check`` holds, failing after a generous deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class FakeGateway:
    """The gateway's inbound endpoint: verifies the signature, parses with the real adapter."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.failed = 0
        self.unauthorized = 0
        self.messages: list[list[dict[str, Any]]] = []
        self.nonces = NonceCache()
        self.adapter = RestJsonAdapter(RestJsonSettings(base_url="http://unused"))
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/v1/partners/{region}/inbound", self.inbound)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.port = int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def inbound(self, request: web.Request) -> web.Response:
        body = await request.read()
        signed = SignedRequest(request.method, request.raw_path, request.headers, body)
        try:
            verify(signed, {KEY_ID: SECRET}, self.nonces, time.time())
        except SignatureError:
            self.unauthorized += 1
            return web.Response(status=401)
        assert request.match_info["region"] == REGION
        if self.failed < self.fail_first:
            self.failed += 1
            return web.Response(status=503)
        self.adapter.parse_inbound(body, request.headers)  # must be well-formed for the adapter
        self.messages.append(orjson.loads(body)["reports"])
        return web.json_response({"ok": True})

    @property
    def reports(self) -> list[dict[str, Any]]:
        return [r for m in self.messages for r in m]

    def codes(self, case_id: str) -> list[str]:
        """Status codes received for a case, duplicates (same eventId) removed."""
        seen: set[str] = set()
        out = []
        for r in self.reports:
            if r["caseId"] == case_id and r["eventId"] not in seen:
                seen.add(r["eventId"])
                out.append(r["statusCode"])
        return out


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    gw = FakeGateway()
    await gw.start()
    yield gw
    await gw.stop()


SimFactory = Callable[..., Awaitable[ProvinceSimulator]]


@pytest.fixture
async def make_sim(gateway: FakeGateway) -> AsyncIterator[SimFactory]:
    sims: list[ProvinceSimulator] = []

    async def make(**overrides: Any) -> ProvinceSimulator:
        fields: dict[str, Any] = {
            "region": REGION,
            "gateway_url": gateway.url,
            "key_id": KEY_ID,
            "secret": SECRET,
            "callback_secret": CALLBACK_SECRET,
            "latency": 0.01,
            "report_batch_window": 0.02,
            "retry_backoff": 0.05,
            "retry_backoff_max": 0.5,
            "request_timeout": 5.0,
        }
        fields.update(overrides)
        sim = ProvinceSimulator(SimulatorSettings(**fields))
        await sim.start()
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        await sim.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def canonical(case_id: str, **payload: Any) -> CanonicalCase:
    return CanonicalCase(
        case_id=case_id,
        request_id=f"ZJ-{case_id}",
        item_code="KSTB-YB-001",
        contract_version=1,
        origin_region="330000",
        handling_region=REGION,
        applicant={"id_type": "111", "id_number": "11010519491231002X", "name": "张三"},
        payload={"insured_region": "330100", **payload},
    )


def adapter_for(sim: ProvinceSimulator) -> RestJsonAdapter:
    return RestJsonAdapter(RestJsonSettings(base_url=sim.url))


def ctx(session: aiohttp.ClientSession) -> AdapterContext:
    return AdapterContext(REGION, session, SystemClock(), logging.getLogger("test"))


async def post(
    session: aiohttp.ClientSession, url: str, body: Any = None, *, raw: bytes | None = None
) -> tuple[int, Any]:
    data = raw if raw is not None else orjson.dumps(body)
    async with session.post(url, data=data) as resp:
        payload = await resp.read()
        return resp.status, orjson.loads(payload) if payload else None


async def get(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        assert resp.status == 200
        return orjson.loads(await resp.read())


async def submit(
    sim: ProvinceSimulator, session: aiohttp.ClientSession, case_id: str, **payload: Any
) -> str:
    body = adapter_for(sim).render(canonical(case_id, **payload))
    status, answer = await post(session, f"{sim.url}/cases", body)
    assert status == 200, answer
    assert answer["code"] == "0"
    ticket: str = answer["ticket"]
    return ticket


# ---- role 1: handling partner ------------------------------------------------------------------


async def test_submit_answers_a_ticket_and_is_idempotent_by_case_id(
    make_sim: SimFactory, gateway: FakeGateway, session: aiohttp.ClientSession
) -> None:
    sim = await make_sim(latency=0.05)
    adapter = adapter_for(sim)
    first = await adapter.submit(canonical("C-1"), ctx(session))
    assert isinstance(first, Accepted)
    assert first.partner_ref and first.partner_ref.startswith("SC2")
    assert [u.status for u in first.updates] == ["dispatched"]

    again = await adapter.submit(canonical("C-1"), ctx(session))
    assert isinstance(again, Accepted) and again.partner_ref == first.partner_ref
    other = await adapter.submit(canonical("C-2"), ctx(session))
    assert isinstance(other, Accepted) and other.partner_ref != first.partner_ref

    await eventually(lambda: gateway.codes("C-1") == ["3", "8", "11"], what="C-1 completed")
    control = await get(session, f"{sim.url}/_control")
    assert control["submits"] == 2
    assert control["submit_repeats"] == 1
    # Processing was not restarted by the repeat: exactly one report per step.
    assert len([r for r in gateway.reports if r["caseId"] == "C-1"]) == 3


async def test_reports_arrive_signed_and_in_order(
    make_sim: SimFactory, gateway: FakeGateway, session: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    ticket = await submit(sim, session, "C-ORDER")
    await eventually(lambda: len(gateway.codes("C-ORDER")) == 3, what="three reports")

    assert gateway.unauthorized == 0
    reports = [r for r in gateway.reports if r["caseId"] == "C-ORDER"]
    assert [r["statusCode"] for r in reports] == ["3", "8", "11"]
    assert {r["ticket"] for r in reports} == {ticket}
    assert len({r["eventId"] for r in reports}) == 3
    final = reports[-1]
    assert final["outcome"] == "approved"
    assert final["result"]["handling_region"] == REGION
    assert final["result"]["decision_no"]
    assert final["result"]["decided_at"].endswith("Z")

    updates = gateway.adapter.parse_inbound(orjson.dumps({"reports": reports}), {})
    assert [u.status for u in updates] == ["accepted", "in_progress", "completed"]
    assert updates[-1].outcome == "approved"
    control = await get(session, f"{sim.url}/_control")
    assert control["reports_sent"] == 3


async def test_deny_rate_yields_denied_outcomes(
    make_sim: SimFactory, gateway: FakeGateway, session: aiohttp.ClientSession
) -> None:
    sim = await make_sim(deny_rate=1.0)
    await submit(sim, session, "C-DENY")
    await eventually(lambda: gateway.codes("C-DENY") == ["3", "8", "11"], what="completion")
    assert gateway.reports[-1]["outcome"] == "denied"


async def test_reports_due_together_are_batched(
    make_sim: SimFactory, gateway: FakeGateway, session: aiohttp.ClientSession
) -> None:
    sim = await make_sim(latency=0.05, report_batch_window=0.1)
    case_ids = [f"C-BATCH-{i}" for i in range(20)]
    await asyncio.gather(*(submit(sim, session, c) for c in case_ids))
    await eventually(lambda: len(gateway.reports) == 60, what="all reports")
    assert len(gateway.messages) < 60
    assert all(len(m) <= 200 for m in gateway.messages)
    for case_id in case_ids:
        assert gateway.codes(case_id) == ["3", "8", "11"]


async def test_a_gateway_answering_503_still_gets_every_report(
    make_sim: SimFactory, gateway: FakeGateway, session: aiohttp.ClientSession
) -> None:
    gateway.fail_first = 4
    sim = await make_sim()
    case_ids = [f"C-RETRY-{i}" for i in range(5)]
    for case_id in case_ids:
        await submit(sim, session, case_id)
    await eventually(lambda: len(gateway.codes(case_ids[-1])) == 3, what="all reports")
    assert gateway.failed == 4
    for case_id in case_ids:
        assert gateway.codes(case_id) == ["3", "8", "11"]
    control = await get(session, f"{sim.url}/_control")
    assert control["send_failures"] >= 4
    assert control["reports_pending"] == 0


async def test_an_unreachable_gateway_gets_every_report_once_back(
    make_sim: SimFactory, gateway: FakeGateway, session: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    port = gateway.port
    await gateway.stop()
    await submit(sim, session, "C-UNREACH")

    async def failing() -> bool:
        return bool((await get(session, f"{sim.url}/_control"))["send_failures"] >= 2)

    await eventually(failing, what="failed sends")
    await gateway.start(port)
    await eventually(lambda: gateway.codes("C-UNREACH") == ["3", "8", "11"], what="recovery")


async def test_simulate_reject_reports_rejected_and_stops(
    make_sim: SimFactory, gateway: FakeGateway, session: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    await submit(sim, session, "C-REJ", _simulate="reject")
    await submit(sim, session, "C-SENTINEL")
    await eventually(lambda: len(gateway.codes("C-SENTINEL")) == 3, what="sentinel")
    assert gateway.codes("C-REJ") == ["4"]
    (report,) = [r for r in gateway.reports if r["caseId"] == "C-REJ"]
    assert report["message"]
    (update,) = gateway.adapter.parse_inbound(orjson.dumps({"reports": [report]}), {})
    assert update.status == "rejected" and update.data["message"] == report["message"]


async def test_simulate_supplement_waits_for_the_material(
    make_sim: SimFactory, gateway: FakeGateway, session: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    ticket = await submit(sim, session, "C-SUP", _simulate="supplement")
    await eventually(lambda: gateway.codes("C-SUP") == ["3", "6"], what="supplement request")
    sup = next(r for r in gateway.reports if r["statusCode"] == "6")
    assert sup["message"].startswith("请补充")

    # It waits: a case submitted later completes while this one stays at "6".
    await submit(sim, session, "C-SENTINEL")
    await eventually(lambda: len(gateway.codes("C-SENTINEL")) == 3, what="sentinel")
    assert gateway.codes("C-SUP") == ["3", "6"]

    # A supplement to a case that never asked for one is refused.
    other = next(r["ticket"] for r in gateway.reports if r["caseId"] == "C-SENTINEL")
    status, answer = await post(session, f"{sim.url}/cases/{other}/supplements", {})
    assert status == 409 and answer["code"] == "E409"

    adapter = adapter_for(sim)
    case = dataclasses.replace(canonical("C-SUP"), partner_ref=ticket)
    outcome = await adapter.supplement(case, {"files": ["hukou.pdf"]}, ctx(session))
    assert isinstance(outcome, Accepted)
    await eventually(lambda: gateway.codes("C-SUP") == ["3", "6", "8", "11"], what="completion")


async def test_withdraw_stops_further_reports(
    make_sim: SimFactory, gateway: FakeGateway, session: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    ticket = await submit(sim, session, "C-WD", _simulate="supplement")
    await eventually(lambda: gateway.codes("C-WD") == ["3", "6"], what="supplement request")
    status, answer = await post(session, f"{sim.url}/cases/{ticket}/withdraw", {"reason": "x"})
    assert (status, answer) == (200, {"code": "0"})
    # Repeat is fine; a supplement after withdrawal is refused.
    assert (await post(session, f"{sim.url}/cases/{ticket}/withdraw", {}))[0] == 200
    status, _ = await post(session, f"{sim.url}/cases/{ticket}/supplements", {})
    assert status == 409

    await submit(sim, session, "C-SENTINEL")
    await eventually(lambda: len(gateway.codes("C-SENTINEL")) == 3, what="sentinel")
    assert gateway.codes("C-WD") == ["3", "6"]

    # Unknown tickets are a permanent refusal for the adapter.
    status, answer = await post(session, f"{sim.url}/cases/NOPE/withdraw", {})
    assert status == 404 and answer["code"] == "E404"
    case = dataclasses.replace(canonical("C-X"), partner_ref="NOPE")
    assert isinstance(await adapter_for(sim).withdraw(case, "r", ctx(session)), Permanent)


async def test_withdraw_by_case_id_in_flight(
    make_sim: SimFactory, gateway: FakeGateway, session: aiohttp.ClientSession
) -> None:
    sim = await make_sim(latency=0.3)
    await submit(sim, session, "C-WD2")
    status, _ = await post(session, f"{sim.url}/cases/C-WD2/withdraw", {})
    assert status == 200
    await submit(sim, session, "C-SENTINEL")
    await eventually(lambda: len(gateway.codes("C-SENTINEL")) == 3, what="sentinel")
    assert gateway.codes("C-WD2") == []


async def test_bad_submit_bodies_get_400(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    status, answer = await post(session, f"{sim.url}/cases", raw=b"{not json")
    assert status == 400 and answer["code"] == "E400" and answer["msg"]
    status, answer = await post(session, f"{sim.url}/cases", {"requestId": "r"})
    assert status == 400 and answer["code"] == "E400"
    status, _ = await post(session, f"{sim.url}/cases", [1, 2])
    assert status == 400
    status, _ = await post(session, f"{sim.url}/cases", {"caseId": "C", "form": "x"})
    assert status == 400


async def test_failure_rate_answers_503_and_forgets(
    make_sim: SimFactory, gateway: FakeGateway, session: aiohttp.ClientSession
) -> None:
    sim = await make_sim(failure_rate=1.0)
    outcome = await adapter_for(sim).submit(canonical("C-FAIL"), ctx(session))
    assert isinstance(outcome, Retryable)
    status, answer = await post(
        session, f"{sim.url}/cases", adapter_for(sim).render(canonical("C-FAIL"))
    )
    assert (status, answer) == (503, {"code": "503", "msg": "系统繁忙"})
    control = await get(session, f"{sim.url}/_control")
    assert control["submits"] == 0 and control["cases"] == 0

    status, control = await post(session, f"{sim.url}/_control", {"failure_rate": 0})
    assert status == 200 and control["failure_rate"] == 0
    await submit(sim, session, "C-FAIL")
    await eventually(lambda: gateway.codes("C-FAIL") == ["3", "8", "11"], what="completion")


async def test_control_validates_and_changes_latency(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    status, _ = await post(session, f"{sim.url}/_control", {"failure_rate": 2})
    assert status == 400
    status, _ = await post(session, f"{sim.url}/_control", {"down": "yes"})
    assert status == 400
    status, control = await post(session, f"{sim.url}/_control", {"latency": 0.2})
    assert status == 200 and control["latency"] == 0.2
    assert sim.settings.latency == 0.2


async def test_answer_delay_holds_the_answer_to_a_submission(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    status, control = await post(session, f"{sim.url}/_control", {"answer_delay": 0.3})
    assert status == 200 and control["answer_delay"] == 0.3
    assert (await post(session, f"{sim.url}/_control", {"answer_delay": -1}))[0] == 400
    body = adapter_for(sim).render(canonical("C-SLOW"))
    started = asyncio.get_running_loop().time()
    assert (await post(session, f"{sim.url}/cases", body))[0] == 200
    assert asyncio.get_running_loop().time() - started >= 0.3  # never less: a lower bound


async def test_down_mode_answers_503_and_holds_reports(
    make_sim: SimFactory, gateway: FakeGateway, session: aiohttp.ClientSession
) -> None:
    sim = await make_sim(latency=0.2)
    await submit(sim, session, "C-DOWN")
    status, control = await post(session, f"{sim.url}/_control", {"down": True})
    assert status == 200 and control["down"] is True

    body = adapter_for(sim).render(canonical("C-OTHER"))
    assert (await post(session, f"{sim.url}/cases", body))[0] == 503
    assert (await post(session, f"{sim.url}/cases/C-DOWN/withdraw", {}))[0] == 503
    event = {"event_id": "E1", "case_id": "C9", "seq": 1, "status": "accepted"}
    assert (await signed_post(session, sim, event))[0] == 503
    state = await get(session, f"{sim.url}/events/state")
    assert state["total"] == 0

    async def queued() -> bool:
        return bool((await get(session, f"{sim.url}/_control"))["reports_pending"] == 3)

    await eventually(queued, what="reports held while down")
    assert gateway.codes("C-DOWN") == []

    await post(session, f"{sim.url}/_control", {"down": False})
    await eventually(lambda: gateway.codes("C-DOWN") == ["3", "8", "11"], what="reports sent")
    await submit(sim, session, "C-OTHER")


async def test_duplicate_rate_sends_reports_twice_with_the_same_event_id(
    make_sim: SimFactory, gateway: FakeGateway, session: aiohttp.ClientSession
) -> None:
    sim = await make_sim(duplicate_rate=1.0)
    await submit(sim, session, "C-DUP")
    await eventually(
        lambda: len([r for r in gateway.reports if r["caseId"] == "C-DUP"]) == 6,
        what="duplicated reports",
    )
    assert gateway.codes("C-DUP") == ["3", "8", "11"]


async def test_report_loop_restarts_after_a_crash(
    make_sim: SimFactory,
    gateway: FakeGateway,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = await make_sim()
    real = sim._encode_reports
    crashes = 0

    def flaky(batch: list[dict[str, Any]]) -> bytes:
        nonlocal crashes
        if crashes == 0:
            crashes += 1
            raise RuntimeError("boom")
        return real(batch)

    monkeypatch.setattr(sim, "_encode_reports", flaky)
    with caplog.at_level(logging.ERROR, logger="gateway.simulators.rest"):
        await submit(sim, session, "C-CRASH")
        await eventually(lambda: gateway.codes("C-CRASH") == ["3", "8", "11"], what="reports")
    assert crashes == 1
    assert "report loop crashed" in caplog.text
    assert (await get(session, f"{sim.url}/_control"))["report_loop_restarts"] == 1


async def test_stop_ends_every_background_task(
    gateway: FakeGateway, session: aiohttp.ClientSession
) -> None:
    port = gateway.port
    await gateway.stop()  # the sender is stuck retrying
    sim = ProvinceSimulator(
        SimulatorSettings(
            region=REGION,
            gateway_url=f"http://127.0.0.1:{port}",
            key_id=KEY_ID,
            secret=SECRET,
            latency=0.01,
            retry_backoff=0.05,
        )
    )
    await sim.start()
    await submit(sim, session, "C-STOP-1", _simulate="supplement")  # will wait forever
    await submit(sim, session, "C-STOP-2")

    def sim_tasks() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if t.get_name().startswith("sim-")]

    assert sim_tasks()
    await asyncio.wait_for(sim.stop(), 10)
    assert sim_tasks() == []
    with pytest.raises(RuntimeError):
        _ = sim.url


# ---- role 2: event receiver --------------------------------------------------------------------


async def signed_post(
    session: aiohttp.ClientSession,
    sim: ProvinceSimulator,
    body: Any,
    *,
    secret: str = CALLBACK_SECRET,
    key_id: str = "cb-key-7",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    raw = orjson.dumps(body)
    signed = (
        headers if headers is not None else sign_headers(key_id, secret, "POST", "/events", raw)
    )
    async with session.post(f"{sim.url}/events", data=raw, headers=signed) as resp:
        return resp.status, orjson.loads(await resp.read())


def ev(case_id: str, seq: int, status: str = "accepted", **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"{case_id}-{seq}",
        "case_id": case_id,
        "seq": seq,
        "status": status,
        "outcome": None,
        "at": "2026-11-21T10:00:00Z",
        **extra,
    }


async def test_receiver_rejects_bad_signatures(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    status, answer = await signed_post(session, sim, ev("A", 1), secret="wrong")
    assert status == 401 and answer["code"] == "E401"
    status, _ = await signed_post(session, sim, ev("A", 1), headers={})
    assert status == 401
    assert sim.events == {}

    raw = orjson.dumps(ev("A", 1))
    headers = sign_headers("k", CALLBACK_SECRET, "POST", "/events", raw)
    async with session.post(f"{sim.url}/events", data=raw, headers=headers) as resp:
        assert resp.status == 200
    async with session.post(f"{sim.url}/events", data=raw, headers=headers) as resp:
        assert resp.status == 401  # replayed nonce
    assert len(sim.events["A"]) == 1


async def test_receiver_records_dedupes_and_counts_out_of_order(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    assert await signed_post(session, sim, ev("A", 1)) == (200, {"received": 1})
    batch = [ev("A", 2, "in_progress"), ev("B", 1), ev("A", 2, "in_progress"), ev("B", 3)]
    assert await signed_post(session, sim, batch) == (200, {"received": 4})
    # B's seq 2 arrives late (out of order); a redelivered A-1 is a duplicate, not disorder.
    assert (await signed_post(session, sim, [ev("B", 2), ev("A", 1)]))[0] == 200
    done = ev("A", 3, "completed", outcome="approved")
    assert (await signed_post(session, sim, done))[0] == 200

    assert [e["seq"] for e in sim.events["A"]] == [1, 2, 3]
    assert [e["seq"] for e in sim.events["B"]] == [1, 3, 2]
    assert sim.out_of_order == 2  # B-3 skipped B-2, then B-2 came after B-3
    state = await get(session, f"{sim.url}/events/state")
    assert state["duplicates"] == 2
    assert state["out_of_order"] == 2
    assert state["total"] == 6
    assert state["cases"]["A"][-1] == {
        "seq": 3,
        "status": "completed",
        "outcome": "approved",
        "event_id": "A-3",
    }

    status, answer = await signed_post(session, sim, {"case_id": "A", "seq": 4})
    assert status == 400 and answer["code"] == "E400"


async def test_receiver_without_a_callback_secret_accepts_unsigned(
    make_sim: SimFactory, session: aiohttp.ClientSession
) -> None:
    sim = await make_sim(callback_secret=None)
    status, answer = await post(session, f"{sim.url}/events", ev("U", 1))
    assert (status, answer) == (200, {"received": 1})
    assert list(sim.events) == ["U"]


def test_the_service_window_opens_on_weekdays_in_beijing_time() -> None:
    from datetime import datetime, timedelta, timezone

    from gateway.simulators.rest import closed_for

    bj = timezone(timedelta(hours=8))
    friday_evening = datetime(2026, 11, 20, 20, 0, tzinfo=bj).timestamp()
    monday_morning = datetime(2026, 11, 23, 9, 0, tzinfo=bj).timestamp()
    assert closed_for(friday_evening, (9, 17)) == monday_morning - friday_evening
    assert closed_for(datetime(2026, 11, 23, 10, 30, tzinfo=bj).timestamp(), (9, 17)) == 0.0
    early = datetime(2026, 11, 24, 7, 0, tzinfo=bj).timestamp()
    assert closed_for(early, (9, 17)) == 2 * 3600


async def test_outside_office_hours_the_gateway_waits_and_the_case_goes_through(
    tmp_path: Path,
) -> None:
    from tests.support import HANDLER, medical_filing, wait_for, world

    async with world(tmp_path) as w:
        sim = w.sims[HANDLER]
        now = [1_800_000_000.0]  # a Friday, 16:00 in Beijing: closed at 16:00 for this test
        sim.settings.office_hours = (9, 10)
        sim.settings.clock = lambda: now[0]
        status, case, _ = await w.origin.call("POST", "/v1/cases", medical_filing("ZJ-OH-1"))
        assert status == 202
        await wait_for(lambda: sim.counters.get("closed_window", 0) >= 1, what="a closed window")
        assert sim.counters["submits"] == 0
        c = await w.origin.case(case["case_id"])
        assert c["status"] == "received"  # waiting, not failed
        sim.settings.office_hours = None  # the window opens

        async def completed() -> bool:
            return bool((await w.origin.case(case["case_id"]))["status"] == "completed")

        await wait_for(completed, what="the case completed once the window opened")
