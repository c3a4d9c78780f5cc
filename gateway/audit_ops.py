"""The operators' view of the audit chain: a case's entries, and a verification of the whole.

The rules of the chain are :mod:`gateway.audit`'s; this module only reads the store page by page
and renders the answers of ``/v1/ops/audit``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway import audit, errors
from gateway.clock import iso
from gateway.store.base import AuditRecord, Store

PAGE = 1000


@dataclass
class AuditOps:
    store: Store

    async def case(self, case_id: str) -> dict[str, Any]:
        entries = await self.store.audit_of_case(case_id)
        if not entries:
            raise errors.NotFound(f"no audit entries for case {case_id}")
        return {"case_id": case_id, "entries": [render(e) for e in entries]}

    async def verify(self) -> dict[str, Any]:
        """Walk the whole chain; report how many entries were checked and the first problem."""
        verifier = audit.Verifier()
        after = 0
        while verifier.problem is None:
            page = await self.store.audit_page(after, PAGE)
            if not page:
                break
            event_ids = [r.ref for r in page if r.kind == "event"]
            events = await self.store.events_by_id(event_ids) if event_ids else {}
            verifier.page(page, events, await self._revisions(page))
            after = page[-1].audit_id
        problem = verifier.problem
        return {
            "verified": problem is None,
            "entries_checked": verifier.entries,
            "last_hash": verifier.prev if problem is None else None,
            "first_problem": None
            if problem is None
            else {"audit_id": problem.audit_id, "reason": problem.reason},
        }

    async def _revisions(self, page: list[AuditRecord]) -> dict[int, str]:
        found = {}
        for r in page:
            if r.kind == "revision" and r.ref.isdigit():
                record = await self.store.get_revision(int(r.ref))
                if record is not None:
                    found[record.revision] = record.content
        return found


def render(r: AuditRecord) -> dict[str, Any]:
    i = r.item
    return {
        "audit_id": r.audit_id,
        "at": iso(i.at),
        "kind": i.kind,
        "case_id": i.case_id,
        "ref": i.ref,
        "actor": i.actor,
        "digest": i.digest,
        "prev_hash": r.prev_hash,
        "hash": r.hash,
    }
