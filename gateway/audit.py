"""The audit chain: every recorded fact, in the order it was written, each entry sealing the last.

An entry is written in the same transaction as what it records: an event of a case (a status
change, delivered to its recipients), a report recorded and ignored, an operator's replay, a
published contract revision. Each entry holds a digest of what it records and a hash over the
previous entry's hash and its own fields, so a changed, removed or inserted entry breaks the chain
from that point on, and a changed event no longer matches its entry's digest.

Pure: the stores call :func:`link` inside their write transaction (where entries are written one
group after another), and the operators' verification feeds pages of entries to a
:class:`Verifier`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.store.base import AuditItem, AuditRecord, EventRecord
from gateway.store.rows import event_row

GENESIS = "0" * 64  # the "previous hash" of the first entry


def digest(value: Any) -> str:
    """SHA-256 of a value's canonical JSON (keys sorted)."""
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


def event_digest(e: EventRecord) -> str:
    """The digest of an event as it is stored."""
    return digest(list(event_row(e)))


def event_item(e: EventRecord, actor: str) -> AuditItem:
    return AuditItem(e.at, "event", e.case_id, e.event_id, actor, event_digest(e))


def entry_hash(prev_hash: str, item: AuditItem) -> str:
    fields = [item.at, item.kind, item.case_id, item.ref, item.actor, item.digest]
    return hashlib.sha256(prev_hash.encode() + b"\n" + orjson.dumps(fields)).hexdigest()


def link(prev_hash: str | None, items: Iterable[AuditItem]) -> list[tuple[Any, ...]]:
    """Rows ``(at, kind, case_id, ref, actor, digest, prev_hash, hash)`` continuing the chain
    after the entry whose hash is ``prev_hash`` (None: the chain is empty)."""
    rows = []
    prev = prev_hash or GENESIS
    for item in items:
        current = entry_hash(prev, item)
        rows.append((item.at, item.kind, item.case_id, item.ref, item.actor, item.digest,
                     prev, current))  # fmt: skip
        prev = current
    return rows


@dataclass
class Problem:
    audit_id: int
    reason: str


class Verifier:
    """Walks the chain page by page; remembers the first problem and how far it got."""

    def __init__(self) -> None:
        self.prev = GENESIS
        self.entries = 0
        self.problem: Problem | None = None

    def page(
        self,
        records: Iterable[AuditRecord],
        events: Mapping[str, EventRecord],
        revisions: Mapping[int, str],
    ) -> None:
        """Check the next entries; ``events`` by event id and ``revisions`` (content by number)
        hold what the page's entries record, as stored now."""
        for r in records:
            if self.problem:
                return
            self.entries += 1
            reason = self._check(r, events, revisions)
            if reason:
                self.problem = Problem(r.audit_id, reason)
            self.prev = r.hash

    def _check(
        self, r: AuditRecord, events: Mapping[str, EventRecord], revisions: Mapping[int, str]
    ) -> str:
        if r.prev_hash != self.prev:
            return "does not follow the entry before it (an entry was removed or inserted)"
        if r.hash != entry_hash(r.prev_hash, r.item):
            return "its hash does not match its fields (the entry was changed)"
        if r.kind == "event":
            event = events.get(r.ref)
            if event is None:
                return f"event {r.ref} is missing"
            if event_digest(event) != r.digest:
                return f"event {r.ref} was changed after it was recorded"
        if r.kind == "revision":
            content = revisions.get(int(r.ref))
            if content is None or digest(content) != r.digest:
                return f"contract revision {r.ref} is missing or was changed"
        return ""
