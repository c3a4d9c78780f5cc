"""The ``async_ticket`` adapter: a ticket at once, the result later by callback or by polling.

Unit level against the ticket simulator and small partner doubles on loopback, then end to end
through a real Gateway (poll, callback, both; duplicates and out-of-order reports; a partner that
goes down and comes back).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from adapters.async_ticket import (
    DECISION_REPEAT_SECONDS,
    DEFAULT_STATUS_CODES,
    AsyncTicketAdapter,
    AsyncTicketSettings,
    sign,
)
from adapters.sdk import (
    Accepted,
    Adapter,
    AdapterContext,
    CanonicalCase,
    Permanent,
    PollingAdapter,
    Retryable,
    StatusUpdate,
    build,
    discover,
)
from gateway.app import Gateway, build_adapters
from gateway.clock import Clock, ManualClock, SystemClock
from gateway.config import ConfigError
from gateway.identifiers import id_check_char
from gateway.simulators.rest import ProvinceSimulator, SimulatorSettings
from gateway.simulators.ticket import TicketProvinceSimulator, TicketSimulatorSettings
from tests.support import (
    HANDLER,
    HUB_SECRET,
    KEYS,
    OPERATOR_TOKEN,
    ORIGIN,
    Client,
    free_port,
    gateway_config,
    medical_filing,
    simulator,
    wait_for,
)

APP_KEY, APP_SECRET = "sc-ticket-app-01", "sc-ticket-app-secret-01"
ID_NUMBER = "51010519800101003" + id_check_char("51010519800101003")
NAME = "欧阳娜娜"
PHONE = "13912345678"
SENSITIVE = (ID_NUMBER, ID_NUMBER[:17], NAME, PHONE)
LIFECYCLE = ["received", "dispatched", "accepted", "in_progress", "completed"]

CASE = CanonicalCase(
    case_id="C01TICKETTEST0000000000001",
    request_id="ZJ-20261121-000123",
    item_code="KSTB-YB-001",
    contract_version=1,
    origin_region=ORIGIN,
    handling_region=HANDLER,
    applicant={"id_type": "111", "id_number": ID_NUMBER, "name": NAME, "phone": PHONE},
    payload={"insured_region": "510100", "start_date": "2026-12-01"},
)


def settings(**kw: Any) -> AsyncTicketSettings:
    base = {"base_url": "http://127.0.0.1:9", "app_key": APP_KEY, "app_secret": APP_SECRET}
    return AsyncTicketSettings.model_validate({**base, **kw})


def adapter(**kw: Any) -> AsyncTicketAdapter:
    return AsyncTicketAdapter(settings(**kw))


def body(obj: object) -> bytes:
    return orjson.dumps(obj)


def case(case_id: str, ticket: str | None, request_id: str = "ZJ-1") -> CanonicalCase:
    return CanonicalCase(
        case_id=case_id, request_id=request_id, item_code="KSTB-YB-001", contract_version=1,
        origin_region=ORIGIN, handling_region=HANDLER, applicant=CASE.applicant,
        payload=CASE.payload, partner_ref=ticket,
    )  # fmt: skip


@asynccontextmanager
async def context(limit: float = 5.0, clock: Clock | None = None) -> AsyncIterator[AdapterContext]:
    """What the gateway hands an adapter: a session, a clock, a logger and a call time limit."""
    async with aiohttp.ClientSession() as session:
        logger = logging.getLogger(f"tongban.adapter.{HANDLER}")
        yield AdapterContext(HANDLER, session, clock or SystemClock(), logger, limit)


@asynccontextmanager
async def ticket_sim(**kw: Any) -> AsyncIterator[TicketProvinceSimulator]:
    sim = TicketProvinceSimulator(
        TicketSimulatorSettings(
            region=HANDLER, app_key=APP_KEY, app_secret=APP_SECRET, **{"latency": 0.02, **kw}
        ),
        rng=random.Random(1),
    )
    await sim.start("127.0.0.1", 0)
    try:
        yield sim
    finally:
        await sim.stop()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def double(handler: Handler) -> AsyncIterator[str]:
    """A partner double on loopback that sends every request to ``handler``; yields its URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def answer(obj: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=body(obj), status=status, headers=headers,
                        content_type="application/json")  # fmt: skip


# ---- settings -----------------------------------------------------------------------------------


def test_defaults_follow_the_domain_status_table() -> None:
    s = settings()
    assert s.status_codes == {
        "1": "dispatched", "3": "accepted", "4": "rejected",
        "6": "supplement_required", "8": "in_progress", "11": "completed",
    }  # fmt: skip
    assert s.status_codes == DEFAULT_STATUS_CODES
    assert (s.mode, s.poll_interval, s.poll_concurrency) == ("both", 30.0, 8)
    assert adapter(poll_interval=2.5).poll_interval == 2.5


@pytest.mark.parametrize(
    "bad",
    [
        {"status_path": "/tickets/status"},
        {"status_path": "/tickets/{ticket}/{other}"},
        {"withdraw_path": "tickets/{ticket}/withdraw"},
        {"supplement_path": "/tickets/{ticket"},
        {"status_codes": {"11": "completd"}},
        {"status_codes": {"9": "withdrawn"}},
        {"status_codes": {}},
        {"mode": "push"},
        {"poll_interval": 0},
        {"poll_concurrency": 0},
        {"approved_values": ["1"], "denied_values": ["1"]},
        {"ok_codes": ["0"], "busy_codes": ["0"]},
        {"sign_header": "X-App-Key"},
        {"base_url": "ftp://x"},
        {"app_secret": "short"},
        {"colour": "blue"},
    ],
    ids=str,
)
def test_bad_settings_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        settings(**bad)


def test_built_through_the_sdk_as_a_polling_adapter() -> None:
    table = {"kind": "async_ticket", "base_url": "http://127.0.0.1:9", "app_key": APP_KEY,
             "app_secret": APP_SECRET, "poll_interval": 5}  # fmt: skip
    built = build(table, {**discover(), "async_ticket": AsyncTicketAdapter})
    assert isinstance(built, AsyncTicketAdapter)
    assert isinstance(built, Adapter) and isinstance(built, PollingAdapter)
    assert built.poll_interval == 5.0


def test_signature_is_sha256_of_key_secret_and_timestamp() -> None:
    expected = hashlib.sha256(f"{APP_KEY}{APP_SECRET}1800000000".encode()).hexdigest()
    assert sign(APP_KEY, APP_SECRET, "1800000000") == expected
    headers = adapter().auth_headers(1_800_000_000.7)
    assert headers == {"X-App-Key": APP_KEY, "X-Timestamp": "1800000000", "X-Sign": expected}
    custom = adapter(key_header="AppId", timestamp_header="Ts", sign_header="Signature")
    assert set(custom.auth_headers(1.0)) == {"AppId", "Ts", "Signature"}


def test_render_sends_the_case_id_as_the_external_reference() -> None:
    rendered = adapter().render(CASE)
    assert rendered["caseId"] == CASE.case_id
    assert rendered["form"] == dict(CASE.payload)
    assert orjson.loads(body(rendered))["applicant"]["name"] == NAME


# ---- classify -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw", [body({"code": "0", "ticket": "T"}), body({"code": 0}), body({}), b""], ids=str
)
def test_ok_answers_give_the_answer(raw: bytes) -> None:
    assert isinstance(adapter().classify(200, raw, None), dict)


@pytest.mark.parametrize("code", ["BUSY", "429", "503", 503])
def test_busy_code_under_200_is_retryable(code: object) -> None:
    outcome = adapter().classify(200, body({"code": code, "msg": "系统繁忙"}), None)
    assert isinstance(outcome, Retryable)


def test_unknown_code_under_200_is_permanent_and_names_the_code() -> None:
    outcome = adapter().classify(200, body({"code": "E1001", "msg": "材料不全"}), None)
    assert outcome == Permanent("refused (code E1001)")


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_5xx_and_429_are_retryable(status: int) -> None:
    outcome = adapter().classify(status, body({"code": "E1"}), None)
    assert outcome == Retryable(f"HTTP {status}", None)


@pytest.mark.parametrize(
    ("header", "delay"),
    [("30", 30.0), ("0", 0.0), ("Wed, 21 Oct 2026 07:28:00 GMT", None), ("-5", None),
     ("1.5", None), ("", None), ("²", None), ("３０", None)],
)  # fmt: skip
@pytest.mark.parametrize("status", [503, 429])
def test_numeric_retry_after_is_honoured(status: int, header: str, delay: float | None) -> None:
    outcome = adapter().classify(status, b"", header)
    assert isinstance(outcome, Retryable)
    assert outcome.retry_after == delay


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422, 302])
def test_other_http_errors_are_permanent(status: int) -> None:
    outcome = adapter().classify(status, body({"code": "E400"}), None)
    assert isinstance(outcome, Permanent)
    assert f"HTTP {status}" in outcome.reason


@pytest.mark.parametrize("raw", [b"<html>maintenance</html>", body([1, 2]), body("ok")])
def test_a_body_that_is_not_a_json_object_is_retryable(raw: bytes) -> None:
    assert isinstance(adapter().classify(200, raw, None), Retryable)


ECHOES: list[tuple[int, bytes]] = [
    (200, body({"code": "E1001", "msg": f"身份证号{ID_NUMBER}与姓名{NAME}不匹配"})),
    (200, body({"code": f"身份证号{ID_NUMBER}校验失败"})),
    (200, body({"code": {"name": NAME, "idNumber": ID_NUMBER}})),
    (200, body({"code": "BUSY", "msg": f"{NAME} {PHONE}"})),
    (400, body({"code": f"{NAME}", "msg": ID_NUMBER})),
    (401, f"bad {NAME} {ID_NUMBER}".encode()),
    (500, body({"code": "E500", "msg": ID_NUMBER})),
    (200, f"<html>{NAME} {ID_NUMBER}</html>".encode()),
    (200, body([ID_NUMBER, NAME])),
]


@pytest.mark.parametrize(("status", "raw"), ECHOES, ids=[f"echo{i}" for i in range(len(ECHOES))])
def test_reasons_never_carry_the_applicant(status: int, raw: bytes) -> None:
    outcome = adapter().classify(status, raw, None)
    assert isinstance(outcome, Permanent | Retryable)
    for value in SENSITIVE:
        assert value not in outcome.reason


# ---- parse_inbound ------------------------------------------------------------------------------


def test_parse_inbound_one_notice_and_a_list() -> None:
    a = adapter()
    one = a.parse_inbound(body({"ticket": "SL51-1", "caseId": "C-1", "statusCode": "3",
                                "eventId": "SL51-1-02"}), {})  # fmt: skip
    assert one == [StatusUpdate("accepted", case_id="C-1", partner_ref="SL51-1",
                                partner_event_id="SL51-1-02")]  # fmt: skip
    many = a.parse_inbound(body([
        {"ticket": "SL51-1", "statusCode": 8},
        {"ticket": "SL51-1", "statusCode": "11", "outcome": "准予",
         "result": {"decision_no": "川通办决字〔2026〕000001号"}},
        {"ticket": 12345, "statusCode": "11", "outcome": "2"},
        {"caseId": "C-3", "statusCode": "4", "message": "不予受理" * 300},
        {"ticket": "SL51-4", "statusCode": "6", "message": "请补充居住证明", "result": "x"},
        {"ticket": "SL51-5", "statusCode": "1", "outcome": "准予"},
    ]), {})  # fmt: skip
    assert [(u.status, u.outcome, u.partner_ref, u.case_id) for u in many] == [
        ("in_progress", None, "SL51-1", None),
        ("completed", "approved", "SL51-1", None),
        ("completed", "denied", "12345", None),
        ("rejected", None, None, "C-3"),
        ("supplement_required", None, "SL51-4", None),
        ("dispatched", None, "SL51-5", None),
    ]
    assert many[1].data == {"decision_no": "川通办决字〔2026〕000001号"}
    assert len(many[3].data["message"]) == 500
    assert many[4].data == {"value": "x", "message": "请补充居住证明"}


def test_parse_inbound_uses_the_configured_tables() -> None:
    a = adapter(status_codes={"2": "accepted", "4": "completed"}, approved_values=["Y"],
                denied_values=["N"])  # fmt: skip
    (u,) = a.parse_inbound(body({"ticket": "T", "statusCode": "4", "outcome": "Y"}), {})
    assert (u.status, u.outcome) == ("completed", "approved")


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (b"<xml/>", "JSON"),
        (b"", "JSON"),
        (body("x"), "notice"),
        (body({"statusCode": "3"}), "ticket"),
        (body({"ticket": "T", "statusCode": "99"}), "statusCode"),
        (body({"ticket": "T"}), "statusCode"),
        (body({"ticket": "T", "statusCode": True}), "statusCode"),
        (body({"ticket": "T", "statusCode": "11"}), "outcome"),
        (body({"ticket": "T", "statusCode": "11", "outcome": "maybe"}), "outcome"),
        (body({"ticket": "T 1", "statusCode": "3"}), "ticket"),
        (body({"ticket": "T", "caseId": 7, "statusCode": "3"}), "caseId"),
        (body([{"ticket": "T", "statusCode": "3"}, 7]), "[1]"),
        (body([{"ticket": "T", "statusCode": "3"}, {"ticket": "T", "statusCode": "0"}]), "[1]"),
    ],
)
def test_malformed_notices_raise_value_error_naming_the_field(raw: bytes, where: str) -> None:
    with pytest.raises(ValueError, match=where.replace("[", r"\[").replace("]", r"\]")):
        adapter().parse_inbound(raw, {})


def test_parse_errors_never_quote_the_partner() -> None:
    notice = {"ticket": f"{NAME}{ID_NUMBER}", "statusCode": ID_NUMBER, "outcome": NAME}
    with pytest.raises(ValueError) as info:
        adapter().parse_inbound(body(notice), {})
    for value in SENSITIVE:
        assert value not in str(info.value)


# ---- submit, supplement, withdraw against the simulator -----------------------------------------


async def test_submit_gets_a_ticket_and_a_repeat_gets_the_same_one() -> None:
    async with ticket_sim(latency=60) as sim, context() as ctx:
        a = adapter(base_url=sim.url)
        first = await a.submit(CASE, ctx)
        assert isinstance(first, Accepted) and first.partner_ref
        assert first.updates == ()
        again = await a.submit(CASE, ctx)
        assert again == first
        assert (sim.counters["submits"], sim.counters["submit_repeats"]) == (1, 1)
        assert sim.partner_view(CASE.case_id) == {"ticket": first.partner_ref,
            "statuses": ["1"], "withdrawn": False, "finished": False}  # fmt: skip


async def test_a_wrong_secret_is_refused_permanently() -> None:
    async with ticket_sim() as sim, context() as ctx:
        outcome = await adapter(base_url=sim.url, app_secret="not-the-secret").submit(CASE, ctx)
        assert outcome == Permanent("HTTP 401, code E401")
        assert sim.counters["auth_failures"] == 1 and sim.counters["submits"] == 0


async def test_a_stale_timestamp_is_refused() -> None:
    async with ticket_sim() as sim, context(clock=ManualClock(1_000_000_000.0)) as ctx:
        outcome = await adapter(base_url=sim.url).submit(CASE, ctx)
        assert isinstance(outcome, Permanent) and sim.counters["auth_failures"] == 1


async def test_partner_down_is_retryable() -> None:
    async with ticket_sim() as sim, context() as ctx:
        sim.set_down(True)
        assert await adapter(base_url=sim.url).submit(CASE, ctx) == Retryable("HTTP 503")


async def test_unreachable_partner_is_retryable() -> None:
    async with context() as ctx:
        outcome = await adapter(base_url=f"http://127.0.0.1:{free_port()}").submit(CASE, ctx)
        assert isinstance(outcome, Retryable) and outcome.reason.startswith("connection error")


async def test_a_partner_that_does_not_answer_in_time_is_retryable() -> None:
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return answer({"code": "0", "ticket": "T"})

    async with double(hang) as url, context(limit=0.2) as ctx:
        try:
            assert await adapter(base_url=url).submit(CASE, ctx) == Retryable("timeout")
        finally:
            release.set()


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (answer({"code": "0"}), Retryable("answer has no usable ticket")),
        (answer({"code": "0", "ticket": "a b"}), Retryable("answer has no usable ticket")),
        (answer({"code": "0", "ticket": 7}), Accepted(partner_ref="7")),
        (answer({"code": "E2001", "msg": f"证件号码{ID_NUMBER}有误"}),
         Permanent("refused (code E2001)")),
        (answer({"code": "BUSY"}), Retryable("busy (code BUSY)")),
        (answer({}, 503, {"Retry-After": "120"}), Retryable("HTTP 503", 120.0)),
    ],
    ids=str,
)  # fmt: skip
async def test_submit_answers(reply: web.Response, expected: object) -> None:
    async def handle(request: web.Request) -> web.Response:
        return reply

    async with double(handle) as url, context() as ctx:
        assert await adapter(base_url=url).submit(CASE, ctx) == expected


async def test_supplement_and_withdraw_need_a_ticket() -> None:
    async with context() as ctx:
        a = adapter()
        assert isinstance(await a.supplement(case("C-1", None), {}, ctx), Permanent)
        assert isinstance(await a.withdraw(case("C-1", None), "", ctx), Permanent)


async def test_supplement_round_trip_by_polling_the_adapter() -> None:
    async with ticket_sim() as sim, context() as ctx:
        a = adapter(base_url=sim.url, mode="poll")
        taken = await a.submit(case("C-SUP", None, "ZJ-1-SUPPLEMENT"), ctx)
        assert isinstance(taken, Accepted) and taken.partner_ref
        open_case = case("C-SUP", taken.partner_ref, "ZJ-1-SUPPLEMENT")
        seen: list[StatusUpdate] = []

        async def reached(status: str) -> bool:
            seen.extend(await a.poll([open_case], ctx))
            return any(u.status == status for u in seen)

        await wait_for(lambda: reached("supplement_required"), what="补正 polled")
        material = {"note": "已补充", "payload": {"residence_proof": "x"}, "attachments": []}
        assert await a.supplement(open_case, material, ctx) == Accepted()
        await wait_for(lambda: reached("completed"), what="completed polled")
        statuses = [u.status for u in seen]
        assert statuses.count("supplement_required") == 1  # unchanged 补正 is never repeated
        assert statuses[-1] == "completed" and seen[-1].outcome == "approved"
        assert all(u.case_id == "C-SUP" and u.partner_ref == taken.partner_ref for u in seen)
        assert sim.counters["supplements"] == 1


async def test_a_supplement_nobody_asked_for_is_refused_and_withdraw_is_taken() -> None:
    async with ticket_sim(latency=60) as sim, context() as ctx:
        a = adapter(base_url=sim.url)
        taken = await a.submit(CASE, ctx)
        assert isinstance(taken, Accepted) and taken.partner_ref
        held = case(CASE.case_id, taken.partner_ref)
        assert await a.supplement(held, {"note": ""}, ctx) == Permanent("refused (code E409)")
        assert await a.withdraw(held, "申请人撤回", ctx) == Accepted()
        view = sim.partner_view(CASE.case_id)
        assert view is not None and view["withdrawn"] is True


# ---- polling ------------------------------------------------------------------------------------


async def test_callback_mode_never_polls() -> None:
    async with ticket_sim() as sim, context() as ctx:
        a = adapter(base_url=sim.url, mode="callback")
        taken = await a.submit(CASE, ctx)
        assert isinstance(taken, Accepted)
        assert await a.poll([case(CASE.case_id, taken.partner_ref)], ctx) == []
        assert sim.counters["queries"] == 0


async def test_poll_reports_each_change_once_and_skips_cases_without_a_ticket() -> None:
    async with ticket_sim() as sim, context() as ctx:
        a = adapter(base_url=sim.url, mode="poll")
        taken = await a.submit(CASE, ctx)
        assert isinstance(taken, Accepted)
        cases = [case(CASE.case_id, taken.partner_ref), case("C-NO-TICKET", None)]
        seen: list[StatusUpdate] = []

        async def completed() -> bool:
            seen.extend(await a.poll(cases, ctx))
            return bool(seen) and seen[-1].status == "completed"

        await wait_for(completed, what="completed polled")
        statuses = [u.status for u in seen]
        assert len(statuses) == len(set(statuses)), statuses  # each change once
        assert "dispatched" not in statuses  # 已接件 is what the ticket already said
        assert statuses == [s for s in LIFECYCLE if s in statuses]
        assert seen[-1].data["decision_no"].startswith("川通办决字")
        queries = sim.counters["queries"]
        assert await a.poll(cases, ctx) == []  # the decision is repeated only after a while
        assert sim.counters["queries"] == queries + 1


async def test_a_poll_that_predates_the_submit_keeps_its_ticket_in_mind() -> None:
    async with ticket_sim(latency=60) as sim, context() as ctx:
        a = adapter(base_url=sim.url, mode="poll")
        taken = await a.submit(CASE, ctx)
        assert isinstance(taken, Accepted)
        assert await a.poll([], ctx) == []  # its open-case list was read before the submit
        assert await a.poll([case(CASE.case_id, taken.partner_ref)], ctx) == []
        assert sim.counters["queries"] == 1


async def test_a_poll_failure_returns_nothing_and_logs_only_reasons(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with ticket_sim(latency=60) as sim, context() as ctx:
        a = adapter(base_url=sim.url, mode="poll", poll_concurrency=1)
        tickets = []
        for i in range(5):
            taken = await a.submit(case(f"C-{i}", None), ctx)
            assert isinstance(taken, Accepted)
            tickets.append(case(f"C-{i}", taken.partner_ref))
        sim.set_down(True)
        assert await a.poll(tickets, ctx) == []
        assert sim.counters["refused_down"] == 1  # the first retryable failure ends the poll
    records = [r for r in caplog.records if "status queries failed" in r.getMessage()]
    assert len(records) == 1 and records[0].levelno == logging.INFO
    assert "HTTP 503 x1" in records[0].getMessage() and "4 not asked" in records[0].getMessage()
    for record in caplog.records:
        for value in SENSITIVE:
            assert value not in record.getMessage()


async def test_retry_after_on_a_poll_pauses_polling() -> None:
    hits = 0

    async def limited(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        return answer({"code": "429"}, 429, {"Retry-After": "120"})

    clock = ManualClock()
    async with double(limited) as url, context(clock=clock) as ctx:
        a = adapter(base_url=url, mode="poll")
        cases = [case("C-1", "T-1")]
        assert await a.poll(cases, ctx) == [] and hits == 1
        assert await a.poll(cases, ctx) == [] and hits == 1
        clock.advance(121)
        assert await a.poll(cases, ctx) == [] and hits == 2


async def test_poll_concurrency_is_bounded() -> None:
    inflight = peak = 0

    async def status(request: web.Request) -> web.Response:
        nonlocal inflight, peak
        inflight += 1
        peak = max(peak, inflight)
        await asyncio.sleep(0.01)  # the partner's own latency, so queries overlap
        inflight -= 1
        ticket = request.match_info["tail"].rsplit("/", 1)[-1]
        return answer({"code": "0", "ticket": ticket, "statusCode": "8"})

    async with double(status) as url, context() as ctx:
        cases = [case(f"C-{i}", f"T-{i}") for i in range(30)]
        updates = await adapter(base_url=url, mode="poll").poll(cases, ctx)
    assert sorted(u.partner_ref or "" for u in updates) == sorted(f"T-{i}" for i in range(30))
    assert all(u.status == "in_progress" for u in updates)
    assert 2 <= peak <= 8


async def test_a_slow_ticket_does_not_hold_up_the_poll() -> None:
    release = asyncio.Event()

    async def status(request: web.Request) -> web.Response:
        ticket = request.match_info["tail"].rsplit("/", 1)[-1]
        if ticket == "T-SLOW":
            await release.wait()
        return answer({"code": "0", "ticket": ticket, "statusCode": "3"})

    async with double(status) as url, context(limit=0.3) as ctx:
        try:
            cases = [case("C-1", "T-SLOW"), case("C-2", "T-2"), case("C-3", "T-3")]
            updates = await adapter(base_url=url, mode="poll").poll(cases, ctx)
            assert [u.partner_ref for u in updates] == ["T-2", "T-3"]
        finally:
            release.set()


async def test_poll_answers_that_do_not_fit_are_skipped() -> None:
    replies = {
        "T-OTHER": {"code": "0", "ticket": "T-OTHER", "caseId": "C-ELSE", "statusCode": "8"},
        "T-WRONG": {"code": "0", "ticket": "T-X", "statusCode": "8"},
        "T-UNKNOWN": {"code": "0", "statusCode": "99"},
        "T-GONE": {"code": "E404", "msg": "流水号不存在"},
        "T-OK": {"code": "0", "ticket": "T-OK", "caseId": "C-OK", "statusCode": "11",
                 "outcome": "1"},
    }  # fmt: skip

    async def status(request: web.Request) -> web.Response:
        return answer(replies[request.match_info["tail"].rsplit("/", 1)[-1]])

    async with double(status) as url, context() as ctx:
        cases = [case("C-OK" if t == "T-OK" else f"C-{t}", t) for t in replies]
        updates = await adapter(base_url=url, mode="poll").poll(cases, ctx)
    assert updates == [StatusUpdate("completed", case_id="C-OK", partner_ref="T-OK",
                                    outcome="approved")]  # fmt: skip


async def test_an_unchanged_decision_is_repeated_now_and_then_other_statuses_never() -> None:
    replies = {"T-DONE": "11", "T-WORK": "8"}

    async def status(request: web.Request) -> web.Response:
        ticket = request.match_info["tail"].rsplit("/", 1)[-1]
        return answer({"code": "0", "statusCode": replies[ticket], "outcome": "准予"})

    clock = ManualClock()
    async with double(status) as url, context(clock=clock) as ctx:
        a = adapter(base_url=url, mode="poll", poll_interval=1)
        cases = [case("C-DONE", "T-DONE"), case("C-WORK", "T-WORK")]
        first = await a.poll(cases, ctx)
        assert [u.status for u in first] == ["completed", "in_progress"]
        assert await a.poll(cases, ctx) == []
        clock.advance(DECISION_REPEAT_SECONDS + 1)
        assert [u.status for u in await a.poll(cases, ctx)] == ["completed"]
        clock.advance(10_000)
        assert [u.status for u in await a.poll(cases, ctx)] == ["completed"]
        # A case that closed is forgotten after a while; open again, it would be news again.
        assert await a.poll([cases[1]], ctx) == []
        clock.advance(DECISION_REPEAT_SECONDS + 1)
        assert await a.poll([cases[1]], ctx) == []
        assert [u.status for u in await a.poll(cases, ctx)] == ["completed"]
        assert [u.status for u in await a.poll(cases, ctx)] == []


# ---- declarative mapping ------------------------------------------------------------------------

MAPPED_CASE = replace(
    CASE,
    case_id="C01TICKETTEST0000000000002",
    applicant={"id_type": "414", "id_number": ID_NUMBER, "name": NAME, "sex": "2"},
    payload={"insured_region": "510100", "start_date": "2026-12-01",
             "filed_at": "2026-11-30T17:05:00Z"},
    attachments=({"name": "a.pdf", "media_type": "application/pdf", "sha256": "ab" * 32},),
)  # fmt: skip
THEIR_SEX = {"1": "M", "2": "F", "*": "U"}
THEIR_ID_TYPES = {"111": "1", "113": "2", "414": "A"}
MAPPING: dict[str, Any] = {
    "code_tables": {
        "applicant.sex": THEIR_SEX,
        "applicant.id_type": THEIR_ID_TYPES,
        "result.holder.sex": THEIR_SEX,
        "result.holder.id_type": {**THEIR_ID_TYPES, "*": "Z"},
    },
    "date_formats": {
        "payload.start_date": "yyyyMMdd",
        "form.filed_at": "yyyyMMddHHmmss",
        "result.decided_at": "yyyyMMddHHmmss",
        "result.valid_from": "yyyyMMdd",
    },
    "field_map": {"applicant.id_number": "applicant.zjhm"},
    "constants": {"channel": "KSTB", "head.version": "2.0"},
}
# A decided case as the partner reports it, and what the origin must receive.
THEIR_RESULT = {"decision_no": "川通办决字〔2026〕000002号", "holder": {"sex": "F", "id_type": "A"},
                "decided_at": "20261201093000", "valid_from": 20261202, "note": "M"}  # fmt: skip
OUR_RESULT = {"decision_no": "川通办决字〔2026〕000002号", "holder": {"sex": "2", "id_type": "414"},
              "decided_at": "2026-12-01T09:30:00+08:00", "valid_from": "2026-12-02",
              "note": "M"}  # fmt: skip


@asynccontextmanager
async def recording_partner() -> AsyncIterator[tuple[str, list[tuple[str, Any]]]]:
    """A partner double that takes every call and keeps (path, JSON body) of each."""
    received: list[tuple[str, Any]] = []

    async def take(request: web.Request) -> web.Response:
        received.append((request.path, orjson.loads(await request.read())))
        return answer({"code": "0", "ticket": "SL51-MAPPED"})

    async with double(take) as url:
        yield url, received


async def test_submit_sends_codes_dates_and_names_in_the_partners_form() -> None:
    async with recording_partner() as (url, received), context() as ctx:
        taken = await adapter(base_url=url, **MAPPING).submit(MAPPED_CASE, ctx)
        assert taken == Accepted(partner_ref="SL51-MAPPED")
    [(path, sent)] = received
    assert path == "/tickets"
    assert sent == {
        "caseId": MAPPED_CASE.case_id,
        "requestId": MAPPED_CASE.request_id,
        "itemCode": "KSTB-YB-001",
        "itemVersion": 1,
        "originRegion": ORIGIN,
        "applicant": {"id_type": "A", "name": NAME, "sex": "F", "zjhm": ID_NUMBER},
        # 17:05 UTC on 30 November is 01:05 on 1 December in the partner's UTC+8
        "form": {"insured_region": "510100", "start_date": "20261201",
                 "filed_at": "20261201010500"},
        "attachments": [dict(MAPPED_CASE.attachments[0])],
        "channel": "KSTB",
        "head": {"version": "2.0"},
    }  # fmt: skip
    assert MAPPED_CASE.applicant["sex"] == "2" and MAPPED_CASE.payload["start_date"] == "2026-12-01"


async def test_without_mapping_settings_the_body_goes_as_it_is() -> None:
    async with recording_partner() as (url, received), context() as ctx:
        assert isinstance(await adapter(base_url=url).submit(MAPPED_CASE, ctx), Accepted)
    [(_, sent)] = received
    assert sent["applicant"] == dict(MAPPED_CASE.applicant)
    assert sent["form"] == dict(MAPPED_CASE.payload)
    assert list(sent) == ["caseId", "requestId", "itemCode", "itemVersion", "originRegion",
                          "applicant", "form", "attachments"]  # fmt: skip


async def test_utc_offset_hours_sets_the_partners_time() -> None:
    async with recording_partner() as (url, received), context() as ctx:
        a = adapter(base_url=url, date_formats={"payload.filed_at": "yyyy-MM-dd HH:mm:ss"},
                    utc_offset_hours=0)  # fmt: skip
        assert isinstance(await a.submit(MAPPED_CASE, ctx), Accepted)
    assert received[0][1]["form"]["filed_at"] == "2026-11-30 17:05:00"


async def test_constants_go_with_supplements_and_withdrawals_and_tables_do_not() -> None:
    async with recording_partner() as (url, received), context() as ctx:
        a = adapter(base_url=url, **MAPPING)
        held = case(MAPPED_CASE.case_id, "SL51-MAPPED")
        material = {"note": "补充", "payload": {"start_date": "2026-12-03"}, "attachments": []}
        assert await a.supplement(held, material, ctx) == Accepted()
        assert await a.withdraw(held, "申请人撤回", ctx) == Accepted()
    assert received == [
        ("/tickets/SL51-MAPPED/supplements",
         {"caseId": held.case_id, **material, "channel": "KSTB", "head": {"version": "2.0"}}),
        ("/tickets/SL51-MAPPED/withdraw",
         {"caseId": held.case_id, "reason": "申请人撤回", "channel": "KSTB",
          "head": {"version": "2.0"}}),
    ]  # fmt: skip
    assert material == {"note": "补充", "payload": {"start_date": "2026-12-03"}, "attachments": []}


@pytest.mark.parametrize(
    ("applicant", "payload", "reason"),
    [
        ({"id_type": "513"}, {},
         "cannot render the case: applicant.id_type: the value has no entry in its code table"),
        ({}, {"start_date": "2026/12/01"},
         "cannot render the case: payload.start_date: not an ISO 8601 date or date-time"),
        ({}, {"filed_at": 20261130},
         "cannot render the case: form.filed_at: not an ISO 8601 date or date-time"),
        ({"sex": {"code": "2"}}, {},
         "cannot render the case: applicant.sex: holds a dict, not a code"),
    ],
    ids=["no-entry", "not-iso", "not-a-string", "not-a-code"],
)  # fmt: skip
async def test_a_case_the_mapping_cannot_render_is_permanent_and_not_sent(
    applicant: dict[str, Any], payload: dict[str, Any], reason: str
) -> None:
    bad = replace(MAPPED_CASE, applicant={**MAPPED_CASE.applicant, **applicant},
                  payload={**MAPPED_CASE.payload, **payload})  # fmt: skip
    async with recording_partner() as (url, received), context() as ctx:
        assert await adapter(base_url=url, **MAPPING).submit(bad, ctx) == Permanent(reason)
    assert received == []  # nothing reached the partner


async def test_status_answers_bring_result_fields_back_in_our_words() -> None:
    async def status(request: web.Request) -> web.Response:
        ticket = request.match_info["tail"].rsplit("/", 1)[-1]
        return answer(
            {
                "code": "0",
                "ticket": ticket,
                "caseId": "C-MAP",
                "statusCode": "11",
                "outcome": "准予",
                "result": THEIR_RESULT,
                "eventId": f"{ticket}-05",
            }
        )

    async with double(status) as url, context() as ctx:
        a = adapter(base_url=url, mode="poll", **MAPPING)
        updates = await a.poll([case("C-MAP", "SL51-MAP")], ctx)
    assert updates == [StatusUpdate("completed", case_id="C-MAP", partner_ref="SL51-MAP",
                                    outcome="approved", data=OUR_RESULT,
                                    partner_event_id="SL51-MAP-05")]  # fmt: skip


def test_callbacks_bring_result_fields_back_in_our_words() -> None:
    a = adapter(**MAPPING)
    unknown = {**THEIR_RESULT, "holder": {"sex": "X", "id_type": "Z"}, "decided_at": "2026-12-01"}
    updates = a.parse_inbound(body([
        {"ticket": "SL51-1", "statusCode": "11", "outcome": "1", "result": THEIR_RESULT},
        {"ticket": "SL51-2", "statusCode": "11", "outcome": "1", "result": unknown},
        {"ticket": "SL51-3", "statusCode": "6", "message": "请补充",
         "result": {"valid_from": "20261205"}},
    ]), {})  # fmt: skip
    assert updates[0].data == OUR_RESULT
    # A code with no entry ("Z" is only the "*" fallback), or a date not in the pattern, is kept.
    assert updates[1].data["holder"] == {"sex": "X", "id_type": "Z"}
    assert updates[1].data["decided_at"] == "2026-12-01"
    assert updates[2].data == {"valid_from": "2026-12-05", "message": "请补充"}
    assert THEIR_RESULT["holder"] == {"sex": "F", "id_type": "A"}  # the partner's report as it was


@pytest.mark.parametrize(
    ("bad", "key", "problem"),
    [
        ({"date_formats": {"payload.start_date": "yyyy/MM/dd hh"}}, "date_formats",
         "unsupported date pattern 'yyyy/MM/dd hh'"),
        ({"code_tables": {"handling.region": {"1": "2"}}}, "code_tables",
         "'handling.region' does not start with a field of the request"),
        ({"date_formats": {"result": "yyyyMMdd"}}, "date_formats",
         "'result' does not start with a field of the request"),
        ({"field_map": {"result.decided_at": "jdsj"}}, "field_map",
         "'result.decided_at' does not start with a field of the request"),
        ({"field_map": {"payload.x": "a", "payload.y": "a"}}, "field_map",
         "two fields are mapped to the same place"),
        ({"constants": {"head..channel": "KSTB"}}, "constants", "is not a dotted path"),
        ({"code_tables": {"payload.x": {"1": "2"}, "form.x": {"1": "3"}}}, "code_tables",
         "one field is named twice"),
        ({"utc_offset_hours": 15}, "utc_offset_hours", "less than or equal to 14"),
    ],
    ids=str,
)  # fmt: skip
def test_bad_mapping_settings_are_refused_at_start_naming_the_key(
    bad: dict[str, Any], key: str, problem: str
) -> None:
    table = {"kind": "async_ticket", "base_url": "http://127.0.0.1:9", "app_key": APP_KEY,
             "app_secret": APP_SECRET, **bad}  # fmt: skip
    config = gateway_config("sqlite:///unused.db", 0, {ORIGIN: 9, HANDLER: 9}, 9,
                            partner_settings={HANDLER: {"adapter": table}})  # fmt: skip
    with pytest.raises(ConfigError) as info:
        build_adapters(config, {**discover(), "async_ticket": AsyncTicketAdapter})
    message = str(info.value)
    assert message.startswith("partners[1].adapter: ")
    assert key in message and problem in message


# ---- through a real Gateway ---------------------------------------------------------------------


@dataclass
class TicketWorld:
    gateway: Gateway
    sim: TicketProvinceSimulator
    receiver: ProvinceSimulator
    origin: Client
    session: aiohttp.ClientSession


@asynccontextmanager
async def ticket_world(
    tmp_path: Path, mode: str, *, seed: int = 7, **sim_settings: Any
) -> AsyncIterator[TicketWorld]:
    """The origin's platform (event receiver), the hub, the ticket province and a gateway that
    reaches that province through ``async_ticket``; all on ports the OS picked."""
    async with AsyncExitStack() as stack:
        receiver = simulator(ORIGIN, 0)
        hub = ProvinceSimulator(SimulatorSettings(region="100000", callback_secret=HUB_SECRET))
        key_id, secret = KEYS[HANDLER]
        sim = TicketProvinceSimulator(
            TicketSimulatorSettings(
                region=HANDLER, app_key=APP_KEY, app_secret=APP_SECRET,
                callbacks=mode != "poll", key_id=key_id, secret=secret,
                **{"latency": 0.1, "retry_backoff": 0.05, "retry_backoff_max": 0.3,
                   **sim_settings},
            ),
            rng=random.Random(seed),
        )  # fmt: skip
        ports = {}
        for region, s in ((ORIGIN, receiver), (HANDLER, sim)):
            ports[region] = await s.start("127.0.0.1", 0)
            stack.push_async_callback(s.stop)
        hub_port = await hub.start("127.0.0.1", 0)
        stack.push_async_callback(hub.stop)
        config = gateway_config(f"sqlite:///{tmp_path}/gw.db", 0, ports, hub_port)
        handler = next(p for p in config.partners if p.region == HANDLER)
        handler.adapter = {
            "kind": "async_ticket", "base_url": sim.url, "mode": mode, "poll_interval": 0.05,
            "app_key": APP_KEY, "app_secret": APP_SECRET, "timeout": 5,
        }  # fmt: skip
        gw = Gateway(config, poll_interval=0.05,
                     adapter_kinds={**discover(), "async_ticket": AsyncTicketAdapter})  # fmt: skip
        stack.push_async_callback(gw.stop)
        port = await gw.start()
        sim.settings.gateway_url = f"http://127.0.0.1:{port}"
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        stack.push_async_callback(session.close)
        yield TicketWorld(gw, sim, receiver, Client(session, f"http://127.0.0.1:{port}", ORIGIN),
                          session)  # fmt: skip


async def submit(w: TicketWorld, request_id: str) -> str:
    status, created, _ = await w.origin.call("POST", "/v1/cases", medical_filing(request_id))
    assert status == 202, created
    return str(created["case_id"])


async def settled(w: TicketWorld, case_id: str, status: str = "completed") -> bool:
    c = await w.origin.case(case_id)
    return bool(c["status"] == status and all(d["waiting"] == 0 for d in c["deliveries"]))


def in_lifecycle_order(statuses: list[str]) -> bool:
    """Received, dispatched, then forward steps only (a poll may miss a short-lived one)."""
    return (
        statuses[:2] == ["received", "dispatched"]
        and statuses == sorted(statuses, key=LIFECYCLE.index)
        and len(set(statuses)) == len(statuses)
    )


async def dead_letters(w: TicketWorld) -> list[Any]:
    status, dead, _ = await w.origin.call(
        "GET", "/v1/ops/dead-letters", sign=False,
        headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
    )  # fmt: skip
    assert status == 200
    return list(dead["dead_letters"])


async def test_poll_mode_completes_a_case(tmp_path: Path) -> None:
    async with ticket_world(tmp_path, "poll") as w:
        case_id = await submit(w, "ZJ-TK-POLL-1")
        await wait_for(lambda: settled(w, case_id), what="case completed by polling")
        done = await w.origin.case(case_id)
        statuses = [e["status"] for e in done["history"]]
        assert in_lifecycle_order(statuses) and statuses[-1] == "completed", statuses
        assert done["outcome"] == "approved"
        assert done["result"]["decision_no"].startswith("川通办决字")
        view = w.sim.partner_view(case_id)
        assert view is not None and done["partner_ref"] == view["ticket"]
        assert done["ignored"] == []  # an unchanged status is not reported again
        assert w.sim.counters["queries"] > 0 and w.sim.counters["notices_queued"] == 0
        assert [e["seq"] for e in w.receiver.events[case_id]] == list(range(1, len(statuses) + 1))


async def test_callback_mode_completes_a_case(tmp_path: Path) -> None:
    async with ticket_world(tmp_path, "callback") as w:
        case_id = await submit(w, "ZJ-TK-CB-1")
        await wait_for(lambda: settled(w, case_id), what="case completed by callbacks")
        done = await w.origin.case(case_id)
        assert [e["status"] for e in done["history"]] == LIFECYCLE
        assert done["outcome"] == "approved" and done["result"]["decision_no"]
        assert w.sim.counters["queries"] == 0
        assert w.sim.counters["notices_sent"] == 3


async def test_rejection_denial_and_supplement_by_polling(tmp_path: Path) -> None:
    async with ticket_world(tmp_path, "poll") as w:
        rejected = await submit(w, "ZJ-TK-2-REJECT")
        denied = await submit(w, "ZJ-TK-3-DENY")
        supplement = await submit(w, "ZJ-TK-4-SUPPLEMENT")
        await wait_for(lambda: settled(w, rejected, "rejected"), what="rejection")
        await wait_for(lambda: settled(w, denied), what="denial")
        assert (await w.origin.case(rejected))["history"][-1]["data"]["message"]
        assert (await w.origin.case(denied))["outcome"] == "denied"
        await wait_for(lambda: settled(w, supplement, "supplement_required"), what="补正")
        status, _, _ = await w.origin.call(
            "POST", f"/v1/cases/{supplement}/supplements",
            {"note": "已补充居住证明", "payload": {"residence_proof": "居住证 510100-2026-001"}},
        )  # fmt: skip
        assert status == 200
        await wait_for(lambda: settled(w, supplement), what="completed after the supplement")
        statuses = [e["status"] for e in (await w.origin.case(supplement))["history"]]
        assert statuses.count("supplement_required") == 1, statuses  # no bounce back
        assert statuses[-1] == "completed" and w.sim.counters["supplements"] == 1


async def test_duplicates_and_out_of_order_reports_are_ignored(tmp_path: Path) -> None:
    chaos: dict[str, Any] = {"duplicate_rate": 0.5, "out_of_order_rate": 0.5, "failure_rate": 0.1}
    async with ticket_world(tmp_path, "both", **chaos) as w:
        ids = [await submit(w, f"ZJ-TK-CHAOS-{i}") for i in range(6)]
        for case_id in ids:
            await wait_for(lambda c=case_id: settled(w, c), what=f"{case_id} completed")
        ignored = []
        for case_id in ids:
            done = await w.origin.case(case_id)
            statuses = [e["status"] for e in done["history"]]
            assert in_lifecycle_order(statuses) and statuses[-1] == "completed", statuses
            assert [e["seq"] for e in done["history"]] == list(range(1, len(statuses) + 1))
            assert done["outcome"] == "approved"
            got = [e["seq"] for e in w.receiver.events[case_id]]
            assert got == list(range(1, len(statuses) + 1))
            ignored.extend(done["ignored"])
        c = w.sim.counters
        assert c["duplicates_sent"] > 0 and c["out_of_order_sent"] > 0
        # Every duplicate and every older notice sent after a newer one was recorded, ignored.
        assert len(ignored) >= c["duplicates_sent"] + c["out_of_order_sent"], (c, ignored)
        assert all(i["source"] == f"partner:{HANDLER}" for i in ignored)
        assert w.receiver.out_of_order == 0 and w.receiver.seq_conflicts == 0
        assert await dead_letters(w) == []


async def test_partner_down_then_up_completes_without_dead_letters(tmp_path: Path) -> None:
    async with ticket_world(tmp_path, "poll", latency=0.3) as w:
        w.sim.set_down(True)
        ids = [await submit(w, f"ZJ-TK-DOWN-{i}") for i in range(3)]
        await wait_for(lambda: w.sim.counters["refused_down"] >= 4, what="submits refused")
        assert w.sim.counters["submits"] == 0
        w.sim.set_down(False)

        async def taken(case_id: str) -> bool:
            return bool((await w.origin.case(case_id))["status"] != "received")

        for case_id in ids:
            await wait_for(lambda c=case_id: taken(c), what=f"{case_id} dispatched")
        # Down again while the cases are worked: the polls fail, quietly, and are retried.
        w.sim.set_down(True)
        refused = w.sim.counters["refused_down"]
        await wait_for(lambda: w.sim.counters["refused_down"] >= refused + 3, what="polls fail")
        w.sim.set_down(False)
        for case_id in ids:
            await wait_for(lambda c=case_id: settled(w, c), what=f"{case_id} completed")
            statuses = [e["status"] for e in (await w.origin.case(case_id))["history"]]
            assert in_lifecycle_order(statuses) and statuses[-1] == "completed", statuses
        assert await dead_letters(w) == []
        assert w.gateway.supervisor.restarts.get("poller", 0) == 0
