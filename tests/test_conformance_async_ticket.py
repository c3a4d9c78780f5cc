"""The conformance kit against ``async_ticket``, with a double of a ticket-and-callback province.

The double speaks the protocol of :mod:`gateway.simulators.ticket` (app-key signature on every
call, ``{"code": "0", "ticket": …}`` answers, status codes 1/3/4/6/8/11, 准予/不予), but it is a
small server of its own so that it can misbehave on demand and record every request it receives.
The adapter runs in its default ``mode = "both"``: callbacks are read by ``parse_inbound`` and the
status query is polled, so the polling rules run too. It runs again in ``mode = "callback"``, where
it breaks rule 23 (see :class:`TestAsyncTicketCallbackModeConformance`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson
from aiohttp import web

from adapters.async_ticket import DEFAULT_STATUS_CODES, AsyncTicketAdapter
from adapters.conformance import ConformanceSuite, HttpPartnerDouble

APP_KEY = "ticket-app-key"
APP_SECRET = "ticket-app-secret"
THEIR_STATUS = {status: code for code, status in DEFAULT_STATUS_CODES.items()}
THEIR_OUTCOME = {"approved": "准予", "denied": "不予"}


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


def _signature_ok(headers: Mapping[str, str]) -> bool:
    """The province's check: X-Sign = hex SHA-256 of key + secret + timestamp, within 5 min."""
    ts = headers.get("X-Timestamp", "")
    if headers.get("X-App-Key") != APP_KEY or not ts.isascii() or not ts.isdigit():
        return False
    if abs(time.time() - int(ts)) > 300:
        return False
    expected = hashlib.sha256(f"{APP_KEY}{APP_SECRET}{ts}".encode()).hexdigest()
    return hmac.compare_digest(headers.get("X-Sign", "").encode(), expected.encode())


class AsyncTicketDouble(HttpPartnerDouble):
    """An ``async_ticket`` partner on loopback (port 0) that misbehaves on demand.

    ``POST /tickets`` answers a ticket (a repeat of a case gets its ticket again); supplements and
    withdrawals are taken for any ticket it issued; ``GET /tickets/{ticket}`` answers what
    :meth:`settle` stored, or 1 已接件. Its refusals and errors quote the applicant, as real
    partners' messages do; a call without a valid signature is refused with HTTP 401.
    """

    def __init__(self) -> None:
        super().__init__()
        self._tickets: dict[str, str] = {}  # caseId → ticket
        self._settled: dict[str, dict[str, Any]] = {}  # ticket → status answer
        self._quote = ""

    # -- PartnerDouble ------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/tickets", self._submit)
        app.router.add_get("/tickets/{ticket}", self._status)
        app.router.add_post("/tickets/{ticket}/supplements", self._follow_up)
        app.router.add_post("/tickets/{ticket}/withdraw", self._follow_up)

    def adapter_settings(self) -> dict[str, Any]:
        return {
            "base_url": self._url,
            "app_key": APP_KEY,
            "app_secret": APP_SECRET,
            "timeout": 0.5,  # under ctx.timeout (1 s), with room for a loaded machine
            "poll_interval": 0.05,
        }

    def native_report(
        self,
        case_id: str,
        status: str,
        outcome: str | None,
        result: Mapping[str, Any],
        partner_ref: str,
    ) -> bytes:
        """A callback notice, as the province posts it to the gateway's inbound route."""
        return orjson.dumps(self._notice(case_id, partner_ref, status, outcome, result))

    def settle(
        self,
        case_id: str,
        partner_ref: str | None,
        status: str,
        outcome: str | None,
        result: Mapping[str, Any],
    ) -> None:
        ticket = partner_ref or self._tickets.get(case_id) or f"SL{case_id[-12:]}"
        self._settled[ticket] = self._notice(case_id, ticket, status, outcome, result)

    # -- the province's side --------------------------------------------------------------------

    @staticmethod
    def _notice(
        case_id: str, ticket: str, status: str, outcome: str | None, result: Mapping[str, Any]
    ) -> dict[str, Any]:
        notice: dict[str, Any] = {
            "ticket": ticket,
            "caseId": case_id,
            "statusCode": THEIR_STATUS[status],
            "eventId": f"{ticket}-{THEIR_STATUS[status]}",
            "updatedAt": "2026-11-21T10:00:00.000Z",
        }
        if outcome is not None:
            notice["outcome"] = THEIR_OUTCOME[outcome]
        if result:
            notice["result"] = dict(result)
        if status in ("rejected", "supplement_required"):
            notice["message"] = "申请材料不齐全"
        return notice

    async def _misbehave(self) -> web.StreamResponse | None:
        quote = self._quote
        match self.mode:
            case "ok" | "down":
                return None
            case "timeout":
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), 5.0)
                return _json({"code": "503", "msg": "处理超时"}, status=503)
            case "http_500":
                return _json({"code": "E500", "msg": f"数据库异常：{quote}"}, status=500)
            case "http_429":
                return _json(
                    {"code": "429", "msg": f"超出调用配额 {quote}"}, 429, {"Retry-After": "1"}
                )
            case "refuse":  # a business refusal under HTTP 200, as the simulator's
                return _json({"code": "E1001", "msg": f"证件号码与姓名不匹配：{quote}"})
            case "busy_in_body":
                return _json({"code": "503", "msg": f"系统繁忙，请稍后再试（{quote}）"})
            case "garbage":
                return web.Response(
                    text=f"<html><body>系统维护中 {quote}</body></html>", content_type="text/html"
                )
        raise AssertionError(self.mode)  # pragma: no cover

    async def _read(self, request: web.Request) -> dict[str, Any] | web.Response:
        if not _signature_ok(request.headers):
            return _json({"code": "E401", "msg": "签名校验失败"}, status=401)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _json({"code": "E400", "msg": "请求体不是合法的 JSON"}, status=400)
        if not isinstance(body, dict):
            return _json({"code": "E400", "msg": "请求体必须是 JSON 对象"}, status=400)
        self._received.append(body)
        applicant = body.get("applicant")
        if isinstance(applicant, dict):
            values = (applicant.get(k) for k in ("id_number", "name", "phone"))
            self._quote = " ".join(str(v) for v in values if v)
        return body

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        body = await self._read(request)
        if isinstance(body, web.Response):
            return body
        if (answer := await self._misbehave()) is not None:
            return answer
        case_id = body.get("caseId")
        if not isinstance(case_id, str) or not case_id:
            return _json({"code": "E1001", "msg": "缺少外部业务编号 caseId"})
        ticket = self._tickets.setdefault(case_id, f"SL5120261121{len(self._tickets) + 1:08d}")
        return _json({"code": "0", "msg": "已接件", "ticket": ticket})

    async def _follow_up(self, request: web.Request) -> web.StreamResponse:
        body = await self._read(request)
        if isinstance(body, web.Response):
            return body
        if (answer := await self._misbehave()) is not None:
            return answer
        ticket = request.match_info["ticket"]
        if self._tickets.get(str(body.get("caseId"))) != ticket:
            return _json({"code": "E404", "msg": "流水号不存在"})
        return _json({"code": "0", "msg": "已接收"})

    async def _status(self, request: web.Request) -> web.StreamResponse:
        if not _signature_ok(request.headers):
            return _json({"code": "E401", "msg": "签名校验失败"}, status=401)
        if (answer := await self._misbehave()) is not None:
            return answer
        ticket = request.match_info["ticket"]
        case_id = next((c for c, t in self._tickets.items() if t == ticket), None)
        if case_id is None:
            return _json({"code": "E404", "msg": "流水号不存在"})
        notice = self._settled.get(ticket) or self._notice(case_id, ticket, "dispatched", None, {})
        return _json({"code": "0", **notice})


class TestAsyncTicketConformance(ConformanceSuite):
    adapter_class = AsyncTicketAdapter
    double_factory = AsyncTicketDouble
    native_fields: ClassVar[Mapping[str, str]] = {
        "case_id": "caseId",
        "item_code": "itemCode",
        "id_number": "applicant.id_number",
        "name": "applicant.name",
    }
    context_timeout: ClassVar[float] = 1.0  # ctx.timeout; the adapter's own timeout is 0.5 s


class CallbackModeDouble(AsyncTicketDouble):
    """The same partner, configured for callbacks only: the gateway must not poll it."""

    def adapter_settings(self) -> dict[str, Any]:
        return {**super().adapter_settings(), "mode": "callback"}


class TestAsyncTicketCallbackModeConformance(TestAsyncTicketConformance):
    double_factory = CallbackModeDouble
