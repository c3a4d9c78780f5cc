"""Crash safety with real processes: a gateway killed with SIGKILL loses nothing it answered.

The gateway runs as a real ``tongban serve`` process; the partners are real simulators on
loopback. After the kill, a new process on the same store finishes every case and delivers
every event, in order.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from gateway.simulators.rest import ProvinceSimulator, SimulatorSettings
from tests.support import (
    CALLBACK,
    CONTRACTS,
    HANDLER,
    HUB_SECRET,
    KEYS,
    OPERATOR_TOKEN,
    ORIGIN,
    ROOT,
    Client,
    free_port,
    medical_filing,
    pension_transfer,
    simulator,
    verified_audit,
    wait_for,
)


def gateway_toml(
    tmp: Path,
    port: int,
    ports: dict[str, int],
    hub_port: int,
    *,
    store: str | None = None,
    settings: str = "",
) -> Path:
    """A gateway's TOML in ``tmp`` (its SQLite file there too, unless ``store`` names one);
    ``settings`` adds lines to ``[gateway]``."""
    partners = "".join(
        f"""
[[partners]]
region = "{region}"
name = "platform {region}"
callback_url = "http://127.0.0.1:{p}/events"
callback_secret = "{CALLBACK[region]}"
keys = {{ "{KEYS[region][0]}" = "{KEYS[region][1]}" }}
adapter = {{ kind = "rest_json", base_url = "http://127.0.0.1:{p}" }}
"""
        for region, p in ports.items()
    )
    path = tmp / "gateway.toml"
    path.write_text(
        f"""
[gateway]
listen = "127.0.0.1:{port}"
store = "{store or f"sqlite:///{tmp}/gw.db"}"
contracts = "{CONTRACTS}"
{settings}
[gateway.retry]
base_seconds = 0.05
cap_seconds = 0.5
max_attempts = 1000

[national_hub]
url = "http://127.0.0.1:{hub_port}/events"
secret = "{HUB_SECRET}"

[[operators]]
name = "ops"
token_sha256 = "{hashlib.sha256(OPERATOR_TOKEN.encode()).hexdigest()}"
role = "admin"
{partners}""",
        encoding="utf-8",
    )
    return path


class GatewayProcess:
    """``tongban serve`` on a configuration; ``args`` adds options (``--role``, ``--listen``)."""

    def __init__(self, config: Path, port: int, args: tuple[str, ...] = ()) -> None:
        self.config, self.port, self.args = config, port, args
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        argv = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(self.config)]
        with open(self.config.parent / "gateway.log", "ab") as log:
            self.proc = subprocess.Popen([*argv, *self.args], stdout=log, stderr=log, cwd=ROOT)

    async def start(self, session: aiohttp.ClientSession) -> None:
        self.spawn()

        async def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}")
            try:
                async with session.get(f"http://127.0.0.1:{self.port}/readyz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(ready, what="gateway process ready")

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@asynccontextmanager
async def processes(
    tmp_path: Path,
) -> AsyncIterator[tuple[GatewayProcess, dict[str, ProvinceSimulator], ProvinceSimulator, Client]]:
    port, hub_port = free_port(), free_port()
    ports = {ORIGIN: free_port(), HANDLER: free_port()}
    sims = {r: simulator(r, port) for r in ports}
    hub = ProvinceSimulator(SimulatorSettings(region="100000", callback_secret=HUB_SECRET))
    for r, sim in sims.items():
        await sim.start("127.0.0.1", ports[r])
    await hub.start("127.0.0.1", hub_port)
    gw = GatewayProcess(gateway_toml(tmp_path, port, ports, hub_port), port)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    try:
        await gw.start(session)
        yield gw, sims, hub, Client(session, f"http://127.0.0.1:{port}", ORIGIN)
    finally:
        gw.stop()
        await session.close()
        for sim in [*sims.values(), hub]:
            await sim.stop()


def _complete_in_order(receiver: ProvinceSimulator, case_ids: list[str]) -> bool:
    return all([e["seq"] for e in receiver.events.get(c, [])] == [1, 2, 3, 4, 5] for c in case_ids)


async def test_kill_after_202_before_dispatch_loses_nothing(tmp_path: Path) -> None:
    async with processes(tmp_path) as (gw, sims, hub, origin):
        sims[HANDLER].set_down(True)  # nothing can be dispatched yet
        ids = []
        for i in range(20):
            status, case, _ = await origin.call("POST", "/v1/cases", medical_filing(f"ZJ-K1-{i}"))
            assert status == 202, case
            ids.append(case["case_id"])
        gw.kill()
        sims[HANDLER].set_down(False)
        await gw.start(origin.session)
        await wait_for(lambda: _complete_in_order(sims[ORIGIN], ids), within=60,
                       what="every case completed and delivered to the origin")  # fmt: skip
        await wait_for(lambda: _complete_in_order(hub, ids), within=60, what="hub has every event")
        assert sims[ORIGIN].out_of_order == 0 and hub.out_of_order == 0
        for case_id in ids:
            case = await origin.case(case_id)
            assert case["status"] == "completed"
            assert [e["seq"] for e in case["history"]] == [1, 2, 3, 4, 5]
        # The audit chain was written in the same transactions: it holds across the kill.
        assert (await verified_audit(origin))["entries_checked"] >= 1 + 5 * len(ids)


async def test_kill_in_the_middle_of_delivery_delivers_everything_in_order(
    tmp_path: Path,
) -> None:
    async with processes(tmp_path) as (gw, sims, hub, origin):
        sims[ORIGIN].set_down(True)  # let the origin's events pile up first
        ids = []
        for i in range(100):
            status, case, _ = await origin.call("POST", "/v1/cases", medical_filing(f"ZJ-K2-{i}"))
            assert status == 202, case
            ids.append(case["case_id"])
        await wait_for(lambda: _complete_in_order(hub, ids), within=60, what="hub has every event")
        sims[ORIGIN].set_down(False)
        await wait_for(
            lambda: sum(len(v) for v in sims[ORIGIN].events.values()) >= 10,
            what="delivery to the origin under way",
        )
        gw.kill()
        delivered_before = sum(len(v) for v in sims[ORIGIN].events.values())
        assert delivered_before < 5 * len(ids), "the kill landed after delivery had finished"
        await gw.start(origin.session)
        await wait_for(lambda: _complete_in_order(sims[ORIGIN], ids), within=60,
                       what="every event delivered to the origin after the restart")  # fmt: skip
        assert sims[ORIGIN].out_of_order == 0 and hub.out_of_order == 0
        assert sims[ORIGIN].seq_conflicts == 0 and hub.seq_conflicts == 0


async def test_kill_between_two_legs_of_multi_site_cases_loses_nothing(tmp_path: Path) -> None:
    async with processes(tmp_path) as (gw, sims, hub, origin):
        sims[ORIGIN].set_down(True)  # the second leg's province: the cases wait between legs
        ids = []
        for i in range(10):
            status, case, _ = await origin.call("POST", "/v1/cases", pension_transfer(f"ZJ-K3-{i}"))
            assert status == 202, case
            ids.append(case["case_id"])

        async def between_legs() -> bool:
            cases = [await origin.case(c) for c in ids]
            return all([leg["status"] for leg in c["legs"]] == ["completed", "received"]
                       for c in cases)  # fmt: skip

        await wait_for(between_legs, within=60, what="every case handed to its second leg")
        gw.kill()
        sims[ORIGIN].set_down(False)
        await gw.start(origin.session)

        async def all_delivered() -> bool:
            cases = [await origin.case(c) for c in ids]
            return all(
                c["status"] == "completed"
                and [e["event_id"] for e in sims[ORIGIN].events.get(c["case_id"], [])]
                == [e["event_id"] for e in c["history"]]
                for c in cases
            )

        await wait_for(all_delivered, within=60, what="both legs done, every event delivered")
        assert sims[ORIGIN].out_of_order == 0 and hub.out_of_order == 0
        assert sims[ORIGIN].counters["submits"] == len(ids)  # each second leg sent once
