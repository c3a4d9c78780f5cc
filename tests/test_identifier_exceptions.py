"""The identifier exception list: legacy ID numbers and credit codes that fail their own check
character, accepted once operators list them in the contract list, and only then."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import orjson
import pydantic
import pytest

from gateway import revisions
from gateway.contracts import ContractList, FieldSpec, compile_fields
from gateway.identifier_exceptions import IdentifierExceptions, why_not_listable
from gateway.identifiers import credit_check_char, id_check_char
from gateway.models import CaseSubmission
from tests.support import CONTRACTS, HANDLER, OPERATOR_TOKEN, World, medical_filing, world

ADMIN = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


def wrong_check(code: str) -> str:
    """The same identifier with a check character that does not match."""
    return code[:-1] + ("1" if code[-1] != "1" else "2")


# Example entries (test data): the shipped list is empty.
VALID_CREDIT_CODE = "91330106MA27Y4B1Q" + credit_check_char("91330106MA27Y4B1Q")
VALID_ID_NUMBER = "33010219860521031" + id_check_char("33010219860521031")
LEGACY_CREDIT_CODE = wrong_check(VALID_CREDIT_CODE)
LEGACY_ID_NUMBER = wrong_check(VALID_ID_NUMBER)
# Another wrong check character, not listed.
OTHER_CREDIT_CODE = VALID_CREDIT_CODE[:-1] + next(
    c for c in "0123456789" if c not in (VALID_CREDIT_CODE[-1], LEGACY_CREDIT_CODE[-1])
)
CREDIT_ENTRY = {
    "value": LEGACY_CREDIT_CODE,
    "note": "example: a 2016 business licence in a city's market register (test data)",
}
ID_ENTRY = {
    "value": LEGACY_ID_NUMBER,
    "note": "example: a first-generation ID card in a county's household register (test data)",
}
FIELDS = {"code": FieldSpec(type="credit_code", required=True),
          "people": FieldSpec(type="list", items=FieldSpec(type="id_card"))}  # fmt: skip


def listing(**entries: list[dict[str, str]]) -> IdentifierExceptions:
    return IdentifierExceptions.model_validate(entries)


# ---- the list itself ---------------------------------------------------------------------------


def test_the_shipped_list_is_empty_and_documented() -> None:
    shipped = ContractList.load(CONTRACTS).identifier_exceptions
    assert shipped.id_card == [] and shipped.credit_code == []
    assert "operator-guide" in shipped.note


def test_the_example_values_fail_only_their_check_character() -> None:
    assert why_not_listable("credit_code", LEGACY_CREDIT_CODE) is None
    assert why_not_listable("id_card", LEGACY_ID_NUMBER) is None


@pytest.mark.parametrize(
    ("kind", "value", "why"),
    [
        ("credit_code", LEGACY_CREDIT_CODE[:-1], "must be 18 characters"),
        ("credit_code", LEGACY_CREDIT_CODE + "1", "must be 18 characters"),
        ("credit_code", LEGACY_CREDIT_CODE[:8] + "I" + LEGACY_CREDIT_CODE[9:], "without I, O"),
        ("credit_code", LEGACY_CREDIT_CODE[:-1] + "Z", "without I, O"),
        ("credit_code", VALID_CREDIT_CODE, "needs no exception"),
        ("id_card", LEGACY_ID_NUMBER[:17], "17 digits"),
        ("id_card", LEGACY_ID_NUMBER[:-1] + "A", "17 digits"),
        ("id_card", "99" + LEGACY_ID_NUMBER[2:], "address code"),
        ("id_card", LEGACY_ID_NUMBER[:10] + "13" + LEGACY_ID_NUMBER[12:], "birth date"),
        ("id_card", VALID_ID_NUMBER, "needs no exception"),
    ],
)
def test_a_value_without_its_standards_shape_cannot_be_listed(kind, value, why) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        listing(**{kind: [{"value": value, "note": "wrong"}]})
    assert why in str(info.value)
    assert value not in str(info.value), "an error never repeats a listed value"
    assert value[:12] not in str(info.value)


def test_an_entry_needs_a_note_and_may_appear_once() -> None:
    with pytest.raises(pydantic.ValidationError):
        listing(credit_code=[{"value": LEGACY_CREDIT_CODE}])
    with pytest.raises(pydantic.ValidationError, match="listed twice"):
        listing(credit_code=[CREDIT_ENTRY, {**CREDIT_ENTRY, "value": LEGACY_CREDIT_CODE.lower()}])


def test_the_list_is_read_from_the_contract_list_folder(tmp_path: Path) -> None:
    for name in ("KSTB-YB-001.json", "code_tables.json"):
        (tmp_path / name).write_bytes((CONTRACTS / name).read_bytes())
    (tmp_path / "identifier_exceptions.json").write_bytes(
        orjson.dumps({"credit_code": [CREDIT_ENTRY], "id_card": [ID_ENTRY]})
    )
    lst = ContractList.load(tmp_path)
    assert list(lst.items) == ["KSTB-YB-001"]
    assert lst.identifier_exceptions.values("credit_code") == {LEGACY_CREDIT_CODE}
    bad = {"credit_code": [{"value": VALID_CREDIT_CODE, "note": "valid anyway"}]}
    (tmp_path / "identifier_exceptions.json").write_bytes(orjson.dumps(bad))
    with pytest.raises(pydantic.ValidationError) as info:
        ContractList.load(tmp_path)
    assert VALID_CREDIT_CODE[:12] not in str(info.value)


# ---- payload fields ----------------------------------------------------------------------------


def test_a_payload_credit_code_with_a_wrong_check_character_is_refused_until_listed() -> None:
    strict = compile_fields("P", FIELDS, {})
    with pytest.raises(pydantic.ValidationError) as info:
        strict.validate({"code": LEGACY_CREDIT_CODE})
    assert [e["loc"] for e in info.value.errors()] == [("code",)]
    assert "check character" in info.value.errors()[0]["msg"]
    listed = compile_fields("P", FIELDS, {}, listing(credit_code=[CREDIT_ENTRY]))
    assert listed.validate({"code": LEGACY_CREDIT_CODE.lower()}) == {"code": LEGACY_CREDIT_CODE}
    with pytest.raises(pydantic.ValidationError):  # another bad code is still refused
        listed.validate({"code": OTHER_CREDIT_CODE})


def test_a_payload_id_number_in_a_list_is_accepted_once_listed() -> None:
    payload = {"code": VALID_CREDIT_CODE, "people": [LEGACY_ID_NUMBER]}
    with pytest.raises(pydantic.ValidationError) as info:
        compile_fields("P", FIELDS, {}).validate(payload)
    assert [e["loc"] for e in info.value.errors()] == [("people", 0)]
    listed = compile_fields("P", FIELDS, {}, listing(id_card=[ID_ENTRY]))
    assert listed.validate(payload)["people"] == [LEGACY_ID_NUMBER]
    # The listing is by kind: a listed ID number is no credit code.
    with pytest.raises(pydantic.ValidationError):
        compile_fields("P", FIELDS, {}, listing(id_card=[ID_ENTRY])).validate(
            {"code": LEGACY_CREDIT_CODE}
        )


def test_a_contract_list_compiles_its_exceptions_into_its_validators() -> None:
    shipped = ContractList.load(CONTRACTS)
    raw = shipped.model_dump(mode="json")
    raw["identifier_exceptions"]["credit_code"] = [CREDIT_ENTRY]
    listed = ContractList.model_validate(raw)
    version = listed.items["KSTB-SC-001"].version(1)
    assert version is not None
    sample = json.loads((CONTRACTS / "examples" / "KSTB-SC-001.json").read_text("utf-8"))
    sample["investors"][1]["credit_code"] = LEGACY_CREDIT_CODE
    with pytest.raises(pydantic.ValidationError):
        shipped.validator("KSTB-SC-001", version).validate(sample)
    out = listed.validator("KSTB-SC-001", version).validate(sample)
    assert out["investors"][1]["credit_code"] == LEGACY_CREDIT_CODE


# ---- the applicant -----------------------------------------------------------------------------


def natural(id_number: str) -> dict[str, Any]:
    return medical_filing("ZJ-EXC-1", applicant={"id_number": id_number, "name": "张三"})


def legal(credit_code: str, representative_id: str) -> dict[str, Any]:
    applicant = {"kind": "legal_person", "credit_code": credit_code, "name": "某某有限公司",
                 "representative": {"id_number": representative_id, "name": "李四"}}  # fmt: skip
    return medical_filing("ZJ-EXC-2", applicant=applicant)


def test_the_applicant_identifiers_accept_only_what_the_context_lists() -> None:
    good_id, good_code = VALID_ID_NUMBER, VALID_CREDIT_CODE
    for body, loc in [
        (natural(LEGACY_ID_NUMBER), ("applicant", "natural_person", "id_number")),
        (legal(LEGACY_CREDIT_CODE, good_id), ("applicant", "legal_person", "credit_code")),
        (legal(good_code, LEGACY_ID_NUMBER),
         ("applicant", "legal_person", "representative", "id_number")),
    ]:  # fmt: skip
        with pytest.raises(pydantic.ValidationError) as info:
            CaseSubmission.model_validate(body)
        assert [e["loc"] for e in info.value.errors()] == [loc]
        with pytest.raises(pydantic.ValidationError):  # another list does not help
            CaseSubmission.model_validate(body, context={"identifier_exceptions": listing()})
    both = listing(credit_code=[CREDIT_ENTRY], id_card=[ID_ENTRY])
    context = {"identifier_exceptions": both}
    sub = CaseSubmission.model_validate(natural(LEGACY_ID_NUMBER.lower()), context=context)
    assert sub.applicant.model_dump()["id_number"] == LEGACY_ID_NUMBER
    CaseSubmission.model_validate(legal(LEGACY_CREDIT_CODE, good_id), context=context)
    CaseSubmission.model_validate(legal(good_code, LEGACY_ID_NUMBER), context=context)


# ---- through the API: published with the list, in force at once -------------------------------


async def publish(w: World, lst: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    status, answer, _ = await w.origin.call(
        "POST", "/v1/ops/contracts/publish", lst, sign=False, headers=ADMIN
    )
    return status, answer


def sc_case(request_id: str, credit_code: str) -> dict[str, Any]:
    payload = json.loads((CONTRACTS / "examples" / "KSTB-SC-001.json").read_text("utf-8"))
    payload["registration_region"] = HANDLER  # routed to the handler the test world knows
    payload["investors"][1]["credit_code"] = credit_code
    return medical_filing(request_id, item_code="KSTB-SC-001", payload=payload)


async def test_publishing_an_exception_lets_the_case_in(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with world(tmp_path) as w:
        status, problem, _ = await w.origin.call(
            "POST", "/v1/cases", sc_case("ZJ-X-1", LEGACY_CREDIT_CODE)
        )
        assert status == 422, problem
        assert [e["loc"] for e in problem["errors"]] == [["payload", "investors", 1, "credit_code"]]
        status, problem, _ = await w.origin.call("POST", "/v1/cases", natural(LEGACY_ID_NUMBER))
        assert status == 422
        assert [e["loc"] for e in problem["errors"]] == [["applicant", "id_number"]]

        lst = ContractList.load(CONTRACTS).model_dump(mode="json")
        bad = copy.deepcopy(lst)
        bad["identifier_exceptions"]["credit_code"] = [
            {"value": LEGACY_CREDIT_CODE[:-2], "note": "too short"}
        ]
        status, problem = await publish(w, bad)
        assert status == 422
        assert problem["errors"][0]["loc"] == ["identifier_exceptions", "credit_code"]
        assert LEGACY_CREDIT_CODE[:-2] not in orjson.dumps(problem).decode()

        lst["identifier_exceptions"]["credit_code"] = [CREDIT_ENTRY]
        lst["identifier_exceptions"]["id_card"] = [ID_ENTRY]
        status, answer = await publish(w, lst)
        assert status == 201, answer
        assert "+ 1 credit_code identifier exception(s) added" in answer["diff"]
        assert "+ 1 id_card identifier exception(s) added" in answer["diff"]
        shown = orjson.dumps(answer).decode()
        assert LEGACY_CREDIT_CODE not in shown and LEGACY_ID_NUMBER not in shown

        status, case, _ = await w.origin.call(
            "POST", "/v1/cases", sc_case("ZJ-X-1", LEGACY_CREDIT_CODE)
        )
        assert status == 202, case
        status, case2, _ = await w.origin.call("POST", "/v1/cases", natural(LEGACY_ID_NUMBER))
        assert status == 202, case2
        store = w.gateway.store
        assert store is not None
        stored = await store.get_case(case2["case_id"])
        assert stored is not None and stored.case.applicant["id_number"] == LEGACY_ID_NUMBER

        record = await store.get_revision(w.gateway.registry.revision)
        assert record is not None
        content = revisions.loads(record.content).identifier_exceptions
        assert content.values("credit_code") == {LEGACY_CREDIT_CODE}

        lst["identifier_exceptions"]["credit_code"] = []
        status, answer = await publish(w, lst)
        assert status == 201
        assert "- 1 credit_code identifier exception(s) removed" in answer["diff"]
        status, _, _ = await w.origin.call(
            "POST", "/v1/cases", sc_case("ZJ-X-3", LEGACY_CREDIT_CODE)
        )
        assert status == 422, "no longer listed: refused again"
    for value in (LEGACY_CREDIT_CODE, LEGACY_ID_NUMBER):
        assert value not in caplog.text, "a listed value never reaches a log line"
