"""A province's legacy SOAP platform on loopback (四川-style), for tests and the demo.

It plays a *handling partner* behind a JAX-WS style SOAP 1.1 service at :data:`SERVICE_PATH`,
speaking the protocol of :mod:`adapters.soap_xml` with its own data dictionary:
pinyin-initial element names (``WBBH`` 外部编号, ``BJBH`` 办件编号, ``SQRXM`` 申请人姓名,
``ZJHM`` 证件号码, ``BLZT`` 办理状态 …), its own code tables (证件类型 ``01`` 居民身份证,
status ``02`` 已受理 …), its own date formats, and GBK by default.
:meth:`SoapProvinceSimulator.adapter_settings` gives the ``soap_xml`` adapter table that talks
to it.

Operations (each takes one string part ``arg0`` holding an XML document; the answer's
``return`` holds an ``FHXX`` document with ``FHDM`` 返回代码: ``00`` 成功, ``10`` 校验不通过,
``20`` 办件不存在, ``30`` 状态不符, ``99`` 系统繁忙):

- ``SubmitCase``: idempotent by ``WBBH``; a repeat gets the same ``BJBH``.
- ``SupplementCase``, ``WithdrawCase``.
- ``QueryStatus``: the case's current status as one ``BJZT`` report.

Progress is reported either by a signed ``ReportStatus`` SOAP call to the gateway's
``/v1/partners/{region}/inbound`` (``report_mode="callback"``, retried until acknowledged, in
order) or only through ``QueryStatus`` (``report_mode="poll"``; with ``advance_on_query`` each
query moves the case one step, which makes polling tests deterministic).

Failure modes for tests: :meth:`~SoapProvinceSimulator.set_down` (HTTP 503 page, reports held),
``failure_rate`` with ``failure_kind`` (a ``soap:Server`` fault, a bare HTTP 500, or a ``99`` busy
code under HTTP 200), :meth:`~SoapProvinceSimulator.set_fault` (every call answers a fault),
``answer_delay`` (slow answers) and :meth:`~SoapProvinceSimulator.set_raw_answer` (any bytes at
all, e.g. a hostile XML document). Like a real legacy system, its refusal messages quote the
applicant; nothing about an applicant is ever logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import aiohttp
import orjson
from aiohttp import web

from adapters.soap_xml import (
    XmlError,
    charset_of,
    decode_xml,
    encodable,
    encode_codec,
    part_document,
    read_envelope,
    soap_call,
    soap_fault,
    xml_bytes,
)
from gateway.simulators.base import INBOUND_PATH as INBOUND_PATH  # re-exported
from gateway.simulators.base import (
    BackgroundTasks,
    LoopbackServer,
    next_batch,
    post_signed,
    send_until_acknowledged,
    set_up,
)
from gateway.simulators.results import item_result

log = logging.getLogger(__name__)

SERVICE_PATH = "/tbpt/services/TongbanService"
NAMESPACE = "http://ws.tbpt.sc.gov.cn/"
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_REPORTS_PER_MESSAGE = 200
REPORT_QUEUE_SIZE = 10_000
BEIJING = timezone(timedelta(hours=8))

# 办理状态 (BLZT).
RECEIVED, ACCEPTED, REJECTED, SUPPLEMENT, IN_PROGRESS, SUSPENDED, COMPLETED = (
    "01", "02", "03", "04", "05", "06", "09"
)  # fmt: skip
# 返回代码 (FHDM).
OK, INVALID, NOT_FOUND, WRONG_STATE, BUSY = "00", "10", "20", "30", "99"
# 证件类型 (ZJLX): 01 居民身份证, 02 户口簿, 03 护照, 04 港澳通行证, 99 其他.
ID_TYPES = frozenset({"01", "02", "03", "04", "99"})

# The data dictionary of this platform, in the adapter's words: our name → their element path.
ELEMENTS: dict[str, str] = {
    "case_id": "WBBH",
    "request_id": "SBLSH",
    "item_code": "SXBM",
    "contract_version": "SXBB",
    "origin_region": "SLDQ",
    "handling_region": "BLDQ",
    "sent_at": "FSSJ",
    "partner_ref": "BJBH",
    "applicant": "SQR",
    "applicant.kind": "SQR/SQRLX",
    "applicant.id_type": "SQR/ZJLX",
    "applicant.id_number": "SQR/ZJHM",
    "applicant.name": "SQR/SQRXM",
    "applicant.phone": "SQR/LXDH",
    "applicant.credit_code": "SQR/TYSHXYDM",
    "applicant.representative": "SQR/FDDBR",
    "applicant.representative.id_type": "SQR/FDDBR/ZJLX",
    "applicant.representative.id_number": "SQR/FDDBR/ZJHM",
    "applicant.representative.name": "SQR/FDDBR/XM",
    "applicant.representative.phone": "SQR/FDDBR/LXDH",
    "payload": "BDXX",
    "payload.insured_region": "BDXX/CBD",
    "payload.treatment_region": "BDXX/JYD",
    "payload.start_date": "BDXX/KSRQ",
    "payload.end_date": "BDXX/JSRQ",
    "payload.sex": "BDXX/XB",
    "payload.address": "BDXX/JZDZ",
    "attachments": "FJXX/FJ",
    "attachments.name": "FJMC",
    "attachments.media_type": "FJLX",
    "attachments.sha256": "FJZY",
    "attachments.content_base64": "FJNR",
    "note": "BZSM",
    "reason": "CHYY",
    "code": "FHDM",
    "message": "CLYJ",
    "status": "BLZT",
    "outcome": "BJJG",
    "result": "JGXX",
    "result.decision_no": "WSBH",
    "result.decided_at": "BJSJ",
    "result.handling_region": "BLDQ",
    "event_id": "XXID",
    "report": "BJZT",
}
ID_TYPE_TABLE = {"111": "01", "113": "02", "414": "03", "513": "04", "*": "99"}
CODE_TABLES: dict[str, dict[str, str]] = {
    "applicant.kind": {"natural_person": "1", "legal_person": "2"},
    "applicant.id_type": ID_TYPE_TABLE,
    "applicant.representative.id_type": ID_TYPE_TABLE,
    "payload.sex": {"1": "M", "2": "F", "*": "U"},
}
DATE_FORMATS = {
    "payload.start_date": "yyyyMMdd",
    "payload.end_date": "yyyyMMdd",
    "result.decided_at": "yyyyMMddHHmmss",
}
STATUS_CODES = {
    RECEIVED: "dispatched",
    ACCEPTED: "accepted",
    REJECTED: "rejected",
    SUPPLEMENT: "supplement_required",
    IN_PROGRESS: "in_progress",
    SUSPENDED: "in_progress",  # 挂起: no lifecycle status of its own
    COMPLETED: "completed",
}
APPROVED, DENIED = "1", "2"  # 办结结果 (BJJG): 1 准予, 2 不予


@dataclass
class SoapSimulatorSettings:
    """How the simulated platform behaves; rates are probabilities in [0, 1]."""

    region: str
    gateway_url: str = "http://127.0.0.1:8080"
    key_id: str = ""
    secret: str = ""
    encoding: str = "GBK"
    namespace: str = NAMESPACE
    report_mode: Literal["callback", "poll"] = "callback"
    advance_on_query: bool = False
    latency: float = 0.05
    answer_delay: float = 0.0
    failure_rate: float = 0.0
    failure_kind: Literal["server_fault", "http_500", "busy"] = "server_fault"
    deny_rate: float = 0.0
    report_batch_window: float = 0.05
    request_timeout: float = 10.0
    retry_backoff: float = 0.2
    retry_backoff_max: float = 5.0


@dataclass
class _Case:
    """One case the platform holds. ``record`` is what it received, kept in memory for tests
    (never logged)."""

    case_id: str
    ticket: str
    simulate: str | None
    record: dict[str, str]
    status: str = RECEIVED
    outcome: str | None = None
    message: str | None = None
    result: dict[str, Any] | None = None
    steps: int = 0
    event_id: str = ""
    supplement_requested: bool = False
    withdrawn: bool = False
    finished: bool = False
    supplemented: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


Handler = Callable[[ET.Element], Awaitable[ET.Element]]


class SoapProvinceSimulator(LoopbackServer):
    """One simulated SOAP platform. Run it with :meth:`start` / :meth:`stop`, or mount
    :meth:`app`: the background work lives and dies with the application."""

    def __init__(
        self, settings: SoapSimulatorSettings, *, rng: random.Random | None = None
    ) -> None:
        self.settings = dataclasses.replace(settings)
        self._rng = rng or random.Random()
        self._codec = encode_codec(settings.encoding)
        self.down = False
        self.fault: str | None = None
        self.fault_message = "服务端处理异常"
        self._raw_answer: tuple[int, bytes, str] | None = None
        self._cases: dict[str, _Case] = {}
        self._by_ticket: dict[str, _Case] = {}
        self._ticket_seq = 0
        self._reports: asyncio.Queue[ET.Element] = asyncio.Queue(REPORT_QUEUE_SIZE)
        self._inflight: list[ET.Element] | None = None
        self._up = asyncio.Event()
        self._up.set()
        self.counters: dict[str, int] = {
            "calls": 0,
            "faults": 0,
            "submits": 0,
            "submit_repeats": 0,
            "submit_failures": 0,
            "refusals": 0,
            "supplements": 0,
            "withdrawals": 0,
            "queries": 0,
            "reports_queued": 0,
            "reports_sent": 0,
            "messages_sent": 0,
            "send_failures": 0,
            "report_loop_restarts": 0,
        }
        self._handlers: dict[str, Handler] = {
            "SubmitCase": self._submit,
            "SupplementCase": self._supplement,
            "WithdrawCase": self._withdraw,
            "QueryStatus": self._query,
        }
        self._tasks = BackgroundTasks(log, "simulator", prefix=f"soapsim-{settings.region}-")
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post(SERVICE_PATH, self._service)
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
        log.info("SOAP province simulator %s listening on %s", self.settings.region, self._url)

    @property
    def endpoint(self) -> str:
        """The service's address, as the adapter's ``endpoint``."""
        return self.url + SERVICE_PATH

    def _count_restart(self) -> None:
        self.counters["report_loop_restarts"] += 1

    # -- behaviour --------------------------------------------------------------------------------

    def set_down(self, down: bool) -> None:
        """Down: answer an HTTP 503 maintenance page to every call and hold outgoing reports."""
        self.down = down
        set_up(self._up, not down)

    def set_fault(self, code: str | None, message: str = "服务端处理异常") -> None:
        """Answer every call with a SOAP fault (``Server`` or ``Client``); None stops it."""
        self.fault = code
        self.fault_message = message

    def set_raw_answer(
        self, answer: bytes | None, status: int = 200, content_type: str = "text/xml; charset=UTF-8"
    ) -> None:
        """Answer every call with exactly these bytes (None: behave normally again)."""
        self._raw_answer = None if answer is None else (status, answer, content_type)

    def adapter_settings(
        self, *, poll_interval: float | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """The ``soap_xml`` adapter table that speaks this platform's protocol."""
        s = self.settings
        table: dict[str, Any] = {
            "kind": "soap_xml",
            "endpoint": self.endpoint,
            "namespace": s.namespace,
            "encoding": s.encoding,
            "soap_action": "{namespace}{operation}",
            "query_operation": "QueryStatus" if s.report_mode == "poll" else None,
            "request_root": "SBXX",
            "elements": dict(ELEMENTS),
            "code_tables": {k: dict(v) for k, v in CODE_TABLES.items()},
            "date_formats": dict(DATE_FORMATS),
            "timestamp_format": "yyyy-MM-dd HH:mm:ss",
            "status_codes": dict(STATUS_CODES),
            "approved_values": [APPROVED],
            "denied_values": [DENIED],
            "ok_codes": [OK],
            "busy_codes": [BUSY],
        }
        if poll_interval is not None:
            table["poll_interval"] = poll_interval
        if timeout is not None:
            table["timeout"] = timeout
        return table

    def partner_view(self, case_id: str) -> dict[str, Any] | None:
        """What this platform holds of a case (None if it never took it): for tests and demo."""
        case = self._cases.get(case_id)
        if case is None:
            return None
        return {
            "ticket": case.ticket,
            "status": case.status,
            "withdrawn": case.withdrawn,
            "finished": case.finished,
            "supplemented": case.supplemented.is_set(),
        }

    def partner_record(self, case_id: str) -> dict[str, str] | None:
        """The submit document as received, element path → text (tests only; holds applicant
        data, so never log it)."""
        case = self._cases.get(case_id)
        return dict(case.record) if case is not None else None

    # -- the service ----------------------------------------------------------------------------

    async def _service(self, request: web.Request) -> web.Response:
        self.counters["calls"] += 1
        if self._raw_answer is not None:
            status, body, content_type = self._raw_answer
            return web.Response(status=status, body=body, headers={"Content-Type": content_type})
        if self.down:
            return web.Response(
                status=503, text="<html><body>系统维护中</body></html>", content_type="text/html"
            )
        if self.settings.answer_delay > 0:
            await asyncio.sleep(self.settings.answer_delay)
        raw = await request.read()
        action = request.headers.get("SOAPAction")
        if action is None:
            return self._fault("Client", "缺少 SOAPAction 头")
        try:
            text = decode_xml(
                raw, charset_of(request.headers.get("Content-Type")), self.settings.encoding
            )
            message = read_envelope(text)
        except XmlError:
            return self._fault("Client", "请求不是合法的 SOAP 1.1 报文")
        handler = self._handlers.get(message.operation)
        if message.fault is not None or handler is None:
            return self._fault("Client", "找不到对应的服务操作")
        if message.namespace != self.settings.namespace:
            return self._fault("Client", "服务操作的命名空间不符")
        action = action.strip().strip('"')
        if action and not action.endswith(message.operation):
            return self._fault("Client", "SOAPAction 与请求的服务操作不符")
        if self.fault is not None:
            return self._fault(self.fault, self.fault_message)
        if message.operation == "SubmitCase" and self._roll(self.settings.failure_rate):
            self.counters["submit_failures"] += 1
            return self._failure(message.operation)
        try:
            document = part_document(message.element, "arg0")
        except XmlError:
            return self._fault("Client", "arg0 不是合法的 XML 文档")
        if document is None:
            return self._fault("Client", "缺少参数 arg0")
        answer = await handler(document)
        return self._answer(message.operation, answer)

    def _answer(self, operation: str, document: ET.Element) -> web.Response:
        s = self.settings
        inner = f'<?xml version="1.0" encoding="{s.encoding}"?>'
        inner += ET.tostring(document, encoding="unicode")
        markup = soap_call(
            s.namespace, f"{operation}Response", "return", encodable(inner, self._codec)
        )
        return self._xml(200, markup)

    def _fault(self, code: str, message: str) -> web.Response:
        self.counters["faults"] += 1
        return self._xml(500, soap_fault(code, message))

    def _xml(self, status: int, markup: str) -> web.Response:
        body = xml_bytes(markup, self.settings.encoding)
        return web.Response(
            status=status,
            body=body,
            headers={"Content-Type": f"text/xml; charset={self.settings.encoding}"},
        )

    def _failure(self, operation: str) -> web.Response:
        kind = self.settings.failure_kind
        if kind == "http_500":
            return web.Response(
                status=500, text="<html><body>500 Internal Server Error</body></html>",
                content_type="text/html",
            )  # fmt: skip
        if kind == "busy":
            return self._answer(operation, _reply(BUSY, "系统繁忙，请稍后再试"))
        return self._fault("Server", "系统繁忙，请稍后再试")

    async def _submit(self, document: ET.Element) -> ET.Element:
        record = _flatten(document)
        case_id = record.get("WBBH", "")
        if not case_id:
            self.counters["refusals"] += 1
            return _reply(INVALID, "缺少外部编号 WBBH")
        problem = _applicant_problem(record)
        if problem is not None:
            self.counters["refusals"] += 1
            return _reply(INVALID, problem)
        case = self._cases.get(case_id)
        if case is not None:
            # A retry of the same case: same ticket, processing not restarted, and always
            # 01 (received), so a late retry cannot send the gateway back in its lifecycle.
            self.counters["submit_repeats"] += 1
            return _reply(OK, "成功", WBBH=case_id, BJBH=case.ticket, BLZT=RECEIVED)
        simulate = record.get("BDXX/_simulate") or _marker(record.get("SBLSH", ""))
        case = _Case(case_id=case_id, ticket=self._new_ticket(), simulate=simulate, record=record)
        self._cases[case_id] = case
        self._by_ticket[case.ticket] = case
        self.counters["submits"] += 1
        if self.settings.report_mode == "callback" or not self.settings.advance_on_query:
            case.task = self._tasks.spawn(self._process(case), f"case-{case.ticket}")
        log.info("simulator %s: case %s received as %s", self.settings.region, case_id, case.ticket)
        return _reply(OK, "成功", WBBH=case_id, BJBH=case.ticket, BLZT=RECEIVED)

    def _find(self, document: ET.Element) -> _Case | None:
        ticket = (document.findtext("BJBH") or "").strip()
        case_id = (document.findtext("WBBH") or "").strip()
        return self._by_ticket.get(ticket) or self._cases.get(case_id)

    async def _supplement(self, document: ET.Element) -> ET.Element:
        case = self._find(document)
        if case is None:
            return _reply(NOT_FOUND, "未找到该办件")
        if case.withdrawn or not case.supplement_requested:
            return _reply(WRONG_STATE, "该办件不在补正状态")
        self.counters["supplements"] += 1
        case.supplemented.set()  # a repeat is harmless: the event is already set
        return _reply(OK, "成功", WBBH=case.case_id, BJBH=case.ticket)

    async def _withdraw(self, document: ET.Element) -> ET.Element:
        case = self._find(document)
        if case is None:
            return _reply(NOT_FOUND, "未找到该办件")
        if not case.withdrawn:
            case.withdrawn = True
            self.counters["withdrawals"] += 1
            if case.task is not None:
                case.task.cancel()
            log.info("simulator %s: case %s withdrawn", self.settings.region, case.case_id)
        return _reply(OK, "成功", WBBH=case.case_id, BJBH=case.ticket)

    async def _query(self, document: ET.Element) -> ET.Element:
        self.counters["queries"] += 1
        case = self._find(document)
        if case is None:
            return _reply(NOT_FOUND, "未找到该办件")
        if self.settings.advance_on_query and not case.withdrawn:
            await self._advance(case)
        reply = _reply(OK, "成功")
        reply.append(self._report(case))
        return reply

    # -- processing -----------------------------------------------------------------------------

    async def _process(self, case: _Case) -> None:
        """Walk one case through the platform's statuses, one step per ``latency``."""
        while not case.finished:
            await asyncio.sleep(max(0.0, self.settings.latency))
            if case.status == SUPPLEMENT:
                await case.supplemented.wait()
            await self._advance(case)

    async def _advance(self, case: _Case) -> None:
        """Move a case one status on (if it can move) and, in callback mode, queue a report."""
        if case.finished or case.withdrawn:
            return
        if case.status == RECEIVED:
            if case.simulate == "reject":
                case.status, case.finished = REJECTED, True
                case.message = "申请材料不符合受理条件，不予受理"
            else:
                case.status = ACCEPTED
        elif case.status == ACCEPTED:
            if case.simulate == "supplement" and not case.supplement_requested:
                case.status, case.supplement_requested = SUPPLEMENT, True
                case.message = "请补充户口簿首页及本人页复印件"
            else:
                case.status = IN_PROGRESS
        elif case.status == SUPPLEMENT:
            if not case.supplemented.is_set():
                return
            case.status, case.message = IN_PROGRESS, None
        elif case.status == IN_PROGRESS:
            denied = case.simulate == "deny" or (
                case.simulate != "approve" and self._roll(self.settings.deny_rate)
            )
            now = datetime.now(BEIJING)
            case.status, case.finished = COMPLETED, True
            case.outcome = DENIED if denied else APPROVED
            case.result = {
                "WSBH": f"川通办决字〔{now.year}〕{case.ticket[-6:]}号",
                "BJSJ": now.strftime("%Y%m%d%H%M%S"),
                "BLDQ": self.settings.region,
            }
            if not denied:  # what the item's contract promises, in the gateway's names
                case.result |= item_result(case.record.get("SXBM", ""), ref=case.ticket,
                                           region=self.settings.region, now=now)  # fmt: skip
        else:
            return
        case.steps += 1
        case.event_id = f"{case.ticket}-{case.steps:02d}-{secrets.token_hex(4)}"
        if self.settings.report_mode == "callback":
            await self._reports.put(self._report(case))  # waits when full: never a drop
            self.counters["reports_queued"] += 1

    def _report(self, case: _Case) -> ET.Element:
        report = ET.Element("BJZT")
        _sub(report, "WBBH", case.case_id)
        _sub(report, "BJBH", case.ticket)
        _sub(report, "BLZT", case.status)
        if case.outcome is not None:
            _sub(report, "BJJG", case.outcome)
        if case.message:
            _sub(report, "CLYJ", case.message)
        if case.event_id:
            _sub(report, "XXID", case.event_id)
        _sub(report, "ZTSJ", datetime.now(BEIJING).strftime("%Y-%m-%d %H:%M:%S"))
        if case.result is not None:
            result = ET.SubElement(report, "JGXX")
            for name, value in case.result.items():
                _value(result, name, value)
        return report

    def _new_ticket(self) -> str:
        self._ticket_seq += 1
        day = datetime.now(BEIJING).strftime("%Y%m%d")
        prefix = "SC" if self.settings.region.startswith("51") else f"P{self.settings.region[:2]}"
        return f"{prefix}{day}{self._ticket_seq:06d}{secrets.randbelow(10_000):04d}"

    def _roll(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    # -- report sender --------------------------------------------------------------------------

    async def _report_loop(self) -> None:
        """Batch queued reports and deliver them one message at a time, so order is kept."""
        while True:
            if self._inflight is None:
                self._inflight = await self._next_batch()
            await self._deliver(self._inflight)
            self._inflight = None

    async def _next_batch(self) -> list[ET.Element]:
        window = self.settings.report_batch_window
        return await next_batch(self._reports, window, MAX_REPORTS_PER_MESSAGE)

    async def _deliver(self, batch: list[ET.Element]) -> None:
        """Send until the gateway answers 2xx, backing off between tries; nothing is dropped."""
        await send_until_acknowledged(
            lambda: self._post_reports(batch),
            self.settings,
            up=self._up,
            rng=self._rng,
            counters=self.counters,
            items=len(batch),
        )

    def encode_reports(self, batch: list[ET.Element]) -> bytes:
        """One ``ReportStatus`` call carrying ``batch``, as the HTTP body."""
        s = self.settings
        root = ET.Element("ZTBG")
        root.extend(batch)
        inner = f'<?xml version="1.0" encoding="{s.encoding}"?>'
        inner += ET.tostring(root, encoding="unicode")
        markup = soap_call(s.namespace, "ReportStatus", "arg0", encodable(inner, self._codec))
        return xml_bytes(markup, s.encoding)

    async def _post_reports(self, batch: list[ET.Element]) -> bool:
        assert self._session is not None
        body = self.encode_reports(batch)
        headers = {
            "Content-Type": f"text/xml; charset={self.settings.encoding}",
            "SOAPAction": '"ReportStatus"',
        }
        return await post_signed(self._session, self.settings, body, headers, log=log,
                                 label="simulator", count=len(batch), noun="report(s)")  # fmt: skip

    # -- control --------------------------------------------------------------------------------

    def control_state(self) -> dict[str, Any]:
        s = self.settings
        return {
            "region": s.region,
            "down": self.down,
            "fault": self.fault,
            "report_mode": s.report_mode,
            "failure_rate": s.failure_rate,
            "failure_kind": s.failure_kind,
            "latency": s.latency,
            "deny_rate": s.deny_rate,
            "cases": len(self._cases),
            "reports_pending": self._reports.qsize() + len(self._inflight or ()),
            **self.counters,
        }

    async def _get_control(self, _request: web.Request) -> web.Response:
        return _json(self.control_state())

    async def _set_control(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _json({"error": "body is not JSON"}, 400)
        if not isinstance(body, dict):
            return _json({"error": "expected a JSON object"}, 400)
        rates = ("failure_rate", "deny_rate")
        changes: dict[str, float] = {}
        for name in (*rates, "latency"):
            if name not in body:
                continue
            value = body[name]
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or value < 0 or (name in rates and value > 1):
                return _json({"error": f"{name}: a number (rates in [0, 1], latency >= 0)"}, 400)
            changes[name] = float(value)
        down, fault = body.get("down"), body.get("fault", ...)
        if down is not None and not isinstance(down, bool):
            return _json({"error": "down must be a boolean"}, 400)
        if fault is not ... and fault not in (None, "Server", "Client"):
            return _json({"error": "fault must be null, Server or Client"}, 400)
        for name, value in changes.items():
            setattr(self.settings, name, value)
        if down is not None:
            self.set_down(down)
        if fault is not ...:
            self.set_fault(fault)
        return _json(self.control_state())


def _reply(code: str, message: str, **elements: str) -> ET.Element:
    root = ET.Element("FHXX")
    _sub(root, "FHDM", code)
    _sub(root, "FHSM", message)
    for name, value in elements.items():
        _sub(root, name, value)
    return root


def _sub(parent: ET.Element, name: str, text: str) -> None:
    ET.SubElement(parent, name).text = text


def _value(parent: ET.Element, name: str, value: Any) -> None:
    """A value as elements: a list as the element repeated, an object as children, true and
    false in XML Schema's words."""
    if isinstance(value, list):
        for one in value:
            _value(parent, name, one)
    elif isinstance(value, dict):
        element = ET.SubElement(parent, name)
        for key, inner in value.items():
            _value(element, key, inner)
    else:
        _sub(parent, name, str(value).lower() if isinstance(value, bool) else str(value))


def _flatten(document: ET.Element) -> dict[str, str]:
    """Leaf element path → text; the first of repeated elements wins."""
    out: dict[str, str] = {}

    def walk(element: ET.Element, prefix: str) -> None:
        for child in element:
            path = f"{prefix}{child.tag}"
            if len(child):
                walk(child, path + "/")
            else:
                out.setdefault(path, (child.text or "").strip())

    walk(document, "")
    return out


def _applicant_problem(record: dict[str, str]) -> str | None:
    """Validation as the platform does it, refusal messages quoting the applicant included."""
    name = record.get("SQR/SQRXM", "")
    if record.get("SQR/SQRLX") == "2":
        if not record.get("SQR/TYSHXYDM"):
            return f"单位申请人{name}缺少统一社会信用代码"
        return None
    id_number = record.get("SQR/ZJHM", "")
    if record.get("SQR/ZJLX") not in ID_TYPES or not id_number:
        return f"申请人{name}（证件号码{id_number}）的证件类型或证件号码无效"
    return None


def _marker(request_id: str) -> str | None:
    """A scenario chosen by the origin's request id (``…-REJECT``, ``…-SUPPLEMENT``, ``…-DENY``,
    ``…-APPROVE``)."""
    suffix = request_id.rsplit("-", 1)[-1].lower()
    return suffix if suffix in ("reject", "supplement", "deny", "approve") else None


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def run_simulator(settings: SoapSimulatorSettings, host: str, port: int) -> None:
    """Serve a simulator until cancelled (the CLI's entry point), then stop it cleanly."""
    sim = SoapProvinceSimulator(settings)
    await sim.start(host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()
