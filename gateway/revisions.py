"""Contract list revisions, as pure functions: what a version's immutable content is, whether a
candidate list may be published over what was published before, and a readable diff.

A published version may change only its ``status`` (``active`` → ``deprecated`` → ``retired``).
Everything else — its fields, routing, rules, and the code tables its fields name — is fixed once
published, since cases were accepted under it. The working-day calendar is not part of any
version: it may change in any revision (next year's holidays are added when announced), and a case
keeps the deadline worked out when it was received. Nor is the identifier exception list: entries
come and go in any revision, and a diff counts them without ever showing a listed value.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import date
from typing import Any

import orjson

from gateway.contracts import ContractList, ContractVersion, walk
from gateway.identifier_exceptions import KINDS, IdentifierExceptions
from gateway.workdays import WorkCalendar

VersionKey = tuple[str, int]


def version_content(lst: ContractList, item_code: str, v: ContractVersion) -> dict[str, Any]:
    """The part of a version that can never change once published (everything but status)."""
    body = v.model_dump(mode="json", exclude={"status"})
    item = lst.items[item_code]
    tables = sorted(
        {spec.code_table for _, spec in walk(v.fields, "") if spec.code_table}
        | {spec.code_table for _, spec in walk(v.result_fields, "") if spec.code_table}
    )
    return {
        "item": {"name": item.name, "department": item.department},
        "version": body,
        "code_tables": {t: lst.code_tables.get(t, {}) for t in tables},
    }


def published_contents(lst: ContractList) -> dict[VersionKey, dict[str, Any]]:
    """Every non-draft version of a list with its immutable content."""
    return {
        (code, v.version): version_content(lst, code, v)
        for code, item in lst.items.items()
        for v in item.versions
        if v.status != "draft"
    }


_EMPTY: tuple[Any, ...] = (None, [], {})


def _first_difference(old: Any, new: Any, path: list[str | int]) -> list[str | int] | None:
    if old in _EMPTY and new in _EMPTY:
        return None  # a field added to the model later reads as empty in older versions
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            found = _first_difference(old.get(key), new.get(key), [*path, key])
            if found is not None:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            found = _first_difference(a, b, [*path, i])
            if found is not None:
                return found
        return None
    return None if old == new else path


def immutability_errors(
    published: Mapping[VersionKey, dict[str, Any]], candidate: ContractList
) -> list[dict[str, Any]]:
    """Why ``candidate`` may not be published: each published version it alters or drops."""
    errors: list[dict[str, Any]] = []
    for (code, number), old in sorted(published.items()):
        item = candidate.items.get(code)
        v = item.version(number) if item else None
        loc: list[str | int] = ["items", code, "versions", number]
        if v is None:
            errors.append({"loc": loc, "msg": "a published version cannot be removed; retire it",
                           "type": "immutable"})  # fmt: skip
            continue
        if v.status == "draft":
            errors.append({"loc": [*loc, "status"], "msg": "a published version cannot go back "
                           "to draft", "type": "immutable"})  # fmt: skip
            continue
        differs = _first_difference(old, version_content(candidate, code, v), [])
        if differs is not None:
            where = [*loc, *differs[1:]] if differs[:1] == ["version"] else [*loc, *differs]
            errors.append({"loc": where, "msg": "a published version cannot change; publish a "
                           "new version instead", "type": "immutable"})  # fmt: skip
    return errors


def diff(old: ContractList | None, new: ContractList) -> list[str]:
    """Readable lines: ``+`` added, ``-`` removed, ``~`` changed."""
    before = old.items if old else {}
    lines: list[str] = []
    for code in sorted(set(before) | set(new.items)):
        a, b = before.get(code), new.items.get(code)
        if a is None and b is not None:
            lines.append(f"+ {code} {b.name}: versions {', '.join(_versions(b.versions))}")
        elif b is None and a is not None:
            lines.append(f"- {code} {a.name}")
        elif a is not None and b is not None:
            lines += _item_diff(code, a.versions, b.versions)
    old_tables = old.code_tables if old else {}
    for name in sorted(set(old_tables) | set(new.code_tables)):
        if old_tables.get(name) != new.code_tables.get(name):
            sign = "+" if name not in old_tables else "-" if name not in new.code_tables else "~"
            lines.append(f"{sign} code table {name}")
    lines += _calendar_diff(old.calendar if old else WorkCalendar(), new.calendar)
    return lines + _exceptions_diff(
        old.identifier_exceptions if old else None, new.identifier_exceptions
    )


def _exceptions_diff(old: IdentifierExceptions | None, new: IdentifierExceptions) -> list[str]:
    """Counts only: a listed identifier is personal data and never appears in a diff."""
    lines = []
    for kind in KINDS:
        before = {e.value: e.note for e in old.entries(kind)} if old else {}
        after = {e.value: e.note for e in new.entries(kind)}
        added = len(after.keys() - before.keys())
        removed = len(before.keys() - after.keys())
        renoted = sum(1 for v in after.keys() & before.keys() if after[v] != before[v])
        for sign, n, what in (("+", added, "added"), ("-", removed, "removed"),
                              ("~", renoted, "with a changed note")):  # fmt: skip
            if n:
                lines.append(f"{sign} {n} {kind} identifier exception(s) {what}")
    return lines


def _calendar_diff(old: WorkCalendar, new: WorkCalendar) -> list[str]:
    """Dates added and removed, by year, so a new year's notice reads as one or two lines."""
    lines = []
    if old.timezone != new.timezone:
        lines.append(f"~ calendar timezone {old.timezone} → {new.timezone}")
    for kind in ("holidays", "workdays"):
        before, after = set(getattr(old, kind)), set(getattr(new, kind))
        for sign, days in (("+", after - before), ("-", before - after)):
            by_year: defaultdict[int, list[date]] = defaultdict(list)
            for d in sorted(days):
                by_year[d.year].append(d)
            for year, ds in sorted(by_year.items()):
                lines.append(f"{sign} calendar {year} {kind}: {', '.join(map(str, ds))}")
    lines += [f"+ calendar notice {n}" for n in new.notices if n not in old.notices]
    lines += [f"- calendar notice {n}" for n in old.notices if n not in new.notices]
    return lines


def _versions(versions: list[ContractVersion]) -> list[str]:
    return [f"v{v.version} ({v.status})" for v in versions]


def _item_diff(code: str, old: list[ContractVersion], new: list[ContractVersion]) -> list[str]:
    lines = []
    a = {v.version: v for v in old}
    b = {v.version: v for v in new}
    for n in sorted(set(a) | set(b)):
        if n not in a:
            lines.append(f"+ {code} v{n} ({b[n].status})")
        elif n not in b:
            lines.append(f"- {code} v{n}")
        elif a[n].status != b[n].status:
            lines.append(f"~ {code} v{n} status {a[n].status} → {b[n].status}")
        elif a[n] != b[n]:
            lines.append(f"~ {code} v{n} content changed")
    return lines


def dumps(lst: ContractList) -> bytes:
    """The canonical JSON of a list, as stored in a revision."""
    return orjson.dumps(lst.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)


def loads(raw: bytes | str) -> ContractList:
    return ContractList.model_validate(orjson.loads(raw))


def published_contents_json(lst: ContractList) -> dict[VersionKey, str]:
    """:func:`published_contents` as canonical JSON strings, as the store keeps them."""
    return {
        key: orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode()
        for key, body in published_contents(lst).items()
    }
