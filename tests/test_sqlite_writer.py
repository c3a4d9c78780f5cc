"""The SQLite writer process: it lives and dies with its gateway, and a lost one is replaced.

The writer is a process of its own (``gateway.store.sqlite_writer``) so that it never waits for
the event loop's GIL. These tests hold it to what that must not cost: a writer killed under a
running gateway loses nothing that was acknowledged and is started again for the next write,
and a gateway killed with SIGKILL leaves no writer behind holding the database.
"""

from __future__ import annotations

import io
import os
import pickle
import signal
from pathlib import Path

import aiohttp

from gateway.store import sqlite_writer
from gateway.store.base import Pause, StoreWriteFailed
from gateway.store.sqlite import SqliteStore
from gateway.store.sqlite_writes import MIGRATIONS
from tests.support import (
    HANDLER,
    ORIGIN,
    Client,
    free_port,
    medical_filing,
    wait_for,
    world,
)
from tests.test_crash import GatewayProcess, gateway_toml


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie not yet reaped by its new parent counts)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


async def _submitted(origin: Client, request_id: str, accepted: list[str]) -> bool:
    """Submit once: True on 202 (the case id kept); a store between writers answers 503."""
    status, case, headers = await origin.call("POST", "/v1/cases", medical_filing(request_id))
    if status == 202:
        accepted.append(case["case_id"])
        return True
    assert status == 503 and headers.get("Retry-After"), (status, case)
    return False


async def test_a_killed_writer_is_replaced_and_nothing_acknowledged_is_lost(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        store = w.gateway.store
        assert isinstance(store, SqliteStore)
        before = []
        for i in range(5):
            status, case, _ = await w.origin.call("POST", "/v1/cases", medical_filing(f"ZJ-W-{i}"))
            assert status == 202, case
            before.append(case["case_id"])
        first = store.writer_pid
        assert first is not None and first != os.getpid()
        os.kill(first, signal.SIGKILL)
        await wait_for(lambda: _gone(first), what="the writer process gone")

        after: list[str] = []
        for i in range(5):  # a client retries a 503, as its Retry-After says
            await wait_for(
                lambda i=i: _submitted(w.origin, f"ZJ-W-AFTER-{i}", after),
                what="the submission accepted by a new writer",
            )
        assert store.writer_pid not in (None, first)

        async def all_completed() -> bool:
            cases = [await w.origin.case(c) for c in before + after]
            return all(c["status"] == "completed" for c in cases)

        await wait_for(all_completed, within=60, what="every case, before and after, completed")


async def test_a_gateway_killed_with_sigkill_leaves_no_writer_behind(tmp_path: Path) -> None:
    port, hub_port = free_port(), free_port()
    ports = {ORIGIN: free_port(), HANDLER: free_port()}
    gw = GatewayProcess(gateway_toml(tmp_path, port, ports, hub_port), port)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        try:
            await gw.start(session)
            assert gw.proc is not None
            writers = _children(gw.proc.pid)
            assert len(writers) == 1, writers
            gw.kill()
            await wait_for(lambda: _gone(writers[0]), what="the writer gone with its gateway")
            # The database is free for the next gateway: it starts and serves.
            await gw.start(session)
        finally:
            gw.stop()


async def test_the_writer_stops_with_its_gateway(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        store = w.gateway.store
        assert isinstance(store, SqliteStore)
        pid = store.writer_pid
        assert pid is not None
    assert _gone(pid)


def test_the_writer_answers_each_request_in_order_and_an_error_as_its_exception(
    tmp_path: Path,
) -> None:
    """The child's side alone, over in-memory streams: one answer per request, in order."""
    group = [([Pause("510000", True, "ops")], 1_800_000_000.0)]
    messages: list[tuple[str, tuple[object, ...]]] = [
        ("transaction", (group,)),  # before open: refused, and the writer goes on
        ("open", (str(tmp_path / "w.db"), "FULL", False)),
        ("transaction", (group,)),
        ("close", ()),
    ]
    requests = io.BytesIO(b"".join(sqlite_writer._frame(m) for m in messages))
    answers = io.BytesIO()
    sqlite_writer.serve(requests, answers)
    answers.seek(0)
    got = []
    while head := answers.read(sqlite_writer.HEADER):
        got.append(pickle.loads(answers.read(int.from_bytes(head, "big"))))
    assert [ok for ok, _ in got] == [False, True, True, True]
    assert isinstance(got[0][1], StoreWriteFailed)
    assert got[1][1] == list(range(1, len(MIGRATIONS) + 1))  # every migration, on a new file
    assert len(got[2][1]) == 1  # one result for the one caller of the group
