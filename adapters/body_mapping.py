"""Declarative reshaping of the common JSON submit body, and of result fields on the way back.

``rest_json`` and ``async_ticket`` send the same submit body, ``{"caseId", "requestId",
"itemCode", "itemVersion", "originRegion", "applicant", "form", "attachments"}``. The platforms
behind them take that body but want their own codes (sex ``M``/``F``, ID document types
``1``/``2``/``A``), their own date forms (``yyyyMMddHHmmss``), their own field names and a few
fixed values, and they send their results back in those codes and forms. So that an operator can
connect such a platform with a settings table instead of code, and so that both adapters mean
exactly the same by the same key, the mapping lives here once: :class:`BodyMappingSettings` (the
settings both adapters' settings extend) compiled into a :class:`BodyMapping` (pure functions on
JSON objects, no I/O).

Our paths are dotted and start with a name of the body or its canonical name (``payload.x`` is
``form.x``, ``case_id`` is ``caseId``). On the way out, in this order:

- ``code_tables`` (our path → {our code: theirs}, ``"*"`` for the rest) and ``date_formats`` (our
  path → a Java-style pattern) rewrite values in place;
- then ``field_map`` (our path → their dotted path) moves fields; the rest stay where they are;
- then ``constants`` (their path → value) are put in every request.

On the way in, ``result.<name>`` entries of ``code_tables`` (in reverse) and ``date_formats``
(their format → ISO 8601) bring the fields of a partner's ``result`` back in our words.

A value that cannot be put in the partner's form is a :class:`RenderError`, which names the
field and never its value: the adapters turn it into a ``Permanent`` outcome.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any, Self

from pydantic import Field, field_validator, model_validator

from adapters.sdk import AdapterSettings, CanonicalCase
from adapters.soap_xml import format_date, iso_to_local, parse_date

# The submit body's top-level names, and the canonical names that may stand for them in paths.
BODY_NAMES = (
    "caseId", "requestId", "itemCode", "itemVersion", "originRegion", "applicant", "form",
    "attachments",
)  # fmt: skip
CANONICAL_NAMES = {
    "case_id": "caseId",
    "request_id": "requestId",
    "item_code": "itemCode",
    "contract_version": "itemVersion",
    "origin_region": "originRegion",
    "payload": "form",
}


class RenderError(ValueError):
    """A case that cannot be put in the partner's form; names the field, never its value."""


def submit_body(case: CanonicalCase, attachments: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The common submit body before any mapping, with ``attachments`` as the adapter sends them.

    The applicant and the form are deep copies: mapping rewrites the body in place, never the
    case it came from.
    """
    return {
        "caseId": case.case_id,
        "requestId": case.request_id,
        "itemCode": case.item_code,
        "itemVersion": case.contract_version,
        "originRegion": case.origin_region,
        "applicant": copy.deepcopy(dict(case.applicant)),
        "form": copy.deepcopy(dict(case.payload)),
        "attachments": list(attachments),
    }


class BodyMappingSettings(AdapterSettings):
    """The mapping's settings; an adapter's settings extend this to offer them."""

    field_map: dict[str, str] = Field(
        default_factory=dict, description="our dotted path → their dotted path"
    )
    constants: dict[str, Any] = Field(
        default_factory=dict, description="their dotted path → a value put in every request"
    )
    code_tables: dict[str, dict[str, str | int]] = Field(
        default_factory=dict, description="our dotted path → {our code: theirs}; '*' for the rest"
    )
    date_formats: dict[str, str] = Field(
        default_factory=dict, description="our dotted path → Java-style pattern"
    )
    utc_offset_hours: float = Field(8.0, ge=-12, le=14)

    @field_validator("field_map")
    @classmethod
    def _moves(cls, value: dict[str, str]) -> dict[str, str]:
        ours: set[tuple[str, ...]] = set()
        for source, target in value.items():
            if not _moved(source):
                continue  # a top-level name the body does not have: ignored, as it always was
            normal = our_path(source, inbound=False)
            if normal in ours:
                raise ValueError(f"{source!r} names a field already mapped")
            ours.add(normal)
            _their_path(target)
        targets = list(value.values())
        if len(set(targets)) != len(targets):
            raise ValueError("two fields are mapped to the same place")
        return value

    @field_validator("constants")
    @classmethod
    def _constant_paths(cls, value: dict[str, Any]) -> dict[str, Any]:
        for target in value:
            _their_path(target)
        return value

    @field_validator("code_tables")
    @classmethod
    def _table_paths(
        cls, value: dict[str, dict[str, str | int]]
    ) -> dict[str, dict[str, str | int]]:
        for path in value:
            our_path(path, inbound=True)
        return value

    @field_validator("date_formats")
    @classmethod
    def _date_patterns(cls, value: dict[str, str]) -> dict[str, str]:
        for path, pattern in value.items():
            our_path(path, inbound=True)
            format_date(datetime(2000, 1, 1), pattern)  # ValueError names a bad pattern
        return value

    @model_validator(mode="after")
    def _normalised_once(self) -> Self:
        for name in ("code_tables", "date_formats"):
            paths = [our_path(p, inbound=True) for p in getattr(self, name)]
            if len(set(paths)) != len(paths):
                raise ValueError(f"{name}: one field is named twice (e.g. payload.x and form.x)")
        return self


def our_path(path: str, *, inbound: bool) -> tuple[str, ...]:
    """Our dotted path as the submit body's keys (``payload.x`` → ``("form", "x")``).

    With ``inbound``, ``result.<name>`` (a field of an inbound report's result) is allowed too.
    ValueError if it does not start with a name of the body.
    """
    parts = _their_path(path)
    head = CANONICAL_NAMES.get(parts[0], parts[0])
    if head not in BODY_NAMES and not (inbound and head == "result" and len(parts) > 1):
        known = ", ".join([*BODY_NAMES, *CANONICAL_NAMES, *(["result.<name>"] if inbound else [])])
        raise ValueError(f"{path!r} does not start with a field of the request ({known})")
    return (head, *parts[1:])


def _their_path(path: str) -> tuple[str, ...]:
    parts = tuple(path.split("."))
    if not all(parts):
        raise ValueError(f"{path!r} is not a dotted path like sqr.zjhm")
    return parts


def _moved(source: str) -> bool:
    """Whether a ``field_map`` key moves anything: a nested path, or a name the body has."""
    return "." in source or source in BODY_NAMES or source in CANONICAL_NAMES


class BodyMapping:
    """One adapter's mapping settings, compiled once; every method is pure."""

    def __init__(self, settings: BodyMappingSettings) -> None:
        self.tz = timezone(timedelta(hours=settings.utc_offset_hours))
        # (path in the body, the name as configured for reasons, table or pattern)
        self._tables = [(our_path(k, inbound=True), k, v) for k, v in settings.code_tables.items()]
        self._dates = [(our_path(k, inbound=True), k, v) for k, v in settings.date_formats.items()]
        # Their code → ours for result fields; the first of our codes wins, "*" is not reversed.
        self._reverse = {
            path[1:]: {str(theirs): ours for ours, theirs in reversed(table.items()) if ours != "*"}
            for path, _, table in self._tables
            if path[0] == "result"
        }
        self._result_dates = [(path[1:], p) for path, _, p in self._dates if path[0] == "result"]
        moves = [
            (our_path(k, inbound=False), _their_path(v))
            for k, v in settings.field_map.items()
            if _moved(k)
        ]
        # Top-level renames keep their place in the body (as before nested paths were allowed);
        # other moves take the field out (deepest first) and put it in (shallowest first).
        self._renames = {s[0]: t[0] for s, t in moves if len(s) == len(t) == 1}
        self._moves = sorted(
            [(s, t) for s, t in moves if not len(s) == len(t) == 1], key=lambda m: -len(m[0])
        )
        self._constants = [(_their_path(k), v) for k, v in settings.constants.items()]

    # -- outbound ---------------------------------------------------------------------------

    def render(self, body: dict[str, Any]) -> dict[str, Any]:
        """The submit body (as :func:`submit_body` makes it) in the partner's form.

        Rewrites ``body`` in place and returns the result. RenderError (naming the field, never
        its value) when a value has no entry in its code table, is not an ISO date, or a mapped
        field has no place to go.
        """
        for path, name, table in self._tables:
            _rewrite(body, path, partial(_coded, table=table, name=name))
        for path, name, pattern in self._dates:
            _rewrite(body, path, partial(self._dated, pattern=pattern, name=name))
        taken = [(target, _pop(body, source)) for source, target in self._moves]
        body = {self._renames.get(k, k): v for k, v in body.items()}
        for target, value in sorted(taken, key=lambda m: len(m[0])):
            if value is not _ABSENT:
                _put(body, target, value, replace=False)
        return self._with_constants(body)

    def supplement(self, case_id: str, material: Mapping[str, Any]) -> dict[str, Any]:
        """The supplement body, ``{"caseId", "note", "payload", "attachments"}``: the material
        as the origin sent it (a copy), with the ``constants``; RenderError as for a submit."""
        return self._with_constants({"caseId": case_id, **copy.deepcopy(dict(material))})

    def withdrawal(self, case_id: str, reason: str) -> dict[str, Any]:
        """The withdrawal body, ``{"caseId", "reason"}``, with the ``constants``."""
        return self._with_constants({"caseId": case_id, "reason": reason})

    def _with_constants(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with the ``constants`` put in (each a copy); RenderError if one has no place.
        Rewrites ``body`` in place."""
        for target, value in self._constants:
            _put(body, target, copy.deepcopy(value), replace=True)
        return body

    def _dated(self, value: Any, pattern: str, name: str) -> str:
        try:
            if not isinstance(value, str):
                raise ValueError(value)
            return format_date(iso_to_local(value, self.tz), pattern)
        except ValueError:
            raise RenderError(f"{name}: not an ISO 8601 date or date-time") from None

    # -- inbound ----------------------------------------------------------------------------

    def result(self, data: dict[str, Any]) -> dict[str, Any]:
        """Result fields back in our words: codes through their tables in reverse, dates in
        ``date_formats`` as ISO 8601. A value with no entry, or not in the pattern, is kept.
        ``data`` itself is left as it was."""
        if not self._reverse and not self._result_dates:
            return data
        data = copy.deepcopy(data)
        for path, reverse in self._reverse.items():
            _rewrite(data, path, partial(_uncoded, reverse=reverse))
        for path, pattern in self._result_dates:
            _rewrite(data, path, partial(self._undated, pattern=pattern))
        return data

    def _undated(self, value: Any, pattern: str) -> Any:
        if isinstance(value, str):
            return parse_date(value, pattern, self.tz) or value
        if isinstance(value, int) and not isinstance(value, bool):  # 20261201 sent as a number
            return parse_date(str(value), pattern, self.tz) or value
        return value


# ---- paths in JSON objects --------------------------------------------------------------------

_ABSENT = object()


def _rewrite(obj: dict[str, Any], path: tuple[str, ...], change: Callable[[Any], Any]) -> None:
    """Replace the value at ``path`` by ``change(value)``; nothing if it is absent or null."""
    *parents, last = path
    for name in parents:
        obj = obj.get(name)  # type: ignore[assignment]
        if not isinstance(obj, dict):
            return
    if obj.get(last) is not None:
        obj[last] = change(obj[last])


def _pop(obj: dict[str, Any], path: tuple[str, ...]) -> Any:
    """Take the value at ``path`` out of ``obj``; ``_ABSENT`` if there is none."""
    *parents, last = path
    for name in parents:
        obj = obj.get(name)  # type: ignore[assignment]
        if not isinstance(obj, dict):
            return _ABSENT
    return obj.pop(last, _ABSENT)


def _put(obj: dict[str, Any], path: tuple[str, ...], value: Any, *, replace: bool) -> None:
    """Put ``value`` at ``path``, making the objects on the way; RenderError when the place is
    taken by a value that is not an object (or, without ``replace``, by any value)."""
    *parents, last = path
    for i, name in enumerate(parents):
        inner = obj.setdefault(name, {})
        if not isinstance(inner, dict):
            raise RenderError(f"{'.'.join(path[: i + 1])}: holds a value, not an object")
        obj = inner
    if not replace and last in obj:
        raise RenderError(f"{'.'.join(path)}: a field is mapped onto another field")
    obj[last] = value


def _coded(value: Any, table: Mapping[str, str | int], name: str) -> str | int:
    """Our code as theirs; RenderError names the field, never the value."""
    if isinstance(value, bool):
        key = "true" if value else "false"
    elif isinstance(value, str | int):
        key = str(value)
    else:
        raise RenderError(f"{name}: holds a {type(value).__name__}, not a code")
    if key in table:
        return table[key]
    if "*" in table:
        return table["*"]
    raise RenderError(f"{name}: the value has no entry in its code table")


def _uncoded(value: Any, reverse: Mapping[str, str]) -> Any:
    if isinstance(value, str | int) and not isinstance(value, bool):
        return reverse.get(str(value), value)
    return value
