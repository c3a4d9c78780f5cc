"""Chinese identifier standards as pure checks and pydantic types.

- GB 11643-1999 citizen ID numbers (ISO 7064 MOD 11-2 check character, real birth date),
- GB 32100-2015 unified social credit codes (MOD 31 check character),
- GB/T 2260 region codes, against the full table in data/regions.json (tools/build_regions.py).

Error messages never repeat the value: it may be a person's ID number.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import date
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Annotated, NamedTuple

from pydantic import AfterValidator

_ID_CHECK = "10X98765432"
_CREDIT_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_TO_BASE34 = str.maketrans(_CREDIT_ALPHABET, "0123456789ABCDEFGHIJKLMNOPQRSTU")
_CREDIT_CHARS = re.compile(r"[0-9A-HJ-NPQRTUWXY]{17}")
_CREDIT_SHAPE = re.compile(r"[0-9A-HJ-NPQRTUWXY]{18}")

PROVINCES: dict[str, str] = {
    "11": "北京", "12": "天津", "13": "河北", "14": "山西", "15": "内蒙古",
    "21": "辽宁", "22": "吉林", "23": "黑龙江", "31": "上海", "32": "江苏",
    "33": "浙江", "34": "安徽", "35": "福建", "36": "江西", "37": "山东",
    "41": "河南", "42": "湖北", "43": "湖南", "44": "广东", "45": "广西",
    "46": "海南", "50": "重庆", "51": "四川", "52": "贵州", "53": "云南",
    "54": "西藏", "61": "陕西", "62": "甘肃", "63": "青海", "64": "宁夏",
    "65": "新疆", "71": "台湾", "81": "香港", "82": "澳门",
}  # fmt: skip
# Address codes of residence permits for Hong Kong, Macao and Taiwan residents.
PERMIT_PREFIXES = ("810000", "820000", "830000")
# A birth year before this one is in the past whatever today is; only later ones are compared
# with today (``date.today()`` costs a third of the whole check, which runs several times a case).
_SURELY_PAST_BEFORE = 2026
_ID_SHAPE = re.compile(r"[0-9]{17}[0-9X]")
_REGION_SHAPE = re.compile(r"[0-9]{6}")


class Regions(NamedTuple):
    """The GB/T 2260 table: codes in use today, and codes since dropped (with the last year)."""

    current: Mapping[str, str]
    historical: Mapping[str, tuple[str, int | None]]


@cache
def regions() -> Regions:
    """Read the table on first use, so that importing this module stays cheap; read-only views."""
    text = resources.files("gateway").joinpath("data/regions.json").read_text(encoding="utf-8")
    raw = json.loads(text)
    historical = {code: (name, year) for code, (name, year) in raw["historical"].items()}
    return Regions(MappingProxyType(raw["current"]), MappingProxyType(historical))


def region_name(code: str) -> str | None:
    """The name of a current or historical GB/T 2260 code (the current name wins), or None."""
    table = regions()
    if code in table.current:
        return table.current[code]
    entry = table.historical.get(code)
    return entry[0] if entry else None


@cache
def _address_codes() -> frozenset[str]:
    # Historical codes count: a number keeps the code of the county that issued it, for life.
    table = regions()
    return frozenset(table.current) | frozenset(table.historical) | frozenset(PERMIT_PREFIXES)


def _is_address_code(code: str) -> bool:
    return code in _address_codes()


def id_check_char(first17: str) -> str:
    """The GB 11643 check character for the first seventeen digits."""
    if len(first17) != 17 or not (first17.isascii() and first17.isdigit()):
        raise ValueError("the check character covers exactly seventeen digits")
    # The weights 7 9 10 … 2 are 2**17 … 2**1 modulo 11, and 13 is 2 modulo 11: the weighted sum
    # is twice the digits read as a base-13 number, modulo 11. int() does the loop in C (this runs
    # for every ID number of every case).
    return _ID_CHECK[2 * int(first17, 13) % 11]


def id_number_problem(value: str) -> str | None:
    """Why an eighteen-character citizen ID number is invalid, or None if it is valid."""
    if not _ID_SHAPE.fullmatch(value):
        return "must be 17 digits followed by a digit or X"
    if not _is_address_code(value[:6]):
        return "address code is not a known region"
    try:
        born = date.fromisoformat(value[6:14])  # YYYYMMDD: eight digits, by the shape above
    except ValueError:
        return "birth date is not a real date"
    if born.year < 1880 or (born.year >= _SURELY_PAST_BEFORE and born > date.today()):
        return "birth date is out of range"
    if id_check_char(value[:17]) != value[17]:
        return "check character does not match"
    return None


# Identity documents (证件类型, the id_type code table) whose number is the holder's citizen ID
# number: 居民身份证, 临时居民身份证, 户口簿.
CITIZEN_ID_DOCUMENTS = frozenset({"111", "112", "113"})
# Other documents by their own shape (numbers upper-cased first).
_DOCUMENT_SHAPES: dict[str, tuple[re.Pattern[str], str]] = {
    # 港澳居民来往内地通行证 (回乡证): H (Hong Kong) or M (Macao), then 8 or 10 digits.
    "516": (re.compile(r"[HM]\d{8}(\d{2})?"), "must be H or M followed by 8 or 10 digits"),
    # 台湾居民来往大陆通行证 (台胞证): 8 digits (10 on older cards).
    "511": (re.compile(r"\d{8}(\d{2})?"), "must be 8 or 10 digits"),
    # 往来港澳通行证: a letter, then 8 letters and digits.
    "513": (re.compile(r"[A-Z][0-9A-Z]{8}"), "must be a letter followed by 8 letters or digits"),
}
_PERMANENT_RESIDENCE_OLD = re.compile(r"[A-Z]{3}\d{12}")
_ANY_DOCUMENT = re.compile(r"[0-9A-Z][0-9A-Z()<-]{2,31}")


def document_problem(id_type: str, number: str) -> str | None:
    """Why ``number`` (upper case) is not a valid number of a document of ``id_type``, or None.

    Citizen ID documents follow GB 11643; 外国人永久居留身份证 (553) is either the former 15
    characters (three letters, twelve digits) or the 2023 eighteen digits starting with 9 under
    the GB 11643 check character; the passes of Hong Kong, Macao and Taiwan residents have their
    own shapes; passports and other documents are 3 to 32 letters, digits and ``()<-``.
    """
    if id_type in CITIZEN_ID_DOCUMENTS:
        return id_number_problem(number)
    if id_type == "553":
        if _PERMANENT_RESIDENCE_OLD.fullmatch(number):
            return None
        if _ID_SHAPE.fullmatch(number) and number[0] == "9":
            ok = id_check_char(number[:17]) == number[17]
            return None if ok else "check character does not match"
        return "must be 3 letters and 12 digits, or 18 digits starting with 9"
    pattern, why = _DOCUMENT_SHAPES.get(id_type, (_ANY_DOCUMENT, ""))
    if pattern.fullmatch(number):
        return None
    return why or "must be 3 to 32 letters, digits or ()<-"


def credit_check_char(first17: str) -> str:
    # The weights 1 3 9 … 28 are 3**0 … 3**16 modulo 31, and 34 is 3 modulo 31: the weighted sum
    # is the code, reversed and written in base-34 digits of the same values, read as a number.
    if not _CREDIT_CHARS.fullmatch(first17):
        raise ValueError("the check character covers seventeen characters of the GB 32100 alphabet")
    total = int(first17.translate(_TO_BASE34)[::-1], 34)
    return _CREDIT_ALPHABET[(31 - total % 31) % 31]


def credit_code_problem(value: str) -> str | None:
    """Why a unified social credit code is invalid, or None if it is valid."""
    if not _CREDIT_SHAPE.fullmatch(value):
        return "must be 18 characters of 0-9 and A-Y without I, O, S, V, Z"
    if credit_check_char(value[:17]) != value[17]:
        return "check character does not match"
    return None


def region_problem(value: str) -> str | None:
    """Why a region code is not a current GB/T 2260 code, or None.

    Only current codes: a case is routed to, or handled in, a region that exists today. The
    residence-permit prefix 830000 is not a region (Taiwan is 710000).
    """
    if not _REGION_SHAPE.fullmatch(value):
        return "must be a six-digit GB/T 2260 code"
    if value[:2] not in PROVINCES:
        return "province prefix is not a GB/T 2260 province"
    if value not in regions().current:
        return "is not a current GB/T 2260 region code"
    return None


def _validated(problem_of: object) -> AfterValidator:
    def check(value: str) -> str:
        problem = problem_of(value.upper())  # type: ignore[operator]
        if problem:
            raise ValueError(problem)
        return value.upper()

    return AfterValidator(check)


def six_digit_region(value: str) -> str:
    """A region code as GB/T 2260 writes it: platforms that pad codes to the twelve digits of the
    statistical division code (``511602000000``) mean the six-digit one."""
    if len(value) == 12 and value.endswith("000000") and value.isdigit():
        return value[:6]
    return value


IdNumber = Annotated[str, _validated(id_number_problem)]
CreditCode = Annotated[str, _validated(credit_code_problem)]
RegionCode = Annotated[str, AfterValidator(six_digit_region), _validated(region_problem)]
