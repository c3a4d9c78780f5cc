"""Chinese identifier standards (DOMAIN.md): GB 11643, GB 32100, GB/T 2260."""

from __future__ import annotations

import itertools
import random
from datetime import date, timedelta

import pydantic
import pytest

from gateway.identifiers import (
    CreditCode,
    IdNumber,
    RegionCode,
    credit_check_char,
    credit_code_problem,
    id_check_char,
    id_number_problem,
    region_name,
    region_problem,
    regions,
)

ID_ADAPTER = pydantic.TypeAdapter(IdNumber)
CREDIT_ADAPTER = pydantic.TypeAdapter(CreditCode)
REGION_ADAPTER = pydantic.TypeAdapter(RegionCode)

# Independent implementations of the two checksums, straight from DOMAIN.md.
ID_WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
CREDIT_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
CREDIT_WEIGHTS = [1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28]


def gb11643_check(first17: str) -> str:
    return "10X98765432"[sum(int(d) * w for d, w in zip(first17, ID_WEIGHTS, strict=True)) % 11]


def gb32100_check(first17: str) -> str:
    total = sum(CREDIT_ALPHABET.index(c) * w for c, w in zip(first17, CREDIT_WEIGHTS, strict=True))
    return CREDIT_ALPHABET[(31 - total % 31) % 31]


def citizen(first17: str) -> str:
    return first17 + id_check_char(first17)


def wrong_check(first17: str) -> str:
    return first17 + ("1" if id_check_char(first17) == "0" else "0")


def id_with_check_x() -> str:
    for seq in range(1000):
        first17 = f"33010619800101{seq:03d}"
        if id_check_char(first17) == "X":
            return first17 + "X"
    raise AssertionError("no sequence gives X")


# ---- GB 11643 -----------------------------------------------------------------------------------


def test_check_char_matches_the_standard():
    rng = random.Random(11643)
    for _ in range(500):
        first17 = "".join(rng.choice("0123456789") for _ in range(17))
        assert id_check_char(first17) == gb11643_check(first17)


def test_published_example_with_check_x():
    assert id_check_char("11010519491231002") == "X"
    assert id_number_problem("11010519491231002X") is None


@pytest.mark.parametrize(
    "first17",
    [
        "11010519491231002",
        "33010619800101001",
        "51010720000229123",  # leap day
        "44060619850615456",
        "65010218800101001",  # 1880 is still in range
    ],
)
def test_valid_numbers(first17):
    value = citizen(first17)
    assert id_number_problem(value) is None
    assert ID_ADAPTER.validate_python(value) == value


def test_a_number_found_to_end_in_x_is_valid():
    value = id_with_check_x()
    assert value.endswith("X")
    assert id_number_problem(value) is None


def test_lowercase_x_is_normalised_to_upper_case():
    value = id_with_check_x()
    assert ID_ADAPTER.validate_python(value[:-1] + "x") == value


def test_wrong_check_character_is_refused():
    value = citizen("33010619800101001")
    for wrong in "0123456789X":
        if wrong == value[-1]:
            continue
        assert id_number_problem(value[:-1] + wrong) == "check character does not match"
        with pytest.raises(pydantic.ValidationError):
            ID_ADAPTER.validate_python(value[:-1] + wrong)


@pytest.mark.parametrize(
    "birth",
    ["19900230", "19901301", "19900001", "19900100", "19000229", "19910229", "19900431"],
)
def test_impossible_birth_date_is_refused(birth):
    value = citizen(f"330106{birth}001")
    assert id_number_problem(value) == "birth date is not a real date"


def test_future_birth_date_is_refused():
    tomorrow = date.today() + timedelta(days=1)
    value = citizen(f"330106{tomorrow:%Y%m%d}001")
    assert id_number_problem(value) == "birth date is out of range"


def test_birth_date_before_1880_is_refused():
    assert id_number_problem(citizen("33010618791231001")) == "birth date is out of range"


@pytest.mark.parametrize("prefix", ["990000", "000000", "100000", "830100", "910000"])
def test_unknown_address_code_is_refused(prefix):
    value = citizen(f"{prefix}19800101001")
    assert id_number_problem(value) == "address code is not a known region"


@pytest.mark.parametrize("prefix", ["810000", "820000", "830000"])
def test_residence_permit_address_codes_are_accepted(prefix):
    value = citizen(f"{prefix}19800101001")
    assert id_number_problem(value) is None
    assert ID_ADAPTER.validate_python(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "11010519491231002",  # 17 characters
        "11010519491231002XX",  # 19 characters
        "110105491231002",  # the old 15-digit form
        "1101051949123100AX",
        "11010519491231002Y",
        " 11010519491231002X",
        "11010519491231002X ",
        "1101051949-231002X",
    ],
)
def test_malformed_number_is_refused(value):
    assert id_number_problem(value.upper()) is not None
    with pytest.raises(pydantic.ValidationError):
        ID_ADAPTER.validate_python(value)


def test_non_ascii_digits_are_refused():
    # BUG: str.isdigit() and int() accept full-width digits, so this 18-character string with
    # full-width birth date and sequence passes every check and would be stored as an ID number.
    full_width = str.maketrans("0123456789", "０１２３４５６７８９")
    value = "110105" + "19491231002".translate(full_width) + "X"
    assert id_number_problem(value) is not None
    with pytest.raises(pydantic.ValidationError):
        ID_ADAPTER.validate_python(value)


@pytest.mark.parametrize(
    "value",
    [
        wrong_check("33010619800101001"),
        citizen("99010619800101001"),
        citizen("33019919800101001"),  # valid province prefix, no such county
        citizen("33010619801301001"),
        citizen("33010618000101001"),
        "33010619800101001",
        "3301061980010100A1",
    ],
)
def test_error_messages_never_contain_the_value(value):
    problem = id_number_problem(value)
    assert problem is not None
    with pytest.raises(pydantic.ValidationError) as info:
        ID_ADAPTER.validate_python(value)
    messages = [problem] + [e["msg"] for e in info.value.errors()]
    for message in messages:
        assert value not in message
        assert value[:6] not in message  # not even the address code
        assert value[6:14] not in message  # nor the birth date


# ---- GB 32100 -----------------------------------------------------------------------------------

PUBLISHED_CREDIT_CODE = "91350100M000100Y43"


def test_published_code_checks_out_by_the_domain_algorithm():
    assert gb32100_check(PUBLISHED_CREDIT_CODE[:17]) == PUBLISHED_CREDIT_CODE[17]
    assert credit_code_problem(PUBLISHED_CREDIT_CODE) is None
    assert CREDIT_ADAPTER.validate_python(PUBLISHED_CREDIT_CODE) == PUBLISHED_CREDIT_CODE


def test_credit_check_char_matches_the_standard():
    rng = random.Random(32100)
    for _ in range(500):
        first17 = "".join(rng.choice(CREDIT_ALPHABET) for _ in range(17))
        assert credit_check_char(first17) == gb32100_check(first17)
        assert credit_code_problem(first17 + gb32100_check(first17)) is None


def test_lowercase_credit_code_is_normalised():
    assert CREDIT_ADAPTER.validate_python(PUBLISHED_CREDIT_CODE.lower()) == PUBLISHED_CREDIT_CODE


def test_wrong_credit_check_char_is_refused():
    for wrong in CREDIT_ALPHABET:
        if wrong == PUBLISHED_CREDIT_CODE[17]:
            continue
        code = PUBLISHED_CREDIT_CODE[:17] + wrong
        assert credit_code_problem(code) == "check character does not match"
        with pytest.raises(pydantic.ValidationError):
            CREDIT_ADAPTER.validate_python(code)


@pytest.mark.parametrize(("letter", "position"), list(itertools.product("IOSVZ", [0, 8, 12, 17])))
def test_forbidden_letters_are_refused(letter, position):
    code = PUBLISHED_CREDIT_CODE[:position] + letter + PUBLISHED_CREDIT_CODE[position + 1 :]
    problem = credit_code_problem(code)
    assert problem is not None
    assert code not in problem
    with pytest.raises(pydantic.ValidationError):
        CREDIT_ADAPTER.validate_python(code)


@pytest.mark.parametrize(
    "code", ["", PUBLISHED_CREDIT_CODE[:17], PUBLISHED_CREDIT_CODE + "0", "91350100-000100Y43"]
)
def test_malformed_credit_code_is_refused(code):
    assert credit_code_problem(code) is not None


# ---- GB/T 2260 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["330000", "510000", "440600", "110105", "650000", "820000"])
def test_region_codes_accepted(code):
    assert region_problem(code) is None
    assert REGION_ADAPTER.validate_python(code) == code


@pytest.mark.parametrize(
    "code",
    [
        "990000",
        "000000",
        "330106" + "001000",  # twelve digits below county level (a street)
        "33000",
        "3300000",
        "33000A",
        "３３００００",
        "330199",  # province prefix of Zhejiang, but no such county
        "110103",  # 崇文区, merged into 东城区 in 2010: historical, not current
        "830000",  # residence-permit address code, not a region (Taiwan is 710000)
    ],
)
def test_region_codes_refused(code):
    problem = region_problem(code)
    assert problem is not None
    assert code not in problem
    with pytest.raises(pydantic.ValidationError):
        REGION_ADAPTER.validate_python(code)


def test_five_digit_region_message():
    assert region_problem("33000") == "must be a six-digit GB/T 2260 code"
    assert region_problem("990000") == "province prefix is not a GB/T 2260 province"


def test_current_county_codes_are_accepted():
    assert region_problem("330106") is None
    assert region_name("330106") == "西湖区"
    # Districts set up after 2020 are in the table too.
    assert region_name("330113") == "临平区"
    assert region_problem("330113") is None


@pytest.mark.parametrize("code", ["710000", "810000", "820000"])
def test_taiwan_hong_kong_macao_are_gbt2260_regions(code):
    assert region_problem(code) is None


def test_unknown_code_under_a_real_province_is_refused():
    table = regions()
    assert "330199" not in table.current and "330199" not in table.historical
    assert region_problem("330199") == "is not a current GB/T 2260 region code"
    assert region_name("330199") is None


def test_abolished_county_is_not_a_current_region():
    # 下城区 and 江干区 of Hangzhou were abolished in 2021.
    for code in ("330103", "330104"):
        assert region_problem(code) == "is not a current GB/T 2260 region code"
        assert region_name(code) is not None


@pytest.mark.parametrize(
    ("first17", "name", "last_year"),
    [
        ("11010319650412003", "崇文区", 2009),  # merged into 东城区 in 2010
        ("11010419780915021", "宣武区", 2009),  # merged into 西城区 in 2010
        ("33010319900101002", "下城区", 2020),  # split between 上城区 and 拱墅区 in 2021
        ("13052119870707015", "邢台县", 2019),  # split between 襄都区 and 信都区 in 2020
    ],
)
def test_numbers_issued_under_abolished_counties_stay_valid(first17, name, last_year):
    code = first17[:6]
    assert regions().historical[code] == (name, last_year)
    assert code not in regions().current
    value = citizen(first17)
    assert id_number_problem(value) is None
    assert ID_ADAPTER.validate_python(value) == value


@pytest.mark.parametrize("prefix", ["330199", "110199", "510198", "650099"])
def test_address_code_that_never_existed_is_refused(prefix):
    assert region_name(prefix) is None
    problem = id_number_problem(citizen(f"{prefix}19800101001"))
    assert problem == "address code is not a known region"


def test_region_table_is_whole_and_consistent():
    table = regions()
    counties = [code for code in table.current if not code.endswith("00")]
    assert len(table.current) > 3000 and len(counties) > 2800
    assert len(table.historical) > 3000
    assert not table.current.keys() & table.historical.keys()
    for code in [*table.current, *table.historical]:
        assert len(code) == 6 and code.isascii() and code.isdigit(), code
    provinces = {code[:2] for code in table.current}
    assert provinces == {"11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34",
                         "35", "36", "37", "41", "42", "43", "44", "45", "46", "50", "51", "52",
                         "53", "54", "61", "62", "63", "64", "65", "71", "81", "82"}  # fmt: skip
    assert "830000" not in table.current and "830000" not in table.historical


def test_region_table_is_loaded_once_and_read_only():
    assert regions() is regions()
    with pytest.raises(TypeError):
        regions().current["999999"] = "x"


@pytest.mark.parametrize(("given", "stored"), [("511602000000", "511602"), ("330106", "330106")])
def test_a_region_code_padded_to_twelve_digits_means_the_six_digit_one(
    given: str, stored: str
) -> None:
    assert REGION_ADAPTER.validate_python(given) == stored


@pytest.mark.parametrize("given", ["511602001000", "5116020000", "511699000000"])
def test_a_twelve_digit_code_below_county_level_or_unknown_is_refused(given: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        REGION_ADAPTER.validate_python(given)
