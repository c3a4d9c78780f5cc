"""The shipped contract list in ``contracts/``: it loads, every version compiles, realistic
payloads pass and broken ones are refused with the bad field named."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.contracts import ContractList, ContractVersion, FieldSpec, compile_fields
from gateway.identifiers import credit_check_char, id_check_char, region_problem

CONTRACTS = Path(__file__).resolve().parent.parent / "contracts"
SEVEN_RULES = {"申请条件", "申报方式", "受理模式", "审核程序", "办理时限", "发证方式", "收费标准"}
ITEM_CODE = re.compile(r"^KSTB-(YB|RS|GA|MZ|ZJ|JY|WJ|SC)-\d{3}$")
APPLICANT_PATHS = {
    "applicant.id_number",
    "applicant.name",
    "applicant.phone",
    "applicant.representative.id_number",
    "applicant.representative.name",
    "applicant.representative.phone",
}


def citizen_id(first17: str) -> str:
    """A GB 11643 ID number: the first seventeen digits plus their check character."""
    return first17 + id_check_char(first17)


def credit_code(first17: str) -> str:
    """A GB 32100 unified social credit code: seventeen characters plus the check character."""
    return first17 + credit_check_char(first17)


def mailing_address(recipient: str, phone: str, region: str, address: str, postal: str) -> dict:
    return {
        "recipient": recipient,
        "phone": phone,
        "region": region,
        "address": address,
        "postal_code": postal,
    }


# One valid payload per shipped item, for its active version.
# One valid payload per item, shipped as data beside the contracts (the demo submits them).
EXAMPLES = CONTRACTS / "examples"
SAMPLES: dict[str, dict[str, Any]] = {
    path.stem: json.loads(path.read_text(encoding="utf-8"))
    for path in sorted(EXAMPLES.glob("*.json"))
}


MISSING = object()


def wrong_check(code: str) -> str:
    """The same identifier with a check character that does not match."""
    return code[:-1] + ("1" if code[-1] != "1" else "2")


def active(shipped: ContractList, item_code: str) -> ContractVersion:
    version = shipped.items[item_code].version(None)
    assert version is not None
    return version


def mutate(payload: dict[str, Any], loc: tuple[str | int, ...], value: object) -> dict[str, Any]:
    """A deep copy of ``payload`` with the value at ``loc`` replaced, or removed for MISSING."""
    broken = copy.deepcopy(payload)
    parent: Any = broken
    for step in loc[:-1]:
        parent = parent[step]
    if value is MISSING:
        del parent[loc[-1]]
    else:
        parent[loc[-1]] = value
    return broken


def walk(fields: Mapping[str, FieldSpec], prefix: str = "") -> Iterator[tuple[str, FieldSpec]]:
    """Every field spec with its dotted path, list elements standing in for their list."""
    for name, spec in fields.items():
        path = f"{prefix}{name}"
        yield path, spec
        if spec.type == "object":
            yield from walk(spec.fields or {}, path + ".")
        if spec.type == "list" and spec.items is not None:
            yield f"{path}[]", spec.items
            if spec.items.type == "object":
                yield from walk(spec.items.fields or {}, path + ".")


def size(fields: Mapping[str, FieldSpec]) -> int:
    return sum(1 for _ in walk(fields))


@pytest.fixture(scope="module")
def shipped() -> ContractList:
    return ContractList.load(CONTRACTS)


def test_the_list_loads_with_twelve_items_each_with_an_active_version(
    shipped: ContractList,
) -> None:
    assert len(shipped.items) >= 12
    on_disk = {p.stem for p in CONTRACTS.glob("*.json")} - {
        "code_tables", "calendar", "identifier_exceptions"
    }  # fmt: skip
    assert on_disk == set(shipped.items), "one file per item, named after its item code"
    for code, item in shipped.items.items():
        assert ITEM_CODE.match(code), code
        assert item.name.strip() and item.department.strip(), code
        active = item.version(None)
        assert active is not None and active.status == "active", code
        assert active.origins == ["*"], code
        assert active.time_limit_days >= 1
        numbers = [v.version for v in item.versions]
        assert len(numbers) == len(set(numbers)), f"{code}: duplicate version numbers"


def test_every_version_states_the_seven_unified_rules(shipped: ContractList) -> None:
    for code, item in shipped.items.items():
        for version in item.versions:
            assert set(version.rules) == SEVEN_RULES, (code, version.version)
            assert all(text.strip() for text in version.rules.values()), code


def test_every_mode_is_shipped(shipped: ContractList) -> None:
    modes = {active(shipped, code).mode for code in shipped.items}
    assert {"online", "proxy", "multi_site"} <= modes


def test_every_field_has_a_title_and_every_code_table_exists(shipped: ContractList) -> None:
    for code, item in shipped.items.items():
        for version in item.versions:
            for part in (version.fields, version.result_fields):
                for path, spec in walk(part):
                    if not path.endswith("[]"):
                        assert spec.title.strip(), f"{code} v{version.version}: {path}"
                    if spec.type == "enum":
                        codes = spec.values or shipped.code_tables.get(spec.code_table or "")
                        assert codes, f"{code} v{version.version}: {path} has no codes"


def test_routing_names_a_required_region_field_or_a_fixed_region(shipped: ContractList) -> None:
    for code, item in shipped.items.items():
        for version in item.versions:
            routing = version.routing
            fields = [routing.from_field, *(leg.from_field for leg in routing.legs)]
            for name in filter(None, fields):
                spec = version.fields.get(name)
                assert spec is not None, f"{code}: routing field {name} is not defined"
                assert spec.type == "region_code" and spec.required, code
            if routing.legs:
                assert len(routing.legs) >= 2 and version.mode == "multi_site", code
                assert all(leg.title for leg in routing.legs), code
            elif routing.from_field is None:
                assert routing.handling_region is not None, code
                assert region_problem(routing.handling_region) is None, code


def test_sensitive_fields_name_real_fields(shipped: ContractList) -> None:
    for code, item in shipped.items.items():
        for version in item.versions:
            payload_paths = {path for path, _ in walk(version.fields)}
            assert version.sensitive_fields, code
            assert "applicant.id_number" in version.sensitive_fields, code
            for path in version.sensitive_fields:
                if path.startswith("applicant."):
                    assert path in APPLICANT_PATHS, f"{code}: {path}"
                else:
                    assert path.startswith("payload."), f"{code}: {path}"
                    assert path.removeprefix("payload.") in payload_paths, f"{code}: {path}"


def test_result_fields_compile(shipped: ContractList) -> None:
    for code, item in shipped.items.items():
        for version in item.versions:
            assert version.result_fields, code
            compile_fields(f"Result_{code}", version.result_fields, shipped.code_tables)


def test_every_shipped_item_has_a_sample(shipped: ContractList) -> None:
    assert set(SAMPLES) == set(shipped.items)


@pytest.mark.parametrize("item_code", sorted(SAMPLES))
def test_the_sample_payload_validates(shipped: ContractList, item_code: str) -> None:
    item = shipped.items[item_code]
    for version in item.versions:
        shipped.validator(item_code, version)  # every version compiles, drafts included
    model = shipped.validator(item_code, active(shipped, item_code))
    assert shipped.validator(item_code, active(shipped, item_code)) is model, "cached"
    model.validate(SAMPLES[item_code])


def test_medical_filing_v2_is_a_draft_that_only_adds_optional_fields(
    shipped: ContractList,
) -> None:
    item = shipped.items["KSTB-YB-001"]
    v1, v2 = item.version(1), item.version(2)
    assert v1 is not None and v2 is not None
    assert (v1.status, v2.status) == ("active", "draft")
    assert item.version(None) == v1
    added = set(v2.fields) - set(v1.fields)
    assert added == {"referral_hospital_code"}
    assert all(v2.fields[name] == spec for name, spec in v1.fields.items())
    assert not any(v2.fields[name].required for name in added)
    model = shipped.validator("KSTB-YB-001", v2)
    model.validate(SAMPLES["KSTB-YB-001"])
    model.validate(SAMPLES["KSTB-YB-001"] | {"referral_hospital_code": "H51010700012"})
    v1_model = shipped.validator("KSTB-YB-001", v1)
    with pytest.raises(ValidationError):
        v1_model.validate(SAMPLES["KSTB-YB-001"] | {"referral_hospital_code": "H51010700012"})


def test_the_medical_filing_is_small_and_a_large_item_is_the_largest(
    shipped: ContractList,
) -> None:
    sizes = {code: size(active(shipped, code).fields) for code in shipped.items}
    largest = max(sizes, key=sizes.__getitem__)
    assert largest in {"KSTB-SC-001", "KSTB-GA-001"}
    assert sizes["KSTB-YB-001"] <= sorted(sizes.values())[len(sizes) // 2]
    assert sizes[largest] >= 4 * sizes["KSTB-YB-001"]


BROKEN: list[tuple[str, tuple[str | int, ...], object]] = [
    ("KSTB-YB-001", ("filing_type",), MISSING),
    ("KSTB-YB-001", ("filing_type",), "99"),
    ("KSTB-YB-001", ("insured_region",), "990000"),
    ("KSTB-YB-001", ("insured_region",), "33010"),
    ("KSTB-YB-001", ("start_date",), "2026-13-01"),
    ("KSTB-RS-001", ("transfer_in_region",), MISSING),
    ("KSTB-RS-001", ("out_scheme",), "210"),
    ("KSTB-YB-002", ("last_contribution_month",), "202613"),
    ("KSTB-GA-001", ("move_reason",), "00"),
    ("KSTB-GA-001", ("migrants", 1, "id_number"), wrong_check(citizen_id("41130220180911001"))),
    ("KSTB-GA-001", ("householder", "name"), MISSING),
    ("KSTB-GA-002", ("vehicle_classes", 0), "Z9"),
    ("KSTB-MZ-001", ("spouse_id_type",), "999"),
    ("KSTB-ZJ-001", ("out_account_no",), "ABC123"),
    ("KSTB-WJ-001", ("newborn", "weight_g"), 120),
    ("KSTB-SC-001", ("enterprise", "domicile", "region"), "000000"),
    ("KSTB-SC-001", ("investors", 1, "credit_code"), wrong_check(credit_code("91330106MA27Y4B1Q"))),
    ("KSTB-SC-001", ("legal_representative", "phone"), "12345"),
]


@pytest.mark.parametrize(("item_code", "loc", "value"), BROKEN)
def test_a_broken_payload_is_refused_naming_the_field(
    shipped: ContractList, item_code: str, loc: tuple[str | int, ...], value: object
) -> None:
    model = shipped.validator(item_code, active(shipped, item_code))
    broken = mutate(SAMPLES[item_code], loc, value)
    with pytest.raises(ValidationError) as caught:
        model.validate(broken)
    errors = caught.value.errors()
    assert [tuple(e["loc"]) for e in errors] == [loc]
    if loc[-1] in {"id_number", "credit_code"}:
        assert str(value) not in errors[0]["msg"], "an error message never repeats the value"


def test_an_unknown_field_is_refused(shipped: ContractList) -> None:
    model = shipped.validator("KSTB-MZ-001", active(shipped, "KSTB-MZ-001"))
    with pytest.raises(ValidationError) as caught:
        model.validate(SAMPLES["KSTB-MZ-001"] | {"spouse_passport_no": "E12345678"})
    assert [tuple(e["loc"]) for e in caught.value.errors()] == [("spouse_passport_no",)]
