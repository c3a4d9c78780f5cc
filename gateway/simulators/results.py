"""What a simulated province's decision carries: the result fields (办理结果) its item's contract
names, filled in with values of the right kind.

A province that approves a case returns what the contract promises the origin: a filing number
and validity dates for 异地就医备案, a certificate number for 出生医学证明, a credit code for
企业登记. The gateway checks a ``completed`` report against the contract's ``result_fields``, so
every simulator fills in the required ones. Values are derived from the partner's own reference
for the case, so they are stable for one case and differ between cases. Pure: no I/O beyond
reading the shipped contract list once.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from gateway.config import PROJECT_ROOT
from gateway.contracts import ContractList, FieldSpec
from gateway.identifiers import credit_check_char, id_check_char, region_name


@functools.cache
def shipped() -> ContractList:
    """The contract list shipped with the gateway, read once (it does not change at run time)."""
    return ContractList.load(PROJECT_ROOT / "contracts")


def item_result(
    item_code: str,
    *,
    ref: str,
    region: str,
    now: datetime,
    contracts: ContractList | None = None,
) -> dict[str, Any]:
    """The required result fields of the item's newest version that names any (none for an
    item the list does not hold), in the gateway's field names and JSON values."""
    lst = contracts or shipped()
    item = lst.items.get(item_code)
    if item is None:
        return {}
    versions = sorted(item.versions, key=lambda v: v.version, reverse=True)
    fields = next((v.result_fields for v in versions if v.result_fields), {})
    serial = "".join(c for c in ref if c.isdigit())[-6:].rjust(6, "0")
    return _object(fields, _Fill(serial, region, now, lst.code_tables))


class _Fill:
    """How values are made for one case."""

    def __init__(
        self, serial: str, region: str, now: datetime, tables: Mapping[str, Mapping[str, str]]
    ) -> None:
        self.serial, self.region, self.now, self.tables = serial, region, now, tables

    def value(self, name: str, spec: FieldSpec) -> Any:
        t = spec.type
        if t == "object":
            return _object(spec.fields or {}, self)
        if t == "list":
            item = spec.items or FieldSpec(type="string")
            # Two elements: in XML one element could not be told from a single value.
            values = [self.value(name, item) for _ in range(min(2, spec.max_items or 2))]
            if item.type == "enum":  # two different codes, as a list of classes would hold
                codes = item.values or list(self.tables.get(item.code_table or "", {}))
                values = codes[: len(values)]
            return values
        simple: dict[str, Callable[[], Any]] = {
            "string": lambda: self._string(name, spec),
            "integer": lambda: int(max(spec.minimum or 0, min(spec.maximum or 12, 12))),
            "decimal": lambda: f"{max(spec.minimum or 0, min(spec.maximum or 8650.5, 8650.5)):.2f}",
            "boolean": lambda: True,
            "date": lambda: self._date(name).isoformat(),
            "datetime": lambda: self.now.isoformat(timespec="seconds"),
            "enum": lambda: (spec.values or list(self.tables.get(spec.code_table or "", {})))[0],
            "region_code": lambda: self.region,
            "phone": lambda: "028-86000000",  # the handling office
            "id_card": lambda: _id_number(self.region, self.serial),
            "credit_code": lambda: _credit_code(self.region, self.serial),
        }
        return simple[t]()

    def _string(self, name: str, spec: FieldSpec) -> str:
        """A number for a ``*_no`` field, the office's name for any other; under a pattern, the
        first of a few number shapes that matches it (the shipped patterns are such shapes)."""
        number = f"{self.region[:2]}{self.now.year}{self.serial}"  # twelve digits
        named = f"{region_name(self.region) or ''}{spec.title or name}"
        shapes = [number, number[-9:], f"M{number[-9:]}", named]
        if spec.pattern:
            pattern = re.compile(spec.pattern)
            return next((x for x in shapes if pattern.fullmatch(x)), number)
        text = number if name.endswith("_no") else named
        if spec.min_length and len(text) < spec.min_length:
            text = text.ljust(spec.min_length, "0")
        return text[: spec.max_length] if spec.max_length else text

    def _date(self, name: str) -> Any:
        """Today, or a year on for an end of validity."""
        today = self.now.date()
        ends = ("until", "_to", "valid_until", "expiry")
        return today + timedelta(days=365) if name.endswith(ends) else today


def _object(fields: Mapping[str, FieldSpec], fill: _Fill) -> dict[str, Any]:
    return {name: fill.value(name, spec) for name, spec in fields.items() if spec.required}


def _id_number(region: str, serial: str) -> str:
    first17 = f"{region}19900101{serial[-3:]}"
    return first17 + id_check_char(first17)


def _credit_code(region: str, serial: str) -> str:
    first17 = f"91{region}MA{serial[-6:]}0"
    return first17 + credit_check_char(first17)
