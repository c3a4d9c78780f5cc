"""Field specs → payload validators.

A contract version's fields compile, once, into a pydantic-core validator and serializer built
straight from core schemas: the payload is checked as plain dicts and lists (no model class per
object, no model instances) and comes out as the JSON-ready dict that is stored and handed on,
exactly what ``model_dump(mode="json", exclude_none=True)`` of a compiled pydantic model gave:
dates and datetimes as ISO strings, decimals as strings, optional fields given as null left out.

The rules: unknown keys are refused at every level, strings are stripped of surrounding
whitespace, contract patterns run on Python's ``re`` (the engine that checked them when the
contract was read), identifiers are upper-cased and checked against their standard (or the
operators' exception list). Errors are pydantic's, located by field path and list index, with the
messages the compiled models gave; one reads better: a non-object where an object belongs is
"Input should be a valid dictionary" (``dict_type``), no longer naming a generated model class.

:meth:`gateway.contracts.ContractList.validator` compiles each version on first use and caches it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter
from pydantic_core import SchemaSerializer, SchemaValidator, core_schema

from gateway.identifier_exceptions import NO_EXCEPTIONS, IdentifierExceptions, checker
from gateway.identifiers import RegionCode

if TYPE_CHECKING:
    from gateway.contracts import FieldSpec

PHONE = r"^(\+?86)?1[3-9]\d{9}$|^0\d{2,3}-?\d{7,8}$"
# A region code is checked exactly as ``gateway.identifiers.RegionCode`` checks it.
_REGION = TypeAdapter(RegionCode).core_schema


# Every object carries the rules: pydantic-core applies the config of the innermost object.
_RULES = core_schema.CoreConfig(
    extra_fields_behavior="forbid", str_strip_whitespace=True, regex_engine="python-re"
)


class PayloadValidator:
    """One compiled field set: ``validate`` returns the payload as stored, or raises
    :class:`pydantic.ValidationError` naming every bad field."""

    __slots__ = ("_serializer", "_validator", "name")

    def __init__(self, name: str, schema: core_schema.CoreSchema) -> None:
        self.name = name
        config = core_schema.CoreConfig(title=name, **_RULES)
        self._validator = SchemaValidator(schema, config)
        self._serializer = SchemaSerializer(schema, config)

    def validate(self, payload: Any) -> dict[str, Any]:
        valid = self._validator.validate_python(payload)
        out: dict[str, Any] = self._serializer.to_python(valid, mode="json", exclude_none=True)
        return out

    def __repr__(self) -> str:
        return f"<PayloadValidator {self.name}>"


def field_schema(
    spec: FieldSpec,
    tables: Mapping[str, Mapping[str, str]],
    exceptions: IdentifierExceptions = NO_EXCEPTIONS,
) -> core_schema.CoreSchema:
    """The core schema of one field's value (``None`` is not part of it)."""
    t = spec.type
    if t == "string":
        return core_schema.str_schema(
            min_length=spec.min_length, max_length=spec.max_length, pattern=spec.pattern
        )
    if t == "integer":  # bounds as the spec holds them (floats), as pydantic passed them
        return core_schema.int_schema(ge=spec.minimum, le=spec.maximum)  # type: ignore[arg-type]
    if t == "decimal":
        return core_schema.decimal_schema(ge=spec.minimum, le=spec.maximum)  # type: ignore[arg-type]
    if t == "boolean":
        return core_schema.bool_schema()
    if t == "date":
        return core_schema.date_schema()
    if t == "datetime":
        return core_schema.datetime_schema()
    if t == "enum":
        return core_schema.literal_schema(
            list(spec.values or tables.get(spec.code_table or "", {}))
        )
    if t == "region_code":
        return _REGION
    if t in ("id_card", "credit_code"):  # as IdNumber / CreditCode, or on the exception list
        return core_schema.no_info_after_validator_function(
            checker(t, exceptions), core_schema.str_schema()
        )
    if t == "phone":
        # Our own constant pattern: the Rust engine matches it exactly as Python's re would
        # (the value is stripped first, so ``$`` never meets a trailing newline), faster.
        return core_schema.str_schema(pattern=PHONE, regex_engine="rust-regex")
    if t == "object":
        return object_schema(spec.fields or {}, tables, exceptions)
    if t == "list":
        items = field_schema(spec.items, tables, exceptions) if spec.items else None
        return core_schema.list_schema(items or core_schema.str_schema(), max_length=spec.max_items)
    raise ValueError(f"unknown field type {t}")


def object_schema(
    fields: Mapping[str, FieldSpec],
    tables: Mapping[str, Mapping[str, str]],
    exceptions: IdentifierExceptions = NO_EXCEPTIONS,
) -> core_schema.TypedDictSchema:
    """A JSON object of the given fields: required ones must be there and not null, optional
    ones may be absent or null, nothing else is allowed."""
    out: dict[str, core_schema.TypedDictField] = {}
    for name, spec in fields.items():
        schema = field_schema(spec, tables, exceptions)
        if spec.required:
            out[name] = core_schema.typed_dict_field(schema, required=True)
        else:
            out[name] = core_schema.typed_dict_field(
                core_schema.nullable_schema(schema), required=False
            )
    return core_schema.typed_dict_schema(out, extra_behavior="forbid", config=_RULES)


def compile_fields(
    name: str,
    fields: Mapping[str, FieldSpec],
    tables: Mapping[str, Mapping[str, str]],
    exceptions: IdentifierExceptions = NO_EXCEPTIONS,
) -> PayloadValidator:
    """The validator of a payload made of ``fields`` (``tables``: the named code tables;
    ``exceptions``: the identifiers accepted despite their check character)."""
    return PayloadValidator(name, object_schema(fields, tables, exceptions))
