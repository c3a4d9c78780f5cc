"""The shipped contract list in ``contracts/``: it loads, every version compiles, realistic
payloads pass and broken ones are refused with the bad field named."""

from __future__ import annotations

import copy
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
SAMPLES: dict[str, dict[str, Any]] = {
    "KSTB-YB-001": {
        "insured_region": "330106",
        "insurance_type": "310",
        "filing_type": "11",
        "treatment_region": "510107",
        "start_date": "2026-12-01",
        "end_date": "2027-11-30",
        "residence_address": "四川省成都市武侯区科华北路65号3栋2单元501室",
        "contact_phone": "13857101234",
        "commitment_signed": True,
    },
    "KSTB-YB-002": {
        "transfer_out_region": "440106",
        "transfer_in_region": "420106",
        "insurance_type": "310",
        "out_agency_name": "广州市医疗保险服务中心",
        "in_agency_name": "武汉市医疗保障中心",
        "insured_since": "2016-07-01",
        "last_contribution_month": "202610",
        "in_employer_name": "武汉东湖云帆科技有限公司",
        "in_employer_credit_code": credit_code("91420100MA4K7N2P6"),
        "contact_phone": "18627001234",
    },
    "KSTB-RS-001": {
        "transfer_out_region": "310115",
        "transfer_in_region": "510104",
        "out_scheme": "110",
        "in_scheme": "110",
        "transfer_reason": "跨省流动就业",
        "insured_since": "2012-03-01",
        "in_employer_name": "成都锦城数字技术有限公司",
        "in_employer_credit_code": credit_code("91510104MA6CB3L8X"),
        "has_temporary_account": False,
        "contact_phone": "15982001234",
        "contact_address": "四川省成都市锦江区东大街下东大街段99号",
    },
    "KSTB-RS-002": {
        "insured_region": "350102",
        "application_type": "首次申领",
        "sex": "2",
        "ethnicity": "01",
        "birth_date": "1992-05-18",
        "nationality": "CHN",
        "photo_receipt_no": "35010220261121A0001",
        "cooperating_bank": "中国工商银行",
        "delivery_method": "02",
        "mailing_address": mailing_address(
            "林晓燕", "13960801234", "440106", "广东省广州市天河区天河路385号1201室", "510620"
        ),
    },
    "KSTB-RS-003": {
        "transfer_out_region": "320583",
        "transfer_in_region": "340104",
        "separation_date": "2026-09-30",
        "last_employer_name": "昆山精工电子有限公司",
        "last_employer_credit_code": credit_code("91320583MA1N2R4T7"),
        "insured_months": 86,
        "benefit_status": "领取中",
        "remaining_benefit_months": 9,
        "contact_phone": "13776001234",
    },
    "KSTB-GA-001": {
        "move_reason": "11",
        "move_out_region": "411302",
        "move_out_address": "河南省南阳市宛城区新华东路156号",
        "move_out_police_station": "南阳市公安局宛城分局新华派出所",
        "move_in_region": "440305",
        "move_in_address": "广东省深圳市南山区粤海街道科苑南路2666号",
        "move_in_police_station": "深圳市公安局南山分局粤海派出所",
        "household_kind": "家庭户",
        "householder": {
            "name": "陈志强",
            "id_number": citizen_id("44030519880716031"),
            "household_no": "440305123",
        },
        "migrants": [
            {
                "name": "王丽",
                "id_number": citizen_id("41130219900204002"),
                "sex": "2",
                "ethnicity": "01",
                "birth_date": "1990-02-04",
                "relation_to_householder": "10",
                "relation_to_applicant": "01",
                "education": "20",
                "marital_status": "21",
                "occupation": "中学教师",
            },
            {
                "name": "陈思远",
                "id_number": citizen_id("41130220180911001"),
                "sex": "1",
                "ethnicity": "01",
                "birth_date": "2018-09-11",
                "relation_to_householder": "20",
                "relation_to_applicant": "20",
                "education": "80",
            },
        ],
        "basis": {
            "kind": "结婚证",
            "document_no": "J440305-2016-004521",
            "issued_by": "深圳市南山区民政局",
            "issue_date": "2016-10-08",
        },
        "delivery_method": "03",
        "contact_phone": "13925501234",
    },
    "KSTB-GA-002": {
        "issuing_region": "130102",
        "application_type": "有效期满换证",
        "licence_number": citizen_id("13010219800101153"),
        "file_no": "130100123456",
        "vehicle_classes": ["C1"],
        "first_issue_date": "2006-04-20",
        "valid_until": "2027-01-20",
        "health_declared": True,
        "medical_exam_no": "TJ2026112100123",
        "photo_receipt_no": "J1301022026A12345",
        "delivery_method": "02",
        "mailing_address": mailing_address(
            "赵建国",
            "13731101234",
            "320102",
            "江苏省南京市玄武区中山路18号德基大厦2208室",
            "210018",
        ),
    },
    "KSTB-MZ-001": {
        "registration_type": "补领结婚证",
        "registry_region": "500103",
        "registry_name": "重庆市渝中区民政局婚姻登记处",
        "applicant_sex": "2",
        "applicant_hukou_region": "500103",
        "applicant_marital_status": "21",
        "spouse_name": "刘洋",
        "spouse_id_type": "111",
        "spouse_id_number": citizen_id("50010319870423051"),
        "spouse_sex": "1",
        "spouse_nationality": "CHN",
        "spouse_hukou_region": "500103",
        "spouse_marital_status": "21",
        "original_certificate_no": "J500103-2013-002318",
        "original_registration_date": "2013-05-20",
        "both_present": False,
    },
    "KSTB-ZJ-001": {
        "transfer_out_region": "320106",
        "transfer_in_region": "330108",
        "out_centre": "南京住房公积金管理中心",
        "in_centre": "杭州住房公积金管理中心",
        "out_account_no": "3201060012345678",
        "in_account_no": "330100987654321",
        "in_employer_name": "杭州滨江星河网络科技有限公司",
        "in_employer_credit_code": credit_code("91330108MA2H0C5K3"),
        "out_account_sealed": True,
        "has_outstanding_loan": False,
        "contact_phone": "0571-86001234",
    },
    "KSTB-JY-001": {
        "certification_type": "高等教育学历认证",
        "education_level": "本科",
        "institution_name": "华中科技大学",
        "institution_code": "10487",
        "institution_region": "420111",
        "major": "计算机科学与技术",
        "study_mode": "全日制",
        "enrollment_date": "2010-09-01",
        "graduation_date": "2014-06-30",
        "diploma_no": "104871201405001234",
        "degree_certificate_no": "1048742014001234",
        "report_language": "英文",
        "copies": 2,
        "delivery_method": "03",
    },
    "KSTB-WJ-001": {
        "application_type": "补发",
        "birth_region": "610113",
        "issuing_institution": "陕西省妇幼保健院",
        "newborn": {
            "name": "赵子墨",
            "sex": "1",
            "birth_time": "2025-03-14T08:26:00+08:00",
            "gestational_weeks": 39,
            "weight_g": 3350,
            "length_cm": "50.5",
            "birth_place": "陕西省西安市雁塔区",
        },
        "mother": {
            "name": "孙静",
            "id_type": "111",
            "id_number": citizen_id("61011319930816022"),
            "ethnicity": "01",
            "nationality": "CHN",
        },
        "father": {
            "name": "赵磊",
            "id_type": "111",
            "id_number": citizen_id("62010219910302051"),
            "ethnicity": "03",
            "nationality": "CHN",
        },
        "original_certificate_no": "V610123456",
        "reissue_reason": "原证遗失",
        "delivery_method": "02",
        "mailing_address": mailing_address(
            "孙静", "18092001234", "120101", "天津市和平区南京路219号天津中心1503室", "300051"
        ),
    },
    "KSTB-SC-001": {
        "registration_type": "设立登记",
        "registration_region": "310115",
        "registration_authority": "上海市浦东新区市场监督管理局",
        "enterprise": {
            "name": "上海澜川智能科技有限公司",
            "name_reservation_no": "沪名称告知2026第1121003号",
            "enterprise_type": "1130",
            "registered_capital": "500",
            "currency": "156",
            "domicile": {
                "region": "310115",
                "address": "中国（上海）自由贸易试验区张江路665号3层301室",
                "postal_code": "201203",
                "property_right": "租赁",
            },
            "business_scope": [
                "一般项目：技术服务、技术开发、技术咨询、技术交流、技术转让、技术推广",
                "软件开发",
                "人工智能应用软件开发",
                "信息系统集成服务",
            ],
            "business_term": {"from": "2026-12-01", "long_term": True},
            "employees": 12,
        },
        "legal_representative": {
            "name": "周明",
            "id_type": "111",
            "id_number": citizen_id("33010219860521031"),
            "phone": "13655711234",
            "position": "执行董事",
            "appointed_by": "选举",
        },
        "investors": [
            {
                "investor_type": "自然人",
                "name": "周明",
                "id_type": "111",
                "id_number": citizen_id("33010219860521031"),
                "nationality": "CHN",
                "subscribed_capital": "350",
                "contribution_methods": ["货币"],
                "contribution_deadline": "2031-11-30",
                "shareholding_ratio": "70",
            },
            {
                "investor_type": "企业法人",
                "name": "杭州云岫投资管理有限公司",
                "credit_code": credit_code("91330106MA27Y4B1Q"),
                "subscribed_capital": "150",
                "contribution_methods": ["货币", "知识产权"],
                "contribution_deadline": "2031-11-30",
                "shareholding_ratio": "30",
            },
        ],
        "principal_staff": [
            {
                "name": "周明",
                "id_type": "111",
                "id_number": citizen_id("33010219860521031"),
                "position": "执行董事",
                "appointed_by": "选举",
                "term_years": 3,
            },
            {
                "name": "吴海燕",
                "id_type": "111",
                "id_number": citizen_id("31011519890917042"),
                "position": "经理",
                "appointed_by": "聘任",
                "term_years": 3,
            },
            {
                "name": "郑凯",
                "id_type": "111",
                "id_number": citizen_id("32050619920611013"),
                "position": "监事",
                "appointed_by": "选举",
                "term_years": 3,
            },
        ],
        "financial_officer": {
            "name": "吴海燕",
            "id_type": "111",
            "id_number": citizen_id("31011519890917042"),
            "phone": "13917201234",
        },
        "liaison": {
            "name": "郑凯",
            "id_type": "111",
            "id_number": citizen_id("32050619920611013"),
            "phone": "15250121234",
        },
        "agent": {
            "name": "郑凯",
            "id_number": citizen_id("32050619920611013"),
            "phone": "15250121234",
            "authority_scope": ["核对登记材料复印件", "填写申请表格", "领取营业执照"],
            "valid_until": "2027-03-31",
        },
        "licence_copies": 1,
        "delivery_method": "02",
        "mailing_address": mailing_address(
            "郑凯", "15250121234", "320506", "江苏省苏州市吴中区东吴北路98号", "215128"
        ),
        "commitment_signed": True,
    },
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
    on_disk = {p.stem for p in CONTRACTS.glob("*.json")} - {"code_tables"}
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
            if routing.from_field is not None:
                spec = version.fields.get(routing.from_field)
                assert spec is not None, (
                    f"{code}: routing field {routing.from_field} is not defined"
                )
                assert spec.type == "region_code" and spec.required, code
            else:
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
    model.model_validate(SAMPLES[item_code])


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
    model.model_validate(SAMPLES["KSTB-YB-001"])
    model.model_validate(SAMPLES["KSTB-YB-001"] | {"referral_hospital_code": "H51010700012"})
    v1_model = shipped.validator("KSTB-YB-001", v1)
    with pytest.raises(ValidationError):
        v1_model.model_validate(SAMPLES["KSTB-YB-001"] | {"referral_hospital_code": "H51010700012"})


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
        model.model_validate(broken)
    errors = caught.value.errors()
    assert [tuple(e["loc"]) for e in errors] == [loc]
    if loc[-1] in {"id_number", "credit_code"}:
        assert str(value) not in errors[0]["msg"], "an error message never repeats the value"


def test_an_unknown_field_is_refused(shipped: ContractList) -> None:
    model = shipped.validator("KSTB-MZ-001", active(shipped, "KSTB-MZ-001"))
    with pytest.raises(ValidationError) as caught:
        model.model_validate(SAMPLES["KSTB-MZ-001"] | {"spouse_passport_no": "E12345678"})
    assert [tuple(e["loc"]) for e in caught.value.errors()] == [("spouse_passport_no",)]
