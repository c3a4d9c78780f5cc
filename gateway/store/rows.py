"""Rows of the store's tables as both backends hold them, and their conversion to records.

JSON values (payload, applicant, results, event data, …) are stored as the text orjson writes,
byte for byte, in SQLite and PostgreSQL alike: what was accepted is what is read back, key order
included, and one set of codecs serves both backends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from gateway.lifecycle import Status
from gateway.store.base import AuditItem, AuditRecord, CaseRecord, EventRecord, JobRecord

CASE_COLUMNS = (
    "case_id, request_id, origin_region, handling_region, item_code, contract_version, mode, "
    "status, prior_status, outcome, result, partner_ref, body_hash, applicant, payload, "
    "attachments, recipients, created_at, updated_at, deadline, last_seq, paused_at, legs, leg, "
    "partner_events"
)
EVENT_COLUMNS = (
    "feed_id, event_id, case_id, seq, status, outcome, at, item_code, contract_version, "
    "origin_region, handling_region, data"
)
JOB_COLUMNS = "job_id, kind, case_id, region, data, state, attempts, next_attempt_at, last_error"


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def case_from_row(row: Sequence[Any]) -> CaseRecord:
    return CaseRecord(
        case_id=row[0],
        request_id=row[1],
        origin_region=row[2],
        handling_region=row[3],
        item_code=row[4],
        contract_version=row[5],
        mode=row[6],
        status=Status(row[7]),
        prior_status=Status(row[8]) if row[8] else None,
        outcome=row[9],
        result=orjson.loads(row[10]) if row[10] else None,
        partner_ref=row[11],
        body_hash=row[12],
        applicant=orjson.loads(row[13]),
        payload=orjson.loads(row[14]),
        attachments=orjson.loads(row[15]),
        recipients=orjson.loads(row[16]),
        created_at=row[17],
        updated_at=row[18],
        deadline=row[19],
        last_seq=row[20],
        paused_at=row[21],
        legs=orjson.loads(row[22]),
        leg=row[23],
        partner_events=orjson.loads(row[24]),
    )


def case_row(c: CaseRecord) -> tuple[Any, ...]:
    return (
        c.case_id, c.request_id, c.origin_region, c.handling_region, c.item_code,
        c.contract_version, c.mode, c.status.value,
        c.prior_status.value if c.prior_status else None, c.outcome,
        dumps(c.result) if c.result is not None else None, c.partner_ref, c.body_hash,
        dumps(c.applicant), dumps(c.payload), dumps(c.attachments), dumps(c.recipients),
        c.created_at, c.updated_at, c.deadline, c.last_seq, c.paused_at, dumps(c.legs), c.leg,
        dumps(c.partner_events),
    )  # fmt: skip


def case_update_row(c: CaseRecord) -> tuple[Any, ...]:
    return (
        c.status.value, c.prior_status.value if c.prior_status else None, c.outcome,
        dumps(c.result) if c.result is not None else None, c.partner_ref, c.updated_at,
        c.last_seq, c.deadline, c.paused_at, c.handling_region, dumps(c.legs), c.leg,
        dumps(c.partner_events), c.case_id,
    )  # fmt: skip


def event_from_row(row: Sequence[Any]) -> EventRecord:
    return EventRecord(
        feed_id=row[0],
        event_id=row[1],
        case_id=row[2],
        seq=row[3],
        status=row[4],
        outcome=row[5],
        at=row[6],
        item_code=row[7],
        contract_version=row[8],
        origin_region=row[9],
        handling_region=row[10],
        data=orjson.loads(row[11]),
    )


def event_row(e: EventRecord) -> tuple[Any, ...]:
    return (
        e.event_id, e.case_id, e.seq, e.status, e.outcome, e.at, e.item_code,
        e.contract_version, e.origin_region, e.handling_region, dumps(e.data),
    )  # fmt: skip


def job_from_row(row: Sequence[Any]) -> JobRecord:
    return JobRecord(
        job_id=row[0],
        kind=row[1],
        case_id=row[2],
        region=row[3],
        data=orjson.loads(row[4]),
        state=row[5],
        attempts=row[6],
        next_attempt_at=row[7],
        last_error=row[8],
    )


AUDIT_COLUMNS = "audit_id, at, kind, case_id, ref, actor, digest, prev_hash, hash"


def audit_from_row(row: Sequence[Any]) -> AuditRecord:
    return AuditRecord(row[0], AuditItem(*row[1:7]), row[7], row[8])


QUEUES_SQL = (
    "SELECT region, state, count(*), min(created_at) FROM jobs "
    "WHERE state IN ('pending', 'dead') GROUP BY region, state"
)


def queues_from_rows(rows: Sequence[Sequence[Any]], now: float) -> dict[str, dict[str, float]]:
    """Per region: pending jobs, the oldest one's age, dead jobs (from :data:`QUEUES_SQL`)."""
    out: dict[str, dict[str, float]] = {}
    for region, state, count, oldest in rows:
        q = out.setdefault(region, {"pending": 0.0, "oldest_pending_seconds": 0.0, "dead": 0.0})
        if state == "pending":
            q["pending"] = float(count)
            q["oldest_pending_seconds"] = max(0.0, now - oldest)
        else:
            q["dead"] = float(count)
    return out


# Open cases past their deadline; a case waiting for a supplement counts only if its clock had
# run out before it stopped (as :func:`gateway.lifecycle.overdue` decides for one case).
_OPEN = "status NOT IN ('completed', 'rejected', 'withdrawn')"
OVERDUE_INDEX = f"CREATE INDEX cases_open_deadline ON cases (deadline) WHERE {_OPEN}"


def overdue_sql(now: str) -> str:
    """The count of overdue cases, ``now`` being the dialect's placeholder for the time."""
    return (
        f"SELECT count(*) FROM cases WHERE {_OPEN} AND deadline < {now} "
        f"AND coalesce(paused_at, {now}) > deadline"
    )


# Partners operators paused: the same table in both dialects, read by every claim of jobs.
PAUSES_TABLE = (
    "CREATE TABLE partner_pauses (region TEXT PRIMARY KEY, "
    "paused_at DOUBLE PRECISION NOT NULL, paused_by TEXT NOT NULL)"
)
# Whether a region handles a case carrying an attachment, or was sent it with a supplement (the
# job's material is stored as orjson writes it, so the digest appears exactly so). ``region`` and
# ``pattern`` are the dialect's placeholders.
HANDLES_ATTACHMENT = (
    "SELECT 1 FROM cases WHERE handling_region = {region} AND attachments LIKE {pattern} "
    "UNION ALL SELECT 1 FROM jobs WHERE region = {region} AND kind = 'supplement' "
    "AND data LIKE {pattern} LIMIT 1"
)

# The partner reports applied to each case (``CaseRecord.partner_events``), both dialects.
PARTNER_EVENTS_COLUMN = "ALTER TABLE cases ADD COLUMN partner_events TEXT NOT NULL DEFAULT '[]'"
NOT_PAUSED = "NOT EXISTS (SELECT 1 FROM partner_pauses p WHERE p.region = jobs.region)"
PAUSES_SELECT = "SELECT region, paused_at, paused_by FROM partner_pauses"
