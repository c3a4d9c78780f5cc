"""The ``rest_json`` adapter's pure parts: render, classify, parse_inbound."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from pydantic import ValidationError

from adapters.rest_json import RestJsonAdapter, RestJsonSettings
from adapters.sdk import (
    Accepted,
    AdapterContext,
    CanonicalCase,
    Permanent,
    Retryable,
    StatusUpdate,
)
from gateway.clock import SystemClock
from gateway.identifiers import id_check_char

ID_NUMBER = "33010619800101003" + id_check_char("33010619800101003")
NAME = "欧阳娜娜"
PHONE = "13912345678"

CASE = CanonicalCase(
    case_id="C-20261121-0001",
    request_id="ZJ-20261121-000123",
    item_code="KSTB-YB-001",
    contract_version=1,
    origin_region="330000",
    handling_region="510000",
    applicant={"id_type": "111", "id_number": ID_NUMBER, "name": NAME, "phone": PHONE},
    payload={"insured_region": "510100", "start_date": "2026-12-01"},
    attachments=({"name": "a.pdf", "media_type": "application/pdf", "sha256": "ab" * 32},),
)


def adapter(**settings: object) -> RestJsonAdapter:
    return RestJsonAdapter(RestJsonSettings(base_url="http://127.0.0.1:9101", **settings))


def body(obj: object) -> bytes:
    return orjson.dumps(obj)


# ---- render -------------------------------------------------------------------------------------


def test_render_default_shape():
    rendered = adapter().render(CASE)
    assert rendered == {
        "caseId": CASE.case_id,
        "requestId": CASE.request_id,
        "itemCode": "KSTB-YB-001",
        "itemVersion": 1,
        "originRegion": "330000",
        "applicant": dict(CASE.applicant),
        "form": dict(CASE.payload),
        "attachments": [dict(CASE.attachments[0])],
    }


def test_render_field_map_renames_top_level_names():
    rendered = adapter(field_map={"caseId": "bizNo", "form": "formData"}).render(CASE)
    assert rendered["bizNo"] == CASE.case_id
    assert rendered["formData"] == dict(CASE.payload)
    assert "caseId" not in rendered
    assert "form" not in rendered
    assert rendered["requestId"] == CASE.request_id
    assert len(rendered) == 8


def test_render_is_json_serialisable():
    assert orjson.loads(orjson.dumps(adapter().render(CASE)))["applicant"]["name"] == NAME


# ---- classify -----------------------------------------------------------------------------------


def test_ok_with_ticket_and_status_gives_an_immediate_update():
    outcome = adapter().classify(
        200, body({"code": "0", "ticket": "T-77", "statusCode": "3"}), None, CASE
    )
    assert outcome == Accepted(
        partner_ref="T-77",
        updates=(StatusUpdate(status="accepted", case_id=CASE.case_id, partner_ref="T-77"),),
    )


def test_ok_with_ticket_only():
    outcome = adapter().classify(200, body({"code": "0", "ticket": "T-77"}), None, CASE)
    assert outcome == Accepted(partner_ref="T-77", updates=())


@pytest.mark.parametrize("answer", [{"code": "0"}, {"code": 0}, {"code": "200"}, {}, None], ids=str)
def test_ok_answers(answer):
    raw = b"" if answer is None else body(answer)
    outcome = adapter().classify(200, raw, None, CASE)
    assert isinstance(outcome, Accepted)
    assert outcome.partner_ref is None


def test_numeric_ticket_becomes_a_string():
    outcome = adapter().classify(201, body({"code": "0", "ticket": 12345}), None, CASE)
    assert outcome == Accepted(partner_ref="12345")


def test_error_code_under_200_is_permanent():
    outcome = adapter().classify(200, body({"code": "E1001", "message": "材料不全"}), None, CASE)
    assert isinstance(outcome, Permanent)
    assert "E1001" in outcome.reason


@pytest.mark.parametrize("code", ["BUSY", "429", "503", 503])
def test_busy_code_under_200_is_retryable(code):
    outcome = adapter().classify(200, body({"code": code}), None, CASE)
    assert isinstance(outcome, Retryable)


def test_configured_busy_code():
    outcome = adapter(busy_codes=["9001"]).classify(200, body({"code": "9001"}), None, CASE)
    assert isinstance(outcome, Retryable)
    outcome = adapter(busy_codes=["9001"]).classify(200, body({"code": "BUSY"}), None, CASE)
    assert isinstance(outcome, Permanent)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_server_errors_and_429_are_retryable(status):
    outcome = adapter().classify(status, body({"code": "E1001"}), None, CASE)
    assert isinstance(outcome, Retryable)
    assert str(status) in outcome.reason
    assert outcome.retry_after is None


@pytest.mark.parametrize(
    ("header", "delay"),
    [("30", 30.0), ("0", 0.0), ("Wed, 21 Oct 2026 07:28:00 GMT", None), ("-5", None),
     ("1.5", None), ("", None)],
)  # fmt: skip
@pytest.mark.parametrize("status", [503, 429])
def test_retry_after_honoured_when_numeric(status, header, delay):
    outcome = adapter().classify(status, b"", header, CASE)
    assert isinstance(outcome, Retryable)
    assert outcome.retry_after == delay


def test_odd_retry_after_does_not_crash_the_adapter():
    # BUG: "²".isdigit() is True but float("²") raises ValueError, so a partner's header makes
    # classify() raise instead of returning an outcome (the SDK says adapters never raise for a
    # partner's behaviour).
    outcome = adapter().classify(503, b"", "²", CASE)
    assert isinstance(outcome, Retryable)


@pytest.mark.parametrize(
    ("status", "answer"),
    [(400, {"code": "E1001"}), (400, {}), (422, {"code": "0"}), (404, {"error": "no route"})],
    ids=str,
)
def test_client_errors_are_permanent(status, answer):
    outcome = adapter().classify(status, body(answer), None, CASE)
    assert isinstance(outcome, Permanent)
    assert str(status) in outcome.reason


def test_non_json_body_under_502_is_retryable():
    outcome = adapter().classify(502, b"<html>Bad Gateway</html>", None, CASE)
    assert isinstance(outcome, Retryable)


def test_non_json_body_under_200_is_retryable():
    outcome = adapter().classify(200, b"<html>maintenance</html>", None, CASE)
    assert isinstance(outcome, Retryable)


# Partner answers that echo the applicant's data back; none of it may reach a reason string.
ECHOES: list[tuple[int, bytes]] = [
    (200, body({"code": "E1001", "message": f"身份证号{ID_NUMBER}与姓名{NAME}不匹配"})),
    (400, body({"code": "E1001", "msg": f"{NAME} {ID_NUMBER} {PHONE}"})),
    (422, body({"errors": [{"field": "idNumber", "value": ID_NUMBER}]})),
    (400, f"bad applicant {NAME} {ID_NUMBER}".encode()),
    (200, f"<html>{NAME} {ID_NUMBER}</html>".encode()),
    (200, body([ID_NUMBER, NAME])),
    (500, body({"code": "E500", "message": f"{ID_NUMBER}"})),
    (503, f"{NAME} {ID_NUMBER}".encode()),
    (429, body({"message": NAME})),
    (200, body({"code": "BUSY", "message": f"{NAME} {ID_NUMBER}"})),
    (200, body({"code": "E1001", "data": {"idNumber": ID_NUMBER, "name": NAME}})),
    # BUG: the partner's "code" goes into the reason verbatim; some platforms put their whole
    # message there.
    (200, body({"code": f"身份证号{ID_NUMBER}校验失败"})),
    (200, body({"code": {"name": NAME, "idNumber": ID_NUMBER}})),
]


@pytest.mark.parametrize(
    ("status", "raw"), ECHOES, ids=[f"echo{i}-http{s}" for i, (s, _) in enumerate(ECHOES)]
)
def test_reasons_never_carry_the_applicant(status, raw):
    outcome = adapter().classify(status, raw, None, CASE)
    assert isinstance(outcome, Permanent | Retryable)
    for value in (ID_NUMBER, ID_NUMBER[:17], NAME, PHONE):
        assert value not in outcome.reason


# ---- parse_inbound ------------------------------------------------------------------------------


def test_parse_inbound_maps_status_codes():
    reports = {
        "reports": [
            {"caseId": "C-1", "ticket": "T-1", "statusCode": "3", "eventId": "ev-1"},
            {"caseId": "C-1", "statusCode": 8},
            {"caseId": "C-1", "statusCode": "11", "outcome": "approved",
             "result": {"certificate_no": "YB-2026-0001"}},
            {"ticket": "T-2", "statusCode": "11", "outcome": "denied"},
            {"caseId": "C-3", "statusCode": "4", "message": "材料不齐全"},
            {"caseId": "C-4", "statusCode": "6", "message": "请补充户口簿", "result": {"k": 1}},
            {"caseId": "C-5", "statusCode": "1"},
        ]
    }  # fmt: skip
    updates = adapter().parse_inbound(body(reports), {})
    assert updates == [
        StatusUpdate(status="accepted", case_id="C-1", partner_ref="T-1", partner_event_id="ev-1"),
        StatusUpdate(status="in_progress", case_id="C-1"),
        StatusUpdate(status="completed", case_id="C-1", outcome="approved",
                     data={"certificate_no": "YB-2026-0001"}),
        StatusUpdate(status="completed", partner_ref="T-2", outcome="denied"),
        StatusUpdate(status="rejected", case_id="C-3", data={"message": "材料不齐全"}),
        StatusUpdate(status="supplement_required", case_id="C-4",
                     data={"k": 1, "message": "请补充户口簿"}),
        StatusUpdate(status="dispatched", case_id="C-5"),
    ]  # fmt: skip


@pytest.mark.parametrize("value", ["approved", "1", "准予", 1])
def test_approved_values(value):
    report = {"reports": [{"caseId": "C-1", "statusCode": "11", "outcome": value}]}
    assert adapter().parse_inbound(body(report), {})[0].outcome == "approved"


def test_custom_status_codes():
    settings = {"status_codes": {"2": "accepted", "4": "completed"}, "approved_values": ["Y"]}
    report = {"reports": [{"caseId": "C-1", "statusCode": "4", "outcome": "Y"}]}
    [update] = adapter(**settings).parse_inbound(body(report), {})
    assert (update.status, update.outcome) == ("completed", "approved")


def test_unknown_status_code_names_the_index():
    reports = {
        "reports": [{"caseId": "C-1", "statusCode": "3"}, {"caseId": "C-1", "statusCode": "99"}]
    }
    with pytest.raises(ValueError, match=r"reports\[1\]"):
        adapter().parse_inbound(body(reports), {})


def test_missing_status_code_names_the_index():
    with pytest.raises(ValueError, match=r"reports\[0\]"):
        adapter().parse_inbound(body({"reports": [{"caseId": "C-1"}]}), {})


@pytest.mark.parametrize(
    "raw",
    [b"<xml/>", b"", b"\xff\xfe", b"{", body({"reports": "x"}), body([]), body({"report": []})],
)
def test_malformed_messages_raise_value_error(raw):
    with pytest.raises(ValueError):
        adapter().parse_inbound(raw, {})


def test_report_that_is_not_an_object_names_the_index():
    with pytest.raises(ValueError, match=r"reports\[1\]"):
        adapter().parse_inbound(body({"reports": [{"caseId": "C", "statusCode": "3"}, 7]}), {})


@pytest.mark.parametrize("result", [["a", "b"], "文书编号 123", 5])
def test_rejection_with_a_non_object_result_does_not_crash(result):
    # BUG: for rejected/supplement_required with a message, `{**data, "message": ...}` raises
    # TypeError when "result" is not an object; parse_inbound must raise only ValueError.
    report = {"reports": [{"caseId": "C-1", "statusCode": "4", "message": "不予受理",
                           "result": result}]}  # fmt: skip
    try:
        updates = adapter().parse_inbound(body(report), {})
    except ValueError:
        return
    assert updates[0].status == "rejected"
    assert updates[0].data.get("message") == "不予受理"


def test_empty_report_list():
    assert adapter().parse_inbound(body({"reports": []}), {}) == []


@pytest.mark.parametrize(
    ("code", "shown"),
    [("E1001", "E1001"), ("11010519491231002X", "<not a code>"), ("13800000000", "<not a code>"),
     ("身份证号校验失败", "<not a code>"), (True, "<not a code>"), (503, "503")],
)  # fmt: skip
def test_partner_codes_in_reasons_never_carry_an_identifier(code: object, shown: str) -> None:
    from adapters.sdk import printable_code

    assert printable_code(code) == shown


def _body_before_mapping(case: CanonicalCase, field_map: dict[str, str]) -> dict[str, Any]:
    """What render() produced before declarative mapping: the reference for compatibility."""
    body = {
        "caseId": case.case_id,
        "requestId": case.request_id,
        "itemCode": case.item_code,
        "itemVersion": case.contract_version,
        "originRegion": case.origin_region,
        "applicant": dict(case.applicant),
        "form": dict(case.payload),
        "attachments": [dict(a) for a in case.attachments],
    }
    return {field_map.get(k, k): v for k, v in body.items()}


@pytest.mark.parametrize(
    "field_map", [{}, {"caseId": "bizNo", "form": "formData"}, {"caseId": "requestId",
                  "requestId": "caseId"}, {"applicant": "sqr", "nothere": "x"}], ids=str
)  # fmt: skip
def test_settings_without_mapping_give_the_same_bytes_as_before(field_map):
    # Byte for byte, key order included: top-level renames keep their place.
    rendered = adapter(field_map=field_map).render(CASE)
    assert orjson.dumps(rendered) == orjson.dumps(_body_before_mapping(CASE, field_map))


# ---- declarative mapping ------------------------------------------------------------------------

NESTED_CASE = CanonicalCase(
    case_id="C-20261121-0002",
    request_id="ZJ-20261121-000124",
    item_code="KSTB-YB-001",
    contract_version=1,
    origin_region="330000",
    handling_region="510000",
    applicant={"id_type": "111", "id_number": ID_NUMBER, "name": NAME, "sex": "2",
               "address": {"region": "330106", "line": "文三路 1 号"}},
    payload={"insured_region": "510100", "start_date": "2026-12-01",
             "filed_at": "2026-11-21T01:30:00Z", "treatment": {"place": "510104"}},
)  # fmt: skip


def test_field_map_moves_nested_fields_and_leaves_the_rest():
    field_map = {
        "applicant": "sqr",
        "applicant.id_number": "sqr.zjhm",
        "applicant.name": "sqr.xm",
        "applicant.address.region": "sqr.dz.xzqh",
        "payload.insured_region": "cbd",  # out of the form, to the top
        "form.treatment.place": "ywxx.jzd",  # the native name works as well as the canonical
        "case_id": "head.bizNo",  # a top-level name into a nested place
    }
    rendered = adapter(field_map=field_map).render(NESTED_CASE)
    assert rendered == {
        "head": {"bizNo": NESTED_CASE.case_id},
        "requestId": NESTED_CASE.request_id,
        "itemCode": "KSTB-YB-001",
        "itemVersion": 1,
        "originRegion": "330000",
        "sqr": {"id_type": "111", "sex": "2", "zjhm": ID_NUMBER, "xm": NAME,
                "address": {"line": "文三路 1 号"}, "dz": {"xzqh": "330106"}},
        "form": {"start_date": "2026-12-01", "filed_at": "2026-11-21T01:30:00Z",
                 "treatment": {}},
        "cbd": "510100",
        "ywxx": {"jzd": "510104"},
        "attachments": [],
    }  # fmt: skip


def test_field_map_within_one_object_and_absent_sources():
    field_map = {"applicant.id_number": "applicant.zjhm", "payload.not_given": "ywxx.x"}
    rendered = adapter(field_map=field_map).render(CASE)
    assert rendered["applicant"] == {"id_type": "111", "zjhm": ID_NUMBER, "name": NAME,
                                     "phone": PHONE}  # fmt: skip
    assert "ywxx" not in rendered  # nothing to move: no empty container either


def test_render_stays_pure_with_nested_moves():
    before = orjson.dumps(NESTED_CASE.applicant), orjson.dumps(NESTED_CASE.payload)
    a = adapter(
        field_map={"applicant.address.region": "dz", "applicant.id_number": "zjhm"},
        code_tables={"applicant.sex": {"1": "M", "2": "F"}},
        date_formats={"payload.start_date": "yyyyMMdd"},
    )
    first = a.render(NESTED_CASE)
    assert a.render(NESTED_CASE) == first
    assert (orjson.dumps(NESTED_CASE.applicant), orjson.dumps(NESTED_CASE.payload)) == before


def test_a_field_mapped_onto_another_field_is_a_render_error():
    with pytest.raises(ValueError, match=r"^requestId: a field is mapped onto another field"):
        adapter(field_map={"applicant.name": "requestId"}).render(CASE)
    with pytest.raises(ValueError, match=r"^caseId: holds a value, not an object"):
        adapter(field_map={"applicant.name": "caseId.xm"}).render(CASE)


def test_constants_are_put_in_every_submit():
    constants = {
        "appId": "tongban",
        "version": "1.0",
        "head.channel": 3,
        "head.sign": {"alg": "SM3"},
    }
    a = adapter(constants=constants, field_map={"caseId": "head.bizNo"})
    rendered = a.render(CASE)
    assert rendered["appId"] == "tongban"
    assert rendered["version"] == "1.0"
    assert rendered["head"] == {"bizNo": CASE.case_id, "channel": 3, "sign": {"alg": "SM3"}}
    rendered["head"]["sign"]["alg"] = "changed"
    assert a.render(CASE)["head"]["sign"] == {"alg": "SM3"}  # the settings' value is not shared


ID_TYPES = {"111": "1", "113": "2", "414": "A"}


@pytest.mark.parametrize(("ours", "theirs"), [("111", "1"), ("113", "2"), ("414", "A")])
def test_code_table_translates_id_types(ours, theirs):
    case = _with_applicant(id_type=ours)
    rendered = adapter(code_tables={"applicant.id_type": ID_TYPES}).render(case)
    assert rendered["applicant"]["id_type"] == theirs


@pytest.mark.parametrize(("ours", "theirs"), [("1", "M"), ("2", "F"), (1, "M"), ("0", "U")])
def test_code_table_translates_sex_with_a_fallback(ours, theirs):
    table = {"1": "M", "2": "F", "*": "U"}
    rendered = adapter(code_tables={"applicant.sex": table}).render(_with_applicant(sex=ours))
    assert rendered["applicant"]["sex"] == theirs


def test_code_table_then_field_map_uses_our_path():
    a = adapter(
        code_tables={"applicant.id_type": ID_TYPES, "payload.kind": {"x": 7}},
        field_map={"applicant.id_type": "sqr.zjlx", "payload": "ywxx"},
    )
    case = _with_applicant(id_type="414", payload={"kind": "x"})
    rendered = a.render(case)
    assert rendered["sqr"] == {"zjlx": "A"}
    assert rendered["ywxx"] == {"kind": 7}  # a table may give numbers too


async def test_missing_code_is_permanent_naming_the_field_not_the_value():
    a = adapter(code_tables={"applicant.id_type": ID_TYPES})
    case = _with_applicant(id_type="513")
    with pytest.raises(ValueError, match=r"^applicant\.id_type: the value has no entry"):
        a.render(case)
    outcome = await _submit(a, case)
    assert isinstance(outcome, Permanent)
    assert "applicant.id_type" in outcome.reason
    assert "513" not in outcome.reason


async def test_a_coded_field_holding_an_object_is_permanent():
    a = adapter(code_tables={"applicant.address": {"x": "y"}})
    outcome = await _submit(a, NESTED_CASE)
    assert isinstance(outcome, Permanent)
    assert "applicant.address: holds a dict" in outcome.reason
    assert "330106" not in outcome.reason


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("yyyyMMddHHmmss", "2026-11-21T01:30:00Z", "20261121093000"),  # UTC → UTC+8
        ("yyyy-MM-dd HH:mm:ss", "2026-11-21T01:30:00+00:00", "2026-11-21 09:30:00"),
        ("yyyy-MM-dd HH:mm:ss", "2026-11-21T09:30:00", "2026-11-21 09:30:00"),  # local already
        ("yyyyMMdd", "2026-12-01", "20261201"),
        ("yyyyMMdd", "2026-11-30T17:00:00Z", "20261201"),  # the next day in Beijing
        ("yyyyMMddHHmmss", "2026-12-01", "20261201000000"),
    ],
)
def test_date_formats_out(pattern, value, expected):
    rendered = adapter(date_formats={"payload.when": pattern}).render(
        _with_applicant(payload={"when": value})
    )
    assert rendered["form"]["when"] == expected


def test_date_format_honours_utc_offset_hours():
    a = adapter(date_formats={"payload.when": "yyyyMMddHHmmss"}, utc_offset_hours=0)
    rendered = a.render(_with_applicant(payload={"when": "2026-11-21T01:30:00Z"}))
    assert rendered["form"]["when"] == "20261121013000"


@pytest.mark.parametrize("value", ["2026/12/01", "tomorrow", 20261201])
async def test_a_value_that_is_not_an_iso_date_is_permanent(value):
    a = adapter(date_formats={"payload.start_date": "yyyyMMdd"})
    outcome = await _submit(a, _with_applicant(payload={"start_date": value}))
    assert isinstance(outcome, Permanent)
    assert (
        outcome.reason
        == "cannot render the case: payload.start_date: not an ISO 8601 date or date-time"
    )


def test_result_codes_and_dates_come_back_in_our_words():
    a = adapter(
        code_tables={"applicant.sex": {"1": "M", "2": "F"}, "result.sex": {"1": "M", "2": "F"},
                     "result.holder.id_type": {"111": "1", "113": "2", "414": "A", "*": "Z"}},
        date_formats={"result.decided_at": "yyyyMMddHHmmss", "result.valid_from": "yyyyMMdd",
                      "result.issued": "yyyy-MM-dd HH:mm:ss"},
    )  # fmt: skip
    report = {"caseId": "C-1", "statusCode": "11", "outcome": "准予", "result": {
        "sex": "F", "holder": {"id_type": "A"}, "decided_at": "20261201093000",
        "valid_from": 20261202, "issued": "2026-12-01 09:30:05", "certificate_no": "YB-1",
        "other": "M"}}  # fmt: skip
    [update] = a.parse_inbound(body({"reports": [report]}), {})
    assert update.data == {
        "sex": "2",
        "holder": {"id_type": "414"},
        "decided_at": "2026-12-01T09:30:00+08:00",
        "valid_from": "2026-12-02",
        "issued": "2026-12-01T09:30:05+08:00",
        "certificate_no": "YB-1",
        "other": "M",  # no table for it
    }


def test_result_values_without_an_entry_or_in_another_format_are_kept():
    a = adapter(
        code_tables={"result.sex": {"1": "M", "2": "F", "*": "U"}},
        date_formats={"result.decided_at": "yyyyMMddHHmmss"},
    )
    report = {"caseId": "C-1", "statusCode": "11", "outcome": "1",
              "result": {"sex": "U", "decided_at": "2026-12-01"}}  # fmt: skip
    [update] = a.parse_inbound(body({"reports": [report]}), {})
    assert update.data == {"sex": "U", "decided_at": "2026-12-01"}


def test_result_mapping_applies_to_the_submit_answer_too():
    a = adapter(code_tables={"result.sex": {"1": "M", "2": "F"}})
    raw = body({"code": "0", "ticket": "T-1", "statusCode": "3", "result": {"sex": "M"}})
    outcome = a.classify(200, raw, None, CASE)
    assert isinstance(outcome, Accepted)
    assert outcome.updates[0].data == {"sex": "1"}


@pytest.mark.parametrize(
    "settings",
    [
        {"field_map": {"handling.region": "x"}},  # not a field of the request
        {"field_map": {"applicant..name": "x"}},
        {"field_map": {"applicant.name": ""}},
        {"field_map": {"payload.x": "a", "form.x": "b"}},  # the same field twice
        {"field_map": {"payload.x": "a", "payload.y": "a"}},  # two fields to one place
        {"field_map": {"result.x": "a"}},  # results are inbound only
        {"constants": {"a..b": 1}},
        {"code_tables": {"nothere.x": {"1": "2"}}},
        {"code_tables": {"result": {"1": "2"}}},
        {"code_tables": {"payload.x": {"1": "2"}, "form.x": {"1": "3"}}},
        {"date_formats": {"payload.x": "yyyy/MM/dd hh"}},  # hh is not a supported token
        {"date_formats": {"payload.x": "yyyyMMdd", "form.x": "yyyyMMdd"}},
        {"utc_offset_hours": 15},
    ],
    ids=str,
)
def test_bad_mapping_settings_are_refused(settings):
    with pytest.raises(ValidationError):
        adapter(**settings)


# ---- constants on every call --------------------------------------------------------------------


@pytest.fixture
async def partner() -> AsyncIterator[tuple[str, list[Any]]]:
    received: list[Any] = []

    async def take(request: web.Request) -> web.Response:
        received.append((request.path, await request.json()))
        return web.json_response({"code": "0", "ticket": "T-9"})

    app = web.Application()
    app.router.add_post("/{tail:.*}", take)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", received
    finally:
        await runner.cleanup()


async def test_constants_go_with_supplements_and_withdrawals_too(partner):
    url, received = partner
    a = RestJsonAdapter(RestJsonSettings(base_url=url, constants={"appId": "tongban"}))
    async with aiohttp.ClientSession() as session:
        ctx = AdapterContext("510000", session, SystemClock(), logging.getLogger("t.rest"), 5.0)
        assert await a.submit(CASE, ctx) == Accepted(partner_ref="T-9")
        await a.supplement(CASE, {"note": "补充", "payload": {"x": 1}}, ctx)
        await a.withdraw(CASE, "撤回", ctx)
    assert [path for path, _ in received] == [
        "/cases",
        f"/cases/{CASE.case_id}/supplements",
        f"/cases/{CASE.case_id}/withdraw",
    ]
    assert all(sent["appId"] == "tongban" for _, sent in received)
    assert received[2][1] == {"caseId": CASE.case_id, "reason": "撤回", "appId": "tongban"}


async def test_a_supplements_attachments_go_by_reference_too(partner):
    url, received = partner
    prefix = "https://gateway.example/v1/partners/510000/attachments/"
    a = RestJsonAdapter(RestJsonSettings(base_url=url, attachment_url=prefix))
    material = {"note": "补充", "attachments": [
        {"name": "居住证明.pdf", "media_type": "application/pdf", "sha256": "ab" * 32,
         "content_base64": "AAAA"}]}  # fmt: skip
    async with aiohttp.ClientSession() as session:
        ctx = AdapterContext("510000", session, SystemClock(), logging.getLogger("t.rest"), 5.0)
        assert isinstance(await a.supplement(CASE, material, ctx), Accepted)
    [(_, sent)] = received
    assert sent["attachments"] == [{"name": "居住证明.pdf", "media_type": "application/pdf",
                                    "sha256": "ab" * 32, "url": prefix + "ab" * 32}]  # fmt: skip


def _with_applicant(payload: dict[str, Any] | None = None, **applicant: Any) -> CanonicalCase:
    return CanonicalCase(
        case_id=CASE.case_id,
        request_id=CASE.request_id,
        item_code=CASE.item_code,
        contract_version=1,
        origin_region="330000",
        handling_region="510000",
        applicant={**CASE.applicant, **applicant},
        payload=dict(CASE.payload) if payload is None else payload,
    )


async def _submit(a: RestJsonAdapter, case: CanonicalCase) -> Any:
    """Submit a case that cannot be rendered: the adapter answers before any HTTP call."""
    async with aiohttp.ClientSession() as session:
        ctx = AdapterContext("510000", session, SystemClock(), logging.getLogger("t.rest"), 1.0)
        return await a.submit(case, ctx)
