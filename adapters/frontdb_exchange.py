"""``frontdb_exchange``: a partner reached through a front-end database (前置库).

The partner owns a database next to its front-end processor. The gateway writes each request as one
row into the partner's *upward* exchange table (上行表, e.g. ``SJ_SQ_UP``) and reads results from
its *downward* table (下行数据表, e.g. ``SJ_JG_DOWN``), marking every row it reads as taken
(取走标志). The partner's own jobs pick up upward rows and write downward rows on their schedule.

Backends: ``sqlite:///relative.db`` / ``sqlite:////abs.db`` (aiosqlite, one connection per call,
``BEGIN IMMEDIATE`` transactions) or ``postgresql://user@host/db`` (asyncpg, an optional
dependency imported only when such a DSN is configured; a pool of at most ``pool_max_size``
connections, none kept open when idle). Every call runs under ``min(timeout, ctx.timeout)``.

Upward rows (one per submit, supplement and withdrawal; names are the defaults, all renameable
through ``up_columns``, the optional ones can be left out with ``None``, or ``false`` in TOML)::

    JHBH   交换编号  exchange key, UNIQUE: "<case_id>-<kind code>", for a supplement
                      "<case_id>-<kind code>-<16 hex of the content's SHA-256>"
    BJBH   办件编号  the gateway's case id (the partner's external reference)
    SQLX   申请类型  01 申报 (submit), 02 补正 (supplement), 03 撤件 (withdraw)
    SXBM   事项编码  item code                                     (optional)
    SLDQ   受理地区  origin region                                 (optional)
    SQRXM  申请人姓名 applicant's (or legal person's) name           (optional)
    ZJLX   证件类型  id type; ``legal_person_id_type`` for a legal person (optional)
    ZJHM   证件号码  id number, or the unified social credit code     (optional)
    SQNR   申请内容  JSON text (UTF-8, sorted keys), see below
    CJSJ   创建时间  ``yyyyMMddHHmmss`` in UTC+8 by default          (optional)

``SQNR`` holds ``{"caseId", "requestId", "itemCode", "itemVersion", "originRegion",
"handlingRegion", "applicant", "form", "attachments"}`` for a submit, ``{"caseId", "note",
"payload", "attachments"}`` (the origin's material) for a supplement and ``{"caseId", "reason"}``
for a withdrawal. Any other column of the partner's table (its own processing flag, say) must be
nullable or have a default.

Idempotency (``idempotency``):

- ``"on_conflict"`` (default): ``INSERT … ON CONFLICT (JHBH) DO NOTHING``. It requires a UNIQUE
  constraint (or unique index) on exactly the exchange-key column; without one the database refuses
  the statement and every request is dead-lettered with a reason that says so. A retry of the same
  request (same case, same kind, and for a supplement the same material) inserts nothing and is
  answered ``Accepted``; a second supplement round with new material gets a new key.
- ``"check"``: for a partner table that has no such key: look the row up and insert it only if it
  is missing, in one transaction that serialises writers (SQLite ``BEGIN IMMEDIATE``; PostgreSQL a
  transaction-scoped advisory lock on the key). The lookup is by the key column when configured,
  else by (case id, kind), plus the content for a supplement.

Downward rows, read by :meth:`FrontDbAdapter.poll` (``down_columns``)::

    ID     自增主键   ordering; any integer key that grows with insertion
    BJBH   办件编号   the gateway's case id
    YWLSH  业务流水号 the partner's own number → ``partner_ref``           (optional)
    BLZT   办理状态   status code, through ``status_codes``
    BJJG   办结结果   outcome for 办结, through ``approved_values`` / ``denied_values`` (optional)
    JGNR   结果内容   JSON object text → the update's ``data``                (optional)
    BLYJ   办理意见   kept as ``data.message`` for 不予受理 and 补正           (optional)
    QZBZ   取走标志   0 untaken, 1 taken, 2 taken but unreadable
    QZSJ   取走时间   set when taken, ``yyyyMMddHHmmss``                      (optional)

A poll reads up to ``batch`` untaken rows in ``ID`` order and marks them in the same transaction
(PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so two gateway processes never take the same row; SQLite:
``BEGIN IMMEDIATE``). A row that cannot be read (an unknown status code, a ``completed`` without a
known outcome, a result that is not JSON, no case id) is marked ``unreadable_flag`` and logged by
its id, so one bad row never blocks the rows behind it; an operator resets it to 0 after fixing it.

Failure classes: timeouts, connection errors, a locked or busy database, SQLSTATE classes 08, 40,
53, 55, 57, 58, XX and a read-only standby are *retryable*; constraint violations (class 23, other
than the duplicate the exchange key absorbs), bad data (22), schema or permission mismatches (42,
28), a partner's trigger refusing the row (P0) and anything unknown are *permanent*. Reasons carry
SQLSTATE codes and constraint names, never values or the DSN.

Inbound: many front-end databases notify after each batch. ``parse_inbound`` accepts such a notice,
a JSON object ``{"batch": "<name or number>", …}``, and returns no updates: the rows themselves are
read by the next poll. Anything else is refused with ``ValueError``.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import logging
import os
import re
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime, timedelta, timezone
from types import ModuleType
from typing import Annotated, Any, ClassVar, Literal, Protocol
from urllib.parse import quote

import aiosqlite
import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from adapters.body_mapping import submit_body
from adapters.sdk import (
    PARTNER_STATUSES,
    Accepted,
    AdapterContext,
    AdapterSettings,
    CanonicalCase,
    Outcome,
    Permanent,
    Retryable,
    StatusUpdate,
)

RequestKind = Literal["submit", "supplement", "withdraw"]

# One platform's table (1 收件, 2 受理, 3 审核, 4 办结, 11 补齐补正, 12 挂起; see DOMAIN.md), plus
# 5 不予受理, which that platform reports as a separate code.
DEFAULT_STATUS_CODES = {
    "1": "dispatched",
    "2": "accepted",
    "3": "in_progress",
    "4": "completed",
    "5": "rejected",
    "11": "supplement_required",
    "12": "in_progress",  # 挂起: no canonical status; ignored once the case is in progress
}
# What a handling partner may report (withdrawn and failed belong to the origin and the gateway).
TIME_FORMATS = {"yyyyMMddHHmmss": "%Y%m%d%H%M%S", "yyyy-MM-dd HH:mm:ss": "%Y-%m-%d %H:%M:%S"}

_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
Column = Annotated[str, Field(pattern=rf"^{_NAME}$")]
Table = Annotated[str, Field(pattern=rf"^{_NAME}(\.{_NAME})?$")]
Flag = Annotated[str, Field(pattern=r"^[A-Za-z0-9]{1,8}$")]
_CODE = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_BATCH = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class _Columns(BaseModel):
    """Our name → the partner's column. ``None`` leaves an optional column out; so does
    ``false``, since a TOML file has no null."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _false_leaves_out(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        out = dict(data)
        for name, value in data.items():
            field = cls.model_fields.get(name)
            if value is not False or field is None:
                continue
            if not _optional(field.annotation):
                raise ValueError(f"{name}: this column is needed and cannot be left out")
            out[name] = None
        return out


def _optional(annotation: Any) -> bool:
    return type(None) in getattr(annotation, "__args__", ())


class UpColumns(_Columns):
    """The upward table's columns (``SJ_SQ_UP``)."""

    exchange_key: Column | None = "JHBH"
    case_id: Column = "BJBH"
    request_kind: Column = "SQLX"
    item_code: Column | None = "SXBM"
    origin_region: Column | None = "SLDQ"
    applicant_name: Column | None = "SQRXM"
    id_type: Column | None = "ZJLX"
    id_number: Column | None = "ZJHM"
    payload: Column = "SQNR"
    created_at: Column | None = "CJSJ"


class DownColumns(_Columns):
    """The downward table's columns (``SJ_JG_DOWN``)."""

    id: Column = "ID"
    case_id: Column = "BJBH"
    partner_ref: Column | None = "YWLSH"
    status: Column = "BLZT"
    outcome: Column | None = "BJJG"
    result: Column | None = "JGNR"
    message: Column | None = "BLYJ"
    taken: Column = "QZBZ"
    taken_at: Column | None = "QZSJ"


class RequestKindCodes(BaseModel):
    model_config = ConfigDict(extra="forbid")

    submit: Flag = "01"
    supplement: Flag = "02"
    withdraw: Flag = "03"


class FrontDbSettings(AdapterSettings):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)  # the DSN is a secret

    kind: Literal["frontdb_exchange"] = "frontdb_exchange"
    dsn: SecretStr
    up_table: Table = "SJ_SQ_UP"
    down_table: Table = "SJ_JG_DOWN"
    up_columns: UpColumns = Field(default_factory=UpColumns)
    down_columns: DownColumns = Field(default_factory=DownColumns)
    request_kind_codes: RequestKindCodes = Field(default_factory=RequestKindCodes)
    status_codes: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_STATUS_CODES))
    approved_values: list[str] = Field(default_factory=lambda: ["1", "准予", "approved"])
    denied_values: list[str] = Field(default_factory=lambda: ["0", "2", "不予", "denied"])
    untaken_flag: Flag = "0"
    taken_flag: Flag = "1"
    unreadable_flag: Flag | None = "2"
    idempotency: Literal["on_conflict", "check"] = "on_conflict"
    legal_person_id_type: str = "49"
    time_format: Literal["yyyyMMddHHmmss", "yyyy-MM-dd HH:mm:ss"] = "yyyyMMddHHmmss"
    utc_offset_minutes: int = Field(480, ge=-720, le=840)
    quote_identifiers: bool = False
    poll_interval: float = Field(5.0, gt=0, le=3600)
    batch: int = Field(100, ge=1, le=1000)
    timeout: float = Field(10.0, gt=0, le=300)
    pool_max_size: int = Field(4, ge=1, le=32)

    @field_validator("dsn")
    @classmethod
    def _dsn(cls, value: SecretStr) -> SecretStr:
        dialect_of(value.get_secret_value())  # ValueError names the problem, not the value
        return value

    @field_validator("status_codes")
    @classmethod
    def _statuses(cls, value: dict[str, str]) -> dict[str, str]:
        bad = sorted({s for s in value.values() if s not in PARTNER_STATUSES})
        if bad:
            raise ValueError(f"unknown status name(s) {bad}; use {sorted(PARTNER_STATUSES)}")
        return {code.strip(): status for code, status in value.items()}

    @model_validator(mode="after")
    def _consistent(self) -> FrontDbSettings:
        if self.idempotency == "on_conflict" and self.up_columns.exchange_key is None:
            raise ValueError(
                'idempotency "on_conflict" needs up_columns.exchange_key (a column with a UNIQUE '
                'key); without one use idempotency = "check"'
            )
        flags = [self.untaken_flag, self.taken_flag, self.unreadable_flag]
        present = [f for f in flags if f is not None]
        if len(set(present)) != len(present):
            raise ValueError("untaken_flag, taken_flag and unreadable_flag must differ")
        if "completed" in self.status_codes.values() and self.down_columns.outcome is None:
            raise ValueError("a status code maps to completed, so down_columns.outcome is needed")
        codes = self.request_kind_codes
        if len({codes.submit, codes.supplement, codes.withdraw}) != 3:
            raise ValueError("request_kind_codes must differ")
        return self


# ---- connections ------------------------------------------------------------------------------


class StatementLogFilter(logging.Filter):
    """aiosqlite logs every statement *with its parameters* (and the exception text of a failed
    one) at DEBUG: applicant data in a log line at ``--log-level DEBUG``. This drops those
    records; the library's INFO and above pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


def quiet_aiosqlite() -> None:
    """Install :class:`StatementLogFilter` on the ``aiosqlite`` logger, once (at import)."""
    logger = logging.getLogger("aiosqlite")
    if not any(isinstance(f, StatementLogFilter) for f in logger.filters):
        logger.addFilter(StatementLogFilter())


quiet_aiosqlite()

Dialect = Literal["sqlite", "postgres"]


def dialect_of(dsn: str) -> Dialect:
    """Which backend a DSN names; ValueError (naming the problem, never the DSN) if none."""
    if dsn.startswith("sqlite://"):
        sqlite_path(dsn)
        return "sqlite"
    if dsn.startswith(("postgresql://", "postgres://")):
        try:
            import_asyncpg()
        except ImportError:
            raise ValueError(
                "a postgresql:// DSN needs the optional dependency asyncpg, which is not "
                "installed: pip install 'tongban-gateway[postgres]'"
            ) from None
        return "postgres"
    raise ValueError("must be sqlite:///relative.db, sqlite:////abs.db or postgresql://…")


def sqlite_path(dsn: str) -> str:
    """``sqlite:///var/x.db`` → ``var/x.db``; ``sqlite:////abs/x.db`` → ``/abs/x.db``."""
    rest = dsn[len("sqlite://") :]
    if not rest.startswith("/") or len(rest) < 2:
        raise ValueError("a SQLite DSN is sqlite:///relative.db or sqlite:////abs.db")
    return rest[1:]


def import_asyncpg() -> ModuleType:
    """asyncpg, imported on first need: it is an optional dependency (``[postgres]``)."""
    return importlib.import_module("asyncpg")


class Tx(Protocol):
    """One open transaction; SQL uses ``?`` placeholders on both backends."""

    dialect: Dialect

    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; return the number of rows it touched."""
        ...

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...


class _PgConnection(Protocol):  # the part of asyncpg.Connection used here (asyncpg has no stubs)
    async def execute(self, query: str, *args: Any) -> str: ...

    async def fetch(self, query: str, *args: Any) -> list[Any]: ...

    def transaction(self) -> AbstractAsyncContextManager[Any]: ...


class _PgPool(Protocol):  # the part of asyncpg.Pool used here
    def acquire(self, *, timeout: float | None = None) -> AbstractAsyncContextManager[Any]: ...

    async def close(self) -> None: ...

    def terminate(self) -> None: ...


class _SqliteTx:
    dialect: Dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        cursor = await self._conn.execute(sql, args)
        try:
            return int(cursor.rowcount)
        finally:
            await cursor.close()

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        cursor = await self._conn.execute(sql, args)
        try:
            return [tuple(row) for row in await cursor.fetchall()]
        finally:
            await cursor.close()


_PLACEHOLDER = re.compile(r"\?")


def numbered(sql: str) -> str:
    """``?`` placeholders → PostgreSQL's ``$1, $2, …`` (our SQL has no ``?`` in literals)."""
    counter = iter(range(1, 1 << 16))
    return _PLACEHOLDER.sub(lambda _m: f"${next(counter)}", sql)


class _PgTx:
    dialect: Dialect = "postgres"

    def __init__(self, conn: _PgConnection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        status = await self._conn.execute(numbered(sql), *args)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in await self._conn.fetch(numbered(sql), *args)]


class FrontDb:
    """Transactions against one front-end database.

    SQLite: a connection per transaction (``mode=rw``: a missing file is an error, not a new empty
    database, unless ``create``), busy-waiting for the writer lock a little less than
    ``timeout``. PostgreSQL: an asyncpg pool created on first use (min 0, so nothing stays open
    while idle), rebuilt if the event loop changes.
    """

    def __init__(
        self, dsn: str, *, timeout: float = 10.0, max_size: int = 4, create: bool = False
    ) -> None:
        self.dialect = dialect_of(dsn)
        self._dsn = dsn
        self.timeout = timeout
        self._max_size = max_size
        self._create = create
        self._pool: _PgPool | None = None
        self._pool_loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """A write transaction: committed if the block ends normally, else rolled back."""
        if self.dialect == "sqlite":
            async with self._sqlite() as conn:
                await conn.execute("BEGIN IMMEDIATE")
                # An exception leaves the transaction open; closing the connection rolls it back.
                yield _SqliteTx(conn)
                await conn.execute("COMMIT")
        else:
            pool = await self._get_pool()
            async with pool.acquire(timeout=self.timeout) as conn, conn.transaction():
                yield _PgTx(conn)

    def _sqlite(self) -> aiosqlite.Connection:
        path = sqlite_path(self._dsn)
        if not self._create and not os.path.isfile(path):
            # Checked here, not left to sqlite: aiosqlite's worker thread outlives a failed
            # connect and may report to an event loop that is already closed.
            raise sqlite3.OperationalError("unable to open database file")
        uri = f"file:{quote(path)}?mode={'rwc' if self._create else 'rw'}"
        busy = max(0.05, self.timeout * 0.8)  # a clean "database is locked" before our timeout
        return aiosqlite.connect(uri, uri=True, timeout=busy, isolation_level=None)

    async def _get_pool(self) -> _PgPool:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:
            if self._pool is not None and self._pool_loop is not loop:
                self._pool.terminate()  # built on another loop; its connections are unusable
                self._pool = None
            if self._pool is None:
                asyncpg = import_asyncpg()
                self._pool = await asyncpg.create_pool(
                    dsn=self._dsn,
                    min_size=0,
                    max_size=self._max_size,
                    timeout=self.timeout,  # connecting
                    command_timeout=self.timeout,
                    max_inactive_connection_lifetime=30.0,
                )
                self._pool_loop = loop
            return self._pool

    async def close(self) -> None:
        """Close the pool (PostgreSQL); SQLite holds no connection between calls."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if self._pool_loop is not asyncio.get_running_loop():
            pool.terminate()
            return
        try:
            async with asyncio.timeout(self.timeout):
                await pool.close()
        except TimeoutError:
            pool.terminate()


# ---- failure classification -------------------------------------------------------------------

# SQLSTATE classes worth another try: connection (08), rollback (40: serialization, deadlock),
# resources (53), object state (55: lock not available), operator intervention (57: shutdown,
# statement timeout), system and internal errors (58, XX); and a read-only standby (25006).
_RETRYABLE_CLASSES = frozenset({"08", "40", "53", "55", "57", "58", "XX"})
_RETRYABLE_STATES = frozenset({"25006"})
_NO_UNIQUE_KEY = (
    "the upward table has no UNIQUE key on the exchange-key column, which idempotency "
    '"on_conflict" needs (add one, or set idempotency = "check")'
)


def classify_error(exc: BaseException) -> Retryable | Permanent:
    """A database failure as an outcome. Pure; the reason names codes, never values or DSNs."""
    if isinstance(exc, TimeoutError):
        return Retryable("timeout")
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and len(sqlstate) == 5:
        return _classify_sqlstate(sqlstate, getattr(exc, "constraint_name", None))
    if isinstance(exc, sqlite3.Error):
        return _classify_sqlite(exc)
    if isinstance(exc, OSError):
        return Retryable(f"connection error: {type(exc).__name__}")
    if type(exc).__module__.split(".")[0] == "asyncpg":
        if isinstance(exc, ValueError):  # asyncpg's client-side DataError
            return Permanent("a value does not fit the type of the partner's column")
        return Retryable(f"database client error: {type(exc).__name__}")
    return Permanent(f"unexpected error: {type(exc).__name__}")


def _classify_sqlstate(sqlstate: str, constraint: object) -> Retryable | Permanent:
    klass = sqlstate[:2]
    if klass in _RETRYABLE_CLASSES or sqlstate in _RETRYABLE_STATES:
        return Retryable(f"database unavailable (SQLSTATE {sqlstate})")
    if sqlstate == "42P10":
        return Permanent(_NO_UNIQUE_KEY)
    if klass == "23":
        name = constraint if isinstance(constraint, str) and _CODE.fullmatch(constraint) else None
        suffix = f", constraint {name}" if name else ""
        return Permanent(f"the partner's table refused the row (SQLSTATE {sqlstate}{suffix})")
    if klass == "22":
        return Permanent(f"a value does not fit the partner's table (SQLSTATE {sqlstate})")
    if klass in ("42", "28", "3D", "3F"):
        return Permanent(f"schema, name or permission mismatch (SQLSTATE {sqlstate})")
    return Permanent(f"the database refused the statement (SQLSTATE {sqlstate})")


def _classify_sqlite(exc: sqlite3.Error) -> Retryable | Permanent:
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    if isinstance(exc, sqlite3.IntegrityError):
        return Permanent(f"the partner's table refused the row ({name})")
    message = str(exc)
    if isinstance(exc, sqlite3.OperationalError):
        if "ON CONFLICT clause does not match" in message:
            return Permanent(_NO_UNIQUE_KEY)
        if message.startswith(("no such table", "no such column")) or "has no column" in message:
            return Permanent(f"schema mismatch: a table or column is missing ({name})")
        return Retryable(f"database unavailable ({name})")  # locked, busy, cannot open, I/O
    if isinstance(exc, sqlite3.DataError | sqlite3.ProgrammingError | sqlite3.InterfaceError):
        return Permanent(f"the database refused the statement ({name})")
    return Retryable(f"database error ({name})")


# ---- the adapter ------------------------------------------------------------------------------


class FrontDbAdapter:
    kind: ClassVar[str] = "frontdb_exchange"
    Settings: ClassVar[type[AdapterSettings]] = FrontDbSettings

    def __init__(self, settings: AdapterSettings) -> None:
        assert isinstance(settings, FrontDbSettings)
        self._handed: list[Any] = []  # ids the last poll returned, to mark taken next time
        self.settings = s = settings
        self.poll_interval: float = s.poll_interval
        self.db = FrontDb(s.dsn.get_secret_value(), timeout=s.timeout, max_size=s.pool_max_size)
        self._tz = timezone(timedelta(minutes=s.utc_offset_minutes))
        self._time_format = TIME_FORMATS[s.time_format]
        self._up = self._q(s.up_table)
        self._down = self._q(s.down_table)
        up = s.up_columns.model_dump()
        self._up_fields = [(field, self._q(col)) for field, col in up.items() if col is not None]
        names = ", ".join(col for _, col in self._up_fields)
        marks = ", ".join("?" for _ in self._up_fields)
        self._insert_sql = f"INSERT INTO {self._up} ({names}) VALUES ({marks})"
        if s.idempotency == "on_conflict":
            assert s.up_columns.exchange_key is not None
            key = self._q(s.up_columns.exchange_key)
            self._insert_sql += f" ON CONFLICT ({key}) DO NOTHING"
        down = s.down_columns.model_dump(exclude={"taken", "taken_at"})
        self._down_fields = [field for field, col in down.items() if col is not None]
        self._down_cols = ", ".join(self._q(down[field]) for field in self._down_fields)

    def _q(self, name: str) -> str:
        """An identifier as SQL: validated by the settings; quoted only when configured (unquoted
        names match tables created without quotes, which PostgreSQL folds to lower case)."""
        if not self.settings.quote_identifiers:
            return name
        return ".".join(f'"{part}"' for part in name.split("."))

    def _stamp(self, now: float) -> str:
        return datetime.fromtimestamp(now, self._tz).strftime(self._time_format)

    def _timeout(self, ctx: AdapterContext) -> float:
        return min(self.settings.timeout, ctx.timeout)

    async def close(self) -> None:
        """Release the connection pool (the gateway should call this when it stops)."""
        await self.db.close()

    # -- outbound ---------------------------------------------------------------------------

    def content(
        self, case: CanonicalCase, kind: RequestKind, extra: Mapping[str, Any]
    ) -> dict[str, Any]:
        """What goes into the payload column (SQNR) for one request kind."""
        if kind == "submit":
            attachments = [dict(a) for a in case.attachments]
            return {**submit_body(case, attachments), "handlingRegion": case.handling_region}
        return {**extra, "caseId": case.case_id}

    def render(
        self, case: CanonicalCase, kind: RequestKind, extra: Mapping[str, Any], now: float
    ) -> dict[str, Any]:
        """The upward row as ``{our field: value}``. Pure, so tests can inspect it; raises
        TypeError or orjson.JSONEncodeError for content that is not JSON."""
        payload = orjson.dumps(self.content(case, kind, extra), option=orjson.OPT_SORT_KEYS)
        code = getattr(self.settings.request_kind_codes, kind)
        key = f"{case.case_id}-{code}"
        if kind == "supplement":  # each round of material is its own request
            key += "-" + hashlib.sha256(payload).hexdigest()[:16]
        applicant = case.applicant
        if applicant.get("kind") == "legal_person":
            id_type: Any = self.settings.legal_person_id_type
            id_number = applicant.get("credit_code")
        else:
            id_type, id_number = applicant.get("id_type"), applicant.get("id_number")
        values: dict[str, Any] = {
            "exchange_key": key,
            "case_id": case.case_id,
            "request_kind": code,
            "item_code": case.item_code,
            "origin_region": case.origin_region,
            "applicant_name": _text(applicant.get("name")),
            "id_type": _text(id_type),
            "id_number": _text(id_number),
            "payload": payload.decode(),
            "created_at": self._stamp(now),
        }
        return {field: values[field] for field, _ in self._up_fields}

    async def submit(self, case: CanonicalCase, ctx: AdapterContext) -> Outcome:
        return await self._send(case, "submit", {}, ctx)

    async def supplement(
        self, case: CanonicalCase, material: Mapping[str, Any], ctx: AdapterContext
    ) -> Outcome:
        return await self._send(case, "supplement", material, ctx)

    async def withdraw(self, case: CanonicalCase, reason: str, ctx: AdapterContext) -> Outcome:
        return await self._send(case, "withdraw", {"reason": reason}, ctx)

    async def _send(
        self, case: CanonicalCase, kind: RequestKind, extra: Mapping[str, Any], ctx: AdapterContext
    ) -> Outcome:
        try:
            row = self.render(case, kind, extra, ctx.clock.now())
        except (TypeError, orjson.JSONEncodeError):
            return Permanent(f"the {kind} cannot be written as JSON")
        try:
            async with asyncio.timeout(self._timeout(ctx)):
                inserted = await self._insert(row)
        except Exception as exc:
            outcome = classify_error(exc)
            ctx.logger.warning(
                "%s of case %s into %s failed: %s",
                kind, case.case_id, self.settings.up_table, outcome.reason,
            )  # fmt: skip
            return outcome
        if not inserted:
            ctx.logger.info(
                "%s of case %s already in %s: not written again",
                kind, case.case_id, self.settings.up_table,
            )  # fmt: skip
        return Accepted()

    async def _insert(self, row: Mapping[str, Any]) -> bool:
        """Write one upward row unless it is there already; True if it was written now."""
        values = list(row.values())
        async with self.db.transaction() as tx:
            if self.settings.idempotency == "on_conflict":
                return await tx.execute(self._insert_sql, *values) > 0
            sql, args = self._lookup(row)
            if tx.dialect == "postgres":
                key = f"{self.settings.up_table}:{row['case_id']}:{row['request_kind']}"
                await tx.fetch("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", key)
            if await tx.fetch(sql, *args):
                return False
            await tx.execute(self._insert_sql, *values)
            return True

    def _lookup(self, row: Mapping[str, Any]) -> tuple[str, list[Any]]:
        """The query that finds an earlier copy of ``row`` (idempotency "check")."""
        c = self.settings.up_columns
        if c.exchange_key is not None:
            return (
                f"SELECT 1 FROM {self._up} WHERE {self._q(c.exchange_key)} = ? LIMIT 1",
                [row["exchange_key"]],
            )
        where = f"{self._q(c.case_id)} = ? AND {self._q(c.request_kind)} = ?"
        args = [row["case_id"], row["request_kind"]]
        if row["request_kind"] == self.settings.request_kind_codes.supplement:
            where += f" AND {self._q(c.payload)} = ?"
            args.append(row["payload"])
        return f"SELECT 1 FROM {self._up} WHERE {where} LIMIT 1", args

    # -- polling ----------------------------------------------------------------------------

    async def poll(
        self, open_cases: Sequence[CanonicalCase], ctx: AdapterContext
    ) -> list[StatusUpdate]:
        """Read up to ``batch`` untaken downward rows, oldest first; never raises for the
        database's behaviour (a failure is logged and the next poll tries again).

        Rows are marked taken one poll later, in the transaction of the next poll: the gateway
        polls again only once it has stored what the last poll returned, so a crash in between
        leaves the rows untaken and they are read again (repeats are ignored by the state
        machine), never lost. Unreadable rows are marked at once: they carry nothing to store.
        """
        try:
            async with asyncio.timeout(self._timeout(ctx)):
                return await self._take(ctx)
        except Exception as exc:
            outcome = classify_error(exc)
            ctx.logger.warning("poll of %s failed: %s", self.settings.down_table, outcome.reason)
            return []

    async def _take(self, ctx: AdapterContext) -> list[StatusUpdate]:
        s, c = self.settings, self.settings.down_columns
        select = (
            f"SELECT {self._down_cols} FROM {self._down} "
            f"WHERE {self._q(c.taken)} = '{s.untaken_flag}' ORDER BY {self._q(c.id)} LIMIT ?"
        )
        updates: list[StatusUpdate] = []
        stamp = self._stamp(ctx.clock.now())
        async with self.db.transaction() as tx:
            await self._mark(tx, self._handed, s.taken_flag, stamp)  # stored by now
            if tx.dialect == "postgres":
                select += " FOR UPDATE SKIP LOCKED"
            rows = await tx.fetch(select, s.batch)
            taken, unreadable = [], []
            for raw in sorted(rows, key=lambda r: r[0]):
                row = dict(zip(self._down_fields, raw, strict=True))
                try:
                    updates.append(self.read_row(row))
                    taken.append(row["id"])
                except ValueError as exc:
                    unreadable.append(row["id"])
                    ctx.logger.warning(
                        "row %s of %s is unreadable: %s", row["id"], s.down_table, exc
                    )
            await self._mark(tx, unreadable, s.unreadable_flag or s.taken_flag, stamp)
        self._handed = taken  # the transaction committed: mark these on the next poll
        if rows:
            ctx.logger.debug("read %d row(s) from %s", len(rows), s.down_table)
        return updates

    async def _mark(self, tx: Tx, ids: list[Any], flag: str, stamp: str) -> None:
        if not ids:
            return
        c = self.settings.down_columns
        sets = f"{self._q(c.taken)} = '{flag}'"
        args: list[Any] = []
        if c.taken_at is not None:
            sets += f", {self._q(c.taken_at)} = ?"
            args.append(stamp)
        marks = ", ".join("?" for _ in ids)
        await tx.execute(
            f"UPDATE {self._down} SET {sets} WHERE {self._q(c.id)} IN ({marks})", *args, *ids
        )

    def read_row(self, row: Mapping[str, Any]) -> StatusUpdate:
        """One downward row (``{our field: value}``) as an update. Pure; a ValueError names the
        bad column and shows a partner's code only if it looks like a code."""
        s, c = self.settings, self.settings.down_columns
        code = _text(row.get("status")) or ""
        status = s.status_codes.get(code)
        if status is None:
            raise ValueError(f"{c.status}: unknown status code {_printable(code)}")
        case_id = _text(row.get("case_id"))
        if not case_id:
            raise ValueError(f"{c.case_id}: no case id")
        outcome = None
        if status == "completed":
            given = _text(row.get("outcome")) or ""
            if given in s.approved_values:
                outcome = "approved"
            elif given in s.denied_values:
                outcome = "denied"
            else:
                raise ValueError(f"{c.outcome}: {_printable(given)} is neither approved nor denied")
        data = _json_object(row.get("result"), c.result)
        message = _text(row.get("message"))
        if status in ("rejected", "supplement_required") and message:
            data = {**data, "message": message}
        return StatusUpdate(
            status=status,
            case_id=case_id,
            partner_ref=_text(row.get("partner_ref")) or None,
            outcome=outcome,
            data=data,
            partner_event_id=f"{s.down_table}:{row['id']}",
        )

    # -- inbound ----------------------------------------------------------------------------

    def parse_inbound(self, body: bytes, headers: Mapping[str, str]) -> list[StatusUpdate]:
        """A front-end processor's "batch written" notice: acknowledged, no updates (the next
        poll reads the rows). ValueError for anything that is not such a notice."""
        try:
            notice = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ValueError("body is not JSON") from None
        if not isinstance(notice, dict) or "batch" not in notice:
            raise ValueError('expected a notice {"batch": "…"}')
        batch = notice["batch"]
        if isinstance(batch, bool) or not isinstance(batch, str | int):
            raise ValueError("batch must be a string or an integer")
        if isinstance(batch, str) and not _BATCH.fullmatch(batch):
            raise ValueError("batch must be 1-64 characters of [A-Za-z0-9_.:-]")
        return []


def _text(value: Any) -> str | None:
    """A column value as trimmed text (CHAR columns come padded; codes may be integers)."""
    if value is None:
        return None
    return str(value).strip()


def _json_object(value: Any, column: str | None) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return dict(value)
    try:
        parsed = orjson.loads(value.encode() if isinstance(value, str) else value)
    except (orjson.JSONDecodeError, TypeError):
        raise ValueError(f"{column}: not JSON") from None
    if parsed is None:
        return {}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def _printable(code: str) -> str:
    """A partner's code, only if it looks like one: free text may quote the applicant."""
    return repr(code) if _CODE.fullmatch(code) else "<not a code>"
