"""The API and the workers as two processes on one store (``tongban serve --role``).

The API process accepts and answers; the workers process dispatches, delivers and polls, and
serves only its health and metrics. Both are real processes; the partners are real simulators.
The tests that carry cases run on both backends (on PostgreSQL the workers learn of new work by
LISTEN/NOTIFY, on SQLite by the database's data version); refusing a second process for a part is
SQLite's alone, since PostgreSQL takes any number of processes of any role.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from gateway.simulators.rest import ProvinceSimulator, SimulatorSettings
from tests.support import (
    HANDLER,
    HUB_SECRET,
    OPERATOR_TOKEN,
    ORIGIN,
    ROOT,
    Client,
    complete_in_order,
    free_port,
    simulator,
    submit_filings,
    verified_audit,
    wait_for,
)
from tests.test_crash import GatewayProcess, gateway_toml

OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


@dataclass
class Split:
    api: GatewayProcess
    workers: GatewayProcess
    sims: dict[str, ProvinceSimulator]
    hub: ProvinceSimulator
    origin: Client  # the origin province, calling the API process
    config: Path


@asynccontextmanager
async def split(
    tmp_path: Path, store: str | None = None, settings: str = ""
) -> AsyncIterator[Split]:
    api_port, workers_port, hub_port = free_port(), free_port(), free_port()
    ports = {ORIGIN: free_port(), HANDLER: free_port()}
    sims = {r: simulator(r, api_port) for r in ports}
    hub = ProvinceSimulator(SimulatorSettings(region="100000", callback_secret=HUB_SECRET))
    config = gateway_toml(tmp_path, api_port, ports, hub_port, store=store, settings=settings)
    api = GatewayProcess(config, api_port, ("--role", "api"))
    workers_args = ("--role", "workers", "--listen", f"127.0.0.1:{workers_port}")
    workers = GatewayProcess(config, workers_port, workers_args)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    try:
        for r, sim in sims.items():
            await sim.start("127.0.0.1", ports[r])
        await hub.start("127.0.0.1", hub_port)
        for proc in (api, workers):
            await proc.start(session)
        origin = Client(session, f"http://127.0.0.1:{api_port}", ORIGIN)
        yield Split(api, workers, sims, hub, origin, config)
    finally:
        for proc in (api, workers):
            proc.stop()
        await session.close()
        for sim in [*sims.values(), hub]:
            await sim.stop()


async def _dispatch_calls(session: aiohttp.ClientSession, port: int) -> float:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    found = re.findall(r"^tongban_dispatch_calls_total\{[^}]*\} ([0-9.e+]+)$", text, re.M)
    return sum(float(v) for v in found)


async def test_the_api_accepts_and_the_workers_process_carries_every_case(
    tmp_path: Path, store_url: str
) -> None:
    async with split(tmp_path, store_url) as s:
        ids = await submit_filings(s.origin, "ZJ-R1", 30)
        await wait_for(lambda: complete_in_order(s.sims[ORIGIN], ids), within=60,
                       what="every case completed and delivered to the origin")  # fmt: skip
        await wait_for(lambda: complete_in_order(s.hub, ids), within=60, what="hub has all")
        assert s.sims[HANDLER].counters["submits"] == len(ids)
        assert s.sims[ORIGIN].out_of_order == 0 and s.hub.out_of_order == 0
        session = s.origin.session
        # The workers process made every partner call; the API process made none.
        assert await _dispatch_calls(session, s.workers.port) >= len(ids)
        assert await _dispatch_calls(session, s.api.port) == 0
        # The workers process serves its health and metrics only.
        async with session.post(f"http://127.0.0.1:{s.workers.port}/v1/cases", json={}) as r:
            assert r.status == 404
        async with session.get(f"http://127.0.0.1:{s.workers.port}/readyz") as r:
            assert r.status == 200
        # The API process has no calls of its own to report on a partner.
        _, health, _ = await s.origin.call("GET", "/v1/ops/partners", sign=False, headers=OPERATOR)
        mine = next(p for p in health["partners"] if p["region"] == HANDLER)
        assert mine["circuit"] is None and mine["queue_depth"] == 0
        await verified_audit(s.origin)


async def test_a_second_process_for_a_part_already_running_is_refused(tmp_path: Path) -> None:
    async with split(tmp_path) as s:

        def serve(role: str) -> subprocess.CompletedProcess[bytes]:
            argv = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(s.config),
                    "--role", role, "--listen", f"127.0.0.1:{free_port()}"]  # fmt: skip
            return subprocess.run(argv, cwd=ROOT, capture_output=True, timeout=60, check=False)

        for role in ("workers", "api", "all"):
            done = serve(role)
            assert done.returncode == 3, (role, done.stderr)
            assert b"another gateway process already runs the" in done.stderr, done.stderr
        # The refused processes changed nothing: the pair still carries cases.
        ids = await submit_filings(s.origin, "ZJ-R2", 3)
        await wait_for(lambda: complete_in_order(s.sims[ORIGIN], ids), within=60,
                       what="cases carried after the refusals")  # fmt: skip


async def test_a_killed_workers_process_is_replaced_and_every_case_completes(
    tmp_path: Path, store_url: str
) -> None:
    # On PostgreSQL the dead process's leases run out (lease_seconds); on SQLite the new workers
    # process, the only leaseholder there, releases them when it opens the store.
    short_leases = "request_timeout_seconds = 2\nlease_seconds = 9"
    async with split(tmp_path, store_url, short_leases) as s:
        s.sims[HANDLER].settings.latency = 0.3  # calls and reports in flight at the kill
        ids = await submit_filings(s.origin, "ZJ-R3", 20)

        async def some_sent() -> bool:
            return s.sims[HANDLER].counters["submits"] > 0

        await wait_for(some_sent, what="the workers process calling the partner")
        s.workers.kill()
        more = await submit_filings(s.origin, "ZJ-R3-after", 5)  # the API goes on accepting
        await s.workers.start(s.origin.session)
        ids += more
        await wait_for(lambda: complete_in_order(s.sims[ORIGIN], ids), within=90,
                       what="every case completed and delivered after the restart")  # fmt: skip
        await wait_for(lambda: complete_in_order(s.hub, ids), within=90, what="hub has all")
        assert s.sims[ORIGIN].out_of_order == 0 and s.hub.out_of_order == 0
        await verified_audit(s.origin)
