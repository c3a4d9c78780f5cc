"""The ``rest_json`` adapter's pure parts: render, classify, parse_inbound."""

from __future__ import annotations

import orjson
import pytest

from adapters.rest_json import RestJsonAdapter, RestJsonSettings
from adapters.sdk import Accepted, CanonicalCase, Permanent, Retryable, StatusUpdate
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
