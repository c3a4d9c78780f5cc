"""A ticket-and-callback province on loopback: the partner of :mod:`adapters.async_ticket`.

It takes a case and answers only a ticket (受理回执), then works the case through its own status
codes (1 已接件, 3 已受理, 4 不受理, 6 补正, 8 开始办理, 11 办结) one step per ``latency`` seconds.
It answers status queries per ticket and, when ``callbacks`` is on, pushes each new status to the
gateway's ``/v1/partners/{region}/inbound`` signed as SPEC §5 says, retrying until a 2xx.

Every province-facing call must carry the app-key signature (``X-App-Key``, ``X-Timestamp``,
``X-Sign`` = hex SHA-256 of key + secret + timestamp). Chaos, all rates in [0, 1]:
``failure_rate`` answers 503 to a call; ``duplicate_rate`` sends a callback notice twice;
``out_of_order_rate`` sends an older notice again after a newer one, and answers a status query
with an older status than the current one. ``set_down(True)`` answers 503 to everything and holds
callbacks. ``GET|POST /_control`` shows and changes this live.

A submit or a supplement may also come as a ``multipart/form-data`` upload of materials (the
adapter's ``attachment_transport = "multipart"``), told apart by its Content-Type: the JSON body in
one part, one file part per attachment. Every file's SHA-256 must be one that the body's
``attachments`` list gives, or the upload is refused with ``MATERIAL_MISMATCH`` (under HTTP 200, as
its other refusals); otherwise it is taken exactly as the JSON request.

All state is in memory; nothing about an applicant is kept or logged: only case ids and tickets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import logging
import math
import random
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from gateway.clock import iso
from gateway.simulators.base import INBOUND_PATH as INBOUND_PATH  # re-exported
from gateway.simulators.base import (
    BackgroundTasks,
    BadRequest,
    LoopbackServer,
    files_listed,
    next_batch,
    post_signed,
    read_request,
    send_until_acknowledged,
    set_up,
)
from gateway.simulators.results import item_result

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_NOTICES_PER_MESSAGE = 100
NOTICE_QUEUE_SIZE = 10_000
TIMESTAMP = re.compile(r"[0-9]{1,12}")
MATERIAL_MISMATCH = "E1002"  # a file of an upload whose SHA-256 the material list does not give

# The platform's status codes.
RECEIVED, ACCEPTED, REJECTED, SUPPLEMENT, IN_PROGRESS, COMPLETED = "1", "3", "4", "6", "8", "11"


@dataclass
class TicketSimulatorSettings:
    """How the simulated province behaves; rates are probabilities in [0, 1]."""

    region: str
    app_key: str = "ticket-app-key"
    app_secret: str = "ticket-app-secret"
    # Callbacks: pushed to the gateway, signed with the partner's SPEC §5 key, when enabled.
    callbacks: bool = False
    gateway_url: str | None = None
    key_id: str = ""
    secret: str = ""
    latency: float = 0.05
    failure_rate: float = 0.0
    deny_rate: float = 0.0
    duplicate_rate: float = 0.0
    out_of_order_rate: float = 0.0
    timestamp_window: float = 300.0
    notice_batch_window: float = 0.02
    request_timeout: float = 10.0
    retry_backoff: float = 0.1
    retry_backoff_max: float = 5.0
    # A multipart upload: the part holding the JSON body, and the name of every file part (the
    # defaults of adapters.async_ticket's multipart_body_field and multipart_file_field).
    multipart_body_field: str = "case"
    multipart_file_field: str = "files"


@dataclass
class _Case:
    """One case the province handles: ids and its own status history, no applicant data."""

    case_id: str
    ticket: str
    scenario: str | None
    item_code: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    supplement_requested: bool = False
    supplemented: asyncio.Event = field(default_factory=asyncio.Event)
    withdrawn: bool = False
    finished: bool = False
    task: asyncio.Task[None] | None = None
    files: list[dict[str, Any]] = field(default_factory=list)  # uploaded: no content kept


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def _busy() -> web.Response:
    return _json({"code": "503", "msg": "系统繁忙，请稍后再试"}, status=503)


def _refuse(code: str, msg: str, status: int = 200) -> web.Response:
    """A business refusal: like many platforms, under HTTP 200 with the code in the body."""
    return _json({"code": code, "msg": msg}, status=status)


def _bad_request(exc: BadRequest) -> web.Response:
    return _refuse(f"E{exc.status}", exc.message, status=exc.status)


def _mismatch() -> web.Response:
    return _refuse(MATERIAL_MISMATCH, "申请材料校验失败：文件摘要与材料清单不一致")


class TicketProvinceSimulator(LoopbackServer):
    """One simulated ticket-and-callback province. :meth:`start` / :meth:`stop` it, or mount
    :meth:`app` in any aiohttp runner: its background tasks live and die with the application."""

    def __init__(
        self, settings: TicketSimulatorSettings, *, rng: random.Random | None = None
    ) -> None:
        self.settings = dataclasses.replace(settings)  # control changes stay in this instance
        self._rng = rng or random.Random()
        self.down = False
        self._up = asyncio.Event()
        self._up.set()
        self._cases: dict[str, _Case] = {}
        self._by_ticket: dict[str, _Case] = {}
        self._ticket_seq = 0
        self._notices: asyncio.Queue[dict[str, Any]] = asyncio.Queue(NOTICE_QUEUE_SIZE)
        self._inflight: list[dict[str, Any]] | None = None
        self.counters: dict[str, int] = {
            "submits": 0,
            "submit_repeats": 0,
            "queries": 0,
            "stale_answers": 0,
            "supplements": 0,
            "withdrawals": 0,
            "auth_failures": 0,
            "injected_failures": 0,
            "refused_down": 0,
            "notices_queued": 0,
            "notices_sent": 0,
            "messages_sent": 0,
            "send_failures": 0,
            "duplicates_sent": 0,
            "out_of_order_sent": 0,
            "loop_restarts": 0,
        }
        self._tasks = BackgroundTasks(
            log, "ticket simulator", prefix=f"ticket-sim-{settings.region}-"
        )
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=MAX_BODY_BYTES, middlewares=[self._down_middleware, self._auth]
        )
        app.router.add_post("/tickets", self._submit)
        app.router.add_get("/tickets/{ticket}", self._status)
        app.router.add_post("/tickets/{ticket}/supplements", self._supplement)
        app.router.add_post("/tickets/{ticket}/withdraw", self._withdraw)
        app.router.add_get("/_control", self._get_control)
        app.router.add_post("/_control", self._set_control)
        app.cleanup_ctx.append(
            self._with_loop(
                self._notice_loop,
                name="notices",
                on_crash=self._count_restart,
                what=f"ticket simulator {self.settings.region}: loop",
            )
        )
        return app

    def _listening(self) -> None:
        log.info("ticket simulator %s listening on %s", self.settings.region, self._url)

    def _count_restart(self) -> None:
        self.counters["loop_restarts"] += 1

    # -- middlewares ----------------------------------------------------------------------------

    @web.middleware
    async def _down_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self.down and not request.path.startswith("/_control"):
            self.counters["refused_down"] += 1
            return _busy()
        return await handler(request)

    @web.middleware
    async def _auth(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """The app-key signature on every ticket call; then the injected failures."""
        if not request.path.startswith("/tickets"):
            return await handler(request)
        if not self.signature_ok(request.headers, time.time()):
            self.counters["auth_failures"] += 1
            return _refuse("E401", "签名校验失败", status=401)
        if self._roll(self.settings.failure_rate):
            self.counters["injected_failures"] += 1
            return _busy()
        return await handler(request)

    def signature_ok(self, headers: Mapping[str, str], now: float) -> bool:
        s = self.settings
        key = headers.get("X-App-Key", "")
        ts = headers.get("X-Timestamp", "")
        given = headers.get("X-Sign", "")
        if not hmac.compare_digest(key.encode(), s.app_key.encode()):
            return False
        if not TIMESTAMP.fullmatch(ts) or abs(now - int(ts)) > s.timestamp_window:
            return False
        expected = hashlib.sha256(f"{s.app_key}{s.app_secret}{ts}".encode()).hexdigest()
        return hmac.compare_digest(given.encode(), expected.encode())

    # -- the partner ----------------------------------------------------------------------------

    async def _submit(self, request: web.Request) -> web.Response:
        try:
            body, files = await read_request(request, self.settings, MAX_BODY_BYTES)
        except BadRequest as exc:
            return _bad_request(exc)
        if not isinstance(body, dict):
            return _refuse("E400", "请求体必须是 JSON 对象", status=400)
        case_id = body.get("caseId")
        if not isinstance(case_id, str) or not case_id:
            return _refuse("E1001", "缺少外部业务编号 caseId")
        if files and not files_listed(body, files, self.counters):
            return _mismatch()
        known = self._cases.get(case_id)
        if known is not None:
            # A retry of the same case: the same ticket, and processing is not restarted.
            self.counters["submit_repeats"] += 1
            return _json({"code": "0", "msg": "已接件", "ticket": known.ticket})
        case = _Case(case_id, self._new_ticket(), _scenario(body), str(body.get("itemCode", "")),
                     files=files)  # fmt: skip
        self._cases[case_id] = case
        self._by_ticket[case.ticket] = case
        self.counters["submits"] += 1
        # 已接件 is on record at once but not called back: the ticket in this answer says it.
        case.history.append(self._notice(case, RECEIVED))
        case.task = self._tasks.spawn(self._process(case), f"case-{case.ticket}")
        log.info("ticket simulator %s: case %s taken as %s", self.settings.region, case_id,
                 case.ticket)  # fmt: skip
        return _json({"code": "0", "msg": "已接件", "ticket": case.ticket})

    async def _status(self, request: web.Request) -> web.Response:
        case = self._by_ticket.get(request.match_info["ticket"])
        if case is None:
            return _refuse("E404", "流水号不存在")
        self.counters["queries"] += 1
        notice = case.history[-1]
        if len(case.history) > 1 and self._roll(self.settings.out_of_order_rate):
            notice = self._rng.choice(case.history[:-1])
            self.counters["stale_answers"] += 1
        return _json({"code": "0", **notice})

    async def _supplement(self, request: web.Request) -> web.Response:
        case = self._by_ticket.get(request.match_info["ticket"])
        if case is None:
            return _refuse("E404", "流水号不存在")
        if case.withdrawn or not case.supplement_requested:
            return _refuse("E409", "该办件不在补正状态")
        try:  # a JSON material is neither parsed nor inspected (nor logged)
            body, files = await read_request(request, self.settings, MAX_BODY_BYTES,
                                             parse_json=False)  # fmt: skip
        except BadRequest as exc:
            return _bad_request(exc)
        if files and not files_listed(body, files, self.counters):
            return _mismatch()
        case.files.extend(files)
        self.counters["supplements"] += 1
        case.supplemented.set()  # a repeat is harmless
        return _json({"code": "0", "msg": "补正材料已接收"})

    async def _withdraw(self, request: web.Request) -> web.Response:
        case = self._by_ticket.get(request.match_info["ticket"])
        if case is None:
            return _refuse("E404", "流水号不存在")
        if not case.withdrawn:
            case.withdrawn = True
            self.counters["withdrawals"] += 1
            if case.task is not None:
                case.task.cancel()
        return _json({"code": "0", "msg": "已撤件"})

    def partner_view(self, case_id: str) -> dict[str, Any] | None:
        """What this partner holds of a case (None if it never took it), for tests."""
        case = self._cases.get(case_id)
        if case is None:
            return None
        return {
            "ticket": case.ticket,
            "statuses": [n["statusCode"] for n in case.history],
            "withdrawn": case.withdrawn,
            "finished": case.finished,
        }

    def received_files(self, case_id: str) -> list[dict[str, Any]]:
        """The files uploaded for a case (submit, then supplements) as this partner keeps them:
        ``{"name", "media_type", "sha256", "size"}``, never the content. For tests."""
        case = self._cases.get(case_id)
        return [dict(f) for f in case.files] if case else []

    async def _process(self, case: _Case) -> None:
        """Walk one case through the platform's statuses, one step per ``latency``."""
        await self._step()
        if case.scenario == "reject":
            await self._advance(case, REJECTED, message="申请材料不符合受理条件，不予受理")
            case.finished = True
            return
        await self._advance(case, ACCEPTED)
        if case.scenario == "supplement":
            await self._step()
            case.supplement_requested = True
            await self._advance(case, SUPPLEMENT, message="请补充居住证明材料")
            await case.supplemented.wait()
            case.supplement_requested = False
        await self._step()
        await self._advance(case, IN_PROGRESS)
        await self._step()
        denied = case.scenario == "deny" or (
            case.scenario != "approve" and self._roll(self.settings.deny_rate)
        )
        result = {
            "decision_no": f"川通办决字〔{datetime.now(UTC).year}〕{case.ticket[-6:]}号",
            "decided_at": iso(time.time()),
        }
        if not denied:  # what the item's contract promises the origin
            result |= item_result(case.item_code, ref=case.ticket, region=self.settings.region,
                                  now=datetime.now(UTC))  # fmt: skip
        await self._advance(case, COMPLETED, outcome="不予" if denied else "准予", result=result)
        case.finished = True

    async def _step(self) -> None:
        await asyncio.sleep(max(0.0, self.settings.latency))

    def _notice(self, case: _Case, code: str, **extra: Any) -> dict[str, Any]:
        return {
            "ticket": case.ticket,
            "caseId": case.case_id,
            "statusCode": code,
            "eventId": f"{case.ticket}-{len(case.history) + 1:02d}",
            "updatedAt": iso(time.time()),
            **extra,
        }

    async def _advance(self, case: _Case, code: str, **extra: Any) -> None:
        """Record the next status; queue its callback (waits when the queue is full)."""
        notice = self._notice(case, code, **extra)
        case.history.append(notice)
        if self.settings.callbacks:
            await self._notices.put(notice)
            self.counters["notices_queued"] += 1

    def _new_ticket(self) -> str:
        self._ticket_seq += 1
        day = datetime.now(UTC).strftime("%Y%m%d")
        tail = f"{self._ticket_seq:06d}{secrets.randbelow(100):02d}"
        return f"SL{self.settings.region[:2]}{day}{tail}"

    def _roll(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    # -- callbacks ------------------------------------------------------------------------------

    async def _notice_loop(self) -> None:
        """Deliver queued notices in order, one message at a time; then the chaos: a duplicate,
        or an older notice of the same case sent again after the newer one."""
        while True:
            if self._inflight is None:
                self._inflight = await self._next_batch()
            await self._deliver(self._inflight)
            batch, self._inflight = self._inflight, None
            extra: list[dict[str, Any]] = []
            for notice in batch:
                if self._roll(self.settings.duplicate_rate):
                    extra.append(notice)
                    self.counters["duplicates_sent"] += 1
                older = self._older(notice)
                if older is not None and self._roll(self.settings.out_of_order_rate):
                    extra.append(older)
                    self.counters["out_of_order_sent"] += 1
            if extra:
                self._inflight = extra
                await self._deliver(extra)
                self._inflight = None

    def _older(self, notice: dict[str, Any]) -> dict[str, Any] | None:
        case = self._by_ticket.get(str(notice.get("ticket")))
        if case is None:
            return None
        index = next(
            (i for i, n in enumerate(case.history) if n["eventId"] == notice["eventId"]), 0
        )
        return self._rng.choice(case.history[:index]) if index > 0 else None

    async def _next_batch(self) -> list[dict[str, Any]]:
        window = self.settings.notice_batch_window
        return await next_batch(self._notices, window, MAX_NOTICES_PER_MESSAGE)

    async def _deliver(self, batch: list[dict[str, Any]]) -> None:
        """Send until the gateway answers 2xx, backing off between tries; nothing is dropped."""
        await send_until_acknowledged(
            lambda: self._post(batch),
            self.settings,
            up=self._up,
            rng=self._rng,
            counters=self.counters,
            items=len(batch),
            noun="notices",
        )

    async def _post(self, batch: list[dict[str, Any]]) -> bool:
        if self._session is None or not self.settings.gateway_url:
            return False
        body = orjson.dumps(batch[0] if len(batch) == 1 else batch)
        headers = {"Content-Type": "application/json"}
        return await post_signed(self._session, self.settings, body, headers, log=log,
                                 label="ticket simulator", count=len(batch),
                                 noun="notice(s)")  # fmt: skip

    # -- control --------------------------------------------------------------------------------

    def set_down(self, down: bool) -> None:
        """Down: answer 503 to every ticket call and hold callbacks."""
        self.down = down
        set_up(self._up, not down)

    def control_state(self) -> dict[str, Any]:
        s = self.settings
        return {
            "region": s.region,
            "down": self.down,
            "callbacks": s.callbacks,
            "latency": s.latency,
            "failure_rate": s.failure_rate,
            "deny_rate": s.deny_rate,
            "duplicate_rate": s.duplicate_rate,
            "out_of_order_rate": s.out_of_order_rate,
            "cases": len(self._cases),
            "notices_pending": self._notices.qsize() + len(self._inflight or ()),
            **self.counters,
        }

    async def _get_control(self, _request: web.Request) -> web.Response:
        return _json(self.control_state())

    async def _set_control(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _refuse("E400", "body is not JSON", status=400)
        if not isinstance(body, dict):
            return _refuse("E400", "expected a JSON object", status=400)
        rates = ("failure_rate", "deny_rate", "duplicate_rate", "out_of_order_rate")
        changes: dict[str, float] = {}
        for name in (*rates, "latency"):
            if name not in body:
                continue
            value = body[name]
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or value < 0 or (name in rates and value > 1):
                return _refuse(
                    "E400", f"{name} must be a number (rates in [0, 1], latency >= 0)", status=400
                )
            changes[name] = float(value)
        down = body.get("down")
        if down is not None and not isinstance(down, bool):
            return _refuse("E400", "down must be a boolean", status=400)
        for name, value in changes.items():
            setattr(self.settings, name, value)
        if down is not None:
            self.set_down(down)
        return _json(self.control_state())


def _scenario(body: dict[str, Any]) -> str | None:
    """A scenario picked by the origin's request id suffix (``…-REJECT``, ``…-SUPPLEMENT``,
    ``…-DENY``, ``…-APPROVE``), as with the REST simulator."""
    request_id = body.get("requestId")
    suffix = request_id.rsplit("-", 1)[-1].lower() if isinstance(request_id, str) else ""
    return suffix if suffix in ("reject", "supplement", "deny", "approve") else None


async def run_simulator(settings: TicketSimulatorSettings, host: str, port: int) -> None:
    """Serve a ticket simulator until cancelled, then stop it cleanly."""
    sim = TicketProvinceSimulator(settings)
    await sim.start(host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()
