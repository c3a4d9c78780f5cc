"""The conformance kit against ``soap_xml``, with a double of a Sichuan-style SOAP platform.

The double speaks the dialect of :mod:`gateway.simulators.soap` (GBK, pinyin-initial element names,
its own code tables and date formats, ``FHDM`` business codes), but it is a small server of its own
so that it can misbehave on demand and record every request it receives. Its settings include
``QueryStatus``, so the adapter is a :class:`~adapters.sdk.PollingAdapter` and the polling rules
run too.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar

from aiohttp import web

from adapters.conformance import ConformanceSuite, HttpPartnerDouble
from adapters.soap_xml import (
    SoapXmlAdapter,
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
from gateway.simulators.soap import (
    APPROVED,
    BEIJING,
    BUSY,
    CODE_TABLES,
    DATE_FORMATS,
    DENIED,
    ELEMENTS,
    INVALID,
    NAMESPACE,
    NOT_FOUND,
    OK,
    SERVICE_PATH,
    STATUS_CODES,
    SUSPENDED,
)

ENCODING = "GBK"
CODEC = encode_codec(ENCODING)
# Our lifecycle word → the platform's 办理状态 (05 开始办理, not 06 挂起, for in_progress).
THEIR_STATUS = {status: code for code, status in STATUS_CODES.items() if code != SUSPENDED}
THEIR_OUTCOME = {"approved": APPROVED, "denied": DENIED}
# The platform keeps times as yyyyMMddHHmmss, Beijing time; soap_xml reads them back as ISO 8601
# with the partner's offset, so that is the canonical form a round trip gives.
RESULT_DATES = {"decided_at"}
SAMPLE_RESULT: Mapping[str, Any] = {
    "decision_no": "川通办决字〔2026〕000123号",
    "decided_at": "2026-11-21T18:00:00+08:00",
}


def _their_result_name(name: str) -> str:
    return ELEMENTS.get(f"result.{name}", name)


def _their_date(value: str) -> str:
    return datetime.fromisoformat(value).astimezone(BEIJING).strftime("%Y%m%d%H%M%S")


def _as_data(element: ET.Element) -> Any:
    """An inner document as nested dicts (leaf text; a repeated name keeps the first)."""
    if len(element) == 0:
        return (element.text or "").strip()
    out: dict[str, Any] = {}
    for child in element:
        out.setdefault(child.tag, _as_data(child))
    return out


def _sub(parent: ET.Element, name: str, text: str) -> None:
    ET.SubElement(parent, name).text = text


def _reply(code: str, message: str, **elements: str) -> ET.Element:
    root = ET.Element("FHXX")
    _sub(root, "FHDM", code)
    _sub(root, "FHSM", message)
    for name, value in elements.items():
        _sub(root, name, value)
    return root


class SoapXmlDouble(HttpPartnerDouble):
    """A ``soap_xml`` partner on loopback (port 0) that misbehaves on demand.

    ``SubmitCase`` is idempotent by ``WBBH`` (a repeat gets the same ``BJBH``); ``SupplementCase``
    and ``WithdrawCase`` take any case it holds; ``QueryStatus`` answers what :meth:`settle` stored
    (or 01 已接件). Like a real platform, its refusals and faults quote the applicant.
    """

    url_path = SERVICE_PATH

    def __init__(self) -> None:
        super().__init__()
        self._tickets: dict[str, str] = {}  # WBBH → BJBH
        self._settled: dict[str, ET.Element] = {}  # WBBH → BJZT report
        self._quote = ""

    # -- PartnerDouble ------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_post(SERVICE_PATH, self._service)

    def adapter_settings(self) -> dict[str, Any]:
        # As SoapProvinceSimulator.adapter_settings(), with a status query and a short timeout.
        return {
            "endpoint": self._url,
            "namespace": NAMESPACE,
            "encoding": ENCODING,
            "soap_action": "{namespace}{operation}",
            "query_operation": "QueryStatus",
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
        """A ``ReportStatus`` call, as the platform posts it to the gateway's inbound route."""
        root = ET.Element("ZTBG")
        root.append(self._report(case_id, partner_ref, status, outcome, result))
        inner = f'<?xml version="1.0" encoding="{ENCODING}"?>' + ET.tostring(
            root, encoding="unicode"
        )
        markup = soap_call(NAMESPACE, "ReportStatus", "arg0", encodable(inner, CODEC))
        return xml_bytes(markup, ENCODING)

    def settle(
        self,
        case_id: str,
        partner_ref: str | None,
        status: str,
        outcome: str | None,
        result: Mapping[str, Any],
    ) -> None:
        ref = partner_ref or self._tickets.get(case_id) or case_id
        self._settled[case_id] = self._report(case_id, ref, status, outcome, result)

    # -- the platform's side --------------------------------------------------------------------

    @staticmethod
    def _report(
        case_id: str, ref: str, status: str, outcome: str | None, result: Mapping[str, Any]
    ) -> ET.Element:
        report = ET.Element("BJZT")
        _sub(report, "WBBH", case_id)
        _sub(report, "BJBH", ref)
        _sub(report, "BLZT", THEIR_STATUS[status])
        if outcome is not None:
            _sub(report, "BJJG", THEIR_OUTCOME[outcome])
        if status in ("rejected", "supplement_required"):
            _sub(report, "CLYJ", "申请材料不齐全")
        _sub(report, "XXID", f"{ref}-{THEIR_STATUS[status]}-{secrets.token_hex(2)}")
        if result:
            holder = ET.SubElement(report, "JGXX")
            for name, value in result.items():
                text = _their_date(str(value)) if name in RESULT_DATES else str(value)
                _sub(holder, _their_result_name(name), text)
        return report

    def _xml(
        self, status: int, markup: str, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        return web.Response(
            status=status,
            body=xml_bytes(markup, ENCODING),
            headers={"Content-Type": f"text/xml; charset={ENCODING}", **(headers or {})},
        )

    def _answer(self, operation: str, document: ET.Element) -> web.Response:
        inner = f'<?xml version="1.0" encoding="{ENCODING}"?>'
        inner += ET.tostring(document, encoding="unicode")
        return self._xml(
            200, soap_call(NAMESPACE, f"{operation}Response", "return", encodable(inner, CODEC))
        )

    async def _misbehave(self, operation: str) -> web.StreamResponse | None:
        quote = self._quote
        match self.mode:
            case "ok" | "down":
                return None
            case "timeout":
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), 5.0)
                return self._xml(500, soap_fault("Server", "处理超时"))
            case "http_500":  # what JAX-WS sends when the service throws: HTTP 500 + soap:Server
                return self._xml(500, soap_fault("Server", f"数据库异常，申请人 {quote}"))
            case "http_429":  # the platform's gateway limits the rate
                return web.Response(
                    status=429, text="<html><body>请求过于频繁</body></html>",
                    content_type="text/html", headers={"Retry-After": "1"},
                )  # fmt: skip
            case "refuse":  # 10 校验不通过, under HTTP 200
                return self._answer(operation, _reply(INVALID, f"证件号码与姓名不匹配：{quote}"))
            case "busy_in_body":  # 99 系统繁忙, under HTTP 200
                return self._answer(operation, _reply(BUSY, f"系统繁忙，请稍后再试（{quote}）"))
            case "garbage":  # a proxy's maintenance page
                return web.Response(
                    text=f"<html><body>系统维护中 {quote}</body></html>", content_type="text/html"
                )
        raise AssertionError(self.mode)  # pragma: no cover

    async def _service(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            text = decode_xml(raw, charset_of(request.headers.get("Content-Type")), ENCODING)
            message = read_envelope(text)
            document = part_document(message.element, "arg0")
        except XmlError:
            return self._xml(500, soap_fault("Client", "请求不是合法的 SOAP 1.1 报文"))
        if document is None or message.namespace != NAMESPACE:
            return self._xml(500, soap_fault("Client", "找不到对应的服务操作"))
        operation = message.operation
        record = _as_data(document)
        if not isinstance(record, dict):
            return self._xml(500, soap_fault("Client", "arg0 不是合法的 XML 文档"))
        self._received.append(record)
        applicant = record.get("SQR")
        if isinstance(applicant, dict):
            values = (applicant.get(k) for k in ("ZJHM", "SQRXM", "LXDH"))
            self._quote = " ".join(str(v) for v in values if v)
        if (answer := await self._misbehave(operation)) is not None:
            return answer
        case_id = str(record.get("WBBH") or "")
        if not case_id:
            return self._answer(operation, _reply(INVALID, "缺少外部编号 WBBH"))
        if operation == "SubmitCase":
            issued = self._tickets.setdefault(
                case_id, f"SC20261121{len(self._tickets) + 1:06d}{secrets.randbelow(10_000):04d}"
            )
            return self._answer(
                operation,
                _reply(OK, "成功", WBBH=case_id, BJBH=issued, BLZT=THEIR_STATUS["dispatched"]),
            )
        ticket = self._tickets.get(case_id)
        given = str(record.get("BJBH") or "")
        if ticket is None or (given and given != ticket):
            return self._answer(operation, _reply(NOT_FOUND, "未找到该办件"))
        if operation in ("SupplementCase", "WithdrawCase"):
            return self._answer(operation, _reply(OK, "成功", WBBH=case_id, BJBH=ticket))
        if operation == "QueryStatus":
            reply = _reply(OK, "成功")
            held = self._settled.get(case_id)
            reply.append(
                held if held is not None else self._report(case_id, ticket, "dispatched", None, {})
            )
            return self._answer(operation, reply)
        return self._xml(500, soap_fault("Client", "找不到对应的服务操作"))


class TestSoapXmlConformance(ConformanceSuite):
    adapter_class = SoapXmlAdapter
    double_factory = SoapXmlDouble
    native_fields: ClassVar[Mapping[str, str]] = {
        "case_id": "WBBH",
        "item_code": "SXBM",
        "id_number": "SQR.ZJHM",
        "name": "SQR.SQRXM",
    }
    sample_result: ClassVar[Mapping[str, Any]] = SAMPLE_RESULT
    context_timeout: ClassVar[float] = 1.0  # ctx.timeout; the adapter's own timeout is 0.5 s
