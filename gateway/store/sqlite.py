"""The embedded store: SQLite through aiosqlite, in WAL mode.

One writer connection and one reader connection. Writes from many callers are grouped into one
transaction and one commit (group commit), so ``synchronous=FULL`` — every acknowledged write
survives a power cut — costs one fsync per group rather than per case. A group is applied with
statements batched by table; if it fails as a whole, each caller's operations are retried alone,
so one bad caller cannot fail another.

The writer is a process of its own owning a plain sqlite3 connection
(:mod:`gateway.store.sqlite_writer`; what it runs is :mod:`gateway.store.sqlite_writes`): a whole
group (read, apply, write, commit) is one call into it, so a write transaction never stays open
across turns of a busy event loop, and the writer never waits for the loop's GIL. Reads go
through aiosqlite.

At most two processes share one SQLite database, on one host: one serving the API and one running
the workers (dispatcher, deliverer, poller), or one doing both (``tongban serve --role``). Each part
is held by an exclusive lock file beside the database, so a second process taking a part already
taken is refused at open. The process running the workers is then the only one that holds leases:
it holds them in its memory (:mod:`gateway.store.leases`), so a claim of jobs or deliveries is a
read, not a write and a commit, and a dead process's leases die with it. (Stores of releases that
kept leases in the tables are cleared of them when the workers part opens.)
The two processes' writers take turns through a third lock file, so neither spins in SQLite's
busy handler while the other writes. (A gateway process and its writer process count as one
here: the writer is the gateway's hand, and dies with it.)
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import aiosqlite

from gateway.store.base import (
    Ack,
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
    RevisionRecord,
    Submit,
    Transition,
)
from gateway.store.batch import OpLists
from gateway.store.group import GroupCommit
from gateway.store.leases import Leases
from gateway.store.rows import (
    AUDIT_COLUMNS,
    CASE_COLUMNS,
    EVENT_COLUMNS,
    HANDLES_ATTACHMENT,
    JOB_COLUMNS,
    NOT_PAUSED,
    PAUSES_SELECT,
    QUEUES_SQL,
    audit_from_row,
    case_from_row,
    event_from_row,
    job_from_row,
    overdue_sql,
    queues_from_rows,
)
from gateway.store.sqlite_writer import WriterProcess
from gateway.store.sqlite_writes import MIGRATIONS as MIGRATIONS  # for readers of the schema
from gateway.store.sqlite_writes import chunks, expand

log = logging.getLogger(__name__)
Part = Literal["api", "workers"]
BOTH_PARTS: frozenset[Part] = frozenset({"api", "workers"})
_TAKEN_SQL = "'dispatched', 'accepted', 'in_progress', 'supplement_required'"


# A write group crosses to the writer process as one pickle: attachments (up to max_body_bytes
# each) would otherwise make a group of many uploads a copy of gigabytes.
GROUP_BYTES = 64 * 1024 * 1024


def _blob_bytes(item: tuple[Sequence[Op], float]) -> int:
    """The attachment bytes a caller's operations carry."""
    return sum(
        len(content)
        for op in item[0]
        if isinstance(op, Submit | Transition)
        for _, _, content in op.blobs
    )


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
        self.parts = parts
        self.ready = False
        self._locks: dict[str, int] = {}  # lock file name → open descriptor
        self._r: aiosqlite.Connection | None = None
        self._writer = WriterProcess(path, synchronous, clear_leases="workers" in parts)
        self._job_leases = Leases()  # job ids
        self._cursor_leases = Leases()  # (recipient, case id)
        self._group: GroupCommit[tuple[Sequence[Op], float], list[OpResult]] = GroupCommit(
            self._in_transaction, max_group=max_group, weigh=_blob_bytes, max_weight=GROUP_BYTES
        )

    # ---- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        self._take_parts()
        try:
            applied = await self._writer.start()
        except BaseException:
            await self._writer.stop()
            self._release_locks()
            raise
        for number in applied:
            log.info("applied store migration %d", number)
        self._r = await aiosqlite.connect(self.path, isolation_level=None)
        await self._r.execute("PRAGMA busy_timeout=10000")
        await self._r.execute("PRAGMA query_only=ON")
        self._group.start("sqlite-group-commit")
        self.ready = True

    @property
    def writer_pid(self) -> int | None:
        """The process id of this store's writer (:mod:`gateway.store.sqlite_writer`)."""
        return self._writer.pid

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
        await self._writer.stop()
        self._release_locks()

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
        return expand(lists, await self._writer.call("transaction", lists))

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
            # Only as many as asked for are leased: a cursor leased and not returned would wait
            # out its whole lease unsent (the read fetches more rows, to step over held ones).
            free = (r for r in rows if leases.take((r[0], r[1]), now, now + lease, since))
            taken = list(islice(free, limit))
        finally:
            leases.end(since)
        return await self._claimed_events(taken, max_events)

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
        for chunk in chunks(list(keys), 500):
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
        for chunk in chunks(list(refs), 500):
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
        revision: int = await self._writer.call(
            "publish", content, dict(versions), author, note, now, if_revision
        )
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
