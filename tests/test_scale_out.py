"""Scale-out on PostgreSQL: several real ``tongban serve`` processes share one store.

SPEC §7: any number of gateway processes share the work; a job is claimed by lease
(``FOR UPDATE SKIP LOCKED``), a process that dies loses its leases when they expire, and nothing is
done twice in effect. Every test here runs two gateway processes on one PostgreSQL schema, with
real simulators for the partners on loopback.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import pytest

from gateway.signing import sign_headers
from gateway.simulators.rest import ProvinceSimulator, SimulatorSettings
from gateway.store.postgres import MIGRATIONS, PostgresStore
from tests.support import (
    HANDLER,
    HUB_SECRET,
    KEYS,
    OPERATOR_TOKEN,
    ORIGIN,
    Client,
    complete_in_order,
    free_port,
    medical_filing,
    pg_schema,
    raw_sql,
    simulator,
    submit_filings,
    verified_audit,
    wait_for,
    world,
)
from tests.test_crash import GatewayProcess, gateway_toml

pytestmark = pytest.mark.postgres
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}

# Short leases, so that a killed process's work is taken over within seconds.
FAST = "request_timeout_seconds = 2\nlease_seconds = 9"


@dataclass
class Cluster:
    a: GatewayProcess
    b: GatewayProcess
    sims: dict[str, ProvinceSimulator]
    hub: ProvinceSimulator
    to_a: Client  # the origin province, calling process a
    to_b: Client  # the same province, calling process b
    dsn: str  # the shared store


@asynccontextmanager
async def cluster(tmp_path: Path, *, one_port: bool = False) -> AsyncIterator[Cluster]:
    """Two gateway processes on one fresh schema; the simulators report to process b.
    ``one_port``: both listen on one port (``reuse_port``), and either answers any request."""
    async with pg_schema() as dsn:
        ports = {ORIGIN: free_port(), HANDLER: free_port()}
        hub_port, port_a = free_port(), free_port()
        port_b = port_a if one_port else free_port()
        settings = FAST + ("\nreuse_port = true" if one_port else "")
        sims = {r: simulator(r, port_b) for r in ports}
        hub = ProvinceSimulator(SimulatorSettings(region="100000", callback_secret=HUB_SECRET))
        procs = []
        for name, port in (("a", port_a), ("b", port_b)):
            (tmp_path / name).mkdir()
            toml = gateway_toml(
                tmp_path / name, port, ports, hub_port, store=dsn, settings=settings
            )
            procs.append(GatewayProcess(toml, port))
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        try:
            for r, sim in sims.items():
                await sim.start("127.0.0.1", ports[r])
            await hub.start("127.0.0.1", hub_port)
            # Both at once, as replicas start: one migrates the empty schema and publishes the
            # shipped contract list, the other waits for the migration and finds the revision.
            await asyncio.gather(*(proc.start(session) for proc in procs))
            yield Cluster(
                procs[0], procs[1], sims, hub,
                Client(session, f"http://127.0.0.1:{port_a}", ORIGIN),
                Client(session, f"http://127.0.0.1:{port_b}", ORIGIN), dsn,
            )  # fmt: skip
        finally:
            for proc in procs:
                proc.stop()
            await session.close()
            for sim in [*sims.values(), hub]:
                await sim.stop()


async def _count(dsn: str, sql: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


async def _leased_jobs(dsn: str) -> bool:
    return await _count(dsn, "SELECT count(*) FROM jobs WHERE lease_until > 0") > 0


async def _no_pending_jobs(dsn: str) -> bool:
    return await _count(dsn, "SELECT count(*) FROM jobs WHERE state = 'pending'") == 0


async def _dispatch_calls(client: Client) -> float:
    """The partner calls one process made, from its own ``/metrics``."""
    async with client.session.get(client.base + "/metrics") as r:
        text = await r.text()
    found = re.findall(r"^tongban_dispatch_calls_total\{[^}]*\} ([0-9.e+]+)$", text, re.M)
    return sum(float(v) for v in found)


async def test_two_processes_share_the_work_and_deliver_every_event_once_in_order(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path) as c:
        c.sims[HANDLER].settings.latency = 0.2  # calls overlap: both processes claim side by side
        ids = []
        for i in range(60):
            client = c.to_a if i % 2 else c.to_b
            status, case, _ = await client.call("POST", "/v1/cases", medical_filing(f"ZJ-S1-{i}"))
            assert status == 202, case
            ids.append(case["case_id"])
        await wait_for(lambda: complete_in_order(c.sims[ORIGIN], ids), within=90,
                       what="every case completed and delivered to the origin")  # fmt: skip
        await wait_for(lambda: complete_in_order(c.hub, ids), within=90, what="hub has all")
        assert c.sims[HANDLER].counters["submits"] == len(ids)
        assert c.sims[HANDLER].counters["submit_repeats"] == 0  # no case sent twice
        for receiver in (c.sims[ORIGIN], c.hub):
            assert receiver.out_of_order == 0 and receiver.seq_conflicts == 0
        # Either process answers for any case, whichever accepted it.
        for case_id in ids[:4]:
            assert (await c.to_a.case(case_id))["status"] == "completed"
            assert (await c.to_b.case(case_id))["status"] == "completed"
        calls = [await _dispatch_calls(c.to_a), await _dispatch_calls(c.to_b)]
        assert all(n > 0 for n in calls), f"one process did every partner call: {calls}"
        # Both processes wrote into one audit chain, one group after another: it holds. (A case
        # whose report overtook its dispatch answer has four events and one ignored answer.)
        verdict = await verified_audit(c.to_b)
        assert verdict["entries_checked"] >= 1 + 5 * len(ids)


async def test_processes_started_together_share_one_schema_and_one_contract_revision(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path) as c:
        assert await _count(c.dsn, "SELECT count(*) FROM contract_revisions") == 1
        applied = "SELECT count(*) FROM schema_version"  # each migration applied once
        assert await _count(c.dsn, applied) == len(MIGRATIONS)
        for client in (c.to_a, c.to_b):
            status, case, _ = await client.call(
                "POST", "/v1/cases", medical_filing(f"ZJ-S0-{client.base[-5:]}")
            )
            assert status == 202, case


async def test_two_processes_serve_one_port(tmp_path: Path) -> None:
    async with cluster(tmp_path, one_port=True) as c:
        logs = [p.config.parent / "gateway.log" for p in (c.a, c.b)]
        await wait_for(lambda: all("listening on" in log.read_text() for log in logs),
                       what="both processes listening on the shared port")  # fmt: skip
        assert c.a.proc is not None and c.a.proc.poll() is None
        assert c.b.proc is not None and c.b.proc.poll() is None
        ids = await submit_filings(c.to_a, "ZJ-S5", 20)
        await wait_for(lambda: complete_in_order(c.sims[ORIGIN], ids), within=90,
                       what="every case completed and delivered to the origin")  # fmt: skip


async def test_a_request_id_repeated_to_the_other_process_is_the_same_case(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path) as c:
        body = medical_filing("ZJ-S2-1")
        status, first, _ = await c.to_a.call("POST", "/v1/cases", body)
        assert status == 202, first
        status, again, _ = await c.to_b.call("POST", "/v1/cases", body)
        assert status == 200 and again["case_id"] == first["case_id"]
        changed = {**body, "payload": {**body["payload"], "insured_region": "510600"}}
        status, problem, _ = await c.to_b.call("POST", "/v1/cases", changed)
        assert status == 409, problem
        status, page, _ = await c.to_a.call("GET", "/v1/cases")
        assert [case["case_id"] for case in page["cases"]] == [first["case_id"]]


async def test_a_signed_request_replayed_to_the_other_process_is_refused(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path) as c:
        data = orjson.dumps(medical_filing("ZJ-S3-1"))
        headers = {"Content-Type": "application/json",
                   **sign_headers(*KEYS[ORIGIN], "POST", "/v1/cases", data)}  # fmt: skip
        session = c.to_a.session
        async with session.post(c.to_a.base + "/v1/cases", data=data, headers=headers) as r:
            assert r.status == 202
        async with session.post(c.to_b.base + "/v1/cases", data=data, headers=headers) as r:
            assert r.status == 401
            assert "already used" in (await r.json())["detail"]


async def test_a_killed_process_leaves_its_work_to_the_other(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        # Each submission takes a second to answer: a's calls are in flight when the kill lands.
        c.sims[HANDLER].settings.answer_delay = 1.0
        ids = []
        for i in range(20):
            status, case, _ = await c.to_a.call("POST", "/v1/cases", medical_filing(f"ZJ-S4-{i}"))
            assert status == 202, case
            ids.append(case["case_id"])
        await wait_for(lambda: _leased_jobs(c.dsn), what="process a calling the partner")
        c.a.kill()
        c.sims[HANDLER].settings.answer_delay = 0.0

        async def all_delivered() -> bool:
            # A case a answered for but died before writing the answer down goes from received
            # straight to the partner's next report, so histories may lack "dispatched".
            cases = [await c.to_b.case(case_id) for case_id in ids]
            return all(
                case["status"] == "completed"
                and [e["event_id"] for e in receiver.events.get(case["case_id"], [])]
                == [e["event_id"] for e in case["history"]]
                for case in cases
                for receiver in (c.sims[ORIGIN], c.hub)
            )

        await wait_for(all_delivered, within=90,
                       what="process b finished every case after a's leases expired")  # fmt: skip
        for receiver in (c.sims[ORIGIN], c.hub):
            assert receiver.out_of_order == 0 and receiver.seq_conflicts == 0
        await wait_for(lambda: _no_pending_jobs(c.dsn), within=60,
                       what="b closed every job a had leased, once the leases expired")  # fmt: skip


async def test_the_shared_nonce_memory_refuses_every_replay_once() -> None:
    async with pg_schema() as dsn:
        a, b = PostgresStore(dsn), PostgresStore(dsn, nonce_window=600)
        await a.open()
        await b.open()
        try:
            now = 1_800_000_000.0
            # Arriving together (one statement): exactly one of the two copies is new.
            got = await asyncio.gather(
                a.remember_nonce("zj-2026-01", "n" * 20, now),
                a.remember_nonce("zj-2026-01", "n" * 20, now),
                a.remember_nonce("sc-2026-01", "n" * 20, now),  # another key: its own nonce
            )
            assert sorted(got[:2]) == [False, True] and got[2] is True
            assert not await b.remember_nonce("zj-2026-01", "n" * 20, now + 1)  # other process
            # Past twice the signing window, the old sighting no longer counts.
            assert await b.remember_nonce("zj-2026-01", "n" * 20, now + 601)
        finally:
            await a.close()
            await b.close()


async def test_a_process_whose_store_is_unusable_is_not_ready_until_it_is_back(
    tmp_path: Path,
) -> None:
    async with pg_schema() as dsn, world(tmp_path, store=dsn) as w:

        async def ready_is(expected: int) -> bool:
            async with w.session.get(w.origin.base + "/readyz") as r:
                return r.status == expected

        assert await ready_is(200)
        await raw_sql(dsn, "ALTER TABLE schema_version RENAME TO schema_version_away")
        await wait_for(lambda: ready_is(503), what="not ready while the schema is gone")
        await raw_sql(dsn, "ALTER TABLE schema_version_away RENAME TO schema_version")
        await wait_for(lambda: ready_is(200), what="ready again")


async def test_a_pause_asked_of_one_process_holds_in_the_other(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        pause = f"/v1/ops/partners/{HANDLER}/pause"
        status, _, _ = await c.to_a.call("POST", pause, sign=False, headers=OPERATOR)
        assert status == 200
        status, held, _ = await c.to_b.call("POST", "/v1/cases", medical_filing("ZJ-HELD"))
        assert status == 202
        # Cases the other way (to the partner that is not paused), through both processes, until
        # each process has made a call: then each has claimed after the held case was queued.
        # (Either process may claim any case, woken by the other's commit: hence more than two.)
        westward = [Client(c.to_a.session, p.base, HANDLER) for p in (c.to_a, c.to_b)]
        sent: list[str] = []

        async def both_called() -> bool:
            if all([await _dispatch_calls(p) > 0 for p in (c.to_a, c.to_b)]):
                return True
            if len(sent) < 60:
                body = medical_filing(f"SC-GOES-{len(sent)}")
                body["payload"].update(insured_region="330100", treatment_region="510100")
                status, case, _ = await westward[len(sent) % 2].call("POST", "/v1/cases", body)
                assert status == 202, case
                sent.append(case["case_id"])
            return False

        await wait_for(both_called, within=60, what="a partner call made by each process")
        assert (await c.to_b.case(held["case_id"]))["status"] == "received"
        assert c.sims[HANDLER].counters["submits"] == 0
        _, health, _ = await c.to_b.call("GET", "/v1/ops/partners", sign=False, headers=OPERATOR)
        mine = next(p for p in health["partners"] if p["region"] == HANDLER)
        assert mine["paused"] is True and mine["paused_by"] == "ops"
        resume = f"/v1/ops/partners/{HANDLER}/resume"
        status, _, _ = await c.to_b.call("POST", resume, sign=False, headers=OPERATOR)
        assert status == 200

        async def completed() -> bool:
            return bool((await c.to_a.case(held["case_id"]))["status"] == "completed")

        await wait_for(completed, within=30, what="the held case completed after resume")
        await verified_audit(c.to_a)
