"""The scale-out store: PostgreSQL through asyncpg, shared by any number of gateway processes.

The same interface and the same rules as the embedded SQLite store, for deployments that run more
than one gateway process against one database:

- **Writes** are grouped per process (group commit) and applied by :mod:`gateway.store.batch`
  exactly as on SQLite. Every write group takes one transaction-level advisory lock of its
  schema first, so groups from all processes apply one after another: a group reads the cases it
  changes after the previous group committed (no lost update), a ``request_id`` is looked up and
  inserted under the same lock (a repeat is found, never inserted twice), and the pull feed's
  ``feed_id`` values become visible in the order they were assigned, so a reader that has seen
  ``feed_id`` n never later finds a smaller one.
- **Claims** take jobs and deliveries by lease with ``FOR UPDATE SKIP LOCKED``: processes claim
  side by side without waiting for one another, and a row leased by one is skipped by the rest
  until its lease ends. A process that dies keeps its leases until they expire; then anyone
  claims the work again (unlike SQLite, no lease is released at start: the other processes are
  alive).
- **Nonces** of signed requests are remembered in the database, so a request replayed to another
  process is refused too.
- **Wake-ups**: a write group that creates work (a case, an event, a job, a replay, a pause)
  sends a notification on its schema's channel when it commits; every process listens on it
  (:meth:`PostgresStore.follow_changes`), so work one process commits is taken up by the others at
  once, not at their next poll.

The tables live in the first schema of the connection's ``search_path`` (a URL may set it:
``postgresql://gw@db/tongban?options=-csearch_path%3Dtongban``). JSON values are stored as the
text orjson wrote (:mod:`gateway.store.rows`); times are seconds since the epoch, as on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gateway import audit
from gateway.signing import WINDOW_SECONDS
from gateway.store.base import (
    AuditItem,
    AuditRecord,
    CaseDetail,
    CaseFilter,
    CaseRecord,
    CursorRecord,
    DeliveryClaim,
    EventRecord,
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

# Advisory locks, two-key form: (hash of the schema, what). Per schema, so that two gateways on
# two schemas of one database do not wait for each other.
_MIGRATE, _WRITE = 1, 2
_LOCK = "SELECT pg_advisory_xact_lock(hashtext(current_schema()), $1)"
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
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        deadline DOUBLE PRECISION,
        last_seq INTEGER NOT NULL,
        paused_at DOUBLE PRECISION,
        legs TEXT NOT NULL DEFAULT '[]',
        leg INTEGER NOT NULL DEFAULT 0,
        UNIQUE (origin_region, request_id)
    );
    CREATE INDEX cases_origin ON cases (origin_region, case_id);
    CREATE INDEX cases_handler ON cases (handling_region, case_id);
    CREATE INDEX cases_partner_ref ON cases (handling_region, partner_ref);
    CREATE TABLE events (
        feed_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        event_id TEXT NOT NULL UNIQUE,
        case_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        status TEXT NOT NULL,
        outcome TEXT,
        at DOUBLE PRECISION NOT NULL,
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
        next_attempt_at DOUBLE PRECISION NOT NULL,
        lease_owner TEXT,
        lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
        last_error TEXT,
        PRIMARY KEY (case_id, recipient)
    );
    CREATE INDEX cursors_due ON cursors (next_attempt_at) WHERE head_seq > acked_seq;
    CREATE TABLE jobs (
        job_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        kind TEXT NOT NULL,
        case_id TEXT NOT NULL,
        region TEXT NOT NULL,
        data TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        lease_owner TEXT,
        lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
        last_error TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX jobs_due ON jobs (region, next_attempt_at) WHERE state = 'pending';
    CREATE INDEX jobs_case ON jobs (case_id);
    CREATE INDEX jobs_dead ON jobs (updated_at) WHERE state = 'dead';
    CREATE TABLE ignored (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        case_id TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        status TEXT NOT NULL,
        source TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX ignored_case ON ignored (case_id);
    CREATE TABLE blobs (
        sha256 TEXT PRIMARY KEY,
        media_type TEXT NOT NULL,
        size BIGINT NOT NULL,
        content BYTEA NOT NULL
    );
    CREATE TABLE contract_revisions (
        revision INTEGER PRIMARY KEY,
        created_at DOUBLE PRECISION NOT NULL,
        author TEXT NOT NULL,
        note TEXT NOT NULL,
        content TEXT NOT NULL
    );
    CREATE TABLE contract_versions (
        item_code TEXT NOT NULL,
        version INTEGER NOT NULL,
        revision INTEGER NOT NULL,
        content TEXT NOT NULL,
        PRIMARY KEY (item_code, version)
    );
    CREATE TABLE nonces (
        key_id TEXT NOT NULL,
        nonce TEXT NOT NULL,
        seen_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (key_id, nonce)
    );
    CREATE INDEX nonces_seen ON nonces (seen_at);
    """,
    """
    CREATE TABLE audit (
        audit_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL,
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

_INSERT_CASE = (
    f"INSERT INTO cases ({CASE_COLUMNS}) VALUES (" + ", ".join(f"${i}" for i in range(1, 26)) + ")"
)
_UPDATE_CASE = (
    "UPDATE cases SET status = $1, prior_status = $2, outcome = $3, result = $4, "
    "partner_ref = $5, updated_at = $6, last_seq = $7, deadline = $8, paused_at = $9, "
    "handling_region = $10, legs = $11, leg = $12, partner_events = $13 WHERE case_id = $14"
)
_INSERT_EVENT = (
    "INSERT INTO events (event_id, case_id, seq, status, outcome, at, item_code, "
    "contract_version, origin_region, handling_region, data) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
)
_INSERT_JOB = (
    "INSERT INTO jobs (kind, case_id, region, data, state, next_attempt_at, created_at, "
    "updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
)


class PostgresStore:
    """:class:`gateway.store.base.Store` on PostgreSQL."""

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 10,
        max_group: int = 512,
        timeout: float = 30.0,
        nonce_window: float = 2 * WINDOW_SECONDS,
        check_interval: float = 2.0,
    ) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        self.timeout = timeout  # connecting and every statement
        self.nonce_window = nonce_window  # how long a nonce is kept: twice the signing window
        self.ready = False
        self._pool: Any = None
        self._group: GroupCommit[tuple[Sequence[Op], float], list[OpResult]] = GroupCommit(
            self._transaction, max_group=max_group
        )
        self._nonces: GroupCommit[tuple[str, str, float], bool] = GroupCommit(
            self._remember_nonces, max_group=1000
        )
        self._nonce_sweep = 0.0
        self.check_interval = check_interval  # how often readiness is checked against the server
        self._checker: asyncio.Task[None] | None = None
        self._channel = ""  # LISTEN/NOTIFY channel of this schema, named at open

    # ---- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        # An optional dependency ([postgres]), imported on first need; the configuration has
        # already refused a postgresql:// store where it is missing, naming the package.
        asyncpg = importlib.import_module("asyncpg")
        self._pool = await asyncpg.create_pool(
            self.dsn,
            min_size=1,
            max_size=self.pool_size,
            timeout=self.timeout,
            command_timeout=self.timeout,
        )
        try:
            async with self._pool.acquire() as con, con.transaction():
                await con.execute(_LOCK, _MIGRATE)
                await self._migrate(con)
                schema = await con.fetchval("SELECT current_schema()")
            self._channel = "tongban_" + hashlib.sha256(schema.encode()).hexdigest()[:24]
        except BaseException:
            await self._pool.close()
            self._pool = None
            raise
        self._group.start("postgres-group-commit")
        self._nonces.start("postgres-nonces")
        self._checker = asyncio.create_task(self._check_loop(), name="postgres-readiness")
        self.ready = True

    async def _check_loop(self) -> None:
        """Keep ``ready`` true only while the server answers and the schema is there, so that a
        load balancer stops sending requests to a process whose store is gone."""
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                async with asyncio.timeout(2 * self.check_interval):
                    await self._db.fetchval("SELECT max(version) FROM schema_version")
                usable = True
            except Exception as exc:  # whatever the driver raises: the store is not usable
                usable = False
                reason = type(exc).__name__
            if usable != self.ready:
                if usable:
                    log.warning("the PostgreSQL store answers again: ready")
                else:
                    log.error("the PostgreSQL store does not answer (%s): not ready", reason)
            self.ready = usable

    @staticmethod
    async def _migrate(con: Any) -> None:
        await con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = await con.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
        for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
            await con.execute(script)
            await con.execute("INSERT INTO schema_version VALUES ($1)", number)
            log.info("applied store migration %d", number)

    async def close(self) -> None:
        self.ready = False
        if self._checker is not None:
            self._checker.cancel()
            await asyncio.gather(self._checker, return_exceptions=True)
            self._checker = None
        await self._group.stop()
        await self._nonces.stop()
        if self._pool is not None:
            await asyncio.wait_for(self._pool.close(), self.timeout)
            self._pool = None

    @property
    def _db(self) -> Any:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    # ---- writes: group commit -------------------------------------------------------------

    async def write(self, ops: Sequence[Op], now: float) -> list[OpResult]:
        return await self._group.submit((ops, now))

    async def _transaction(self, lists: OpLists) -> list[list[OpResult]]:
        """One whole group: lock, read, apply in memory, write, commit."""
        async with self._db.acquire() as con, con.transaction():
            await con.execute(_LOCK, _WRITE)
            batch, results = apply_all(lists, await self._load_cases(con, lists))
            await self._flush(con, batch)
            if batch.jobs or batch.events or batch.replays or batch.pauses:
                await con.execute("SELECT pg_notify($1, '')", self._channel)  # sent at commit
        return results

    async def follow_changes(self, wake: Callable[[], None]) -> None:
        """Listen on the schema's channel on a connection of its own, opened again if lost."""
        asyncpg = importlib.import_module("asyncpg")
        while True:
            try:
                con = await asyncpg.connect(self.dsn, timeout=self.timeout)
            except Exception as exc:  # whatever the driver raises: try again shortly
                log.warning("cannot listen for other processes' work (%s)", type(exc).__name__)
                await asyncio.sleep(self.check_interval)
                continue
            try:
                await con.add_listener(self._channel, lambda *_: wake())
                wake()  # whatever was committed while nobody listened
                while not con.is_closed():
                    await asyncio.sleep(self.check_interval)
                    await con.execute("SELECT 1")  # a broken connection shows here
            except Exception as exc:
                log.warning("stopped listening for other processes' work (%s); listening again",
                            type(exc).__name__)  # fmt: skip
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(con.close(), self.timeout)

    @staticmethod
    async def _load_cases(con: Any, lists: OpLists) -> dict[str, CaseRecord]:
        ids, keys = wanted(lists)
        found: dict[str, CaseRecord] = {}
        if ids:
            sql = f"SELECT {CASE_COLUMNS} FROM cases WHERE case_id = ANY($1::text[])"
            for row in await con.fetch(sql, ids):
                found[row[0]] = case_from_row(row)
        if keys:
            sql = (
                f"SELECT {CASE_COLUMNS} FROM cases WHERE (origin_region, request_id) IN "
                "(SELECT * FROM unnest($1::text[], $2::text[]))"
            )
            for row in await con.fetch(sql, [k[0] for k in keys], [k[1] for k in keys]):
                found[request_key(row[2], row[1])] = case_from_row(row)
        return found

    @staticmethod
    async def _flush(con: Any, b: Batch) -> None:
        await _many(con, _INSERT_CASE, [case_row(c) for c in b.new_cases])
        await _many(con, _UPDATE_CASE, [case_update_row(b.cases[i]) for i in sorted(b.changed)])
        await _many(con, _INSERT_EVENT, [event_row(e) for e in b.events])
        await _many(
            con,
            "INSERT INTO cursors (recipient, case_id, head_seq, next_attempt_at) "
            "VALUES ($1, $2, $3, $4)",
            b.cursors,
        )
        await _many(
            con,
            "UPDATE cursors SET next_attempt_at = CASE WHEN acked_seq >= head_seq THEN $1 "
            "ELSE next_attempt_at END, head_seq = $2 WHERE case_id = $3",
            [(b.now, seq, case_id) for case_id, seq in sorted(b.heads.items())],
        )
        await _many(
            con,
            "UPDATE jobs SET state = 'cancelled', updated_at = $1 "
            "WHERE case_id = $2 AND state = 'pending'",
            [(b.now, case_id) for case_id in b.cancel_jobs],
        )
        await _many(con, _INSERT_JOB, b.jobs)
        await PostgresStore._flush_jobs_and_deliveries(con, b)

    @staticmethod
    async def _flush_jobs_and_deliveries(con: Any, b: Batch) -> None:
        await _many(
            con,
            "UPDATE jobs SET state = CASE WHEN $1 = 'retry' THEN 'pending' ELSE $1 END, "
            "attempts = attempts + CASE WHEN $1 = 'done' THEN 0 ELSE 1 END, "
            "next_attempt_at = $2, last_error = $3, lease_owner = NULL, lease_until = 0, "
            "updated_at = $4 WHERE job_id = $5 AND state = 'pending'",
            [(f.state, f.next_attempt_at, f.error, b.now, f.job_id) for f in b.finish],
        )
        await _many(
            con,
            "UPDATE cursors SET acked_seq = greatest(acked_seq, $1), attempts = 0, "
            "last_error = NULL, lease_owner = NULL, lease_until = 0, next_attempt_at = $2 "
            "WHERE recipient = $3 AND case_id = $4",
            [(a.seq, b.now, a.recipient, a.case_id) for a in b.acks],
        )
        await _many(
            con,
            "UPDATE cursors SET attempts = attempts + 1, last_error = $1, lease_owner = NULL, "
            "lease_until = 0, next_attempt_at = $2 WHERE recipient = $3 AND case_id = $4",
            [(f.error, f.next_attempt_at, f.recipient, f.case_id) for f in b.failed],
        )
        await _many(
            con,
            "UPDATE jobs SET state = 'pending', attempts = 0, next_attempt_at = $1, "
            "updated_at = $1 WHERE case_id = $2 AND state = 'dead'",
            [(b.now, case_id) for case_id in b.replays],
        )
        for pause in b.pauses:
            if pause.paused:
                await con.execute(
                    "INSERT INTO partner_pauses VALUES ($1, $2, $3) "
                    "ON CONFLICT (region) DO NOTHING",
                    pause.region, b.now, pause.by or "operator",
                )  # fmt: skip
            else:
                await con.execute("DELETE FROM partner_pauses WHERE region = $1", pause.region)
        await _many(
            con,
            "INSERT INTO ignored (case_id, at, status, source, reason) VALUES ($1, $2, $3, $4, $5)",
            b.ignored,
        )
        await _many(
            con,
            "INSERT INTO blobs (sha256, media_type, size, content) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (sha256) DO NOTHING",
            b.blobs,
        )
        await PostgresStore._append_audit(con, b.audit)

    @staticmethod
    async def _append_audit(con: Any, items: Sequence[AuditItem]) -> None:
        """Continue the audit chain; the caller holds the schema's write lock."""
        if not items:
            return
        last = await con.fetchval("SELECT hash FROM audit ORDER BY audit_id DESC LIMIT 1")
        await _many(
            con,
            "INSERT INTO audit (at, kind, case_id, ref, actor, digest, prev_hash, hash) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            audit.link(last, items),
        )

    # ---- claims ---------------------------------------------------------------------------

    async def claim_jobs(
        self, owner: str, now: float, lease: float, quotas: Mapping[str, int]
    ) -> list[JobRecord]:
        wanted_quotas = {region: quota for region, quota in quotas.items() if quota > 0}
        if not wanted_quotas:
            return []
        claimed: list[JobRecord] = []
        async with self._db.acquire() as con, con.transaction():
            for region, quota in wanted_quotas.items():
                rows = await con.fetch(
                    "UPDATE jobs SET lease_owner = $1, lease_until = $2 WHERE job_id IN ("
                    "SELECT job_id FROM jobs WHERE state = 'pending' AND region = $3 AND "
                    f"next_attempt_at <= $4 AND lease_until < $4 AND {NOT_PAUSED} "
                    "ORDER BY next_attempt_at, job_id LIMIT $5 FOR UPDATE SKIP LOCKED) "
                    f"RETURNING {JOB_COLUMNS}",
                    owner, now + lease, region, now, quota,
                )  # fmt: skip
                claimed.extend(job_from_row(r) for r in rows)
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
        async with self._db.acquire() as con, con.transaction():
            rows = await con.fetch(
                "UPDATE cursors SET lease_owner = $1, lease_until = $2 "
                "WHERE (case_id, recipient) IN ("
                "SELECT case_id, recipient FROM cursors WHERE head_seq > acked_seq "
                "AND next_attempt_at <= $3 AND lease_until < $3 "
                "AND NOT (recipient = ANY($4::text[])) "
                "ORDER BY next_attempt_at LIMIT $5 FOR UPDATE SKIP LOCKED) "
                "RETURNING recipient, case_id, acked_seq, head_seq, attempts",
                owner, now + lease, now, list(skip), limit,
            )  # fmt: skip
            if not rows:
                return []
            # Each claim's events after its acknowledged one, at most max_events, in one query.
            spans = [(r["case_id"], r["acked_seq"], min(r["head_seq"], r["acked_seq"] + max_events))
                     for r in rows]  # fmt: skip
            events = await con.fetch(
                f"SELECT DISTINCT {_qualified('e', EVENT_COLUMNS)} FROM events e "
                "JOIN unnest($1::text[], $2::int[], $3::int[]) AS s(case_id, after, last) "
                "ON e.case_id = s.case_id AND e.seq > s.after AND e.seq <= s.last "
                "ORDER BY e.case_id, e.seq",
                *map(list, zip(*spans, strict=True)),
            )
        by_case: dict[str, list[EventRecord]] = {}
        for e in events:
            by_case.setdefault(e["case_id"], []).append(event_from_row(e))
        claims = []
        for (recipient, case_id, acked, _, attempts), (_, _, last) in zip(rows, spans, strict=True):
            todo = [e for e in by_case.get(case_id, []) if acked < e.seq <= last]
            claims.append(DeliveryClaim(recipient, case_id, attempts, todo))
        return claims

    # ---- nonces ---------------------------------------------------------------------------

    async def remember_nonce(self, key_id: str, nonce: str, now: float) -> bool:
        """True if no process has seen this nonce of this key inside the window (and now one
        has); False for a replay. Nonces arriving together are stored in one statement."""
        return await self._nonces.submit((key_id, nonce, now))

    async def _remember_nonces(self, items: list[tuple[str, str, float]]) -> list[bool]:
        now = max(t for _, _, t in items)
        first: dict[tuple[str, str], int] = {}  # a nonce twice in one group: the second replays
        for i, (key_id, nonce, _) in enumerate(items):
            first.setdefault((key_id, nonce), i)
        rows = [items[i] for i in first.values()]
        async with self._db.acquire() as con:
            if now - self._nonce_sweep > 60:  # forget nonces whose timestamps are refused anyway
                self._nonce_sweep = now
                await con.execute("DELETE FROM nonces WHERE seen_at < $1", now - self.nonce_window)
            fresh = await con.fetch(
                "INSERT INTO nonces (key_id, nonce, seen_at) "
                "SELECT * FROM unnest($1::text[], $2::text[], $3::float8[]) "
                "ON CONFLICT (key_id, nonce) DO UPDATE SET seen_at = excluded.seen_at "
                "WHERE nonces.seen_at < $4 RETURNING key_id, nonce",
                *map(list, zip(*rows, strict=True)), now - self.nonce_window,
            )  # fmt: skip
        new = {(r[0], r[1]) for r in fresh}
        return [first[(k, n)] == i and (k, n) in new for i, (k, n, _) in enumerate(items)]

    # ---- reads ----------------------------------------------------------------------------

    async def get_case(self, case_id: str) -> CaseDetail | None:
        async with self._db.acquire() as con:
            row = await con.fetchrow(
                f"SELECT {CASE_COLUMNS} FROM cases WHERE case_id = $1", case_id
            )
            if row is None:
                return None
            events = await con.fetch(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE case_id = $1 ORDER BY seq", case_id
            )
            cursors = await con.fetch(
                "SELECT recipient, case_id, acked_seq, head_seq, attempts, next_attempt_at, "
                "last_error FROM cursors WHERE case_id = $1 ORDER BY recipient",
                case_id,
            )
            ignored = await con.fetch(
                "SELECT case_id, at, status, source, reason FROM ignored WHERE case_id = $1 "
                "ORDER BY id",
                case_id,
            )
        return CaseDetail(
            case_from_row(row),
            [event_from_row(e) for e in events],
            [CursorRecord(*r) for r in cursors],
            [IgnoredRecord(*r) for r in ignored],
        )

    async def cases(self, case_ids: Sequence[str]) -> dict[str, CaseRecord]:
        if not case_ids:
            return {}
        rows = await self._db.fetch(
            f"SELECT {CASE_COLUMNS} FROM cases WHERE case_id = ANY($1::text[])", list(case_ids)
        )
        return {r[0]: case_from_row(r) for r in rows}

    async def list_cases(self, flt: CaseFilter, limit: int, before: str | None) -> list[CaseRecord]:
        where: list[str] = []
        params: list[Any] = []

        def param(value: Any) -> str:
            params.append(value)
            return f"${len(params)}"

        if flt.region:
            p = param(flt.region)
            where.append(f"(origin_region = {p} OR handling_region = {p})")
        if flt.status:
            where.append(f"status = {param(flt.status)}")
        if flt.item_code:
            where.append(f"item_code = {param(flt.item_code)}")
        if before:
            where.append(f"case_id < {param(before)}")
        sql = f"SELECT {CASE_COLUMNS} FROM cases"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY case_id DESC LIMIT {param(limit)}"
        return [case_from_row(r) for r in await self._db.fetch(sql, *params)]

    async def feed(self, region: str, after: int, limit: int) -> list[EventRecord]:
        rows = await self._db.fetch(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE feed_id IN ("
            "SELECT feed_id FROM events WHERE origin_region = $1 AND feed_id > $2 "
            "UNION SELECT feed_id FROM events WHERE handling_region = $1 AND feed_id > $2) "
            "ORDER BY feed_id LIMIT $3",
            region, after, limit,
        )  # fmt: skip
        return [event_from_row(r) for r in rows]

    async def find_by_partner_ref(self, region: str, refs: Sequence[str]) -> Mapping[str, str]:
        rows = await self._db.fetch(
            "SELECT partner_ref, case_id FROM cases WHERE handling_region = $1 "
            "AND partner_ref = ANY($2::text[])",
            region, list(refs),
        )  # fmt: skip
        return {r[0]: r[1] for r in rows}

    async def open_cases(self, region: str, limit: int) -> list[CaseRecord]:
        # As on SQLite: by the case's status, or for a multi-site case by its leg's.
        rows = await self._db.fetch(
            f"SELECT {CASE_COLUMNS} FROM cases WHERE handling_region = $1 AND "
            "(CASE WHEN legs = '[]' THEN status "
            f"ELSE (legs::jsonb -> leg ->> 'status') END) IN ({_TAKEN_SQL}) "
            "ORDER BY updated_at LIMIT $2",
            region, limit,
        )  # fmt: skip
        return [case_from_row(r) for r in rows]

    async def dead_jobs(self, limit: int) -> list[JobRecord]:
        rows = await self._db.fetch(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'dead' ORDER BY updated_at DESC "
            "LIMIT $1",
            limit,
        )
        return [job_from_row(r) for r in rows]

    async def queues(self, now: float) -> dict[str, dict[str, float]]:
        return queues_from_rows(await self._db.fetch(QUEUES_SQL), now)

    async def handles_attachment(self, region: str, sha256: str) -> bool:
        row = await self._db.fetchval(
            HANDLES_ATTACHMENT.format(region="$1", pattern="$2"),
            region, f'%"sha256":"{sha256}"%',
        )  # fmt: skip
        return row is not None

    async def paused_partners(self) -> dict[str, PauseRecord]:
        rows = await self._db.fetch(PAUSES_SELECT)
        return {r[0]: PauseRecord(r[0], r[1], r[2]) for r in rows}

    async def get_blob(self, sha256: str) -> bytes | None:
        content = await self._db.fetchval("SELECT content FROM blobs WHERE sha256 = $1", sha256)
        return bytes(content) if content is not None else None

    async def revision_number(self) -> int:
        number = await self._db.fetchval("SELECT max(revision) FROM contract_revisions")
        return int(number) if number is not None else 0

    async def get_revision(self, revision: int | None = None) -> RevisionRecord | None:
        sql = "SELECT revision, created_at, author, note, content FROM contract_revisions "
        if revision is None:
            row = await self._db.fetchrow(sql + "ORDER BY revision DESC LIMIT 1")
        else:
            row = await self._db.fetchrow(sql + "WHERE revision = $1", revision)
        return RevisionRecord(*row) if row else None

    async def revisions(self, limit: int) -> list[RevisionRecord]:
        rows = await self._db.fetch(
            "SELECT revision, created_at, author, note, '' FROM contract_revisions "
            "ORDER BY revision DESC LIMIT $1",
            limit,
        )
        return [RevisionRecord(*r) for r in rows]

    async def published_versions(self) -> dict[tuple[str, int], str]:
        rows = await self._db.fetch("SELECT item_code, version, content FROM contract_versions")
        return {(r[0], r[1]): r[2] for r in rows}

    async def publish_revision(
        self,
        content: str,
        versions: Mapping[tuple[str, int], str],
        author: str,
        note: str,
        now: float,
        if_revision: int | None = None,
    ) -> int:
        async with self._db.acquire() as con, con.transaction():
            # One writer at a time, in any process: the revision number and the audit chain.
            await con.execute(_LOCK, _WRITE)
            newest = await con.fetchval("SELECT coalesce(max(revision), 0) FROM contract_revisions")
            if if_revision is not None and newest != if_revision:
                raise RevisionMoved(f"revision {if_revision} is no longer the newest")
            rows = await con.fetch("SELECT item_code, version, content FROM contract_versions")
            known = {(r[0], r[1]): r[2] for r in rows}
            for key, body in versions.items():
                if key in known and known[key] != body:
                    raise VersionConflict(f"{key[0]} v{key[1]} was published with other content")
            revision = int(
                await con.fetchval("SELECT coalesce(max(revision), 0) + 1 FROM contract_revisions")
            )
            await con.execute(
                "INSERT INTO contract_revisions VALUES ($1, $2, $3, $4, $5)",
                revision, now, author, note, content,
            )  # fmt: skip
            await _many(
                con,
                "INSERT INTO contract_versions (item_code, version, revision, content) "
                "VALUES ($1, $2, $3, $4)",
                [(k[0], k[1], revision, v) for k, v in versions.items() if k not in known],
            )
            entry = AuditItem(now, "revision", None, str(revision), author, audit.digest(content))
            await self._append_audit(con, [entry])
        return revision

    async def audit_of_case(self, case_id: str) -> list[AuditRecord]:
        rows = await self._db.fetch(
            f"SELECT {AUDIT_COLUMNS} FROM audit WHERE case_id = $1 ORDER BY audit_id", case_id
        )
        return [audit_from_row(r) for r in rows]

    async def audit_page(self, after: int, limit: int) -> list[AuditRecord]:
        rows = await self._db.fetch(
            f"SELECT {AUDIT_COLUMNS} FROM audit WHERE audit_id > $1 ORDER BY audit_id LIMIT $2",
            after, limit,
        )  # fmt: skip
        return [audit_from_row(r) for r in rows]

    async def events_by_id(self, event_ids: Sequence[str]) -> dict[str, EventRecord]:
        rows = await self._db.fetch(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE event_id = ANY($1::text[])", list(event_ids)
        )
        return {r[1]: event_from_row(r) for r in rows}

    async def stats(self, now: float) -> Mapping[str, float]:
        async with self._db.acquire() as con:
            pending = await con.fetchrow(
                "SELECT count(*), min(created_at) FROM jobs WHERE state = 'pending'"
            )
            dead = await con.fetchval("SELECT count(*) FROM jobs WHERE state = 'dead'")
            waiting = await con.fetchrow(
                "SELECT count(*), coalesce(sum(head_seq - acked_seq), 0) FROM cursors "
                "WHERE head_seq > acked_seq"
            )
            overdue = await con.fetchval(overdue_sql("$1::float8"), now)
        return {
            "jobs_pending": float(pending[0]),
            "jobs_oldest_pending_seconds": now - pending[1] if pending[1] else 0.0,
            "jobs_dead": float(dead),
            "deliveries_waiting_cases": float(waiting[0]),
            "deliveries_waiting_events": float(waiting[1]),
            "cases_overdue": float(overdue),
        }


def _qualified(alias: str, columns: str) -> str:
    """``a, b`` → ``e.a, e.b``."""
    return ", ".join(f"{alias}.{c.strip()}" for c in columns.split(","))


async def _many(con: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """``executemany`` that skips an empty list (one pipelined round trip otherwise)."""
    if rows:
        await con.executemany(sql, rows)
