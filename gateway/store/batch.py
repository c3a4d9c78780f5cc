"""One group of write operations applied in memory, before a backend writes it out.

Both backends commit writes in groups (group commit). A group is applied here, as pure code over
the cases it touches, into a :class:`Batch` of rows; the backend then loads the cases beforehand
(:func:`wanted`) and writes the batch's rows in its own dialect afterwards, all in one
transaction. The rules of a transition live in :mod:`gateway.transition`; this module only
collects what they produce.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway import audit, transition
from gateway.store.base import (
    Ack,
    AuditItem,
    CaseRecord,
    DeliveryFailed,
    Enqueue,
    EventRecord,
    FinishJob,
    Op,
    OpResult,
    Pause,
    Replay,
    Submit,
    SubmitResult,
    Transition,
    TransitionResult,
)
from gateway.store.rows import dumps

OpLists = Sequence[tuple[Sequence[Op], float]]  # each caller's operations and its clock reading


class Batch:
    """Rows collected while applying one group of operations."""

    def __init__(self, cases: dict[str, CaseRecord], now: float) -> None:
        self.now = now
        self.cases = cases  # every case this group touches, as it stands inside the group
        self.new_cases: list[CaseRecord] = []
        self.changed: set[str] = set()
        self.events: list[EventRecord] = []
        self.cursors: list[tuple[str, str, int, float]] = []
        self.heads: dict[str, int] = {}
        self.jobs: list[tuple[Any, ...]] = []
        self.cancel_jobs: list[str] = []
        self.finish: list[FinishJob] = []
        self.ignored: list[tuple[Any, ...]] = []
        self.acks: list[Ack] = []
        self.failed: list[DeliveryFailed] = []
        self.replays: list[str] = []
        self.pauses: list[Pause] = []  # in order: a pause and a resume in one group both count
        self.blobs: list[tuple[str, str, int, bytes]] = []
        self.audit: list[AuditItem] = []  # in the order the facts were applied


def request_key(origin_region: str, request_id: str) -> str:
    """The key under which a case is found by its origin's ``request_id`` in ``Batch.cases``."""
    return "req:" + origin_region + ":" + request_id


def wanted(lists: OpLists) -> tuple[list[str], list[tuple[str, str]]]:
    """What a group loads first: the case ids it changes, the (origin, request_id) it submits."""
    ids = {op.case_id for ops, _ in lists for op in ops if isinstance(op, Transition | Replay)}
    keys = {
        (op.case.origin_region, op.case.request_id)
        for ops, _ in lists
        for op in ops
        if isinstance(op, Submit)
    }
    return sorted(ids), sorted(keys)


def apply_all(lists: OpLists, cases: dict[str, CaseRecord]) -> tuple[Batch, list[list[OpResult]]]:
    """Apply every caller's operations in order; the batch and each caller's results."""
    batch = Batch(cases, max(n for _, n in lists))
    results = [[apply(op, batch, n) for op in ops] for ops, n in lists]
    return batch, results


def apply(op: Op, b: Batch, now: float) -> OpResult:
    if isinstance(op, Submit):
        return _submit(op, b)
    if isinstance(op, Transition):
        return _transition(op, b, now)
    if isinstance(op, FinishJob):
        b.finish.append(op)
        return None
    if isinstance(op, Ack):
        b.acks.append(op)
        return None
    if isinstance(op, DeliveryFailed):
        b.failed.append(op)
        return None
    if isinstance(op, Enqueue):
        j = op.job
        b.jobs.append(job_row(op.case_id, j.kind, j.region, j.data, now))
        return None
    if isinstance(op, Pause):
        b.pauses.append(op)
        kind = "pause" if op.paused else "resume"
        b.audit.append(AuditItem(now, kind, None, op.region, op.by or "operator", "-"))
        return None
    b.replays.append(op.case_id)
    b.audit.append(AuditItem(now, "replay", op.case_id, "", op.by or "operator", "-"))
    return None


def job_row(case_id: str, kind: str, region: str, data: Any, now: float) -> tuple[Any, ...]:
    """``(kind, case_id, region, data, state, next_attempt_at, created_at, updated_at)``."""
    return (kind, case_id, region, dumps(data), "pending", now, now, now)


def _submit(op: Submit, b: Batch) -> SubmitResult:
    key = request_key(op.case.origin_region, op.case.request_id)
    existing = b.cases.get(key)
    if existing is not None:
        same = existing.body_hash == op.case.body_hash
        return SubmitResult("existing" if same else "conflict", existing)
    b.cases[key] = b.cases[op.case.case_id] = op.case
    b.new_cases.append(op.case)
    b.events.append(op.first_event)
    b.audit.append(audit.event_item(op.first_event, "origin:" + op.case.origin_region))
    for recipient in op.case.recipients:
        b.cursors.append((recipient, op.case.case_id, op.first_event.seq, b.now))
    for job in op.jobs:
        b.jobs.append(job_row(op.case.case_id, job.kind, job.region, job.data, b.now))
    _keep_blobs(op.blobs, b)
    return SubmitResult("created", op.case)


def _transition(t: Transition, b: Batch, now: float) -> TransitionResult:
    case = b.cases.get(t.case_id)
    if case is None:
        return TransitionResult(False, "no such case")
    done = transition.apply(case, t, now)
    if isinstance(done, transition.Refused):
        if not done.record:
            return TransitionResult(False, done.reason)
        status = t.status if isinstance(t.status, str) else t.status.value
        row = (case.case_id, t.at, str(status), t.source, done.reason)
        b.ignored.append(row)
        b.audit.append(AuditItem(t.at, "ignored", case.case_id, str(status), t.source,
                                 audit.digest(list(row))))  # fmt: skip
        return TransitionResult(False, done.reason, case)
    b.cases[case.case_id] = done.case
    b.changed.add(case.case_id)
    b.events.append(done.event)
    b.audit.append(audit.event_item(done.event, t.source))
    b.heads[case.case_id] = done.event.seq
    if t.cancel_pending_jobs:
        b.cancel_jobs.append(case.case_id)
    for job in done.jobs:
        b.jobs.append(job_row(case.case_id, job.kind, job.region, job.data, now))
    _keep_blobs(t.blobs, b)
    return TransitionResult(True, "", done.case, done.event)


def _keep_blobs(blobs: Sequence[tuple[str, str, bytes]], b: Batch) -> None:
    for sha, media_type, content in blobs:
        b.blobs.append((sha, media_type, len(content), content))
