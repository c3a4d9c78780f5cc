"""What changes a SQLite store: its migrations, a group's transaction, a publish.

These run on the writer connection only, in the writer process (:mod:`gateway.store.sqlite_writer`),
one call at a time: each function is one whole transaction on a plain ``sqlite3`` connection,
begun and committed inside the call. Nothing here touches the event loop.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from gateway import audit
from gateway.store.base import (
    AuditItem,
    CaseRecord,
    Op,
    OpResult,
    RevisionMoved,
    Submit,
    SubmitResult,
    VersionConflict,
)
from gateway.store.batch import Batch, OpLists, apply_all, request_key, wanted
from gateway.store.rows import (
    CASE_COLUMNS,
    OVERDUE_INDEX,
    PARTNER_EVENTS_COLUMN,
    PAUSES_TABLE,
    case_from_row,
    case_row,
    case_update_row,
    event_row,
)

T = TypeVar("T")

MIGRATIONS: list[str] = [  # applied in order; never edit a released one, append
    """
    CREATE TABLE cases (
        case_id TEXT PRIMARY KEY,
        request_id TEXT NOT NULL,
        origin_region TEXT NOT NULL,
        handling_region TEXT NOT NULL,
        item_code TEXT NOT NULL,
        contract_version INTEGER NOT NULL,
        mode TEXT NOT NULL,
        status TEXT NOT NULL,
        prior_status TEXT,
        outcome TEXT,
        result TEXT,
        partner_ref TEXT,
        body_hash TEXT NOT NULL,
        applicant TEXT NOT NULL,
        payload TEXT NOT NULL,
        attachments TEXT NOT NULL,
        recipients TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        deadline REAL,
        last_seq INTEGER NOT NULL,
        UNIQUE (origin_region, request_id)
    );
    CREATE INDEX cases_origin ON cases (origin_region, case_id);
    CREATE INDEX cases_handler ON cases (handling_region, case_id);
    CREATE INDEX cases_partner_ref ON cases (handling_region, partner_ref);
    CREATE TABLE events (
        feed_id INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL UNIQUE,
        case_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        status TEXT NOT NULL,
        outcome TEXT,
        at REAL NOT NULL,
        item_code TEXT NOT NULL,
        contract_version INTEGER NOT NULL,
        origin_region TEXT NOT NULL,
        handling_region TEXT NOT NULL,
        data TEXT NOT NULL,
        UNIQUE (case_id, seq)
    );
    CREATE INDEX events_origin ON events (origin_region, feed_id);
    CREATE INDEX events_handler ON events (handling_region, feed_id);
    CREATE TABLE cursors (
        recipient TEXT NOT NULL,
        case_id TEXT NOT NULL,
        acked_seq INTEGER NOT NULL DEFAULT 0,
        head_seq INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        lease_owner TEXT,
        lease_until REAL NOT NULL DEFAULT 0,
        last_error TEXT,
        PRIMARY KEY (case_id, recipient)
    );
    CREATE INDEX cursors_due ON cursors (next_attempt_at) WHERE head_seq > acked_seq;
    CREATE TABLE jobs (
        job_id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        case_id TEXT NOT NULL,
        region TEXT NOT NULL,
        data TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        lease_owner TEXT,
        lease_until REAL NOT NULL DEFAULT 0,
        last_error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX jobs_due ON jobs (region, next_attempt_at) WHERE state = 'pending';
    CREATE INDEX jobs_case ON jobs (case_id);
    CREATE INDEX jobs_dead ON jobs (updated_at) WHERE state = 'dead';
    CREATE TABLE ignored (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        case_id TEXT NOT NULL,
        at REAL NOT NULL,
        status TEXT NOT NULL,
        source TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX ignored_case ON ignored (case_id);
    CREATE TABLE blobs (
        sha256 TEXT PRIMARY KEY,
        media_type TEXT NOT NULL,
        size INTEGER NOT NULL,
        content BLOB NOT NULL
    );
    """,
    """
    CREATE TABLE contract_revisions (
        revision INTEGER PRIMARY KEY,
        created_at REAL NOT NULL,
        author TEXT NOT NULL,
        note TEXT NOT NULL,
        content TEXT NOT NULL
    );
    ALTER TABLE cases ADD COLUMN paused_at REAL;
    CREATE TABLE contract_versions (
        item_code TEXT NOT NULL,
        version INTEGER NOT NULL,
        revision INTEGER NOT NULL,
        content TEXT NOT NULL,
        PRIMARY KEY (item_code, version)
    );
    """,
    """
    ALTER TABLE cases ADD COLUMN legs TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE cases ADD COLUMN leg INTEGER NOT NULL DEFAULT 0;
    """,
    """
    CREATE TABLE audit (
        audit_id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        case_id TEXT,
        ref TEXT NOT NULL,
        actor TEXT NOT NULL,
        digest TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX audit_case ON audit (case_id, audit_id);
    """,
    OVERDUE_INDEX,
    PAUSES_TABLE,
    PARTNER_EVENTS_COLUMN,
]


class Writer:
    """The writer connection of one database and its write turn.

    The write turn is a lock file beside the database that the writers of the (at most two)
    processes sharing it take in turn, waiting in the kernel rather than spinning in SQLite's
    busy handler."""

    def __init__(self, path: str, synchronous: str) -> None:
        self.path = path
        self._turn = (
            -1
            if path == ":memory:"
            else os.open(f"{path}-write.lock", os.O_RDWR | os.O_CREAT, 0o600)
        )
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.execute("PRAGMA busy_timeout=10000")

    def in_turn(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(db, *args)`` holding the write turn."""
        if self._turn < 0:
            return fn(self.db, *args)
        fcntl.flock(self._turn, fcntl.LOCK_EX)
        try:
            return fn(self.db, *args)
        finally:
            fcntl.flock(self._turn, fcntl.LOCK_UN)

    def close(self) -> None:
        self.db.close()
        if self._turn >= 0:
            os.close(self._turn)
            self._turn = -1


def prepare(db: sqlite3.Connection, clear_leases: bool) -> list[int]:
    """Apply the migrations this database lacks (returned); with ``clear_leases``, the process
    opening it runs the workers, and a previous workers process's leases go with that one."""
    applied = migrate(db)
    if clear_leases:
        db.execute("UPDATE jobs SET lease_until = 0, lease_owner = NULL")
        db.execute("UPDATE cursors SET lease_until = 0, lease_owner = NULL")
    return applied


def migrate(db: sqlite3.Connection) -> list[int]:
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = db.execute("SELECT max(version) FROM schema_version").fetchone()
    current = row[0] if row and row[0] is not None else 0
    applied = []
    for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
        db.execute("BEGIN IMMEDIATE")
        for statement in filter(str.strip, script.split(";")):
            db.execute(statement)
        db.execute("INSERT INTO schema_version VALUES (?)", (number,))
        db.execute("COMMIT")
        applied.append(number)
    return applied


def transaction(db: sqlite3.Connection, lists: OpLists) -> list[list[OpResult]]:
    """One whole group: read, apply in memory, write, commit."""
    db.execute("BEGIN IMMEDIATE")
    try:
        batch, results = apply_all(lists, load_cases(db, lists))
        flush(db, batch)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return results


CREATED = "created"  # a created submission's result, as it crosses back to the gateway


def transaction_compact(db: sqlite3.Connection, lists: OpLists) -> list[list[OpResult | str]]:
    """:func:`transaction`, each created submission's result as :data:`CREATED` alone: the
    gateway holds the case it sent, and sending it back whole cost more than the commit."""
    return [
        [CREATED if isinstance(r, SubmitResult) and r.kind == "created" else r for r in results]
        for results in transaction(db, lists)
    ]


def expand(lists: OpLists, compact: list[list[OpResult | str]]) -> list[list[OpResult]]:
    """The results :func:`transaction_compact` answered, whole again, from the operations."""
    return [
        [r if not isinstance(r, str) else SubmitResult("created", _case_of(op)) for op, r in
         zip(ops, results, strict=True)]
        for (ops, _), results in zip(lists, compact, strict=True)
    ]  # fmt: skip


def _case_of(op: Op) -> CaseRecord:
    assert isinstance(op, Submit)
    return op.case


def load_cases(db: sqlite3.Connection, lists: OpLists) -> dict[str, CaseRecord]:
    ids, keys = wanted(lists)
    found: dict[str, CaseRecord] = {}
    for chunk in chunks(ids, 500):
        marks = ",".join("?" * len(chunk))
        sql = f"SELECT {CASE_COLUMNS} FROM cases WHERE case_id IN ({marks})"
        for row in db.execute(sql, chunk).fetchall():
            found[row[0]] = case_from_row(row)
    for chunk_keys in chunks(keys, 400):
        where = " OR ".join("(origin_region = ? AND request_id = ?)" for _ in chunk_keys)
        params = [v for k in chunk_keys for v in k]
        sql = f"SELECT {CASE_COLUMNS} FROM cases WHERE {where}"
        for row in db.execute(sql, params).fetchall():
            found[request_key(row[2], row[1])] = case_from_row(row)
    return found


def flush(db: sqlite3.Connection, b: Batch) -> None:
    insert(db, f"INSERT INTO cases ({CASE_COLUMNS})", [case_row(c) for c in b.new_cases])
    update_from(
        db,
        "UPDATE cases SET status = v.column1, prior_status = v.column2, outcome = v.column3, "
        "result = v.column4, partner_ref = v.column5, updated_at = v.column6, "
        "last_seq = v.column7, deadline = v.column8, paused_at = v.column9, "
        "handling_region = v.column10, legs = v.column11, leg = v.column12, "
        "partner_events = v.column13 "
        "FROM (VALUES {values}) AS v WHERE cases.case_id = v.column14",
        [case_update_row(b.cases[i]) for i in b.changed],
    )
    insert(
        db,
        "INSERT INTO events (event_id, case_id, seq, status, outcome, at, item_code, "
        "contract_version, origin_region, handling_region, data)",
        [event_row(e) for e in b.events],
    )
    insert(db, "INSERT INTO cursors (recipient, case_id, head_seq, next_attempt_at)", b.cursors)
    update_from(
        db,
        "UPDATE cursors SET next_attempt_at = CASE WHEN acked_seq >= head_seq THEN v.column1 "
        "ELSE next_attempt_at END, head_seq = v.column2 FROM (VALUES {values}) AS v "
        "WHERE cursors.case_id = v.column3",
        [(b.now, seq, case_id) for case_id, seq in b.heads.items()],
    )
    if b.cancel_jobs:
        db.executemany(
            "UPDATE jobs SET state='cancelled', updated_at=? WHERE case_id=? AND state='pending'",
            [(b.now, case_id) for case_id in b.cancel_jobs],
        )
    insert(
        db,
        "INSERT INTO jobs (kind, case_id, region, data, state, next_attempt_at, created_at, "
        "updated_at)",
        b.jobs,
    )
    flush_jobs_and_deliveries(db, b)


def flush_jobs_and_deliveries(db: sqlite3.Connection, b: Batch) -> None:
    if b.finish:
        db.executemany(
            "UPDATE jobs SET state = CASE WHEN ?='retry' THEN 'pending' ELSE ? END, "
            "attempts = attempts + CASE WHEN ?='done' THEN 0 ELSE 1 END, "
            "next_attempt_at = ?, last_error = ?, lease_owner = NULL, lease_until = 0, "
            "updated_at = ? WHERE job_id = ? AND state = 'pending'",
            [
                (f.state, f.state, f.state, f.next_attempt_at, f.error, b.now, f.job_id)
                for f in b.finish
            ],
        )
    if b.acks:
        db.executemany(
            "UPDATE cursors SET acked_seq = max(acked_seq, ?), attempts = 0, last_error = "
            "NULL, lease_owner = NULL, lease_until = 0, next_attempt_at = ? "
            "WHERE recipient = ? AND case_id = ?",
            [(a.seq, b.now, a.recipient, a.case_id) for a in b.acks],
        )
    if b.failed:
        db.executemany(
            "UPDATE cursors SET attempts = attempts + 1, last_error = ?, lease_owner = NULL, "
            "lease_until = 0, next_attempt_at = ? WHERE recipient = ? AND case_id = ?",
            [(f.error, f.next_attempt_at, f.recipient, f.case_id) for f in b.failed],
        )
    if b.replays:
        db.executemany(
            "UPDATE jobs SET state='pending', attempts=0, next_attempt_at=?, updated_at=? "
            "WHERE case_id=? AND state='dead'",
            [(b.now, b.now, case_id) for case_id in b.replays],
        )
    for pause in b.pauses:
        if pause.paused:
            db.execute(
                "INSERT INTO partner_pauses VALUES (?, ?, ?) ON CONFLICT (region) DO NOTHING",
                (pause.region, b.now, pause.by or "operator"),
            )
        else:
            db.execute("DELETE FROM partner_pauses WHERE region = ?", (pause.region,))
    insert(db, "INSERT INTO ignored (case_id, at, status, source, reason)", b.ignored)
    insert(db, "INSERT OR IGNORE INTO blobs (sha256, media_type, size, content)", b.blobs)
    append_audit(db, b.audit)


def append_audit(db: sqlite3.Connection, items: Sequence[AuditItem]) -> None:
    """Continue the audit chain (inside the writer's transaction: one writer at a time)."""
    if not items:
        return
    last = db.execute("SELECT hash FROM audit ORDER BY audit_id DESC LIMIT 1").fetchone()
    insert(
        db,
        "INSERT INTO audit (at, kind, case_id, ref, actor, digest, prev_hash, hash)",
        audit.link(last[0] if last else None, items),
    )


def publish(
    db: sqlite3.Connection,
    content: str,
    versions: dict[tuple[str, int], str],
    author: str,
    note: str,
    now: float,
    if_revision: int | None,
) -> int:
    db.execute("BEGIN IMMEDIATE")
    try:
        newest = db.execute("SELECT coalesce(max(revision), 0) FROM contract_revisions")
        if if_revision is not None and newest.fetchone()[0] != if_revision:
            raise RevisionMoved(f"revision {if_revision} is no longer the newest")
        known = dict(
            ((r[0], r[1]), r[2])
            for r in db.execute("SELECT item_code, version, content FROM contract_versions")
        )
        for key, body in versions.items():
            if key in known and known[key] != body:
                raise VersionConflict(f"{key[0]} v{key[1]} was published with other content")
        row = db.execute("SELECT coalesce(max(revision), 0) + 1 FROM contract_revisions")
        revision = int(row.fetchone()[0])
        db.execute(
            "INSERT INTO contract_revisions VALUES (?, ?, ?, ?, ?)",
            (revision, now, author, note, content),
        )
        insert(
            db,
            "INSERT INTO contract_versions (item_code, version, revision, content)",
            [(k[0], k[1], revision, v) for k, v in versions.items() if k not in known],
        )
        entry = AuditItem(now, "revision", None, str(revision), author, audit.digest(content))
        append_audit(db, [entry])
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return revision


_MAX_VARIABLES = 30_000  # below SQLite's default limit of 32,766 bound parameters


def values(width: int, rows: int) -> str:
    row = "(" + ",".join("?" * width) + ")"
    return ",".join([row] * rows)


def insert(db: sqlite3.Connection, head: str, rows: Sequence[Sequence[Any]]) -> None:
    """Insert rows with one multi-row statement per chunk rather than one step per row.

    Fewer, larger statements keep a commit short: each one is prepared, bound and stepped on its
    own (and, when the writer was a thread, each step had to win the GIL back from the loop).
    """
    if not rows:
        return
    width = len(rows[0])
    for chunk in chunks(rows, _MAX_VARIABLES // width):
        db.execute(f"{head} VALUES {values(width, len(chunk))}", [v for r in chunk for v in r])


def update_from(db: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """``UPDATE … FROM (VALUES …)`` in chunks; each target row must appear at most once."""
    if not rows:
        return
    width = len(rows[0])
    for chunk in chunks(rows, _MAX_VARIABLES // width):
        db.execute(sql.format(values=values(width, len(chunk))), [v for r in chunk for v in r])


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
