"""The ``frontdb_exchange`` adapter and its simulator, on SQLite and on PostgreSQL.

Every behaviour test runs on both backends: SQLite in ``tmp_path``, and PostgreSQL in a schema of
its own (``t_<random>``, reached through ``options=-csearch_path=…`` in the DSN, dropped at the
end). Without a reachable server the PostgreSQL variants are skipped, except under ``CI=true``,
where they fail. The server is ``TONGBAN_TEST_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/test``); the schema helpers live in ``tests/support.py``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sqlite3
import sys
import tomllib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import orjson
import pytest
from pydantic import ValidationError

from adapters.conformance import ConformanceSuite
from adapters.frontdb_exchange import (
    DEFAULT_STATUS_CODES,
    FrontDb,
    FrontDbAdapter,
    Tx,
    classify_error,
    import_asyncpg,
)
from adapters.sdk import (
    Accepted,
    AdapterContext,
    CanonicalCase,
    Permanent,
    PollingAdapter,
    Retryable,
    discover,
)
from gateway.app import Gateway
from gateway.clock import ManualClock
from gateway.identifiers import id_check_char
from gateway.simulators.frontdb import (
    FrontDbProvinceSimulator,
    FrontDbSimulatorSettings,
    partner_schema,
)
from gateway.simulators.rest import ProvinceSimulator, SimulatorSettings
from tests.support import (
    HANDLER,
    HUB_SECRET,
    ORIGIN,
    Client,
    free_port,
    gateway_config,
    medical_filing,
    pg_schema,
    pg_unavailable,
    simulator,
    wait_for,
)

ID_NUMBER = "33010619800101003" + id_check_char("33010619800101003")
NAME = "欧阳娜娜"
PHONE = "13912345678"
NOW = 1_800_000_000.0  # 2027-01-15 16:00:00 in Beijing


def case(n: int = 1, **overrides: Any) -> CanonicalCase:
    fields: dict[str, Any] = {
        "case_id": f"C01FRONTDBTEST{n:012d}",
        "request_id": f"ZJ-20270115-{n:06d}",
        "item_code": "KSTB-YB-001",
        "contract_version": 1,
        "origin_region": ORIGIN,
        "handling_region": HANDLER,
        "applicant": {"id_type": "111", "id_number": ID_NUMBER, "name": NAME, "phone": PHONE},
        "payload": {"insured_region": "510100", "start_date": "2026-12-01"},
    }
    fields.update(overrides)
    return CanonicalCase(**fields)


# ---- backends ---------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def dsn(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/frontdb.db"
        return
    async with pg_schema() as pg:
        yield pg


@pytest.fixture
async def ctx() -> AsyncIterator[AdapterContext]:
    async with aiohttp.ClientSession() as session:
        yield AdapterContext(
            HANDLER, session, ManualClock(NOW), logging.getLogger("tongban.adapter.test"), 5.0
        )


Factory = Callable[..., FrontDbAdapter]


@pytest.fixture
async def make(dsn: str) -> AsyncIterator[Factory]:
    """Builds adapters on the test DSN (settings overridable) and closes them at the end."""
    built: list[FrontDbAdapter] = []

    def build(**settings: Any) -> FrontDbAdapter:
        raw = {"kind": "frontdb_exchange", "dsn": dsn, "poll_interval": 0.05, "timeout": 5}
        adapter = FrontDbAdapter(FrontDbAdapter.Settings.model_validate({**raw, **settings}))
        built.append(adapter)
        return adapter

    yield build
    for adapter in built:
        await adapter.close()


@pytest.fixture
async def partner(dsn: str) -> AsyncIterator[FrontDbProvinceSimulator]:
    """The partner's schema, created; the simulator is not started (tests drive the rows)."""
    sim = FrontDbProvinceSimulator(FrontDbSimulatorSettings(dsn=dsn))
    await sim.create_schema()
    yield sim
    await sim.stop()


@asynccontextmanager
async def transaction(dsn: str) -> AsyncIterator[Tx]:
    """A transaction of the test's own (another gateway process, the partner, an operator)."""
    db = FrontDb(dsn, timeout=5)
    try:
        async with db.transaction() as tx:
            yield tx
    finally:
        await db.close()


async def sql(dsn: str, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    async with transaction(dsn) as tx:
        if statement.lstrip().upper().startswith("SELECT"):
            return await tx.fetch(statement, *args)
        await tx.execute(statement, *args)
        return []


async def down_row(dsn: str, case_id: str, status: str, **cols: Any) -> None:
    values = {"BJBH": case_id, "BLZT": status, "BLSJ": "20270115160000", **cols}
    names = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    await sql(dsn, f"INSERT INTO SJ_JG_DOWN ({names}) VALUES ({marks})", *values.values())


# ---- submit, supplement, withdraw ---------------------------------------------------------------


async def test_submit_writes_one_mapped_row(
    make: Factory, partner: FrontDbProvinceSimulator, ctx: AdapterContext
) -> None:
    outcome = await make().submit(case(), ctx)
    assert outcome == Accepted()
    [row] = await partner.rows("up")
    assert row["JHBH"] == f"{case().case_id}-01"
    assert row["BJBH"] == case().case_id
    assert row["SQLX"] == "01"
    assert (row["SXBM"], row["SLDQ"]) == ("KSTB-YB-001", ORIGIN)
    assert (row["SQRXM"], row["ZJLX"], row["ZJHM"]) == (NAME, "111", ID_NUMBER)
    assert row["CJSJ"] == "20270115160000"
    assert row["CLBZ"] == 0
    content = orjson.loads(row["SQNR"])
    assert content["requestId"] == case().request_id
    assert content["form"] == {"insured_region": "510100", "start_date": "2026-12-01"}
    assert content["applicant"]["name"] == NAME


async def test_optional_columns_are_left_out_with_false_in_toml(
    make: Factory, partner: FrontDbProvinceSimulator, ctx: AdapterContext
) -> None:
    # A TOML file has no null: an optional column the partner's table lacks is set to false.
    settings = tomllib.loads(
        "[up_columns]\ncreated_at = false\nid_number = false\n[down_columns]\ntaken_at = false\n"
    )
    adapter = make(**settings)
    assert (adapter.settings.up_columns.created_at, adapter.settings.down_columns.taken_at) == (
        None,
        None,
    )
    assert await adapter.submit(case(), ctx) == Accepted()
    [row] = await partner.rows("up")
    assert row["BJBH"] == case().case_id
    assert (row["CJSJ"], row["ZJHM"]) == (None, None)  # nothing written there
    with pytest.raises(ValidationError, match="case_id: this column is needed"):
        make(**tomllib.loads("[up_columns]\ncase_id = false\n"))


async def test_a_retry_inserts_no_second_row(
    make: Factory, partner: FrontDbProvinceSimulator, ctx: AdapterContext
) -> None:
    first, second = make(), make()  # the second plays another gateway process
    c = case()
    material = {"note": "已补充", "payload": {"residence_proof": "居住证"}, "attachments": []}
    assert await first.submit(c, ctx) == Accepted()
    assert isinstance(ctx.clock, ManualClock)
    ctx.clock.advance(60)  # a later retry: a different CJSJ must not make it a new row
    assert await first.submit(c, ctx) == Accepted()
    assert await second.submit(c, ctx) == Accepted()
    # Concurrent retries too.
    assert all(isinstance(o, Accepted) for o in await asyncio.gather(
        *(a.submit(c, ctx) for a in (first, second) for _ in range(3))
    ))  # fmt: skip
    assert await first.supplement(c, material, ctx) == Accepted()
    assert await second.supplement(c, material, ctx) == Accepted()
    assert await first.withdraw(c, "本人申请撤回", ctx) == Accepted()
    assert await first.withdraw(c, "本人申请撤回", ctx) == Accepted()
    rows = await partner.rows("up")
    assert [r["SQLX"] for r in rows] == ["01", "02", "03"]
    # A second round of supplement material is a new request, not a retry.
    assert await first.supplement(c, {**material, "note": "再次补充"}, ctx) == Accepted()
    rows = await partner.rows("up")
    assert [r["SQLX"] for r in rows] == ["01", "02", "03", "02"]
    assert len({r["JHBH"] for r in rows}) == 4


async def test_check_mode_is_idempotent_on_a_table_without_unique_key(
    dsn: str, make: Factory, ctx: AdapterContext
) -> None:
    sim = FrontDbProvinceSimulator(FrontDbSimulatorSettings(dsn=dsn, unique_key=False))
    await sim.create_schema()
    # A leaner partner table: no exchange key at all, fewer applicant columns.
    await sql(
        dsn,
        """CREATE TABLE SJ_SQ_UP2 (ID INTEGER, BJBH VARCHAR(64) NOT NULL,
        SQLX VARCHAR(2) NOT NULL, SXBM VARCHAR(64), SQNR TEXT NOT NULL, CJSJ VARCHAR(19))""",
    )
    try:
        # The default needs a unique key and says so, permanently.
        outcome = await make().submit(case(), ctx)
        assert isinstance(outcome, Permanent)
        assert "UNIQUE" in outcome.reason and "check" in outcome.reason
        assert await sim.rows("up") == []
        by_key = make(idempotency="check")
        lean = {f: None for f in ("exchange_key", "origin_region", "applicant_name", "id_type",
                                  "id_number")}  # fmt: skip
        no_key = make(idempotency="check", up_table="SJ_SQ_UP2", up_columns=lean)
        c = case()
        material = {"note": "补充", "payload": {}, "attachments": []}
        for adapter in (by_key, no_key):
            results = await asyncio.gather(
                *(adapter.submit(c, ctx) for _ in range(4)),
                *(adapter.supplement(c, material, ctx) for _ in range(3)),
                adapter.supplement(c, {**material, "note": "第二轮"}, ctx),
            )
            assert all(isinstance(o, Accepted) for o in results), results
        assert sorted(r["SQLX"] for r in await sim.rows("up")) == ["01", "02", "02"]
        lean_rows = await sql(dsn, "SELECT SQLX, SXBM FROM SJ_SQ_UP2 ORDER BY SQLX")
        assert [tuple(r) for r in lean_rows] == [
            ("01", "KSTB-YB-001"), ("02", "KSTB-YB-001"), ("02", "KSTB-YB-001")
        ]  # fmt: skip
    finally:
        await sim.stop()


async def test_another_constraint_violation_is_permanent_and_quotes_no_one(
    dsn: str,
    make: Factory,
    partner: FrontDbProvinceSimulator,
    ctx: AdapterContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The partner allows one open request per person: a unique key that is not the exchange key.
    await sql(dsn, "CREATE UNIQUE INDEX UQ_SJ_SQ_UP_ZJHM ON SJ_SQ_UP (ZJHM)")
    adapter = make()
    assert await adapter.submit(case(1), ctx) == Accepted()
    with caplog.at_level(logging.DEBUG):
        outcome = await adapter.submit(case(2), ctx)
    assert isinstance(outcome, Permanent), outcome
    assert "refused the row" in outcome.reason
    for text in [outcome.reason, *(r.getMessage() for r in caplog.records)]:
        assert ID_NUMBER not in text and NAME not in text and PHONE not in text
        assert dsn not in text
    assert len(await partner.rows("up")) == 1


async def test_a_locked_table_is_retryable_and_the_retry_succeeds(
    dsn: str, make: Factory, partner: FrontDbProvinceSimulator, ctx: AdapterContext
) -> None:
    adapter = make(timeout=0.5)
    async with transaction(dsn) as tx:
        if tx.dialect == "postgres":
            await tx.execute("LOCK TABLE SJ_SQ_UP IN ACCESS EXCLUSIVE MODE")
        # (SQLite: this transaction's BEGIN IMMEDIATE already holds the writer lock.)
        outcome = await adapter.submit(case(), ctx)
        assert isinstance(outcome, Retryable), outcome
        assert await adapter.poll([], ctx) == []  # a locked database: logged, no raise
    assert await adapter.submit(case(), ctx) == Accepted()
    assert len(await partner.rows("up")) == 1


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_an_unreachable_database_is_retryable(
    backend: str, tmp_path: Path, ctx: AdapterContext
) -> None:
    if backend == "postgres":
        try:
            import_asyncpg()
        except ImportError:
            pg_unavailable("asyncpg is not installed")
        unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/test"  # nothing listens
    else:
        unreachable = f"sqlite:///{tmp_path}/no-such-dir/frontdb.db"  # never created
    adapter = FrontDbAdapter(
        FrontDbAdapter.Settings.model_validate(
            {"kind": "frontdb_exchange", "dsn": unreachable, "timeout": 3}
        )
    )
    try:
        outcome = await adapter.submit(case(), ctx)
        assert isinstance(outcome, Retryable), outcome
        if backend == "postgres":
            assert outcome.reason == "connection error: ConnectionRefusedError"
        assert await adapter.poll([case()], ctx) == []  # logged, never raised
        assert isinstance(await adapter.withdraw(case(), "", ctx), Retryable)
    finally:
        await adapter.close()
    assert not (tmp_path / "no-such-dir").exists()


# ---- polling ----------------------------------------------------------------------------------


async def test_poll_maps_rows_and_marks_them_taken(
    dsn: str, make: Factory, partner: FrontDbProvinceSimulator, ctx: AdapterContext
) -> None:
    a, b, c, d = (case(n).case_id for n in range(1, 5))
    result = orjson.dumps({"decision_no": "川通办决字〔2027〕000001号"}).decode()
    await down_row(dsn, a, "2", YWLSH="QZK51-0001")
    await down_row(dsn, a, "3", YWLSH="QZK51-0001")
    await down_row(dsn, a, "4", YWLSH="QZK51-0001", BJJG="1", JGNR=result)
    await down_row(dsn, b, "5", BLYJ="材料不全，不予受理")
    await down_row(dsn, c, "99")  # a code nobody mapped
    await down_row(dsn, c, "4", BJJG="X")  # an outcome nobody mapped
    await down_row(dsn, d, "11", BLYJ="请补充户口簿")
    await down_row(dsn, d, "4", BJJG="0", JGNR="not json")
    adapter = make()
    assert isinstance(adapter, PollingAdapter)
    assert adapter.poll_interval == 0.05
    updates = await adapter.poll([], ctx)
    assert [(u.case_id, u.status, u.outcome) for u in updates] == [
        (a, "accepted", None),
        (a, "in_progress", None),
        (a, "completed", "approved"),
        (b, "rejected", None),
        (d, "supplement_required", None),
    ]
    assert updates[0].partner_ref == "QZK51-0001"
    assert updates[2].data == {"decision_no": "川通办决字〔2027〕000001号"}
    assert updates[3].data == {"message": "材料不全，不予受理"}
    assert updates[4].data == {"message": "请补充户口簿"}
    assert updates[0].partner_event_id == "SJ_JG_DOWN:1"
    rows = await partner.rows("down")
    # Unreadable rows are marked at once; the rest only on the next poll, once stored.
    assert [int(r["QZBZ"]) for r in rows] == [0, 0, 0, 0, 2, 2, 0, 2]
    assert await adapter.poll([], ctx) == []  # nothing is read twice
    rows = await partner.rows("down")
    assert [int(r["QZBZ"]) for r in rows] == [1, 1, 1, 1, 2, 2, 1, 2]
    assert all(r["QZSJ"] == "20270115160000" for r in rows)


async def test_rows_of_a_poll_whose_updates_were_not_stored_are_read_again(
    dsn: str, make: Factory, partner: FrontDbProvinceSimulator, ctx: AdapterContext
) -> None:
    await down_row(dsn, case(1).case_id, "4", BJJG="1")
    first = make()
    assert [u.status for u in await first.poll([], ctx)] == ["completed"]
    # The gateway died before storing them: a new process (a new adapter) reads them again.
    again = make()
    assert [u.status for u in await again.poll([], ctx)] == ["completed"]
    assert await again.poll([], ctx) == []
    assert [int(r["QZBZ"]) for r in await partner.rows("down")] == [1]


async def test_poll_takes_at_most_batch_rows_oldest_first(
    dsn: str, make: Factory, partner: FrontDbProvinceSimulator, ctx: AdapterContext
) -> None:
    for n in range(5):
        await down_row(dsn, case(n).case_id, "2")
    adapter = make(batch=2)
    seen = [[u.case_id for u in await adapter.poll([], ctx)] for _ in range(4)]
    assert seen == [
        [case(0).case_id, case(1).case_id],
        [case(2).case_id, case(3).case_id],
        [case(4).case_id],
        [],
    ]


async def test_concurrent_pollers_read_every_row_and_every_row_ends_taken(
    dsn: str, make: Factory, partner: FrontDbProvinceSimulator, ctx: AdapterContext
) -> None:
    total = 300
    values = ", ".join(f"('C{n:05d}', '2', '20270115160000')" for n in range(total))
    await sql(dsn, f"INSERT INTO SJ_JG_DOWN (BJBH, BLZT, BLSJ) VALUES {values}")

    async def drain(adapter: FrontDbAdapter) -> list[str]:
        taken: list[str] = []
        while updates := await adapter.poll([], ctx):
            taken.extend(str(u.partner_event_id) for u in updates)
            await asyncio.sleep(0)
        return taken

    gateways = [make(batch=7), make(batch=7), make(batch=11)]
    results = await asyncio.gather(*(drain(g) for g in gateways))
    every = [event for result in results for event in result]
    # At least once: a row read by one poller may be read by another before it is marked taken
    # (repeats are ignored by the gateway's state machine); none is missed.
    assert len(set(every)) == total
    rows = await partner.rows("down")
    assert all(int(r["QZBZ"]) == 1 for r in rows)


async def test_a_poller_never_waits_for_rows_another_gateway_holds(
    dsn: str, make: Factory, partner: FrontDbProvinceSimulator, ctx: AdapterContext
) -> None:
    for n in range(6):
        await down_row(dsn, case(n).case_id, "2")
    adapter = make(timeout=1)
    async with transaction(dsn) as other:
        # Another gateway process is in the middle of taking the three oldest rows.
        held = await other.fetch(
            "SELECT ID FROM SJ_JG_DOWN ORDER BY ID LIMIT 3"
            + (" FOR UPDATE" if other.dialect == "postgres" else "")
        )
        assert len(held) == 3
        started = asyncio.get_running_loop().time()
        updates = await adapter.poll([], ctx)
        waited = asyncio.get_running_loop().time() - started
        if other.dialect == "postgres":
            # SKIP LOCKED: the rows the other process holds are skipped, not waited for.
            assert [u.case_id for u in updates] == [case(n).case_id for n in range(3, 6)]
            assert waited < 0.5
        else:
            # SQLite has one writer at a time: the poll gives up (logged) and tries next time.
            assert updates == []
    rest = await adapter.poll([], ctx)
    expected = range(3) if partner.db.dialect == "postgres" else range(6)
    assert [u.case_id for u in rest] == [case(n).case_id for n in expected]


# ---- inbound notices and settings -------------------------------------------------------------


def _adapter(**settings: Any) -> FrontDbAdapter:
    raw = {"kind": "frontdb_exchange", "dsn": "sqlite:///frontdb.db", **settings}
    return FrontDbAdapter(FrontDbAdapter.Settings.model_validate(raw))


def test_a_batch_notice_is_acknowledged_without_updates() -> None:
    adapter = _adapter()
    assert adapter.parse_inbound(b'{"batch": "20270115-0003"}', {}) == []
    assert adapter.parse_inbound(b'{"batch": 17, "rows": 40}', {}) == []
    for garbage in (b"not json", b"[]", b"{}", b'{"batch": true}', b'{"batch": "a b"}',
                    b'{"batch": {"x": 1}}', b'{"reports": []}'):  # fmt: skip
        with pytest.raises(ValueError):
            adapter.parse_inbound(garbage, {})


def test_settings_are_checked_and_never_echo_the_dsn() -> None:
    secret_dsn = "mysql://gateway:s3cret-pw@10.0.0.1/qzk"
    with pytest.raises(ValidationError) as err:
        _adapter(dsn=secret_dsn)
    assert "s3cret-pw" not in str(err.value) and "postgresql://" in str(err.value)
    with pytest.raises(ValidationError, match="completd"):
        _adapter(status_codes={"4": "completd"})
    with pytest.raises(ValidationError, match="check"):
        _adapter(up_columns={"exchange_key": None})
    with pytest.raises(ValidationError):
        _adapter(up_table="SJ_SQ_UP; DROP TABLE x")
    with pytest.raises(ValidationError):
        _adapter(down_columns={"taken": "QZBZ = QZBZ"})
    with pytest.raises(ValidationError, match="must differ"):
        _adapter(taken_flag="0")
    assert _adapter(dsn="postgresql://u:p@h/db").db.dialect == "postgres"


def test_a_postgres_dsn_without_asyncpg_is_a_clear_settings_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # import asyncpg → ImportError
    with pytest.raises(ValidationError, match=r"asyncpg.*tongban-gateway\[postgres\]"):
        _adapter(dsn="postgresql://gateway@127.0.0.1/qzk")
    assert _adapter().db.dialect == "sqlite"  # SQLite needs no asyncpg


def test_failures_are_classified() -> None:
    assert isinstance(classify_error(TimeoutError()), Retryable)
    assert isinstance(classify_error(ConnectionResetError()), Retryable)
    assert isinstance(classify_error(sqlite3.OperationalError("database is locked")), Retryable)
    assert isinstance(classify_error(sqlite3.IntegrityError("NOT NULL failed")), Permanent)
    assert isinstance(classify_error(sqlite3.OperationalError("no such table: X")), Permanent)

    class Pg(Exception):
        def __init__(self, sqlstate: str) -> None:
            self.sqlstate = sqlstate

    for state in ("08006", "40001", "40P01", "53300", "55P03", "57P01", "57014", "25006"):
        assert isinstance(classify_error(Pg(state)), Retryable), state
    for state in ("23502", "23514", "22001", "42P01", "42501", "28P01", "P0001"):
        assert isinstance(classify_error(Pg(state)), Permanent), state
    assert "UNIQUE" in classify_error(Pg("42P10")).reason


# ---- the simulator and a real gateway ---------------------------------------------------------


async def test_the_simulator_stops_a_withdrawn_case(
    dsn: str, make: Factory, ctx: AdapterContext
) -> None:
    sim = FrontDbProvinceSimulator(
        FrontDbSimulatorSettings(dsn=dsn, latency=0.3, scan_interval=0.02)
    )
    await sim.start()
    try:
        adapter = make()
        assert await adapter.submit(case(), ctx) == Accepted()
        await wait_for(lambda: sim.partner_view(case().case_id) is not None, what="case taken")
        assert await adapter.withdraw(case(), "本人申请撤回", ctx) == Accepted()
        await wait_for(
            lambda: (sim.partner_view(case().case_id) or {}).get("withdrawn") is True,
            what="withdrawal taken",
        )
        await asyncio.sleep(0.8)  # long enough for the case to have finished, had it run on
        statuses = [u.status for u in await adapter.poll([], ctx)]
        assert "completed" not in statuses
        assert sim.counters["withdrawals"] == 1 and sim.counters["submit_repeats"] == 0
    finally:
        await sim.stop()


async def test_a_gateway_completes_cases_through_the_front_end_database(
    dsn: str, tmp_path: Path
) -> None:
    partner = FrontDbProvinceSimulator(
        FrontDbSimulatorSettings(
            dsn=dsn, region=HANDLER, latency=0.02, scan_interval=0.02,
            failure_rate=0.5, duplicate_rate=0.5,
        ),
        rng=random.Random(7),
    )  # fmt: skip
    await partner.start()
    origin_sim = simulator(ORIGIN, 0)
    hub = ProvinceSimulator(SimulatorSettings(region="100000", callback_secret=HUB_SECRET))
    origin_port = await origin_sim.start("127.0.0.1", 0)
    hub_port = await hub.start("127.0.0.1", 0)
    config = gateway_config(
        f"sqlite:///{tmp_path}/gw.db", 0, {ORIGIN: origin_port, HANDLER: origin_port}, hub_port
    )
    [handler] = [p for p in config.partners if p.region == HANDLER]
    handler.adapter = {"kind": "frontdb_exchange", "dsn": dsn, "poll_interval": 0.05}
    gw = Gateway(config, poll_interval=0.05,
                 adapter_kinds={**discover(), "frontdb_exchange": FrontDbAdapter})  # fmt: skip
    port = await gw.start()
    try:
        async with aiohttp.ClientSession() as session:
            client = Client(session, f"http://127.0.0.1:{port}", ORIGIN)
            status, plain, _ = await client.call("POST", "/v1/cases", medical_filing("ZJ-FDB-1"))
            assert status == 202, plain
            status, supp, _ = await client.call(
                "POST", "/v1/cases", medical_filing("ZJ-FDB-2-SUPPLEMENT")
            )
            assert status == 202, supp

            async def reached(case_id: str, wanted: str) -> bool:
                return bool((await client.case(case_id))["status"] == wanted)

            await wait_for(lambda: reached(plain["case_id"], "completed"), what="case completed")
            done = await client.case(plain["case_id"])
            assert [e["status"] for e in done["history"]] == [
                "received", "dispatched", "accepted", "in_progress", "completed"
            ]  # fmt: skip
            assert done["outcome"] == "approved"
            assert done["result"]["decision_no"].startswith("川通办决字")
            assert done["partner_ref"].startswith("QZK51")

            await wait_for(
                lambda: reached(supp["case_id"], "supplement_required"), what="supplement asked"
            )
            status, body, _ = await client.call(
                "POST", f"/v1/cases/{supp['case_id']}/supplements",
                {"note": "已补充户口簿", "payload": {"residence_proof": "居住证 330100-2026-001"}},
            )  # fmt: skip
            assert status == 200, body
            await wait_for(lambda: reached(supp["case_id"], "completed"), what="supplied case done")

        async def all_taken() -> bool:
            return all(int(r["QZBZ"]) == 1 for r in await partner.rows("down"))

        await wait_for(all_taken, what="every downward row taken")
        up = await partner.rows("up")
        assert sorted(r["SQLX"] for r in up) == ["01", "01", "02"]  # no duplicate submit rows
        assert partner.counters["submit_repeats"] == 0
    finally:
        await gw.stop()
        adapter = gw.adapters[HANDLER]
        assert isinstance(adapter, FrontDbAdapter)
        await adapter.close()
        await origin_sim.stop()
        await hub.stop()
        await partner.stop()


# ---- the conformance kit ----------------------------------------------------------------------


class FrontDbDouble:
    """A partner's front-end database for the conformance kit: a SQLite file whose upward table
    logs every insert it is offered (a BEFORE INSERT trigger, which fires even for a row that
    ON CONFLICT then drops), so the kit sees a deduplicated retry arrive."""

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / "qzk.db"
        self.aside = workdir / "qzk.db.aside"
        self._lock: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, isolation_level=None)

    async def start(self) -> None:
        db = self._db()
        try:
            for statement in partner_schema("sqlite"):
                db.execute(statement)
            db.execute("CREATE TABLE OFFERED (BJBH, SQLX, SXBM, SQRXM, ZJHM, SQNR)")
            db.execute(
                "CREATE TRIGGER LOG_OFFERED BEFORE INSERT ON SJ_SQ_UP BEGIN INSERT INTO OFFERED "
                "VALUES (NEW.BJBH, NEW.SQLX, NEW.SXBM, NEW.SQRXM, NEW.ZJHM, NEW.SQNR); END"
            )
        finally:
            db.close()

    async def stop(self) -> None:
        self._restore()

    def adapter_settings(self) -> dict[str, Any]:
        return {"dsn": f"sqlite:///{self.path}", "timeout": 0.2, "poll_interval": 0.05}

    def _restore(self) -> None:
        if self._lock is not None:
            self._lock.execute("ROLLBACK")
            self._lock.close()
            self._lock = None
        if self.aside.exists():
            os.replace(self.aside, self.path)
        db = self._db()
        try:
            db.execute("DROP TRIGGER IF EXISTS REFUSE")
        finally:
            db.close()

    def behave(self, mode: str) -> None:
        self._restore()
        if mode == "ok":
            return
        if mode == "timeout":  # another writer holds the database longer than our timeout
            self._lock = self._db()
            self._lock.execute("BEGIN IMMEDIATE")
        elif mode == "refuse":  # the partner's own check refuses the row
            db = self._db()
            try:
                db.execute(
                    "CREATE TRIGGER REFUSE BEFORE INSERT ON SJ_SQ_UP "
                    "BEGIN SELECT RAISE(ABORT, '证件号码校验不通过'); END"
                )
            finally:
                db.close()
        elif mode == "down":  # the share with the database file is gone
            os.replace(self.path, self.aside)
        elif mode == "garbage":  # something that is not the partner's database at all
            os.replace(self.path, self.aside)
            self.path.write_bytes(b"<html><body>502 Bad Gateway</body></html>" * 4)
        else:
            raise NotImplementedError(mode)  # no HTTP: 5xx, 429 and busy bodies do not exist

    def received(self) -> list[Any]:
        db = self._db()
        try:
            rows = db.execute("SELECT BJBH, SQLX, SXBM, SQRXM, ZJHM, SQNR FROM OFFERED").fetchall()
        finally:
            db.close()
        names = ("BJBH", "SQLX", "SXBM", "SQRXM", "ZJHM", "SQNR")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def native_report(
        self,
        case_id: str,
        status: str,
        outcome: str | None,
        result: Mapping[str, Any],
        partner_ref: str,
    ) -> bytes:
        raise NotImplementedError("results come as rows, not messages")

    def settle(
        self,
        case_id: str,
        partner_ref: str | None,
        status: str,
        outcome: str | None,
        result: Mapping[str, Any],
    ) -> None:
        code = {v: k for k, v in reversed(list(DEFAULT_STATUS_CODES.items()))}[status]
        verdict = {"approved": "1", "denied": "0"}.get(outcome or "")
        db = self._db()
        try:
            db.execute(
                "INSERT INTO SJ_JG_DOWN (BJBH, YWLSH, BLZT, BJJG, JGNR, BLSJ) "
                "VALUES (?, ?, ?, ?, ?, '20261121100000')",
                (case_id, partner_ref, code, verdict, orjson.dumps(dict(result)).decode()),
            )
        finally:
            db.close()


class TestFrontDbConformance(ConformanceSuite):
    adapter_class = FrontDbAdapter
    double_factory = FrontDbDouble
    native_fields: ClassVar[Mapping[str, str]] = {
        "case_id": "BJBH", "item_code": "SXBM", "id_number": "ZJHM", "name": "SQRXM"
    }  # fmt: skip
    inbound_statuses: ClassVar[tuple[str, ...]] = ()  # inbound is a batch notice, no statuses
