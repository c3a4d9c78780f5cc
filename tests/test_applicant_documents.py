"""The applicant's identity document: its type from the id_type code table, its number checked
by that type (a citizen ID number by GB 11643, a passport or a pass by its own shape)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.identifier_exceptions import NO_EXCEPTIONS, context
from gateway.identifiers import id_check_char
from gateway.models import CaseSubmission
from tests.support import citizen_id, medical_filing, world

ID_TYPES = {"111", "113", "414", "511", "513", "516", "553", "990"}


def permanent_residence_2023(first17: str = "93104419850101001") -> str:
    return first17 + id_check_char(first17)


def submission(id_type: str, number: str) -> dict[str, Any]:
    applicant = {"id_type": id_type, "id_number": number, "name": "JOHN SMITH"}
    return medical_filing("ZJ-DOC-1", applicant=applicant)


def problems(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    try:
        CaseSubmission.model_validate(body, context=context(NO_EXCEPTIONS, ID_TYPES))
    except ValidationError as exc:
        return [e["loc"][-1:] for e in exc.errors()]
    return []


@pytest.mark.parametrize(
    ("id_type", "number"),
    [
        ("111", citizen_id()),
        ("113", citizen_id()),  # 户口簿 carries the citizen ID number
        ("414", "E12345678"),  # 普通护照
        ("414", "P<GBR123456"),  # a foreign passport as its machine-readable zone writes it
        ("516", "H12345678"),  # 回乡证, Hong Kong
        ("516", "M1234567890"),  # 回乡证, Macao, older ten digits
        ("511", "12345678"),  # 台胞证
        ("513", "C12345678"),  # 往来港澳通行证
        ("553", "USA123456789012"),  # 外国人永久居留身份证, former
        ("553", permanent_residence_2023()),  # 外国人永久居留身份证, 2023
        ("990", "ABC-123"),
    ],
)
def test_each_document_is_checked_by_its_own_rule(id_type: str, number: str) -> None:
    assert problems(submission(id_type, number)) == []


@pytest.mark.parametrize(
    ("id_type", "number"),
    [
        ("111", "E12345678"),  # a passport number given as a citizen ID
        ("111", citizen_id()[:-1] + ("1" if citizen_id()[-1] != "1" else "2")),
        ("516", "X12345678"),
        ("511", "1234567"),
        ("553", permanent_residence_2023()[:-1] + "0"
         if permanent_residence_2023()[-1] != "0" else permanent_residence_2023()[:-1] + "1"),
        ("414", "E1"),
    ],
)  # fmt: skip
def test_a_number_that_breaks_its_document_rule_is_refused(id_type: str, number: str) -> None:
    assert problems(submission(id_type, number)) == [("id_number",)]


def test_a_document_type_outside_the_code_table_is_refused() -> None:
    assert problems(submission("777", "E12345678")) == [("id_type",)]


async def test_a_passport_holder_submits_and_a_bad_number_is_named(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        status, case, _ = await w.origin.call("POST", "/v1/cases", submission("414", "E12345678"))
        assert status == 202, case
        bad = {**submission("516", "X1"), "request_id": "ZJ-DOC-2"}
        status, problem, _ = await w.origin.call("POST", "/v1/cases", bad)
        assert status == 422
        assert [e["loc"] for e in problem["errors"]] == [["applicant", "id_number"]]
        assert "X1" not in str(problem)
