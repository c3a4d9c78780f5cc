"""A province reached through a front-end database (前置库), for tests and the demo.

It plays the partner side of :mod:`adapters.frontdb_exchange`: it creates the exchange tables in a
database (SQLite file or PostgreSQL schema, by DSN), and a background task scans the upward table
(上行表) for rows it has not processed (its own flag ``CLBZ`` = 0), marks them processed, and
works each new case on a timer, writing one downward row (下行数据表, ``QZBZ`` = 0) per step:
2 受理 (accepted) → 3 审核 (in_progress) → 4 办结 (completed; ``BJJG`` 1 准予 / 0 不予; the
decision in ``JGNR``). Side paths: 5 不予受理 (rejected) and 11 补齐补正 (supplement required; the
case waits for an upward supplement row); an upward withdrawal row stops the case.

Scenarios, as in :mod:`gateway.simulators.rest`: a request id ending ``-REJECT``, ``-SUPPLEMENT``,
``-DENY`` or ``-APPROVE`` (or ``form._simulate``) picks the path; otherwise ``reject_rate`` and
``deny_rate`` roll for it. ``failure_rate`` makes a scan fail as the partner's processor would (the
rows stay unprocessed and the next scan takes them), ``duplicate_rate`` writes a downward row
twice, :meth:`FrontDbProvinceSimulator.set_down` stops all processing until it is brought back.

Nothing about an applicant is logged.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from adapters.frontdb_exchange import FrontDb, Tx, sqlite_path
from gateway.simulators.base import BackgroundTasks, set_up
from gateway.simulators.results import item_result
from gateway.supervisor import Supervisor

log = logging.getLogger(__name__)

# The partner's codes (they match FrontDbSettings' defaults).
SUBMIT, SUPPLEMENT_KIND, WITHDRAW = "01", "02", "03"
ACCEPTED, IN_PROGRESS, COMPLETED, REJECTED, SUPPLEMENT = "2", "3", "4", "5", "11"
APPROVED_VALUE, DENIED_VALUE = "1", "0"
SCAN_BATCH = 200
_BEIJING = timezone(timedelta(hours=8))


def partner_schema(
    dialect: str,
    up_table: str = "SJ_SQ_UP",
    down_table: str = "SJ_JG_DOWN",
    *,
    unique_key: bool = True,
) -> list[str]:
    """The DDL of the two exchange tables, as a partner would create them.

    ``unique_key=False`` leaves out the UNIQUE key on ``JHBH`` (a table for idempotency "check").
    """
    serial = "BIGSERIAL PRIMARY KEY" if dialect == "postgres" else "INTEGER PRIMARY KEY"
    up_name = up_table.rsplit(".", 1)[-1]
    down_name = down_table.rsplit(".", 1)[-1]
    unique = f",\n  CONSTRAINT UQ_{up_name}_JHBH UNIQUE (JHBH)" if unique_key else ""
    return [
        f"""CREATE TABLE IF NOT EXISTS {up_table} (
  ID {serial},
  JHBH VARCHAR(64) NOT NULL,
  BJBH VARCHAR(64) NOT NULL,
  SQLX VARCHAR(2) NOT NULL,
  SXBM VARCHAR(64),
  SLDQ VARCHAR(12),
  SQRXM VARCHAR(200),
  ZJLX VARCHAR(8),
  ZJHM VARCHAR(64),
  SQNR TEXT NOT NULL,
  CJSJ VARCHAR(19),
  CLBZ INTEGER NOT NULL DEFAULT 0,
  CLSJ VARCHAR(19){unique}
)""",
        f"""CREATE TABLE IF NOT EXISTS {down_table} (
  ID {serial},
  BJBH VARCHAR(64) NOT NULL,
  YWLSH VARCHAR(64),
  BLZT VARCHAR(4) NOT NULL,
  BJJG VARCHAR(8),
  JGNR TEXT,
  BLYJ VARCHAR(1000),
  BLSJ VARCHAR(19) NOT NULL,
  QZBZ INTEGER NOT NULL DEFAULT 0,
  QZSJ VARCHAR(19)
)""",
        f"CREATE INDEX IF NOT EXISTS IX_{up_name}_CLBZ ON {up_table} (CLBZ, ID)",
        f"CREATE INDEX IF NOT EXISTS IX_{down_name}_QZBZ ON {down_table} (QZBZ, ID)",
    ]


@dataclass
class FrontDbSimulatorSettings:
    """How the simulated province behaves; rates are probabilities in [0, 1]."""

    dsn: str
    region: str = "510000"
    up_table: str = "SJ_SQ_UP"
    down_table: str = "SJ_JG_DOWN"
    latency: float = 0.05
    scan_interval: float = 0.05
    failure_rate: float = 0.0
    reject_rate: float = 0.0
    deny_rate: float = 0.0
    duplicate_rate: float = 0.0
    create_schema: bool = True
    unique_key: bool = True
    timeout: float = 10.0


@dataclass
class _Case:
    case_id: str
    ref: str
    simulate: str | None
    item_code: str = ""
    supplement_requested: bool = False
    withdrawn: bool = False
    finished: bool = False
    supplemented: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class _ScanFailed(Exception):
    """The partner's processor failing a scan (``failure_rate``)."""


class FrontDbProvinceSimulator:
    """The partner side of a front-end database exchange, with supervised background tasks."""

    def __init__(
        self, settings: FrontDbSimulatorSettings, *, rng: random.Random | None = None
    ) -> None:
        self.settings = replace(settings)
        self._rng = rng or random.Random()
        self.db = FrontDb(settings.dsn, timeout=settings.timeout, max_size=2, create=True)
        self._cases: dict[str, _Case] = {}
        self._tasks = BackgroundTasks(log, "frontdb simulator")
        self._supervisor: Supervisor | None = None
        self._up = asyncio.Event()
        self._up.set()
        self._seq = 0
        self.counters: dict[str, int] = {
            "submits": 0,
            "submit_repeats": 0,
            "supplements": 0,
            "withdrawals": 0,
            "unknown_rows": 0,
            "scan_failures": 0,
            "rows_written": 0,
            "duplicates_written": 0,
        }

    # -- lifecycle ------------------------------------------------------------------------------

    async def create_schema(self) -> None:
        """Create both exchange tables (and, for SQLite, the file, in WAL mode) if missing."""
        s = self.settings
        if self.db.dialect == "sqlite":
            # Both sides use short connections on one file: WAL lets readers and a writer
            # overlap. It persists in the file, so it is set once, outside any transaction.
            path = sqlite_path(s.dsn)
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            async with aiosqlite.connect(path) as conn:
                await conn.execute("PRAGMA journal_mode=WAL")
        async with self.db.transaction() as tx:
            for statement in partner_schema(
                tx.dialect, s.up_table, s.down_table, unique_key=s.unique_key
            ):
                await tx.execute(statement)

    async def start(self) -> None:
        """Create the schema (unless told not to) and start scanning."""
        if self._supervisor is not None:
            raise RuntimeError("simulator already started")
        if self.settings.create_schema:
            await self.create_schema()
        self._supervisor = Supervisor(max_restart_delay=1.0)
        self._supervisor.start(f"frontdb-sim-{self.settings.region}", self._scan_loop)
        log.info("front-end database simulator %s started", self.settings.region)

    async def stop(self) -> None:
        """Stop scanning, cancel every case timer, close the connections."""
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            await supervisor.stop()
        await self._tasks.cancel_all()
        await self.db.close()

    def set_down(self, down: bool) -> None:
        """Down: the partner processes nothing (rows wait in the tables) until brought back."""
        set_up(self._up, not down)

    def partner_view(self, case_id: str) -> dict[str, Any] | None:
        case = self._cases.get(case_id)
        if case is None:
            return None
        return {"ref": case.ref, "withdrawn": case.withdrawn, "finished": case.finished}

    async def rows(self, table: str) -> list[dict[str, Any]]:
        """Every row of one of the exchange tables (``"up"`` or ``"down"``), by id: for tests."""
        name = self.settings.up_table if table == "up" else self.settings.down_table
        columns = _UP_COLUMNS if table == "up" else _DOWN_COLUMNS
        async with self.db.transaction() as tx:
            rows = await tx.fetch(f"SELECT {', '.join(columns)} FROM {name} ORDER BY ID")
        return [dict(zip(columns, row, strict=True)) for row in rows]

    # -- scanning -------------------------------------------------------------------------------

    async def _scan_loop(self) -> None:
        while True:
            await self._up.wait()
            try:
                rows = await self._take_upward()
            except _ScanFailed:
                self.counters["scan_failures"] += 1
                rows = []
            for row in rows:
                self._handle(row)
            if len(rows) < SCAN_BATCH:
                await asyncio.sleep(self.settings.scan_interval)

    async def _take_upward(self) -> list[dict[str, Any]]:
        s = self.settings
        async with asyncio.timeout(s.timeout), self.db.transaction() as tx:
            lock = " FOR UPDATE SKIP LOCKED" if tx.dialect == "postgres" else ""
            rows = await tx.fetch(
                f"SELECT ID, BJBH, SQLX, SQNR, SXBM FROM {s.up_table} WHERE CLBZ = 0 "
                f"ORDER BY ID LIMIT ?{lock}",
                SCAN_BATCH,
            )
            if not rows:
                return []
            if self._roll(s.failure_rate):
                raise _ScanFailed  # rolls the transaction back: the rows stay unprocessed
            marks = ", ".join("?" for _ in rows)
            await tx.execute(
                f"UPDATE {s.up_table} SET CLBZ = 1, CLSJ = ? WHERE ID IN ({marks})",
                _stamp(),
                *(r[0] for r in rows),
            )
        return [
            {
                "id": r[0],
                "case_id": r[1],
                "kind": str(r[2]).strip(),
                "sqnr": r[3],
                "item_code": str(r[4] or "").strip(),
            }
            for r in rows
        ]

    def _handle(self, row: dict[str, Any]) -> None:
        case_id, kind = str(row["case_id"]).strip(), row["kind"]
        case = self._cases.get(case_id)
        if kind == SUBMIT:
            if case is not None:
                self.counters["submit_repeats"] += 1  # a duplicate row: the gateway's fault
                return
            case = _Case(case_id, self._new_ref(), _scenario(row["sqnr"]), row["item_code"])
            self._cases[case_id] = case
            self.counters["submits"] += 1
            case.task = self._tasks.spawn(self._process(case), f"case-{case.ref}")
            log.info("frontdb simulator %s: case %s taken as %s", self.settings.region,
                     case_id, case.ref)  # fmt: skip
        elif kind == SUPPLEMENT_KIND:
            self.counters["supplements"] += 1
            if case is not None and case.supplement_requested:
                case.supplemented.set()
        elif kind == WITHDRAW:
            self.counters["withdrawals"] += 1
            if case is not None and not case.withdrawn:
                case.withdrawn = True
                if case.task is not None:
                    case.task.cancel()
        else:
            self.counters["unknown_rows"] += 1

    # -- one case -------------------------------------------------------------------------------

    async def _process(self, case: _Case) -> None:
        """Walk one case through the partner's statuses, one downward row per ``latency``."""
        s = self.settings
        await self._step()
        if case.simulate == "reject" or (case.simulate is None and self._roll(s.reject_rate)):
            await self._write(case, REJECTED, message="申请材料不符合受理条件，不予受理")
            case.finished = True
            return
        await self._write(case, ACCEPTED)
        if case.simulate == "supplement":
            await self._step()
            case.supplement_requested = True
            await self._write(case, SUPPLEMENT, message="请补充户口簿首页及本人页复印件")
            await case.supplemented.wait()
        await self._step()
        await self._write(case, IN_PROGRESS)
        await self._step()
        denied = case.simulate == "deny" or (case.simulate is None and self._roll(s.deny_rate))
        result = {
            "decision_no": f"川通办决字〔{datetime.now(_BEIJING).year}〕{case.ref[-6:]}号",
            "decided_at": _stamp(),
            "handling_region": s.region,
        }
        if not denied:  # what the item's contract promises the origin
            result |= item_result(case.item_code, ref=case.ref, region=s.region,
                                  now=datetime.now(_BEIJING))  # fmt: skip
        await self._write(
            case, COMPLETED, outcome=DENIED_VALUE if denied else APPROVED_VALUE, result=result
        )
        case.finished = True

    async def _step(self) -> None:
        await asyncio.sleep(max(0.0, self.settings.latency))
        await self._up.wait()

    async def _write(
        self,
        case: _Case,
        status: str,
        *,
        outcome: str | None = None,
        result: dict[str, Any] | None = None,
        message: str | None = None,
    ) -> None:
        """Write one downward row, retrying until the database takes it (nothing is dropped)."""
        copies = 2 if self._roll(self.settings.duplicate_rate) else 1
        values = (
            case.case_id, case.ref, status, outcome,
            orjson.dumps(result).decode() if result is not None else None, message, _stamp(),
        )  # fmt: skip
        delay = 0.05
        while True:
            try:
                async with asyncio.timeout(self.settings.timeout), self.db.transaction() as tx:
                    for _ in range(copies):
                        await self._insert_down(tx, values)
                break
            except Exception as exc:  # the database is busy or away: try again
                log.warning("frontdb simulator %s: writing a row failed (%s)",
                            self.settings.region, type(exc).__name__)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        self.counters["rows_written"] += 1
        self.counters["duplicates_written"] += copies - 1

    async def _insert_down(self, tx: Tx, values: tuple[Any, ...]) -> None:
        await tx.execute(
            f"INSERT INTO {self.settings.down_table} "
            "(BJBH, YWLSH, BLZT, BJJG, JGNR, BLYJ, BLSJ, QZBZ) VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
            *values,
        )

    def _new_ref(self) -> str:
        self._seq += 1
        day = datetime.now(_BEIJING).strftime("%Y%m%d")
        return f"QZK{self.settings.region[:2]}{day}{self._seq:06d}{secrets.randbelow(10_000):04d}"

    def _roll(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate


_UP_COLUMNS = ("ID", "JHBH", "BJBH", "SQLX", "SXBM", "SLDQ", "SQRXM", "ZJLX", "ZJHM", "SQNR",
               "CJSJ", "CLBZ", "CLSJ")  # fmt: skip
_DOWN_COLUMNS = ("ID", "BJBH", "YWLSH", "BLZT", "BJJG", "JGNR", "BLYJ", "BLSJ", "QZBZ", "QZSJ")


def _stamp() -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(time.time() + 8 * 3600))


def _scenario(sqnr: Any) -> str | None:
    """The scenario a submit asks for: ``form._simulate`` or the request id's suffix."""
    try:
        content = orjson.loads(sqnr) if isinstance(sqnr, str | bytes) else {}
    except orjson.JSONDecodeError:
        return None
    if not isinstance(content, dict):
        return None
    form = content.get("form")
    chosen = form.get("_simulate") if isinstance(form, dict) else None
    if not isinstance(chosen, str):
        chosen = str(content.get("requestId", "")).rsplit("-", 1)[-1].lower()
    return chosen if chosen in ("reject", "supplement", "deny", "approve") else None
