"""The embedded store: SQLite through aiosqlite, in WAL mode.

One writer connection and one reader connection. Writes from many callers are grouped into one
transaction and one commit (group commit), so ``synchronous=FULL`` — every acknowledged write
survives a power cut — costs one fsync per group rather than per case. A group is applied with
statements batched by table; if it fails as a whole, each caller's operations are retried alone,
so one bad caller cannot fail another.

The writer is a thread of its own owning a plain sqlite3 connection: a whole group (read, apply,
write, commit) is one call into it, so a write transaction never stays open across turns of a
busy event loop. Reads go through aiosqlite.

At most two processes share one SQLite database, on one host: one serving the API and one running
the workers (dispatcher, deliverer, poller), or one doing both (``tongban serve --role``). Each part
is held by an exclusive lock file beside the database, so a second process taking a part already
taken is refused at open. The process running the workers is then the only one that holds leases:
it holds them in its memory (:mod:`gateway.store.leases`), so a claim of jobs or deliveries is a
read, not a write and a commit, and a dead process's leases die with it. (Stores of releases that
kept leases in the tables are cleared of them when the workers part opens.)
The two processes' writers take turns through a third lock file, so neither spins in SQLite's
busy handler while the other writes.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiosqlite

from gateway import audit
from gateway.store.base import (
    Ack,
    AuditItem,
    AuditRecord,
    CaseDetail,
    CaseFilter,
    CaseRecord,
    CursorRecord,
    DeliveryClaim,
    DeliveryFailed,
    EventRecord,
    FinishJob,
    IgnoredRecord,
    JobRecord,
    Op,
    OpResult,
    PauseRecord,
    RevisionMoved,
    RevisionRecord,
    VersionConflict,
)
from gateway.store.batch import Batch, OpLists, apply_all, request_key, wanted
from gateway.store.group import GroupCommit
from gateway.store.leases import Leases
from gateway.store.rows import (
    AUDIT_COLUMNS,
    CASE_COLUMNS,
    EVENT_COLUMNS,
    HANDLES_ATTACHMENT,
    JOB_COLUMNS,
    NOT_PAUSED,
    OVERDUE_INDEX,
    PARTNER_EVENTS_COLUMN,
    PAUSES_SELECT,
    PAUSES_TABLE,
    QUEUES_SQL,
    audit_from_row,
    case_from_row,
    case_row,
    case_update_row,
    event_from_row,
    event_row,
    job_from_row,
    overdue_sql,
    queues_from_rows,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
Part = Literal["api", "workers"]
BOTH_PARTS: frozenset[Part] = frozenset({"api", "workers"})
_TAKEN_SQL = "'dispatched', 'accepted', 'in_progress', 'supplement_required'"

MIGRATIONS: list[str] = [
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


class SqliteStore:
    """:class:`gateway.store.base.Store` on SQLite."""

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "FULL",
        max_group: int = 512,
        parts: frozenset[Part] = BOTH_PARTS,
    ) -> None:
        self.path = path
        self.synchronous = synchronous
        self.parts = parts
        self.ready = False
        self._locks: dict[str, int] = {}  # lock file name → open descriptor
        self._w: sqlite3.Connection | None = None  # the writer thread's alone
        self._r: aiosqlite.Connection | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._job_leases = Leases()  # job ids
        self._cursor_leases = Leases()  # (recipient, case id)
        self._group: GroupCommit[tuple[Sequence[Op], float], list[OpResult]] = GroupCommit(
            self._in_transaction, max_group=max_group
        )

    # ---- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        self._take_parts()
        await self._in_writer(self._open_writer)
        self._r = await aiosqlite.connect(self.path, isolation_level=None)
        await self._r.execute("PRAGMA busy_timeout=10000")
        await self._r.execute("PRAGMA query_only=ON")
        self._group.start("sqlite-group-commit")
        self.ready = True

    def _open_writer(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        db.execute("PRAGMA busy_timeout=10000")
        self._migrate(db)
        if "workers" in self.parts:
            # The previous workers process of this database is gone: its leases go with it.
            db.execute("UPDATE jobs SET lease_until = 0, lease_owner = NULL")
            db.execute("UPDATE cursors SET lease_until = 0, lease_owner = NULL")
        self._w = db

    def _take_parts(self) -> None:
        """Hold this process's parts (api, workers) of the database, or raise naming the one
        another process holds. Makes the database's folder first."""
        if self.path == ":memory:":
            return
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        for part in sorted(self.parts):
            fd = self._lock_file(part)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._release_locks()
                raise RuntimeError(
                    f"another gateway process already runs the {part} part on this database"
                ) from None

    def _lock_file(self, name: str) -> int:
        if name not in self._locks:
            self._locks[name] = os.open(f"{self.path}-{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        return self._locks[name]

    def _release_locks(self) -> None:
        for fd in self._locks.values():
            os.close(fd)  # closing drops the flock
        self._locks.clear()

    async def close(self) -> None:
        self.ready = False
        await self._group.stop()
        if self._r is not None:
            await self._r.close()
            self._r = None
        if self._w is not None:
            await self._in_writer(self._w.close)
            self._w = None
        self._writer.shutdown(wait=True)
        self._release_locks()

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = db.execute("SELECT max(version) FROM schema_version").fetchone()
        current = row[0] if row and row[0] is not None else 0
        for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
            db.execute("BEGIN IMMEDIATE")
            for statement in filter(str.strip, script.split(";")):
                db.execute(statement)
            db.execute("INSERT INTO schema_version VALUES (?)", (number,))
            db.execute("COMMIT")
            log.info("applied store migration %d", number)

    async def _in_writer(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the writer thread, which alone touches the writer connection, in this
        process's turn to write."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, self._in_turn, fn, *args)

    def _in_turn(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn`` holding the write-turn lock, which the other process sharing the database
        waits on (in the kernel, woken the moment it is free)."""
        if self.path == ":memory:":
            return fn(*args)
        fd = self._lock_file("write")
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            return fn(*args)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    async def follow_changes(self, wake: Callable[[], None], every: float = 0.02) -> None:
        """Wake on every commit of another connection (the other process's, or this one's
        writer): ``PRAGMA data_version`` changes then, a cheap read every ``every`` seconds."""
        seen = await self._data_version()
        while True:
            await asyncio.sleep(every)
            version = await self._data_version()
            if version != seen:
                seen = version
                wake()

    async def _data_version(self) -> int:
        row = await self._fetch_one("PRAGMA data_version")
        return int(row[0]) if row else 0

    @property
    def _wdb(self) -> sqlite3.Connection:
        if self._w is None:
            raise RuntimeError("store is not open")
        return self._w

    @property
    def _rdb(self) -> aiosqlite.Connection:
        if self._r is None:
            raise RuntimeError("store is not open")
        return self._r

    # ---- writes: group commit -------------------------------------------------------------

    async def write(self, ops: Sequence[Op], now: float) -> list[OpResult]:
        results = await self._group.submit((ops, now))
        # Committed: the leases these writes close are free (never before the commit).
        self._job_leases.release(op.job_id for op in ops if isinstance(op, FinishJob))
        self._cursor_leases.release(
            (op.recipient, op.case_id) for op in ops if isinstance(op, Ack | DeliveryFailed)
        )
        return results

    async def _in_transaction(self, lists: OpLists) -> list[list[OpResult]]:
        return await self._in_writer(self._transaction, lists)

    def _transaction(self, lists: OpLists) -> list[list[OpResult]]:
        """One whole group, on the writer thread: read, apply in memory, write, commit."""
        db = self._wdb
        db.execute("BEGIN IMMEDIATE")
        try:
            batch, results = apply_all(lists, self._load_cases(db, lists))
            self._flush(db, batch)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return results

    @staticmethod
    def _load_cases(db: sqlite3.Connection, lists: OpLists) -> dict[str, CaseRecord]:
        ids, keys = wanted(lists)
        found: dict[str, CaseRecord] = {}
        for chunk in _chunks(ids, 500):
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT {CASE_COLUMNS} FROM cases WHERE case_id IN ({marks})"
            for row in db.execute(sql, chunk).fetchall():
                found[row[0]] = case_from_row(row)
        for chunk_keys in _chunks(keys, 400):
            where = " OR ".join("(origin_region = ? AND request_id = ?)" for _ in chunk_keys)
            params = [v for k in chunk_keys for v in k]
            sql = f"SELECT {CASE_COLUMNS} FROM cases WHERE {where}"
            for row in db.execute(sql, params).fetchall():
                found[request_key(row[2], row[1])] = case_from_row(row)
        return found

    @staticmethod
    def _flush(db: sqlite3.Connection, b: Batch) -> None:
        _insert(db, f"INSERT INTO cases ({CASE_COLUMNS})", [case_row(c) for c in b.new_cases])
        _update_from(
            db,
            "UPDATE cases SET status = v.column1, prior_status = v.column2, outcome = v.column3, "
            "result = v.column4, partner_ref = v.column5, updated_at = v.column6, "
            "last_seq = v.column7, deadline = v.column8, paused_at = v.column9, "
            "handling_region = v.column10, legs = v.column11, leg = v.column12, "
            "partner_events = v.column13 "
            "FROM (VALUES {values}) AS v WHERE cases.case_id = v.column14",
            [case_update_row(b.cases[i]) for i in b.changed],
        )
        _insert(
            db,
            "INSERT INTO events (event_id, case_id, seq, status, outcome, at, item_code, "
            "contract_version, origin_region, handling_region, data)",
            [event_row(e) for e in b.events],
        )
        _insert(
            db, "INSERT INTO cursors (recipient, case_id, head_seq, next_attempt_at)", b.cursors
        )
        _update_from(
            db,
            "UPDATE cursors SET next_attempt_at = CASE WHEN acked_seq >= head_seq THEN v.column1 "
            "ELSE next_attempt_at END, head_seq = v.column2 FROM (VALUES {values}) AS v "
            "WHERE cursors.case_id = v.column3",
            [(b.now, seq, case_id) for case_id, seq in b.heads.items()],
        )
        if b.cancel_jobs:
            db.executemany(
                "UPDATE jobs SET state='cancelled', updated_at=? WHERE case_id=? AND "
                "state='pending'",
                [(b.now, case_id) for case_id in b.cancel_jobs],
            )
        _insert(
            db,
            "INSERT INTO jobs (kind, case_id, region, data, state, next_attempt_at, created_at, "
            "updated_at)",
            b.jobs,
        )
        SqliteStore._flush_jobs_and_deliveries(db, b)

    @staticmethod
    def _flush_jobs_and_deliveries(db: sqlite3.Connection, b: Batch) -> None:
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
        _insert(db, "INSERT INTO ignored (case_id, at, status, source, reason)", b.ignored)
        _insert(db, "INSERT OR IGNORE INTO blobs (sha256, media_type, size, content)", b.blobs)
        SqliteStore._append_audit(db, b.audit)

    @staticmethod
    def _append_audit(db: sqlite3.Connection, items: Sequence[AuditItem]) -> None:
        """Continue the audit chain (inside the writer's transaction: one writer at a time)."""
        if not items:
            return
        last = db.execute("SELECT hash FROM audit ORDER BY audit_id DESC LIMIT 1").fetchone()
        _insert(
            db,
            "INSERT INTO audit (at, kind, case_id, ref, actor, digest, prev_hash, hash)",
            audit.link(last[0] if last else None, items),
        )

    # ---- claims ---------------------------------------------------------------------------

    # Claims are reads on the reader connection, with the leases held in this process's memory
    # (gateway.store.leases): the workers part, which alone claims, is this process's alone.
    # Each read runs whole (_fetch), so it sees every commit made before it began.

    async def claim_jobs(
        self, owner: str, now: float, lease: float, quotas: Mapping[str, int]
    ) -> list[JobRecord]:
        wanted = {region: quota for region, quota in quotas.items() if quota > 0}
        if not wanted:
            return []
        leases = self._job_leases
        since = leases.begin(now)
        try:
            claimed: list[JobRecord] = []
            for region, quota in wanted.items():
                rows = await self._fetch(
                    f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'pending' AND region = ? AND "
                    f"next_attempt_at <= ? AND {NOT_PAUSED} ORDER BY next_attempt_at, job_id "
                    "LIMIT ?",
                    (region, now, quota + len(leases.held)),
                )
                free = (j for j in map(job_from_row, rows)
                        if leases.take(j.job_id, now, now + lease, since))  # fmt: skip
                claimed.extend(islice(free, quota))
        finally:
            leases.end(since)
        return sorted(claimed, key=lambda j: j.job_id)

    async def claim_deliveries(
        self,
        owner: str,
        now: float,
        lease: float,
        limit: int,
        skip: Sequence[str],
        max_events: int,
    ) -> list[DeliveryClaim]:
        leases = self._cursor_leases
        since = leases.begin(now)
        try:
            skip_sql = f"AND recipient NOT IN ({','.join('?' * len(skip))})" if skip else ""
            rows = await self._fetch(
                "SELECT recipient, case_id, acked_seq, head_seq, attempts FROM cursors "
                f"WHERE head_seq > acked_seq AND next_attempt_at <= ? {skip_sql} "
                "ORDER BY next_attempt_at LIMIT ?",
                (now, *skip, limit + len(leases.held)),
            )
            taken = [r for r in rows if leases.take((r[0], r[1]), now, now + lease, since)]
        finally:
            leases.end(since)
        return await self._claimed_events(taken[:limit], max_events)

    async def _claimed_events(
        self, cursors: Sequence[Sequence[Any]], max_events: int
    ) -> list[DeliveryClaim]:
        """Each claimed cursor's events after its acknowledged one, up to its head (events are
        only ever added, so a later read has at least these)."""
        by_case: dict[str, list[EventRecord]] = defaultdict(list)
        select = f"SELECT {EVENT_COLUMNS} FROM events WHERE case_id"
        for row in await self._rows_in(select, sorted({c[1] for c in cursors})):
            event = event_from_row(row)
            by_case[event.case_id].append(event)
        claims = []
        for recipient, case_id, acked, head, attempts in cursors:
            last = min(head, acked + max_events)
            events = sorted((e for e in by_case[case_id] if acked < e.seq <= last),
                            key=lambda e: e.seq)  # fmt: skip
            claims.append(DeliveryClaim(recipient, case_id, attempts, events))
        return claims

    # ---- reads ----------------------------------------------------------------------------

    async def get_case(self, case_id: str) -> CaseDetail | None:
        row = await self._fetch_one(
            f"SELECT {CASE_COLUMNS} FROM cases WHERE case_id = ?", (case_id,)
        )
        if row is None:
            return None
        events = await self._fetch(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE case_id = ? ORDER BY seq", (case_id,)
        )
        cursors = await self._fetch(
            "SELECT recipient, case_id, acked_seq, head_seq, attempts, next_attempt_at, "
            "last_error FROM cursors WHERE case_id = ? ORDER BY recipient",
            (case_id,),
        )
        ignored = await self._fetch(
            "SELECT case_id, at, status, source, reason FROM ignored WHERE case_id = ? ORDER BY id",
            (case_id,),
        )
        return CaseDetail(
            case_from_row(row),
            [event_from_row(r) for r in events],
            [CursorRecord(*r) for r in cursors],
            [IgnoredRecord(*r) for r in ignored],
        )

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Every row of one read, run and fetched in one call on the reader connection's thread.

        A statement left open across an await (``execute``, then ``fetchall`` later) holds its
        read transaction, and every read that runs on the connection meanwhile shares its
        snapshot: it could miss a commit made before it began (a contract revision just
        published, a job just finished). Run whole, no statement outlives its call.
        """
        return list(await self._rdb.execute_fetchall(sql, params))

    async def _fetch_one(self, sql: str, params: Sequence[Any] = ()) -> Any | None:
        rows = await self._fetch(sql, params)
        return rows[0] if rows else None

    async def cases(self, case_ids: Sequence[str]) -> dict[str, CaseRecord]:
        rows = await self._rows_in(f"SELECT {CASE_COLUMNS} FROM cases WHERE case_id", case_ids)
        return {r[0]: case_from_row(r) for r in rows}

    async def _rows_in(self, select: str, keys: Sequence[str]) -> list[Any]:
        """The rows of ``select`` (ending in the key column) ``IN`` the keys, 500 at a time."""
        rows: list[Any] = []
        for chunk in _chunks(list(keys), 500):
            marks = ",".join("?" * len(chunk))
            rows += await self._fetch(f"{select} IN ({marks})", chunk)
        return rows

    async def list_cases(self, flt: CaseFilter, limit: int, before: str | None) -> list[CaseRecord]:
        where, params = [], []
        if flt.region:
            where.append("(origin_region = ? OR handling_region = ?)")
            params += [flt.region, flt.region]
        if flt.status:
            where.append("status = ?")
            params.append(flt.status)
        if flt.item_code:
            where.append("item_code = ?")
            params.append(flt.item_code)
        if before:
            where.append("case_id < ?")
            params.append(before)
        sql = f"SELECT {CASE_COLUMNS} FROM cases"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY case_id DESC LIMIT ?"
        return [case_from_row(r) for r in await self._fetch(sql, (*params, limit))]

    async def feed(self, region: str, after: int, limit: int) -> list[EventRecord]:
        rows = await self._fetch(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE feed_id IN ("
            "SELECT feed_id FROM events WHERE origin_region = ? AND feed_id > ? "
            "UNION SELECT feed_id FROM events WHERE handling_region = ? AND feed_id > ?) "
            "ORDER BY feed_id LIMIT ?",
            (region, after, region, after, limit),
        )
        return [event_from_row(r) for r in rows]

    async def find_by_partner_ref(self, region: str, refs: Sequence[str]) -> Mapping[str, str]:
        found: dict[str, str] = {}
        for chunk in _chunks(list(refs), 500):
            marks = ",".join("?" * len(chunk))
            rows = await self._fetch(
                f"SELECT partner_ref, case_id FROM cases WHERE handling_region = ? "
                f"AND partner_ref IN ({marks})",
                (region, *chunk),
            )
            found.update({r[0]: r[1] for r in rows})
        return found

    async def open_cases(self, region: str, limit: int) -> list[CaseRecord]:
        # The partner holds the case: by the case's status, or for a multi-site case by the
        # status of the leg under way (handed to its next leg, the case is in progress before
        # that leg's partner has it).
        rows = await self._fetch(
            f"SELECT {CASE_COLUMNS} FROM cases WHERE handling_region = ? AND "
            f"(CASE WHEN legs = '[]' THEN status "
            f"ELSE json_extract(legs, '$[' || leg || '].status') END) IN ({_TAKEN_SQL}) "
            "ORDER BY updated_at LIMIT ?",
            (region, limit),
        )
        return [case_from_row(r) for r in rows]

    async def dead_jobs(self, limit: int) -> list[JobRecord]:
        rows = await self._fetch(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'dead' ORDER BY updated_at DESC LIMIT ?",
            (limit,),
        )
        return [job_from_row(r) for r in rows]

    async def queues(self, now: float) -> dict[str, dict[str, float]]:
        return queues_from_rows(list(await self._fetch(QUEUES_SQL)), now)

    async def handles_attachment(self, region: str, sha256: str) -> bool:
        pattern = f'%"sha256":"{sha256}"%'
        sql = HANDLES_ATTACHMENT.format(region="?", pattern="?")
        return await self._fetch_one(sql, (region, pattern) * 2) is not None

    async def paused_partners(self) -> dict[str, PauseRecord]:
        return {r[0]: PauseRecord(*r) for r in await self._fetch(PAUSES_SELECT)}

    async def get_blob(self, sha256: str) -> bytes | None:
        row = await self._fetch_one("SELECT content FROM blobs WHERE sha256 = ?", (sha256,))
        return bytes(row[0]) if row else None

    async def revision_number(self) -> int:
        row = await self._fetch_one("SELECT max(revision) FROM contract_revisions")
        return int(row[0]) if row and row[0] is not None else 0

    async def get_revision(self, revision: int | None = None) -> RevisionRecord | None:
        sql = "SELECT revision, created_at, author, note, content FROM contract_revisions "
        sql += "ORDER BY revision DESC LIMIT 1" if revision is None else "WHERE revision = ?"
        params = () if revision is None else (revision,)
        row = await self._fetch_one(sql, params)
        return RevisionRecord(*row) if row else None

    async def revisions(self, limit: int) -> list[RevisionRecord]:
        return [
            RevisionRecord(*r)
            for r in await self._fetch(
                "SELECT revision, created_at, author, note, '' FROM contract_revisions "
                "ORDER BY revision DESC LIMIT ?",
                (limit,),
            )
        ]

    async def published_versions(self) -> dict[tuple[str, int], str]:
        return {
            (r[0], r[1]): r[2]
            for r in await self._fetch("SELECT item_code, version, content FROM contract_versions")
        }

    async def publish_revision(
        self,
        content: str,
        versions: Mapping[tuple[str, int], str],
        author: str,
        note: str,
        now: float,
        if_revision: int | None = None,
    ) -> int:
        return await self._in_writer(
            self._publish, content, dict(versions), author, note, now, if_revision
        )

    def _publish(
        self,
        content: str,
        versions: dict[tuple[str, int], str],
        author: str,
        note: str,
        now: float,
        if_revision: int | None,
    ) -> int:
        db = self._wdb
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
            _insert(
                db,
                "INSERT INTO contract_versions (item_code, version, revision, content)",
                [(k[0], k[1], revision, v) for k, v in versions.items() if k not in known],
            )
            entry = AuditItem(now, "revision", None, str(revision), author, audit.digest(content))
            self._append_audit(db, [entry])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return revision

    async def audit_of_case(self, case_id: str) -> list[AuditRecord]:
        return [
            audit_from_row(r)
            for r in await self._fetch(
                f"SELECT {AUDIT_COLUMNS} FROM audit WHERE case_id = ? ORDER BY audit_id", (case_id,)
            )
        ]

    async def audit_page(self, after: int, limit: int) -> list[AuditRecord]:
        return [
            audit_from_row(r)
            for r in await self._fetch(
                f"SELECT {AUDIT_COLUMNS} FROM audit WHERE audit_id > ? ORDER BY audit_id LIMIT ?",
                (after, limit),
            )
        ]

    async def events_by_id(self, event_ids: Sequence[str]) -> dict[str, EventRecord]:
        rows = await self._rows_in(f"SELECT {EVENT_COLUMNS} FROM events WHERE event_id", event_ids)
        return {r[1]: event_from_row(r) for r in rows}

    async def stats(self, now: float) -> Mapping[str, float]:
        out: dict[str, float] = {}
        row = await self._fetch_one(
            "SELECT count(*), min(created_at) FROM jobs WHERE state = 'pending'"
        )
        out["jobs_pending"] = float(row[0]) if row else 0.0
        out["jobs_oldest_pending_seconds"] = now - row[1] if row and row[1] else 0.0
        row = await self._fetch_one("SELECT count(*) FROM jobs WHERE state = 'dead'")
        out["jobs_dead"] = float(row[0]) if row else 0.0
        row = await self._fetch_one(
            "SELECT count(*), coalesce(sum(head_seq - acked_seq), 0) FROM cursors "
            "WHERE head_seq > acked_seq"
        )
        out["deliveries_waiting_cases"] = float(row[0]) if row else 0.0
        out["deliveries_waiting_events"] = float(row[1]) if row else 0.0
        row = await self._fetch_one(overdue_sql("?"), (now, now))
        out["cases_overdue"] = float(row[0]) if row else 0.0
        return out


_MAX_VARIABLES = 30_000  # below SQLite's default limit of 32,766 bound parameters


def _values(width: int, rows: int) -> str:
    row = "(" + ",".join("?" * width) + ")"
    return ",".join([row] * rows)


def _insert(db: sqlite3.Connection, head: str, rows: Sequence[Sequence[Any]]) -> None:
    """Insert rows with one multi-row statement per chunk rather than one step per row.

    Each step gives up and takes back the GIL; under a busy event loop every take-back can wait,
    so fewer, larger statements keep a commit short.
    """
    if not rows:
        return
    width = len(rows[0])
    for chunk in _chunks(rows, _MAX_VARIABLES // width):
        db.execute(f"{head} VALUES {_values(width, len(chunk))}", [v for r in chunk for v in r])


def _update_from(db: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """``UPDATE … FROM (VALUES …)`` in chunks; each target row must appear at most once."""
    if not rows:
        return
    width = len(rows[0])
    for chunk in _chunks(rows, _MAX_VARIABLES // width):
        db.execute(sql.format(values=_values(width, len(chunk))), [v for r in chunk for v in r])


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
