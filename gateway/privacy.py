"""Which values of a case are personal data, so they can be masked wherever they might appear."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# Always sensitive, whatever the contract says: the applicant and a legal person's representative.
PERSON_FIELDS = ("id_number", "name", "phone")


def sensitive_values(
    applicant: Mapping[str, Any], payload: Mapping[str, Any], paths: Iterable[str]
) -> set[str]:
    """The applicant's ID number, name and phone (and a representative's), plus every value at the
    contract's ``sensitive_fields`` paths (``payload.x.y``; a list applies the rest of the path to
    each element)."""
    values = {str(applicant[f]) for f in PERSON_FIELDS if applicant.get(f)}
    rep = applicant.get("representative")
    if isinstance(rep, Mapping):
        values |= {str(rep[f]) for f in PERSON_FIELDS if rep.get(f)}
    roots = {"applicant": applicant, "payload": payload}
    for path in paths:
        head, _, rest = path.partition(".")
        if head in roots and rest:
            values |= set(_at(roots[head], rest.split(".")))
    return {v for v in values if v}


def masked(text: str, values: Iterable[str]) -> str:
    """``text`` with every occurrence of the values (two characters or more, longest first)
    replaced by ``***``."""
    for value in sorted((v for v in values if len(v) >= 2), key=len, reverse=True):
        if value in text:
            text = text.replace(value, "***")
    return text


def _at(node: Any, parts: list[str]) -> Iterable[str]:
    if isinstance(node, list):
        for element in node:
            yield from _at(element, parts)
        return
    if not parts:
        if isinstance(node, str | int) and not isinstance(node, bool):
            yield str(node)
        return
    if isinstance(node, Mapping) and parts[0] in node:
        yield from _at(node[parts[0]], parts[1:])
