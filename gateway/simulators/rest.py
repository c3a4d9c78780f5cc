"""A province's platform on loopback, for tests and the demo, in two roles at once.

*Handling partner*: it takes cases in the native JSON protocol of :mod:`adapters.rest_json`
(``POST /cases``), works them on a timer and pushes signed progress reports to the gateway's
``/v1/partners/{region}/inbound``, retrying until the gateway acknowledges them. A submit or a
supplement may also come as a ``multipart/form-data`` upload of materials (the adapter's
``attachment_transport = "multipart"``), told apart by its Content-Type: the JSON body in one part,
one file part per attachment. Every file's SHA-256 must be one that the body's ``attachments``
list gives, or the upload is refused with ``MATERIAL_MISMATCH`` (under HTTP 200, as such platforms
answer); otherwise it is taken exactly as the JSON request.

*Event receiver*: it takes the gateway's signed callbacks (``POST /events``), records them per case
and counts duplicates and out-of-order arrivals, so tests can check the delivery guarantees.

``POST /_control`` changes its behaviour live (down, failure rate, latency) so the gateway's retry,
circuit-breaking and recovery paths can be exercised against a real HTTP peer. All state is in
memory and per instance; nothing about an applicant is ever logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from gateway.clock import iso
from gateway.signing import KEY_HEADER, NonceCache, SignatureError, SignedRequest
from gateway.signing import verify as verify_signature
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

MAX_REPORTS_PER_MESSAGE = 200
REPORT_QUEUE_SIZE = 10_000
MAX_BODY_BYTES = 16 * 1024 * 1024
MATERIAL_MISMATCH = "E3001"  # a file of an upload whose SHA-256 the material list does not give

# Native status codes of the platform this simulates (see adapters.rest_json).
DISPATCHED, ACCEPTED, REJECTED, SUPPLEMENT, IN_PROGRESS, COMPLETED = "1", "3", "4", "6", "8", "11"

# Province prefix (GB/T 2260) → (ticket prefix, short name for document numbers).
_PROVINCES: dict[str, tuple[str, str]] = {
    "11": ("BJ", "京"), "12": ("TJ", "津"), "13": ("HE", "冀"), "14": ("SX", "晋"),
    "15": ("NM", "蒙"), "21": ("LN", "辽"), "22": ("JL", "吉"), "23": ("HL", "黑"),
    "31": ("SH", "沪"), "32": ("JS", "苏"), "33": ("ZJ", "浙"), "34": ("AH", "皖"),
    "35": ("FJ", "闽"), "36": ("JX", "赣"), "37": ("SD", "鲁"), "41": ("HA", "豫"),
    "42": ("HB", "鄂"), "43": ("HN", "湘"), "44": ("GD", "粤"), "45": ("GX", "桂"),
    "46": ("HI", "琼"), "50": ("CQ", "渝"), "51": ("SC", "川"), "52": ("GZ", "贵"),
    "53": ("YN", "云"), "54": ("XZ", "藏"), "61": ("SN", "陕"), "62": ("GS", "甘"),
    "63": ("QH", "青"), "64": ("NX", "宁"), "65": ("XJ", "新"), "71": ("TW", "台"),
    "81": ("HK", "港"), "82": ("MO", "澳"),
}  # fmt: skip


BEIJING = timezone(timedelta(hours=8))


@dataclass
class SimulatorSettings:
    """How the simulated province behaves; rates are probabilities in [0, 1]."""

    region: str
    gateway_url: str = "http://127.0.0.1:8080"
    key_id: str = ""
    secret: str = ""
    callback_secret: str | None = None
    latency: float = 0.05
    answer_delay: float = 0.0  # seconds before a case submission is answered (a slow intake)
    failure_rate: float = 0.0
    deny_rate: float = 0.0
    reject_rate: float = 0.0  # cases refused at intake (不予受理)
    duplicate_rate: float = 0.0
    report_batch_window: float = 0.05
    request_timeout: float = 10.0
    retry_backoff: float = 0.2
    retry_backoff_max: float = 5.0
    # A service window in Beijing time, e.g. (9, 17): outside it, Monday to Friday only, the
    # case endpoints answer 503 with Retry-After (the seconds until it opens), as many do.
    office_hours: tuple[int, int] | None = None
    clock: Callable[[], float] = time.time
    # A multipart upload: the part holding the JSON body, and the name of every file part (the
    # defaults of adapters.rest_json's multipart_body_field and multipart_file_field).
    multipart_body_field: str = "case"
    multipart_file_field: str = "files"


def closed_for(now: float, hours: tuple[int, int]) -> float:
    """Seconds until a weekday service window opens (0 if it is open), in Beijing time."""
    local = datetime.fromtimestamp(now, BEIJING)
    opens, closes = hours
    day = local.replace(hour=opens, minute=0, second=0, microsecond=0)
    if local.weekday() < 5 and opens <= local.hour < closes:
        return 0.0
    if local.hour >= opens or local.weekday() >= 5:
        day += timedelta(days=1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return (day - local).total_seconds()


@dataclass
class _Case:
    """One case the simulated province handles; only what processing needs, no applicant data."""

    case_id: str
    ticket: str
    simulate: str | None
    item_code: str
    steps: int = 0
    supplement_requested: bool = False
    withdrawn: bool = False
    finished: bool = False
    supplemented: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    files: list[dict[str, Any]] = field(default_factory=list)  # uploaded: no content kept


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _busy() -> web.Response:
    return _json({"code": "503", "msg": "系统繁忙"}, status=503)


def _error(status: int, msg: str) -> web.Response:
    return _json({"code": f"E{status}", "msg": msg}, status=status)


def _mismatch() -> web.Response:
    return _json({"code": MATERIAL_MISMATCH, "msg": "申请材料校验失败：文件摘要与材料清单不一致"})


class ProvinceSimulator(LoopbackServer):
    """One simulated province: handling partner, event receiver and control surface.

    Run it with :meth:`start` / :meth:`stop`, or mount :meth:`app` in any aiohttp runner: the
    background work (report sender, case timers) lives and dies with the application.
    """

    def __init__(self, settings: SimulatorSettings, *, rng: random.Random | None = None) -> None:
        # A private copy: control changes must not leak into the caller's settings object.
        self.settings = dataclasses.replace(settings)
        self._rng = rng or random.Random()
        prefix = settings.region[:2]
        self._ticket_prefix, self._short_name = _PROVINCES.get(prefix, (f"P{prefix}", "某"))
        self.down = False
        # Handling partner state.
        self._cases: dict[str, _Case] = {}
        self._by_ticket: dict[str, _Case] = {}
        self._ticket_seq = 0
        self._reports: asyncio.Queue[dict[str, Any]] = asyncio.Queue(REPORT_QUEUE_SIZE)
        self._inflight: list[dict[str, Any]] | None = None
        self._up = asyncio.Event()
        self._up.set()
        self.counters: dict[str, int] = {
            "submits": 0,
            "submit_repeats": 0,
            "submit_failures": 0,
            "reports_queued": 0,
            "reports_sent": 0,
            "messages_sent": 0,
            "send_failures": 0,
            "duplicates_sent": 0,
            "report_loop_restarts": 0,
        }
        # Event receiver state.
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.out_of_order = 0
        self.duplicates = 0
        self.seq_conflicts = 0
        self._event_ids: set[str] = set()
        self._last_seq: dict[str, int] = {}
        self._seqs: dict[str, set[int]] = {}
        self._nonces = NonceCache()
        # Plumbing.
        self._tasks = BackgroundTasks(log, "simulator", prefix=f"sim-{settings.region}-")
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application; one at a time per simulator, since they share its state."""
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._down_middleware])
        app.router.add_post("/cases", self._submit)
        app.router.add_post("/cases/{ref}/withdraw", self._withdraw)
        app.router.add_post("/cases/{ref}/supplements", self._supplement)
        app.router.add_post("/events", self._receive_events)
        app.router.add_get("/events/state", self._events_state)
        app.router.add_get("/_control", self._get_control)
        app.router.add_post("/_control", self._set_control)
        app.cleanup_ctx.append(
            self._with_loop(
                self._report_loop,
                name="reports",
                on_crash=self._count_restart,
                what=f"simulator {self.settings.region}: report loop",
            )
        )
        return app

    def _listening(self) -> None:
        log.info("province simulator %s listening on %s", self.settings.region, self._url)

    def _count_restart(self) -> None:
        self.counters["report_loop_restarts"] += 1

    @web.middleware
    async def _down_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """While down, the province-facing endpoints answer 503; introspection stays open.
        Outside the service window, the case endpoints answer 503 with Retry-After."""
        if self.down and not request.path.startswith(("/_control", "/events/state")):
            return _busy()
        hours = self.settings.office_hours
        if hours and request.path.startswith("/cases"):
            wait = closed_for(self.settings.clock(), hours)
            if wait:
                self.counters["closed_window"] = self.counters.get("closed_window", 0) + 1
                answer = _json({"code": "503", "msg": "非工作时间，请于办公时间提交"}, status=503)
                answer.headers["Retry-After"] = str(int(wait) + 1)
                return answer
        return await handler(request)

    # -- role 1: handling partner ---------------------------------------------------------------

    async def _submit(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.settings.answer_delay)
        try:
            body, files = await read_request(request, self.settings, MAX_BODY_BYTES)
        except BadRequest as exc:
            return _error(exc.status, exc.message)
        if not isinstance(body, dict):
            return _error(400, "请求体必须是 JSON 对象")
        case_id = body.get("caseId")
        if not isinstance(case_id, str) or not case_id:
            return _error(400, "缺少 caseId")
        form = body.get("form", {})
        if not isinstance(form, dict):
            return _error(400, "form 必须是 JSON 对象")
        if files and not files_listed(body, files, self.counters):
            return _mismatch()
        if self._roll(self.settings.failure_rate):
            self.counters["submit_failures"] += 1
            return _busy()
        case = self._cases.get(case_id)
        if case is not None:
            # A retry of the same case: same ticket, and processing is not restarted. Always
            # "1" (received), so a late retry cannot make the gateway go back in its lifecycle.
            self.counters["submit_repeats"] += 1
            return _json({"code": "0", "ticket": case.ticket, "statusCode": DISPATCHED})
        simulate = form.get("_simulate") or _marker(str(body.get("requestId", "")))
        case = _Case(
            case_id=case_id,
            ticket=self._new_ticket(),
            simulate=simulate if isinstance(simulate, str) else None,
            item_code=str(body.get("itemCode", "")),
            files=files,
        )
        self._cases[case_id] = case
        self._by_ticket[case.ticket] = case
        self.counters["submits"] += 1
        case.task = self._tasks.spawn(self._process(case), f"case-{case.ticket}")
        log.info("simulator %s: case %s received as %s", self.settings.region, case_id, case.ticket)
        return _json({"code": "0", "ticket": case.ticket, "statusCode": DISPATCHED})

    def partner_view(self, case_id: str) -> dict[str, Any] | None:
        """What this partner holds of a case (None if it never took it): for tests and demo."""
        case = self._cases.get(case_id)
        if case is None:
            return None
        return {"ticket": case.ticket, "withdrawn": case.withdrawn, "finished": case.finished}

    def received_files(self, case_id: str) -> list[dict[str, Any]]:
        """The files uploaded for a case (submit, then supplements) as this partner keeps them:
        ``{"name", "media_type", "sha256", "size"}``, never the content. For tests."""
        case = self._cases.get(case_id)
        return [dict(f) for f in case.files] if case else []

    def _find(self, ref: str) -> _Case | None:
        """By ticket, or by case id for a gateway that never learned the ticket."""
        return self._by_ticket.get(ref) or self._cases.get(ref)

    async def _withdraw(self, request: web.Request) -> web.Response:
        case = self._find(request.match_info["ref"])
        if case is None:
            return _error(404, "未找到该办件")
        if not case.withdrawn:
            case.withdrawn = True
            if case.task is not None:
                case.task.cancel()
            log.info("simulator %s: case %s withdrawn", self.settings.region, case.case_id)
        return _json({"code": "0"})

    async def _supplement(self, request: web.Request) -> web.Response:
        case = self._find(request.match_info["ref"])
        if case is None:
            return _error(404, "未找到该办件")
        if case.withdrawn or not case.supplement_requested:
            return _error(409, "该办件不在补正状态")
        try:  # a JSON material is neither parsed nor inspected (nor logged)
            body, files = await read_request(request, self.settings, MAX_BODY_BYTES,
                                             parse_json=False)  # fmt: skip
        except BadRequest as exc:
            return _error(exc.status, exc.message)
        if files and not files_listed(body, files, self.counters):
            return _mismatch()
        case.files.extend(files)
        case.supplemented.set()  # a repeat is harmless: the event is already set
        return _json({"code": "0"})

    async def _process(self, case: _Case) -> None:
        """Walk one case through the platform's statuses, one step per ``latency``."""
        await self._step()
        if case.simulate == "reject" or (
            case.simulate is None and self._roll(self.settings.reject_rate)
        ):
            await self._report(case, REJECTED, message="申请材料不符合受理条件，不予受理")
            case.finished = True
            return
        await self._report(case, ACCEPTED)
        if case.simulate == "supplement":
            await self._step()
            case.supplement_requested = True
            await self._report(case, SUPPLEMENT, message="请补充户口簿首页及本人页复印件")
            await case.supplemented.wait()
        await self._step()
        await self._report(case, IN_PROGRESS)
        await self._step()
        denied = case.simulate == "deny" or (
            case.simulate != "approve" and self._roll(self.settings.deny_rate)
        )
        now = time.time()
        result = {
            "decision_no": f"{self._short_name}通办决字〔{datetime.now(UTC).year}〕"
            f"{case.ticket[-6:]}号",
            "decided_at": iso(now),
            "handling_region": self.settings.region,
        }
        if not denied:  # what the item's contract promises the origin
            result |= item_result(case.item_code, ref=case.ticket, region=self.settings.region,
                                  now=datetime.now(UTC))  # fmt: skip
        outcome = "denied" if denied else "approved"
        await self._report(case, COMPLETED, outcome=outcome, result=result)
        case.finished = True

    async def _step(self) -> None:
        await asyncio.sleep(max(0.0, self.settings.latency))

    async def _report(self, case: _Case, status_code: str, **extra: Any) -> None:
        """Queue one report; waits when the queue is full (backpressure, never a drop).

        A withdrawal cancels the case's task, so nothing is queued for it afterwards.
        """
        case.steps += 1
        report: dict[str, Any] = {
            "caseId": case.case_id,
            "ticket": case.ticket,
            "statusCode": status_code,
            "eventId": f"{case.ticket}-{case.steps:02d}-{secrets.token_hex(4)}",
            **extra,
        }
        await self._reports.put(report)
        self.counters["reports_queued"] += 1

    def _new_ticket(self) -> str:
        self._ticket_seq += 1
        day = datetime.now(UTC).strftime("%Y%m%d")
        return f"{self._ticket_prefix}{day}{self._ticket_seq:06d}{secrets.randbelow(10_000):04d}"

    def _roll(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    # -- report sender --------------------------------------------------------------------------

    async def _report_loop(self) -> None:
        """Batch queued reports and deliver them one message at a time, so order is kept.

        The batch being delivered lives on the instance, so a restart after a crash resumes it.
        """
        while True:
            if self._inflight is None:
                self._inflight = await self._next_batch()
            await self._deliver(self._inflight)
            batch, self._inflight = self._inflight, None
            duplicates = [r for r in batch if self._roll(self.settings.duplicate_rate)]
            if duplicates:
                self._inflight = duplicates
                await self._deliver(duplicates)
                self._inflight = None
                self.counters["duplicates_sent"] += len(duplicates)

    async def _next_batch(self) -> list[dict[str, Any]]:
        """The first waiting report plus whatever else arrives within the flush window."""
        window = self.settings.report_batch_window
        return await next_batch(self._reports, window, MAX_REPORTS_PER_MESSAGE)

    async def _deliver(self, batch: list[dict[str, Any]]) -> None:
        """Send until the gateway answers 2xx, backing off between tries; nothing is dropped."""
        await send_until_acknowledged(
            lambda: self._post_reports(batch),
            self.settings,
            up=self._up,
            rng=self._rng,
            counters=self.counters,
            items=len(batch),
        )

    def _encode_reports(self, batch: list[dict[str, Any]]) -> bytes:
        return orjson.dumps({"reports": batch})

    async def _post_reports(self, batch: list[dict[str, Any]]) -> bool:
        assert self._session is not None
        body = self._encode_reports(batch)
        headers = {"Content-Type": "application/json"}
        return await post_signed(self._session, self.settings, body, headers, log=log,
                                 label="simulator", count=len(batch), noun="report(s)")  # fmt: skip

    # -- role 2: event receiver -----------------------------------------------------------------

    async def _receive_events(self, request: web.Request) -> web.Response:
        body = await request.read()
        secret = self.settings.callback_secret
        if secret is not None:
            key_id = request.headers.get(KEY_HEADER, "")
            signed = SignedRequest(request.method, request.raw_path, request.headers, body)
            try:
                verify_signature(signed, {key_id: secret}, self._nonces, time.time())
            except SignatureError as exc:
                return _error(401, str(exc))
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _error(400, "body is not JSON")
        batch = message if isinstance(message, list) else [message]
        for i, event in enumerate(batch):
            problem = _event_problem(event)
            if problem:
                return _error(400, f"event {i}: {problem}")
        for event in batch:
            self._record(event)
        return _json({"received": len(batch)})

    def _record(self, event: dict[str, Any]) -> None:
        """Keep one event unless already seen; count arrivals that break per-case order."""
        event_id, case_id, seq = event["event_id"], event["case_id"], event["seq"]
        if event_id in self._event_ids:
            self.duplicates += 1
            return
        self._event_ids.add(event_id)
        seen = self._seqs.setdefault(case_id, set())
        if seq in seen:
            # Another event id for a seq already held: a gateway bug worth surfacing, not an
            # ordering problem.
            self.seq_conflicts += 1
        else:
            # The first event of a case sets the baseline, so the count does not depend on where
            # the gateway starts numbering; a later-arriving earlier seq is still caught.
            last = self._last_seq.get(case_id)
            if last is not None and seq != last + 1:
                self.out_of_order += 1
            self._last_seq[case_id] = seq if last is None else max(last, seq)
            seen.add(seq)
        self.events.setdefault(case_id, []).append(event)

    async def _events_state(self, _request: web.Request) -> web.Response:
        cases = {
            case_id: [
                {k: e.get(k) for k in ("seq", "status", "outcome", "event_id")} for e in events
            ]
            for case_id, events in self.events.items()
        }
        return _json(
            {
                "cases": cases,
                "out_of_order": self.out_of_order,
                "duplicates": self.duplicates,
                "seq_conflicts": self.seq_conflicts,
                "total": sum(len(e) for e in self.events.values()),
            }
        )

    # -- control --------------------------------------------------------------------------------

    def control_state(self) -> dict[str, Any]:
        """Current behaviour and counters, as ``GET /_control`` shows them."""
        s = self.settings
        return {
            "region": s.region,
            "down": self.down,
            "failure_rate": s.failure_rate,
            "latency": s.latency,
            "answer_delay": s.answer_delay,
            "deny_rate": s.deny_rate,
            "duplicate_rate": s.duplicate_rate,
            "cases": len(self._cases),
            "reports_pending": self._reports.qsize() + len(self._inflight or ()),
            **self.counters,
        }

    def set_down(self, down: bool) -> None:
        """Down: answer 503 to everything province-facing and hold outgoing reports."""
        self.down = down
        set_up(self._up, not down)

    async def _get_control(self, _request: web.Request) -> web.Response:
        return _json(self.control_state())

    async def _set_control(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "expected a JSON object")
        rates = ("failure_rate", "deny_rate", "duplicate_rate")
        changes: dict[str, float] = {}
        for name in (*rates, "latency", "answer_delay"):
            if name not in body:
                continue
            value = body[name]
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or value < 0 or (name in rates and value > 1):
                return _error(400, f"{name} must be a number (rates in [0, 1], delays >= 0)")
            changes[name] = float(value)
        down = body.get("down")
        if down is not None and not isinstance(down, bool):
            return _error(400, "down must be a boolean")
        for name, value in changes.items():
            setattr(self.settings, name, value)
        if down is not None:
            self.set_down(down)
        return _json(self.control_state())


def _marker(request_id: str) -> str | None:
    """A scenario chosen by the origin's request id (``…-REJECT``, ``…-SUPPLEMENT``, ``…-DENY``),
    for payloads whose contract admits no ``_simulate`` field."""
    suffix = request_id.rsplit("-", 1)[-1].lower()
    return suffix if suffix in ("reject", "supplement", "deny", "approve") else None


def _event_problem(event: Any) -> str | None:
    if not isinstance(event, dict):
        return "not an object"
    for name in ("event_id", "case_id"):
        if not isinstance(event.get(name), str) or not event[name]:
            return f"{name} must be a non-empty string"
    seq = event.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        return "seq must be an integer"
    return None


async def run_simulator(settings: SimulatorSettings, host: str, port: int) -> None:
    """Serve a simulator until cancelled (the CLI's entry point), then stop it cleanly."""
    sim = ProvinceSimulator(settings)
    await sim.start(host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()
