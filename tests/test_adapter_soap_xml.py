"""The ``soap_xml`` adapter: rendering, encodings, classification, safe parsing, inbound reports
and polling, pure and over real loopback HTTP against the SOAP province simulator."""

from __future__ import annotations

import asyncio
import logging
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pydantic
import pytest
from aiohttp import web

from adapters.sdk import (
    Accepted,
    Adapter,
    AdapterContext,
    CanonicalCase,
    Outcome,
    Permanent,
    PollingAdapter,
    Retryable,
    StatusUpdate,
    build,
    discover,
)
from adapters.soap_xml import (
    SOAP_ENV,
    RenderError,
    SoapXmlAdapter,
    SoapXmlSettings,
    UnsafeXml,
    XmlError,
    decode_xml,
    parse_xml,
    part_document,
    read_envelope,
    soap_call,
    soap_fault,
    xml_bytes,
)
from gateway.app import Gateway
from gateway.clock import SystemClock
from gateway.signing import NonceCache, SignedRequest, verify
from gateway.simulators.rest import ProvinceSimulator, SimulatorSettings
from gateway.simulators.soap import SoapProvinceSimulator, SoapSimulatorSettings
from tests.support import (
    HANDLER,
    HUB_SECRET,
    KEYS,
    ORIGIN,
    Client,
    citizen_id,
    free_port,
    gateway_config,
    medical_filing,
    simulator,
    wait_for,
)

ID_NUMBER = citizen_id("51010419900307123")
NAME = "欧阳娜娜"
RARE_NAME = "𠮷田丽"  # 𠮷 (U+20BB7) is in GB18030 but not in GBK
PHONE = "13912345678"
ADDRESS = "四川省成都市锦江区红星路三段1号院（东区）3栋2单元"
SENSITIVE = (ID_NUMBER, ID_NUMBER[:17], NAME, RARE_NAME, PHONE)


def make_case(name: str = NAME, request_id: str = "ZJ-20261121-000123", **kw: Any) -> CanonicalCase:
    fields: dict[str, Any] = {
        "case_id": "C-20261121-0001",
        "request_id": request_id,
        "item_code": "KSTB-YB-001",
        "contract_version": 1,
        "origin_region": "330000",
        "handling_region": "510000",
        "applicant": {"kind": "natural_person", "id_type": "111", "id_number": ID_NUMBER,
                      "name": name, "phone": PHONE},
        "payload": {"insured_region": "510100", "start_date": "2026-12-01", "address": ADDRESS,
                    "sex": "2", "commitment_signed": True},
        "attachments": ({"name": "户口簿.pdf", "media_type": "application/pdf",
                         "sha256": "ab" * 32, "content_base64": "JVBERi0xLjQK"},),
    }  # fmt: skip
    fields.update(kw)
    return CanonicalCase(**fields)


def sim_table(encoding: str = "GBK", **overrides: Any) -> dict[str, Any]:
    """The adapter table that matches the simulator, without a running one."""
    sim = SoapProvinceSimulator(SoapSimulatorSettings(region=HANDLER, encoding=encoding))
    sim._url = "http://127.0.0.1:9"
    table = sim.adapter_settings()
    table.update(overrides)
    return table


def sim_adapter(encoding: str = "GBK", **overrides: Any) -> SoapXmlAdapter:
    return SoapXmlAdapter(SoapXmlSettings.model_validate(sim_table(encoding, **overrides)))


def plain_adapter(**settings: Any) -> SoapXmlAdapter:
    return SoapXmlAdapter(
        SoapXmlSettings.model_validate({"endpoint": "http://127.0.0.1:9", **settings})
    )


def inner_of(body: bytes, charset: str | None = None) -> ET.Element:
    """What a partner reads out of one of our requests: the document in arg0."""
    message = read_envelope(decode_xml(body, charset, "UTF-8"))
    document = part_document(message.element, "arg0")
    assert document is not None
    return document


def answer_body(document: str, *, encoding: str = "GBK", op: str = "SubmitCase") -> bytes:
    inner = f'<?xml version="1.0" encoding="{encoding}"?>{document}'
    return xml_bytes(soap_call("http://ns/", f"{op}Response", "return", inner), encoding)


def assert_clean(text: str) -> None:
    for value in SENSITIVE:
        assert value not in text, "applicant data leaked"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def context(session: aiohttp.ClientSession, timeout: float = 5.0) -> AdapterContext:
    return AdapterContext(
        HANDLER, session, SystemClock(), logging.getLogger(f"tongban.adapter.{HANDLER}"), timeout
    )


async def started(**settings: Any) -> SoapProvinceSimulator:
    fast = {"latency": 0.01, "report_batch_window": 0.01, "retry_backoff": 0.05,
            "retry_backoff_max": 0.3}  # fmt: skip
    sim = SoapProvinceSimulator(SoapSimulatorSettings(region=HANDLER, **{**fast, **settings}))
    await sim.start("127.0.0.1", 0)
    return sim


@pytest.fixture
async def sim() -> AsyncIterator[SoapProvinceSimulator]:
    s = await started()
    yield s
    await s.stop()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# ---- rendering and encodings ------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["GBK", "GB18030"])
def test_chinese_names_and_addresses_round_trip(encoding: str) -> None:
    body = sim_adapter(encoding).envelope("SubmitCase", sim_adapter(encoding).render(make_case()))
    assert body.startswith(f'<?xml version="1.0" encoding="{encoding}"?>'.encode())
    assert NAME.encode(encoding) in body  # real GBK bytes, not references or "?"
    assert ADDRESS.encode(encoding) in body
    with pytest.raises(UnicodeDecodeError):
        body.decode("utf-8")
    document = inner_of(body, encoding)
    assert document.tag == "SBXX"
    assert document.findtext("SQR/SQRXM") == NAME
    assert document.findtext("BDXX/JZDZ") == ADDRESS
    assert document.findtext("SQR/ZJHM") == ID_NUMBER


def test_a_rare_character_travels_natively_in_gb18030() -> None:
    adapter = sim_adapter("GB18030")
    body = adapter.envelope("SubmitCase", adapter.render(make_case(name=RARE_NAME)))
    assert RARE_NAME.encode("gb18030") in body
    assert inner_of(body, "GB18030").findtext("SQR/SQRXM") == RARE_NAME
    # A partner that reads the body as GBK (its declared family) still gets it: GB18030 decoding.
    assert inner_of(body, "GBK").findtext("SQR/SQRXM") == RARE_NAME


def test_a_rare_character_survives_gbk_as_a_character_reference() -> None:
    adapter = sim_adapter("GBK")
    body = adapter.envelope("SubmitCase", adapter.render(make_case(name=RARE_NAME)))
    body.decode("gbk")  # strictly GBK: nothing outside it went on the wire
    assert b"&amp;#134071;" in body  # escaped once more as text of arg0
    assert inner_of(body, "GBK").findtext("SQR/SQRXM") == RARE_NAME


@pytest.mark.parametrize("encoding", ["UTF-8", "GBK", "GB18030"])
def test_cdata_wrapping_round_trips_even_with_a_cdata_end_inside(encoding: str) -> None:
    adapter = plain_adapter(encoding=encoding, wrap="cdata")
    tricky = ADDRESS + " ]]> <&> "
    case = make_case(name=RARE_NAME, payload={"address": tricky})
    body = adapter.envelope("SubmitCase", adapter.render(case))
    assert b"<![CDATA[" in body
    document = inner_of(body, encoding)
    assert document.findtext("Applicant/Name") == RARE_NAME
    assert document.findtext("Form/address") == tricky


def test_mapping_paths_code_tables_dates_and_attachments() -> None:
    adapter = sim_adapter()
    now = 1_795_000_000.0  # 2026-11-18T11:06:40Z = 19:06:40 in Beijing
    document = adapter.render(make_case(), now)
    assert [c.tag for c in document][:8] == [
        "WBBH", "SBLSH", "SXBM", "SXBB", "SLDQ", "BLDQ", "FSSJ", "SQR"
    ]  # fmt: skip
    assert document.findtext("FSSJ") == "2026-11-18 19:06:40"
    assert document.findtext("SXBB") == "1"
    assert document.findtext("SQR/SQRLX") == "1"  # natural_person → 1
    assert document.findtext("SQR/ZJLX") == "01"  # 111 居民身份证 → 01
    assert document.findtext("BDXX/KSRQ") == "20261201"  # ISO date → yyyyMMdd
    assert document.findtext("BDXX/XB") == "F"  # GB/T 2261.1 2 → F
    assert document.findtext("BDXX/CBD") == "510100"
    assert document.findtext("BDXX/commitment_signed") == "true"  # unmapped: canonical name
    assert document.find("BJBH") is None  # no partner ref yet
    attachment = document.find("FJXX/FJ")
    assert attachment is not None
    assert attachment.findtext("FJMC") == "户口簿.pdf"
    assert attachment.findtext("FJNR") == "JVBERi0xLjQK"  # inline base64
    assert attachment.findtext("FJZY") == "ab" * 32


def test_default_names_nested_lists_and_left_out_fields() -> None:
    adapter = plain_adapter(elements={"applicant.phone": "", "payload.members": "Form/Member"})
    case = make_case(payload={"members": [{"name": "甲"}, {"name": "乙"}], "tags": ["a", "b"]},
                     attachments=())  # fmt: skip
    document = adapter.render(case)
    assert document.tag == "Request"
    assert document.findtext("CaseId") == case.case_id
    assert document.findtext("Applicant/IdNumber") == ID_NUMBER
    assert document.find("Applicant/Phone") is None
    assert [m.findtext("name") for m in document.findall("Form/Member")] == ["甲", "乙"]
    assert [t.text for t in document.findall("Form/tags")] == ["a", "b"]
    assert document.find("Attachments") is None
    assert document.find("SendTime") is None  # no clock given


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [("yyyyMMddHHmmss", "2026-11-21T02:03:04Z", "20261121100304"),
     ("yyyy-MM-dd HH:mm:ss", "2026-11-21T02:03:04+00:00", "2026-11-21 10:03:04"),
     ("yyyy-MM-dd HH:mm:ss", "2026-11-21T10:03:04", "2026-11-21 10:03:04"),
     ("yyyyMMdd", "2026-12-01", "20261201"),
     ("yyyy'年'MM'月'dd'日'", "2026-12-01", "2026年12月01日"),
     ("yyyy-MM-dd HH:mm:ss.SSS", "2026-11-21T02:03:04.250Z", "2026-11-21 10:03:04.250")],
)  # fmt: skip
def test_date_formats_from_iso(pattern: str, value: str, expected: str) -> None:
    adapter = plain_adapter(date_formats={"payload.at": pattern})
    document = adapter.render(make_case(payload={"at": value}))
    assert document.findtext("Form/at") == expected


@pytest.mark.parametrize(
    ("settings", "payload", "match"),
    [({"date_formats": {"payload.at": "yyyyMMdd"}}, {"at": "21/11/2026"}, "payload.at"),
     ({"code_tables": {"payload.sex": {"1": "M"}}}, {"sex": "2"}, "payload.sex"),
     ({}, {"bad name": "x"}, "payload.bad name"),
     ({}, {"ctl": "a\x01b"}, "payload.ctl"),
     ({}, {"deep": [[1, 2]]}, "payload.deep")],
)  # fmt: skip
def test_unrenderable_values_are_refused_naming_the_field(
    settings: dict[str, Any], payload: dict[str, Any], match: str
) -> None:
    with pytest.raises(RenderError, match=match) as info:
        plain_adapter(**settings).render(make_case(payload=payload))
    assert_clean(str(info.value))


def test_code_table_fallback_entry() -> None:
    adapter = sim_adapter()
    case = make_case(applicant={"id_type": "990", "id_number": ID_NUMBER, "name": NAME})
    assert adapter.render(case).findtext("SQR/ZJLX") == "99"


@pytest.mark.parametrize(
    "settings",
    [{"status_codes": {"1": "completd"}},
     {"status_codes": {"1": "withdrawn"}},
     {"date_formats": {"payload.x": "YYYY-mm-DD"}},
     {"timestamp_format": "epoch"},
     {"elements": {"applicant.name": "SQR//XM"}},
     {"elements": {"applicant.name": "1XM"}},
     {"elements": {"case_id": ""}},
     {"elements": {"applicant name": "XM"}},
     {"encoding": "GBK", "elements": {"applicant.name": "𠮷"}},
     {"encoding": "Big5"},
     {"ok_codes": ["0"], "busy_codes": ["0"]},
     {"soap_action": "{op}"},
     {"submit_operation": "Submit Case"},
     {"endpoint": "ftp://x"},
     {"unknown_key": 1}],
    ids=str,
)  # fmt: skip
def test_bad_settings_are_refused(settings: dict[str, Any]) -> None:
    table = {"endpoint": "http://127.0.0.1:9", **settings}
    with pytest.raises(pydantic.ValidationError):
        SoapXmlSettings.model_validate(table)


def test_built_from_a_toml_like_table_and_protocols() -> None:
    table = {"kind": "soap_xml", "endpoint": "http://127.0.0.1:9", "encoding": "gbk",
             "query_operation": ""}  # fmt: skip
    adapter = build(table, {**discover(), "soap_xml": SoapXmlAdapter})
    assert isinstance(adapter, SoapXmlAdapter)
    assert adapter.settings.encoding == "GBK"
    assert isinstance(adapter, Adapter)
    assert not isinstance(adapter, PollingAdapter)  # no status query: the gateway never polls
    polled = plain_adapter(poll_interval=5)
    assert isinstance(polled, PollingAdapter)
    assert polled.poll_interval == 5


def test_request_headers() -> None:
    adapter = sim_adapter(auth_header="X-App-Token", auth_token="t0ken")
    headers = adapter.headers("SubmitCase")
    assert headers["Content-Type"] == "text/xml; charset=GBK"
    assert headers["SOAPAction"] == '"http://ws.tbpt.sc.gov.cn/SubmitCase"'
    assert headers["X-App-Token"] == "t0ken"
    assert plain_adapter().headers("SubmitCase")["SOAPAction"] == '""'


# ---- decoding and safe parsing ----------------------------------------------------------------


def test_decoding_prefers_header_then_declaration_then_setting() -> None:
    gbk = f'<?xml version="1.0" encoding="GBK"?><a>{NAME}</a>'.encode("gbk")
    assert parse_xml(decode_xml(gbk, None, "UTF-8")).text == NAME  # declaration
    assert parse_xml(decode_xml(gbk, "utf-8", "UTF-8")).text == NAME  # wrong header: next one
    bare = f"<a>{RARE_NAME}</a>".encode("gb18030")
    assert parse_xml(decode_xml(bare, None, "GBK")).text == RARE_NAME  # GBK read as GB18030
    bom = b"\xef\xbb\xbf" + f"<a>{NAME}</a>".encode()
    assert parse_xml(decode_xml(bom, "GBK", "GBK")).text == NAME
    with pytest.raises(XmlError):
        decode_xml(b"<a>\xff\xfe\xfd</a>", "utf-8", "UTF-8")


def bomb(levels: int = 9) -> str:
    entities = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">' for i in range(1, levels + 1)
    ]
    return (
        f'<?xml version="1.0"?><!DOCTYPE lolz [{"".join(entities)}]>'
        f'<soap:Envelope xmlns:soap="{SOAP_ENV}"><soap:Body><r>&lol{levels};</r></soap:Body>'
        "</soap:Envelope>"
    )


XXE = (
    '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    f'<soap:Envelope xmlns:soap="{SOAP_ENV}"><soap:Body><r><return>&xxe;</return></r>'
    "</soap:Body></soap:Envelope>"
)


@pytest.mark.parametrize(
    "text",
    [bomb(), XXE, '<!doctype a SYSTEM "http://127.0.0.1:9/x.dtd"><a/>',
     "<a/><!-- -->\n<!ENTITY x 'y'>"],
)  # fmt: skip
def test_dtds_are_refused_before_expansion(text: str) -> None:
    started_at = time.monotonic()
    with pytest.raises(UnsafeXml):
        parse_xml(text)
    assert time.monotonic() - started_at < 0.5


def test_an_undeclared_entity_is_not_well_formed() -> None:
    with pytest.raises(XmlError):
        parse_xml("<a>&xxe;</a>")


def test_depth_is_bounded() -> None:
    with pytest.raises(XmlError, match="deeper"):
        parse_xml("<a>" * 200 + "</a>" * 200)


# ---- classification (pure) --------------------------------------------------------------------


OK_ANSWER = "<FHXX><FHDM>00</FHDM><FHSM>成功</FHSM><BJBH>SC1</BJBH><BLZT>01</BLZT></FHXX>"


def classify(
    status: int,
    body: bytes,
    ctype: str | None = "text/xml; charset=GBK",
    retry_after: str | None = None,
) -> Outcome:
    return sim_adapter().classify(status, body, ctype, retry_after, "C-1")


def fault_body(code: str, message: str = "系统异常", encoding: str = "GBK") -> bytes:
    return xml_bytes(soap_fault(code, message), encoding)


def test_ok_answer_gives_ref_and_immediate_update() -> None:
    assert classify(200, answer_body(OK_ANSWER)) == Accepted(
        partner_ref="SC1",
        updates=(StatusUpdate(status="dispatched", case_id="C-1", partner_ref="SC1"),),
    )


def test_answers_without_code_or_without_document_are_accepted() -> None:
    assert classify(200, answer_body("<FHXX><BJBH>SC2</BJBH></FHXX>")) == Accepted("SC2")
    void = xml_bytes(soap_envelope_of("<tns:WithdrawCaseResponse xmlns:tns='x'/>"), "GBK")
    assert classify(200, void) == Accepted()
    assert classify(202, b"") == Accepted()  # a one-way operation's answer
    markup = (
        "<tns:R xmlns:tns='x'><return><FHXX><FHDM>00</FHDM><BJBH>SC3</BJBH></FHXX></return></tns:R>"
    )
    assert classify(200, xml_bytes(soap_envelope_of(markup), "UTF-8")) == Accepted("SC3")


def soap_envelope_of(body: str) -> str:
    return f'<soap:Envelope xmlns:soap="{SOAP_ENV}"><soap:Body>{body}</soap:Body></soap:Envelope>'


@pytest.mark.parametrize("status", [500, 200])
@pytest.mark.parametrize(
    ("code", "kind"),
    [("Server", Retryable), ("Server.Busy", Retryable), ("Client", Permanent),
     ("Client.Authentication", Permanent), ("VersionMismatch", Permanent),
     ("MustUnderstand", Permanent)],
)  # fmt: skip
def test_soap_faults(status: int, code: str, kind: type) -> None:
    outcome = classify(status, fault_body(code, f"{NAME}的证件号码{ID_NUMBER}有误"))
    assert isinstance(outcome, kind)
    assert isinstance(outcome, Retryable | Permanent)
    assert code in outcome.reason
    assert_clean(outcome.reason)


def test_fault_code_prefix_does_not_matter() -> None:
    body = soap_envelope_of(
        "<soap:Fault><faultcode xmlns:s='u'>s:Client</faultcode><faultstring/></soap:Fault>"
    ).encode()
    assert isinstance(classify(500, body, "text/xml"), Permanent)


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [(500, b"<html>Internal Server Error</html>", Retryable),
     (502, b"<html>Bad Gateway</html>", Retryable),
     (503, b"", Retryable), (504, b"", Retryable), (429, b"", Retryable), (408, b"", Retryable),
     (404, b"<html>Not Found</html>", Permanent), (401, b"", Permanent),
     (302, b"", Permanent),
     (200, b"<html>maintenance</html>", Retryable), (200, b"", Retryable),
     (200, b"not xml at all", Retryable), (200, b"<a/>", Retryable)],
)  # fmt: skip
def test_http_level_failures(status: int, body: bytes, kind: type) -> None:
    outcome = classify(status, body, "text/html")
    assert isinstance(outcome, kind), outcome


def test_retry_after_is_honoured_when_numeric() -> None:
    assert classify(503, b"", None, "30") == Retryable("partner answered HTTP 503", 30.0)
    assert classify(503, b"", None, "²") == Retryable("partner answered HTTP 503", None)


@pytest.mark.parametrize("code", ["10", "20", "E1001", "身份证号码有误"])
def test_business_error_code_under_200_is_permanent(code: str) -> None:
    outcome = classify(200, answer_body(f"<FHXX><FHDM>{code}</FHDM></FHXX>"))
    assert isinstance(outcome, Permanent)
    assert ("code " + code in outcome.reason) == code.isascii()


def test_busy_code_under_200_is_retryable() -> None:
    outcome = classify(200, answer_body("<FHXX><FHDM>99</FHDM><FHSM>系统繁忙</FHSM></FHXX>"))
    assert outcome == Retryable("partner busy (code 99)")


def test_an_unparseable_return_document_is_retryable() -> None:
    outcome = classify(200, answer_body("<FHXX><FHDM>00</FHXX>"))
    assert isinstance(outcome, Retryable)


def test_a_dtd_smuggled_inside_the_return_string_is_refused() -> None:
    inner = '<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><FHXX><FHDM>&x;</FHDM></FHXX>'
    outcome = classify(200, answer_body(inner))
    assert isinstance(outcome, Retryable)
    assert "DTD" in outcome.reason


@pytest.mark.parametrize("raw", [bomb().encode(), XXE.encode()], ids=["billion-laughs", "xxe"])
def test_hostile_answers_are_refused_fast(raw: bytes) -> None:
    started_at = time.monotonic()
    outcome = classify(200, raw, "text/xml")
    assert isinstance(outcome, Retryable)
    assert "DTD" in outcome.reason
    assert "lol" not in outcome.reason and "root" not in outcome.reason
    assert time.monotonic() - started_at < 0.5


ECHOES = [
    (200, answer_body(f"<FHXX><FHDM>10</FHDM><FHSM>申请人{NAME}（{ID_NUMBER}）无效</FHSM></FHXX>")),
    (200, answer_body(f"<FHXX><FHDM>{ID_NUMBER}</FHDM></FHXX>")),
    (200, answer_body(f"<FHXX><FHDM>证件号码{ID_NUMBER}校验失败</FHDM></FHXX>")),
    (200, answer_body(f"<FHXX><FHDM>99</FHDM><FHSM>{NAME} {PHONE}</FHSM></FHXX>")),
    (500, fault_body(f"{NAME}", f"{ID_NUMBER}")),
    (500, fault_body("Client", f"{NAME} {ID_NUMBER} {PHONE}")),
    (500, f"<html>{NAME} {ID_NUMBER}</html>".encode("gbk")),
    (400, f"<html>{NAME} {ID_NUMBER}</html>".encode("gbk")),
    (200, f"{NAME} {ID_NUMBER}".encode("gbk")),
    (200, answer_body(f"<FHXX><FHDM>00</FHDM><BLZT>{ID_NUMBER}</BLZT></FHXX>")),
]


@pytest.mark.parametrize(("status", "raw"), ECHOES, ids=[f"echo{i}" for i in range(len(ECHOES))])
def test_reasons_never_carry_the_applicant(status: int, raw: bytes) -> None:
    outcome = classify(status, raw)
    if isinstance(outcome, Accepted):
        assert outcome.updates == ()  # an unreadable status is skipped, not echoed
        return
    assert_clean(outcome.reason)


# ---- inbound ----------------------------------------------------------------------------------


def report_call(reports: str, encoding: str = "GBK", op: str = "ReportStatus") -> bytes:
    inner = f'<?xml version="1.0" encoding="{encoding}"?><ZTBG>{reports}</ZTBG>'
    return xml_bytes(soap_call("http://ws.tbpt.sc.gov.cn/", op, "arg0", inner), encoding)


def test_parse_inbound_maps_codes_outcomes_results_and_dates() -> None:
    body = report_call(
        "<BJZT><WBBH>C-1</WBBH><BJBH>SC1</BJBH><BLZT>02</BLZT><XXID>ev-1</XXID></BJZT>"
        "<BJZT><BJBH>SC1</BJBH><BLZT>06</BLZT></BJZT>"
        "<BJZT><WBBH>C-2</WBBH><BLZT>04</BLZT><CLYJ>请补充户口簿</CLYJ></BJZT>"
        "<BJZT><WBBH>C-3</WBBH><BLZT>03</BLZT><CLYJ>不予受理</CLYJ></BJZT>"
        "<BJZT><WBBH>C-1</WBBH><BLZT>09</BLZT><BJJG>1</BJJG><JGXX><WSBH>川通办决字〔2026〕1号</WSBH>"
        "<BJSJ>20261121100304</BJSJ><BLDQ>510000</BLDQ><QTXX>备注</QTXX></JGXX></BJZT>"
        "<BJZT><WBBH>C-4</WBBH><BLZT>09</BLZT><BJJG>2</BJJG></BJZT>"
    )
    updates = sim_adapter().parse_inbound(body, {"content-type": "text/xml; charset=GBK"})
    assert updates == [
        StatusUpdate("accepted", case_id="C-1", partner_ref="SC1", partner_event_id="ev-1"),
        StatusUpdate("in_progress", partner_ref="SC1"),
        StatusUpdate("supplement_required", case_id="C-2", data={"message": "请补充户口簿"}),
        StatusUpdate("rejected", case_id="C-3", data={"message": "不予受理"}),
        StatusUpdate("completed", case_id="C-1", outcome="approved",
                     data={"decision_no": "川通办决字〔2026〕1号",
                           "decided_at": "2026-11-21T10:03:04+08:00",
                           "handling_region": "510000", "QTXX": "备注"}),
        StatusUpdate("completed", case_id="C-4", outcome="denied"),
    ]  # fmt: skip


def test_parse_inbound_of_a_single_report_document_in_gb18030() -> None:
    inner = f"<BJZT><WBBH>C-9</WBBH><BLZT>04</BLZT><CLYJ>{RARE_NAME}请补正</CLYJ></BJZT>"
    markup = soap_call("x", "ReportStatus", "arg0", inner)
    [update] = sim_adapter().parse_inbound(xml_bytes(markup, "GB18030"), {})
    assert update.data == {"message": f"{RARE_NAME}请补正"}


@pytest.mark.parametrize(
    ("body", "match"),
    [(b"", "empty"),
     (b"{\"reports\": []}", "SOAP"),
     (b"<a/>", "SOAP"),
     (fault_body("Server"), "fault"),
     (report_call("<BJZT><WBBH>C</WBBH><BLZT>01</BLZT></BJZT>", op="Other"), "unexpected"),
     (xml_bytes(soap_call("x", "ReportStatus", "arg0", ""), "GBK"), "no arg0"),
     (xml_bytes(soap_call("x", "ReportStatus", "arg0", "<ZTBG>"), "GBK"), "arg0"),
     (report_call(""), "no BJZT"),
     (report_call(f"<BJZT><WBBH>{ID_NUMBER}</WBBH><BLZT>77</BLZT></BJZT>"), r"BJZT\[0\]\.BLZT"),
     (report_call("<BJZT><WBBH>C</WBBH><BLZT>01</BLZT></BJZT><BJZT><WBBH>C</WBBH></BJZT>"),
      r"BJZT\[1\]\.BLZT"),
     (report_call(f"<BJZT><WBBH>C</WBBH><BLZT>09</BLZT><BJJG>{NAME}</BJJG></BJZT>"), "BJJG"),
     (report_call("<BJZT><BLZT>02</BLZT></BJZT>"), "WBBH"),
     (bomb().encode(), "type declaration"),
     (XXE.encode(), "type declaration"),
     (report_call(f"<BJZT><WBBH>{NAME}</WBBH><BLZT>01</BLZT></BJZT>")[:-30], "SOAP")],
)  # fmt: skip
def test_malformed_inbound_raises_a_clean_value_error(body: bytes, match: str) -> None:
    started_at = time.monotonic()
    with pytest.raises(ValueError, match=match) as info:
        sim_adapter().parse_inbound(body, {"Content-Type": "text/xml; charset=GBK"})
    assert_clean(str(info.value))
    assert time.monotonic() - started_at < 0.5


def test_parse_inbound_with_an_unprintable_operation_name() -> None:
    body = report_call("<BJZT><WBBH>C</WBBH><BLZT>01</BLZT></BJZT>", op="申请人张三")
    with pytest.raises(ValueError, match="not a code"):
        sim_adapter().parse_inbound(body, {})


# ---- over loopback HTTP against the simulator -------------------------------------------------


@pytest.mark.parametrize("encoding", ["GBK", "GB18030", "UTF-8"])
async def test_submit_is_accepted_with_the_partner_ref(
    session: aiohttp.ClientSession, encoding: str
) -> None:
    sim = await started(encoding=encoding)
    try:
        adapter = SoapXmlAdapter(SoapXmlSettings.model_validate(sim.adapter_settings()))
        case = make_case(name=RARE_NAME)
        outcome = await adapter.submit(case, context(session))
        assert isinstance(outcome, Accepted), outcome
        assert outcome.partner_ref is not None and outcome.partner_ref.startswith("SC")
        assert outcome.updates == (
            StatusUpdate("dispatched", case_id=case.case_id, partner_ref=outcome.partner_ref),
        )
        record = sim.partner_record(case.case_id)
        assert record is not None
        assert record["SQR/SQRXM"] == RARE_NAME  # no mojibake, in any of the three encodings
        assert record["BDXX/JZDZ"] == ADDRESS
        assert record["SQR/ZJLX"] == "01"
        assert record["BDXX/KSRQ"] == "20261201"
        assert record["FJXX/FJ/FJNR"] == "JVBERi0xLjQK"
        again = await adapter.submit(case, context(session))  # idempotent by case id
        assert isinstance(again, Accepted)
        assert again.partner_ref == outcome.partner_ref
        assert sim.counters["submits"] == 1
        assert sim.counters["submit_repeats"] == 1
    finally:
        await sim.stop()


@pytest.mark.parametrize(("code", "kind"), [("Server", Retryable), ("Client", Permanent)])
async def test_faults_over_http(
    session: aiohttp.ClientSession, sim: SoapProvinceSimulator, code: str, kind: type
) -> None:
    sim.set_fault(code, f"申请人{NAME}（{ID_NUMBER}）处理失败")
    adapter = SoapXmlAdapter(SoapXmlSettings.model_validate(sim.adapter_settings()))
    outcome = await adapter.submit(make_case(), context(session))
    assert isinstance(outcome, kind), outcome
    assert isinstance(outcome, Retryable | Permanent)
    assert f"SOAP fault ({code})" in outcome.reason
    assert_clean(outcome.reason)


@pytest.mark.parametrize(
    ("kind", "expected", "reason"),
    [("http_500", Retryable, "HTTP 500"), ("server_fault", Retryable, "SOAP fault (Server)"),
     ("busy", Retryable, "busy (code 99)")],
)  # fmt: skip
async def test_simulated_failures_are_retryable(
    session: aiohttp.ClientSession, kind: str, expected: type, reason: str
) -> None:
    sim = await started(failure_rate=1.0, failure_kind=kind)
    try:
        adapter = SoapXmlAdapter(SoapXmlSettings.model_validate(sim.adapter_settings()))
        outcome = await adapter.submit(make_case(), context(session))
        assert isinstance(outcome, expected)
        assert isinstance(outcome, Retryable | Permanent)
        assert reason in outcome.reason
        assert sim.counters["submit_failures"] == 1
    finally:
        await sim.stop()


async def test_business_refusal_is_permanent_and_quotes_nothing(
    session: aiohttp.ClientSession, sim: SoapProvinceSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    table = sim.adapter_settings()
    table["code_tables"]["applicant.id_type"] = {"111": "77"}  # a code the platform refuses
    adapter = SoapXmlAdapter(SoapXmlSettings.model_validate(table))
    outcome = await adapter.submit(make_case(), context(session))
    assert outcome == Permanent("partner refused the request (code 10)")
    assert sim.counters["refusals"] == 1
    for record in caplog.records:
        assert_clean(record.getMessage())


async def test_down_timeout_and_unreachable_are_retryable(
    session: aiohttp.ClientSession, sim: SoapProvinceSimulator
) -> None:
    adapter = SoapXmlAdapter(SoapXmlSettings.model_validate(sim.adapter_settings()))
    sim.set_down(True)
    assert await adapter.submit(make_case(), context(session)) == Retryable(
        "partner answered HTTP 503"
    )
    sim.set_down(False)
    sim.settings.answer_delay = 1.0
    started_at = time.monotonic()
    assert await adapter.submit(make_case(), context(session, 0.2)) == Retryable("timeout")
    assert time.monotonic() - started_at < 0.9
    sim.settings.answer_delay = 0.0
    gone = SoapXmlAdapter(
        SoapXmlSettings.model_validate(
            {**sim.adapter_settings(), "endpoint": f"http://127.0.0.1:{free_port()}/ws"}
        )
    )
    outcome = await gone.submit(make_case(), context(session))
    assert isinstance(outcome, Retryable)
    assert outcome.reason.startswith("connection error")


@pytest.mark.parametrize(
    ("raw", "what"),
    [(bomb().encode(), "billion laughs"), (XXE.encode(), "external entity"),
     (answer_body('<!DOCTYPE r SYSTEM "http://127.0.0.1:9/evil.dtd"><FHXX/>'), "inner DTD")],
)  # fmt: skip
async def test_hostile_answers_over_http_are_refused_fast(
    session: aiohttp.ClientSession, sim: SoapProvinceSimulator, raw: bytes, what: str
) -> None:
    sim.set_raw_answer(raw, 200, "text/xml; charset=UTF-8")
    adapter = SoapXmlAdapter(SoapXmlSettings.model_validate(sim.adapter_settings()))
    started_at = time.monotonic()
    outcome = await adapter.submit(make_case(), context(session))
    assert isinstance(outcome, Retryable), what
    assert "DTD" in outcome.reason
    assert time.monotonic() - started_at < 1.0


async def test_an_oversized_answer_is_not_read(
    session: aiohttp.ClientSession, sim: SoapProvinceSimulator
) -> None:
    sim.set_raw_answer(b"<a>" + b"x" * 200_000 + b"</a>")
    table = {**sim.adapter_settings(), "max_answer_bytes": 100_000}
    adapter = SoapXmlAdapter(SoapXmlSettings.model_validate(table))
    outcome = await adapter.submit(make_case(), context(session))
    assert outcome == Retryable("partner answered more than 100000 bytes")


async def test_withdraw_and_unknown_case(
    session: aiohttp.ClientSession, sim: SoapProvinceSimulator
) -> None:
    sim.settings.latency = 30.0  # the case stays where it is
    adapter = SoapXmlAdapter(SoapXmlSettings.model_validate(sim.adapter_settings()))
    case = make_case()
    taken = await adapter.submit(case, context(session))
    assert isinstance(taken, Accepted)
    with_ref = make_case(partner_ref=taken.partner_ref)
    assert isinstance(await adapter.withdraw(with_ref, "申请人撤回", context(session)), Accepted)
    view = sim.partner_view(case.case_id)
    assert view is not None and view["withdrawn"]
    unknown = make_case(case_id="C-unknown")
    assert await adapter.withdraw(unknown, "", context(session)) == Permanent(
        "partner refused the request (code 20)"
    )


async def test_polling_walks_a_case_with_a_supplement(
    session: aiohttp.ClientSession,
) -> None:
    sim = await started(report_mode="poll", advance_on_query=True)
    try:
        table = sim.adapter_settings(poll_interval=0.05)
        adapter = SoapXmlAdapter(SoapXmlSettings.model_validate(table))
        assert isinstance(adapter, PollingAdapter)
        case = make_case(request_id="ZJ-20261121-000124-SUPPLEMENT")
        taken = await adapter.submit(case, context(session))
        assert isinstance(taken, Accepted)
        case = make_case(request_id=case.request_id, partner_ref=taken.partner_ref)
        seen: list[StatusUpdate] = []

        async def poll_until(status: str) -> None:
            async def check() -> bool:
                seen.extend(await adapter.poll([case], context(session)))
                return bool(seen) and seen[-1].status == status

            await eventually(check)

        await poll_until("supplement_required")
        assert seen[-1].data == {"message": "请补充户口簿首页及本人页复印件"}
        assert await adapter.poll([case], context(session)) == []  # waiting: nothing new
        material = {"note": "已补充", "payload": {"address": ADDRESS}, "attachments": []}
        assert isinstance(await adapter.supplement(case, material, context(session)), Accepted)
        await poll_until("completed")
        assert [u.status for u in seen] == [
            "accepted", "supplement_required", "in_progress", "completed"
        ]  # fmt: skip
        done = seen[-1]
        assert done.case_id == case.case_id
        assert done.partner_ref == taken.partner_ref
        assert done.outcome == "approved"
        assert done.data["decision_no"].startswith("川通办决字")
        assert done.data["decided_at"].endswith("+08:00")
        assert sim.counters["supplements"] == 1
    finally:
        await sim.stop()


async def test_polling_reports_only_changes(session: aiohttp.ClientSession) -> None:
    sim = await started(report_mode="poll", latency=30.0)
    try:
        adapter = SoapXmlAdapter(SoapXmlSettings.model_validate(sim.adapter_settings()))
        case = make_case()
        assert isinstance(await adapter.submit(case, context(session)), Accepted)
        other = make_case(case_id="C-never-sent")
        first = await adapter.poll([case, other], context(session))
        assert first == [
            StatusUpdate("dispatched", case_id=case.case_id, partner_ref=first[0].partner_ref,
                         partner_event_id=None)
        ]  # fmt: skip
        assert await adapter.poll([case, other], context(session)) == []
        assert sim.counters["queries"] == 4
        eager = SoapXmlAdapter(
            SoapXmlSettings.model_validate({**sim.adapter_settings(), "poll_repeat_after": 0})
        )
        assert len(await eager.poll([case], context(session))) == 1
        assert len(await eager.poll([case], context(session))) == 1
        assert await adapter.poll([], context(session)) == []
    finally:
        await sim.stop()


async def test_polling_an_unreachable_partner_returns_nothing(
    session: aiohttp.ClientSession,
) -> None:
    adapter = plain_adapter(endpoint=f"http://127.0.0.1:{free_port()}/ws")
    assert await adapter.poll([make_case()], context(session)) == []


async def test_a_poll_stays_within_its_budget(
    session: aiohttp.ClientSession, sim: SoapProvinceSimulator
) -> None:
    table = {**sim.adapter_settings(), "query_operation": "QueryStatus", "poll_concurrency": 1}
    adapter = SoapXmlAdapter(SoapXmlSettings.model_validate(table))
    sim.settings.answer_delay = 1.0
    cases = [make_case(case_id=f"C-{i}") for i in range(5)]
    started_at = time.monotonic()
    assert await adapter.poll(cases, context(session, 0.1)) == []
    assert time.monotonic() - started_at < 0.9
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert not [t for t in pending if "one" in repr(t.get_coro())]


class FakeGateway:
    """The gateway's inbound endpoint: checks the signature, parses with the real adapter."""

    def __init__(self, adapter: SoapXmlAdapter) -> None:
        self.adapter = adapter
        self.updates: list[StatusUpdate] = []
        self.nonces = NonceCache()
        self.runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_post("/v1/partners/{region}/inbound", self.inbound)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return int(self.runner.addresses[0][1])

    async def inbound(self, request: web.Request) -> web.Response:
        body = await request.read()
        signed = SignedRequest(request.method, request.raw_path, request.headers, body)
        verify(signed, {KEYS[HANDLER][0]: KEYS[HANDLER][1]}, self.nonces, time.time())
        assert request.match_info["region"] == HANDLER
        assert request.headers["Content-Type"] == "text/xml; charset=GBK"
        self.updates.extend(self.adapter.parse_inbound(body, request.headers))
        return web.json_response({"applied": 1})

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def test_callbacks_are_signed_soap_reports_the_adapter_reads(
    session: aiohttp.ClientSession,
) -> None:
    sim = await started(key_id=KEYS[HANDLER][0], secret=KEYS[HANDLER][1])
    adapter = SoapXmlAdapter(SoapXmlSettings.model_validate(sim.adapter_settings()))
    gateway = FakeGateway(adapter)
    try:
        sim.settings.gateway_url = f"http://127.0.0.1:{await gateway.start()}"
        case = make_case(request_id="ZJ-20261121-000125-DENY")
        taken = await adapter.submit(case, context(session))
        assert isinstance(taken, Accepted)

        async def finished() -> bool:
            return any(u.status == "completed" for u in gateway.updates)

        await eventually(finished)
        assert [u.status for u in gateway.updates] == ["accepted", "in_progress", "completed"]
        assert {u.case_id for u in gateway.updates} == {case.case_id}
        assert {u.partner_ref for u in gateway.updates} == {taken.partner_ref}
        assert gateway.updates[-1].outcome == "denied"
        assert all(u.partner_event_id for u in gateway.updates)
        assert sim.counters["send_failures"] == 0
    finally:
        await sim.stop()
        await gateway.stop()


# ---- end to end through the gateway -----------------------------------------------------------


@pytest.mark.parametrize("mode", ["callback", "poll"])
async def test_a_case_completes_through_the_gateway(tmp_path: Path, mode: str) -> None:
    origin = simulator(ORIGIN, 0)
    hub = ProvinceSimulator(SimulatorSettings(region="100000", callback_secret=HUB_SECRET))
    soap = await started(
        report_mode=mode, advance_on_query=True, key_id=KEYS[HANDLER][0], secret=KEYS[HANDLER][1]
    )
    gw: Gateway | None = None
    try:
        origin_port = await origin.start("127.0.0.1", 0)
        hub_port = await hub.start("127.0.0.1", 0)
        config = gateway_config(
            f"sqlite:///{tmp_path}/gw.db", 0, {ORIGIN: origin_port, HANDLER: origin_port}, hub_port
        )
        config.partners[1].adapter = soap.adapter_settings(poll_interval=0.05)
        gw = Gateway(config, poll_interval=0.05,
                     adapter_kinds={**discover(), "soap_xml": SoapXmlAdapter})  # fmt: skip
        port = await gw.start()
        soap.settings.gateway_url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            client = Client(session, f"http://127.0.0.1:{port}", ORIGIN)
            status, case, _ = await client.call("POST", "/v1/cases", medical_filing(f"ZJ-{mode}"))
            assert status == 202, case

            async def completed() -> bool:
                c = await client.case(case["case_id"])
                return bool(c["status"] == "completed")

            await wait_for(completed, what=f"case completed ({mode})")
            done = await client.case(case["case_id"])
            assert [e["status"] for e in done["history"]] == [
                "received", "dispatched", "accepted", "in_progress", "completed"
            ]  # fmt: skip
            assert done["outcome"] == "approved"
            assert done["partner_ref"].startswith("SC")
            assert done["result"]["decision_no"].startswith("川通办决字")
            assert done["result"]["decided_at"].endswith("+08:00")
            record = soap.partner_record(case["case_id"])
            assert record is not None
            assert record["SQR/SQRXM"] == "张三"
            assert record["SQR/ZJLX"] == "01"
            assert record["BDXX/KSRQ"] == "20261201"
    finally:
        if gw is not None:
            await gw.stop()
        await soap.stop()
        await origin.stop()
        await hub.stop()
