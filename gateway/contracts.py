"""Service-item contracts: the model of the contract list and the payload validator each version
compiles into.

A contract list is a folder of JSON files, one per service item (事项), each holding every version
of that item. A version is immutable once published: cases are pinned to the version they were
accepted under. Compiling a version into a payload validator (:mod:`gateway.validation`) happens
once and is cached.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from gateway.identifier_exceptions import IdentifierExceptions
from gateway.validation import PayloadValidator
from gateway.validation import compile_fields as compile_fields  # re-exported for callers
from gateway.workdays import WorkCalendar
from gateway.workdays import deadline_after as deadline_after  # re-exported for callers

Mode = Literal["online", "proxy", "multi_site"]
VersionStatus = Literal["draft", "active", "deprecated", "retired"]
FieldType = Literal[
    "string", "integer", "decimal", "boolean", "date", "datetime", "enum",
    "region_code", "id_card", "credit_code", "phone", "object", "list",
]  # fmt: skip


class FieldSpec(BaseModel):
    """One request or result field."""

    model_config = ConfigDict(extra="forbid")

    type: FieldType
    title: str = ""
    required: bool = False
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    values: list[str] | None = Field(default=None, description="enum: allowed codes")
    code_table: str | None = Field(default=None, description="enum: a named code table")
    fields: dict[str, FieldSpec] | None = Field(default=None, description="object: its fields")
    items: FieldSpec | None = Field(default=None, description="list: its element")
    max_items: int | None = None

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"pattern does not compile: {exc}") from None
        return v

    @model_validator(mode="after")
    def _complete(self) -> FieldSpec:
        if self.type == "enum" and not self.values and not self.code_table:
            raise ValueError("an enum needs values or a code_table")
        if self.type == "object" and self.fields is None:
            raise ValueError("an object needs fields")
        return self


class LegSpec(BaseModel):
    """One leg of a ``multi_site`` case (多地联办): a region that works the case in its turn.

    Its region is fixed or taken from a payload field. ``carry`` names what this leg is given of
    the previous leg's result: ``{"this leg's payload field": "previous leg's result field"}``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str = ""
    handling_region: str | None = Field(default=None, pattern=r"^\d{6}$")
    from_field: str | None = None
    carry: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_way(self) -> LegSpec:
        if (self.handling_region is None) == (self.from_field is None):
            raise ValueError("a leg names exactly one of handling_region or from_field")
        return self


class Routing(BaseModel):
    """How the handling region is found: fixed, derived from a payload field, or, for a
    ``multi_site`` item, ordered legs (the first leg's region is where the case goes first)."""

    model_config = ConfigDict(extra="forbid")

    handling_region: str | None = None
    from_field: str | None = None
    legs: list[LegSpec] = Field(default_factory=list)


class AttachmentSpec(BaseModel):
    """One kind of material (申请材料) a case of this version may or must carry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field(min_length=1, max_length=64)
    title: str = ""
    required: bool = False
    media_types: list[str] = Field(
        default_factory=lambda: ["application/pdf", "image/jpeg", "image/png", "application/ofd"]
    )
    max_bytes: int = Field(10 * 1024 * 1024, ge=1)


class ContractVersion(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(ge=1)
    status: VersionStatus = "active"
    mode: Mode = "online"
    effective_from: date | None = None
    origins: list[str] = Field(default_factory=lambda: ["*"], description="admitted origins")
    routing: Routing = Field(default_factory=Routing)
    time_limit_days: int = Field(default=20, ge=1, description="承诺时限, working days")
    fields: dict[str, FieldSpec] = Field(default_factory=dict)
    result_fields: dict[str, FieldSpec] = Field(default_factory=dict)
    sensitive_fields: list[str] = Field(default_factory=list)
    rules: dict[str, str] = Field(default_factory=dict, description="the unified item rules")
    attachments: list[AttachmentSpec] = Field(
        default_factory=list, description="materials by kind; empty: any attachment is accepted"
    )
    subscribers: list[str] = Field(
        default_factory=list,
        description="recipients of every event besides origin and hub, by their configured "
        "name (e.g. a supervising department, 审管联动)",
    )

    @model_validator(mode="after")
    def _legs_fit_mode(self) -> ContractVersion:
        # A multi_site version without legs runs as one exchange, as versions published before
        # legs existed do; with legs, it has at least two.
        legs = self.routing.legs
        if legs and len(legs) < 2:
            raise ValueError("routing.legs needs at least two legs")
        if self.mode != "multi_site" and legs:
            raise ValueError("routing.legs is only for the multi_site mode")
        if legs and (self.routing.handling_region or self.routing.from_field):
            raise ValueError("with routing.legs, the legs name the regions")
        if legs and legs[0].carry:
            raise ValueError("routing.legs[0].carry: the first leg has no previous leg")
        for i, leg in enumerate(legs):
            if leg.from_field and leg.from_field not in self.fields:
                raise ValueError(f"routing.legs[{i}].from_field: no field {leg.from_field!r}")
        return self

    def in_effect(self, day: date) -> bool:
        return self.effective_from is None or self.effective_from <= day

    def admits(self, origin: str) -> bool:
        return "*" in self.origins or origin in self.origins or origin[:2] + "0000" in self.origins


class ServiceItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_code: str
    name: str
    department: str = ""
    versions: list[ContractVersion]

    def version(self, number: int | None, on: date | None = None) -> ContractVersion | None:
        """The given version, or when ``number`` is None the newest active one in effect
        ``on`` that day (every active one when no day is given)."""
        if number is None:
            active = [
                v for v in self.versions if v.status == "active" and (on is None or v.in_effect(on))
            ]
            return max(active, key=lambda v: v.version) if active else None
        return next((v for v in self.versions if v.version == number), None)


class ContractList(BaseModel):
    """Every service item with all its versions, plus the code tables they name and the working-day
    calendar their time limits are counted in."""

    # An error never shows the input: the identifier exception list holds personal data.
    model_config = ConfigDict(hide_input_in_errors=True)

    items: dict[str, ServiceItem]
    code_tables: dict[str, dict[str, str]] = Field(default_factory=dict)
    calendar: WorkCalendar = Field(default_factory=WorkCalendar)
    identifier_exceptions: IdentifierExceptions = Field(
        default_factory=IdentifierExceptions,
        description="legacy identifiers accepted although their check character fails",
    )

    @classmethod
    def load(cls, folder: Path) -> ContractList:
        """Read ``*.json`` item files and the optional ``code_tables.json`` and ``calendar.json``
        from a folder, and the optional ``identifier_exceptions.json``."""
        items: dict[str, ServiceItem] = {}
        tables: dict[str, dict[str, str]] = {}
        calendar = WorkCalendar()
        exceptions = IdentifierExceptions()
        for path in sorted(folder.glob("*.json")):
            raw = orjson.loads(path.read_bytes())
            if path.name == "code_tables.json":
                tables = raw
                continue
            if path.name == "calendar.json":
                calendar = WorkCalendar.model_validate(raw)
                continue
            if path.name == "identifier_exceptions.json":
                exceptions = IdentifierExceptions.model_validate(raw)  # errors never echo values
                continue
            item = ServiceItem.model_validate(raw)
            items[item.item_code] = item
        return cls(
            items=items, code_tables=tables, calendar=calendar, identifier_exceptions=exceptions
        )

    _validators: dict[tuple[str, str, int], PayloadValidator] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _tables_exist(self) -> ContractList:
        for code, item in self.items.items():
            for v in item.versions:
                for path, spec in walk(v.fields, f"{code}.v{v.version}.fields"):
                    if spec.code_table and spec.code_table not in self.code_tables:
                        raise ValueError(f"{path}: unknown code table {spec.code_table!r}")
        return self

    def validator(self, item_code: str, version: ContractVersion) -> PayloadValidator:
        """The compiled payload validator for one version, built on first use."""
        return self._compiled("Payload", item_code, version, version.fields)

    def result_validator(self, item_code: str, version: ContractVersion) -> PayloadValidator:
        """The compiled validator of a version's result fields, built on first use."""
        return self._compiled("Result", item_code, version, version.result_fields)

    def _compiled(
        self, kind: str, item_code: str, version: ContractVersion, fields: dict[str, FieldSpec]
    ) -> PayloadValidator:
        key = (kind, item_code, version.version)
        cache = self._validators
        if key not in cache:
            safe = re.sub(r"\W", "_", item_code)
            name = f"{kind}_{safe}_v{version.version}"
            cache[key] = compile_fields(name, fields, self.code_tables, self.identifier_exceptions)
        return cache[key]


def walk(fields: Mapping[str, FieldSpec], prefix: str) -> list[tuple[str, FieldSpec]]:
    """Every field spec with its dotted path, nested objects and list elements included."""
    out: list[tuple[str, FieldSpec]] = []
    for name, spec in fields.items():
        path = f"{prefix}.{name}"
        out.append((path, spec))
        if spec.fields:
            out += walk(spec.fields, path)
        if spec.items:
            out += walk({"[]": spec.items}, path)
    return out


def province_of(region: str) -> str:
    return region[:2] + "0000"


def attachment_errors(
    specs: Sequence[AttachmentSpec], given: Sequence[tuple[str | None, str, int | None]]
) -> list[dict[str, Any]]:
    """Check submitted attachments, given as (kind, media type, size in bytes or None if the
    content is not inline), against a version's specs; one error per problem, by location."""
    if not specs:
        return []
    by_kind = {s.kind: s for s in specs}
    errors: list[dict[str, Any]] = []

    def err(loc: list[str | int], msg: str) -> None:
        errors.append({"loc": ["attachments", *loc], "msg": msg, "type": "attachment"})

    for i, (kind, media_type, size) in enumerate(given):
        spec = by_kind.get(kind or "")
        if spec is None:
            err([i, "kind"], f"must be one of: {', '.join(sorted(by_kind))}")
            continue
        if media_type not in spec.media_types:
            err([i, "media_type"], f"must be one of: {', '.join(spec.media_types)}")
        if size is not None and size > spec.max_bytes:
            err([i, "content_base64"], f"larger than {spec.max_bytes} bytes")
    present = {kind for kind, _, _ in given}
    for spec in specs:
        if spec.required and spec.kind not in present:
            err([], f"the required material {spec.kind} ({spec.title or spec.kind}) is missing")
    return errors
