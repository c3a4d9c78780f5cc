"""Throughput, latency and memory of the gateway, in one run: ``python -m bench.run``.

Everything runs as real processes on loopback: the gateway (``tongban serve --config FILE``, SQLite
with ``synchronous=FULL`` in a temporary folder), province simulators (:mod:`bench.sim`), a bare
aiohttp server (:mod:`bench.bare`) and wrk replaying pre-signed requests (``bench/replay.lua``).

With ``--store postgres`` the gateway keeps its data on a PostgreSQL server (``--postgres-dsn``)
instead, each gateway world in a fresh schema ``bench_<hex>`` that is dropped when the world
stops; ``--processes N`` (PostgreSQL only) runs N ``tongban serve`` processes of one world on one
port (``reuse_port``), and every CPU and memory figure then covers all N. ``--split`` runs each
world's gateway as two processes on one store, ``tongban serve --role api`` (which wrk and the
clients call) and ``--role workers`` (the dispatcher, deliverer and poller).

1. Accept: wrk sends distinct pre-signed ``POST /v1/cases`` (each nonce once) to the gateway
   while its workers dispatch and deliver in the background; accepted cases/s counts only 202s.
2. Bare: the same wrk command against a server that only reads the body and answers 202.
3. End to end: a fresh gateway and simulators; M cases are submitted with bounded concurrency
   and the clock stops when every case's five events (received, dispatched, accepted,
   in_progress, completed) have reached both the origin and the national hub.

The figures are printed and written to ``bench/out/latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import aiohttp
import orjson

from bench.procs import (
    ROOT,
    Proc,
    Processes,
    children,
    cpu_seconds,
    family_cpu_seconds,
    free_port,
    get,
    get_json,
    status_kb,
)
from gateway.identifiers import id_check_char
from gateway.signing import (
    KEY_HEADER,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign_headers,
)
from gateway.store import redacted

OUT = ROOT / "bench" / "out"
LUA = ROOT / "bench" / "replay.lua"
ORIGIN, HANDLER, HUB_REGION = "330000", "510000", "110000"
KEYS = {
    ORIGIN: ("zj-bench-01", "zj-bench-secret-000000001"),
    HANDLER: ("sc-bench-01", "sc-bench-secret-000000001"),
}
CALLBACK = {ORIGIN: "zj-bench-callback-01", HANDLER: "sc-bench-callback-01"}
HUB_SECRET = "hub-bench-secret-0001"
ACCEPT_RATIO_BAR = 0.3
E2E_BAR = 300.0
LISTENING = "tongban gateway listening on"  # what `tongban serve` prints once it serves
DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"
PG_TIMEOUT = 10.0  # seconds: connecting, and each statement of the benchmark's own


# ---- requests -------------------------------------------------------------------------------


def case_body(request_id: str) -> dict[str, Any]:
    """A valid 异地就医登记备案 (KSTB-YB-001) submission; the contract routes it to Sichuan."""
    prefix17 = "11010519491231002"
    return {
        "request_id": request_id,
        "item_code": "KSTB-YB-001",
        "applicant": {
            "id_type": "111",
            "id_number": prefix17 + id_check_char(prefix17),
            "name": "张三",
            "phone": "13800000000",
        },
        "payload": {
            "insured_region": "510100",
            "insurance_type": "310",
            "filing_type": "11",
            "treatment_region": "330100",
            "start_date": "2026-12-01",
            "contact_phone": "13800000000",
            "commitment_signed": True,
        },
    }


def signed_cases(
    count: int, tag: str, make_body: Callable[[str], dict[str, Any]] = case_body
) -> list[tuple[dict[str, str], bytes]]:
    """``count`` distinct submissions from the origin, each with its own request id and nonce;
    ``make_body`` builds a submission for a request id (default: a medical filing)."""
    key_id, secret = KEYS[ORIGIN]
    out = []
    for i in range(count):
        body = orjson.dumps(make_body(f"ZJ-BENCH-{tag}-{i:07d}"))
        out.append((sign_headers(key_id, secret, "POST", "/v1/cases", body), body))
    return out


def write_requests(path: Path, requests: list[tuple[dict[str, str], bytes]]) -> None:
    """One request a line for replay.lua: key, timestamp, nonce, signature, body (tab-separated).

    orjson escapes every control character inside strings, so a body holds no tab or newline.
    """
    with path.open("wb") as f:
        for h, body in requests:
            head = "\t".join(
                (h[KEY_HEADER], h[TIMESTAMP_HEADER], h[NONCE_HEADER], h[SIGNATURE_HEADER])
            )
            f.write(head.encode() + b"\t" + body + b"\n")


# ---- the gateway's configuration ------------------------------------------------------------


def _toml(value: Any) -> str:
    """A TOML value: JSON's string escapes (ASCII only, \\uXXXX) are valid TOML basic strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    return repr(value)


def write_config(
    folder: Path,
    gw_port: int,
    sim_ports: dict[str, int],
    hub_port: int,
    batch_callbacks: bool = False,
    store: str | None = None,
    reuse_port: bool = False,
) -> Path:
    """The gateway's TOML; ``store`` is a store URL (default: SQLite in ``folder``)."""
    lines = [
        "[gateway]",
        f"listen = {_toml(f'127.0.0.1:{gw_port}')}",
        f"store = {_toml(store or 'sqlite:///' + str(folder / 'tongban.db'))}",
        f"contracts = {_toml(str(ROOT / 'contracts'))}",
    ]
    if store is None:
        lines.append("# sqlite_synchronous is left at its default, FULL.")
    if reuse_port:
        lines.append("reuse_port = true")
    lines += [
        "rate_limit_per_second = 1e9",
        "rate_limit_burst = 1000000000",
        "",
        "[national_hub]",
        f"url = {_toml(f'http://127.0.0.1:{hub_port}/events')}",
        f"secret = {_toml(HUB_SECRET)}",
    ]
    for region, port in sim_ports.items():
        key_id, secret = KEYS[region]
        lines += [
            "",
            "[[partners]]",
            f"region = {_toml(region)}",
            f"name = {_toml(f'platform {region}')}",
            f"callback_url = {_toml(f'http://127.0.0.1:{port}/events')}",
            f"callback_secret = {_toml(CALLBACK[region])}",
            f"batch_callbacks = {_toml(batch_callbacks)}",
            f"keys = {_toml({key_id: secret})}",
            f"adapter = {_toml({'kind': 'rest_json', 'base_url': f'http://127.0.0.1:{port}'})}",
        ]
    path = folder / "tongban.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---- PostgreSQL: a schema per world ---------------------------------------------------------


async def _pg(dsn: str, sql: str, fetch: bool, seconds: float) -> Any:
    from adapters.frontdb_exchange import import_asyncpg  # optional: SQLite runs lack it

    con = await import_asyncpg().connect(dsn, timeout=seconds)
    try:
        if fetch:
            return await con.fetchval(sql, timeout=seconds)
        return await con.execute(sql, timeout=seconds)
    finally:
        await con.close(timeout=seconds)


def pg(dsn: str, sql: str, fetch: bool = False, timeout: float = PG_TIMEOUT) -> Any:
    """One statement on a connection of its own (an event loop of its own too: the callers are
    synchronous); connecting and the statement each within ``timeout`` seconds."""
    return asyncio.run(asyncio.wait_for(_pg(dsn, sql, fetch, timeout), 3 * timeout))


def redact(dsn: str) -> str:
    """The DSN without its password, for messages and the result file."""
    return redacted(dsn)


def with_search_path(dsn: str, schema: str) -> str:
    """``dsn`` with ``schema`` first on the search_path (``?options=-csearch_path%3D...``), where
    the gateway's PostgreSQL store makes its tables; other query parameters are kept."""
    query = parse_qsl(urlsplit(dsn).query, keep_blank_values=True)
    options = " ".join([*(v for k, v in query if k == "options"), f"-csearch_path={schema}"])
    query = [*((k, v) for k, v in query if k != "options"), ("options", options)]
    return urlunsplit(urlsplit(dsn)._replace(query=urlencode(query, quote_via=quote)))


def postgres_version(dsn: str) -> str:
    """The server's version; raises if it cannot be reached within :data:`PG_TIMEOUT`."""
    return str(pg(dsn, "SHOW server_version", fetch=True))


def drop_schema(dsn: str, schema: str) -> None:
    """Drop a world's schema and everything in it; a failure is reported, not raised (this runs
    while unwinding, possibly from another error, which it must not mask)."""
    try:
        pg(dsn, f"DROP SCHEMA IF EXISTS {schema} CASCADE", timeout=30.0)
    except Exception as exc:  # reported: the caller goes on unwinding
        print(
            f"warning: could not drop schema {schema} ({type(exc).__name__}: {exc}); "
            f"drop it by hand: DROP SCHEMA {schema} CASCADE",
            file=sys.stderr,
        )


# ---- the world: gateway and simulators ------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """Where a world's gateway keeps its data, and how many processes serve it."""

    store: str = "sqlite"  # "sqlite" (a file in the world's folder) or "postgres"
    dsn: str = ""  # postgres: the server; each world gets a schema of its own there
    processes: int = 1  # gateway processes on one port (reuse_port); more than 1: postgres only
    split: bool = False  # an API process and a workers process instead (tongban serve --role)


def backend(args: argparse.Namespace) -> Backend:
    # bench.validation builds its own namespace without these options: SQLite, one process.
    return Backend(
        getattr(args, "store", "sqlite"),
        getattr(args, "postgres_dsn", ""),
        getattr(args, "processes", 1),
        getattr(args, "split", False),
    )


@dataclass
class World:
    gateways: list[Proc]  # one, or N sharing the port of gateway_url
    gateway_url: str
    sims: dict[str, Proc]  # region (origin, handler, hub) → simulator
    sim_urls: dict[str, str]
    dsn: str = ""  # postgres: the server (without the schema)
    schema: str = ""  # postgres: this world's schema, dropped by stop_world

    def all(self) -> list[Proc]:
        return [*self.gateways, *self.sims.values()]

    def gateway_cpu_seconds(self) -> list[float]:
        """CPU time of each gateway process with its children (a SQLite gateway's writer
        process), in start order (the gateway's: their sum)."""
        return [family_cpu_seconds(g.pid) for g in self.gateways]

    def gateway_cpu_shares(self, before: list[float], seconds: float) -> list[float]:
        """Cores used by each gateway process over ``seconds`` since ``before`` (read with
        :meth:`gateway_cpu_seconds`)."""
        after = self.gateway_cpu_seconds()
        return [(t - t0) / seconds for t, t0 in zip(after, before, strict=True)]

    def gateway_vm_hwm_kb(self) -> list[int]:
        """Peak RSS of each gateway process, in start order."""
        return [status_kb(g.pid, "VmHWM") for g in self.gateways]

    def writer_vm_hwm_kb(self) -> int:
        """Peak RSS of the gateways' child processes (SQLite's writers), the largest."""
        return max((status_kb(c, "VmHWM") for g in self.gateways for c in children(g.pid)),
                   default=0)  # fmt: skip

    def metrics_cover_all(self) -> bool:
        """Whether one scrape of /metrics covers the whole gateway.

        With several processes on one port, the kernel hands a scrape to any one of them, and
        the samples say nothing of which (the gateway's registry has no pid label and no
        process collector): a scrape can be neither attributed nor summed. So the counters
        read from /metrics (dispatch calls, callback POSTs, transitions ignored) are reported
        only with one process, and as None with more, rather than as one process's share."""
        return len(self.gateways) == 1

    def check_gateways(self) -> None:
        """Raise if a gateway process has died: its figures would be missing from the sums."""
        for g in self.gateways:
            if not g.alive():
                raise RuntimeError(f"{g.name} exited during the run:\n{g.log_tail()}")


def start_world(
    procs: Processes,
    folder: Path,
    name: str,
    batch_callbacks: bool = False,
    using: Backend = Backend(),  # frozen: one shared default is safe
) -> World:
    """Simulators for the origin, the handler and the hub, then the gateway process(es); wait
    for all. On PostgreSQL a fresh schema is made first; stop the world with :func:`stop_world`
    (which also drops it). If starting fails, whatever was started is stopped here."""
    folder.mkdir(parents=True, exist_ok=True)
    gw_port, hub_port = free_port(), free_port()
    ports = {ORIGIN: free_port(), HANDLER: free_port()}
    gateway_url = f"http://127.0.0.1:{gw_port}"
    world = World([], gateway_url, {}, {})
    store: str | None = None
    if using.store == "postgres":
        # Named before it is made: stop_world drops it (IF EXISTS), also after an interrupted
        # CREATE, which may have committed all the same.
        world.dsn, world.schema = using.dsn, f"bench_{secrets.token_hex(6)}"
        store = with_search_path(using.dsn, world.schema)
    try:
        if world.schema:
            pg(world.dsn, f"CREATE SCHEMA {world.schema}")
        config = write_config(
            folder, gw_port, ports, hub_port, batch_callbacks, store, using.processes > 1
        )
        for region, port in [*ports.items(), (HUB_REGION, hub_port)]:
            key_id, secret = KEYS.get(region, ("hub-unused", "hub-unused-secret-0001"))
            callback = CALLBACK.get(region, HUB_SECRET)
            argv = [
                sys.executable, "-m", "bench.sim", "--region", region,
                "--listen", f"127.0.0.1:{port}", "--gateway", gateway_url, "--key-id", key_id,
                "--secret", secret, "--callback-secret", callback, "--latency", "0.0",
            ]  # fmt: skip
            world.sims[region] = procs.start(f"{name}-sim-{region}", argv)
            world.sim_urls[region] = f"http://127.0.0.1:{port}"
        for region, sim in world.sims.items():
            sim.wait_ready(world.sim_urls[region] + "/bench/totals")
        argv = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)]
        for i, extra in enumerate(_gateway_args(using)):
            label = f"{name}-gateway" if using.processes == 1 else f"{name}-gateway-{i + 1}"
            if using.split:
                label = f"{name}-gateway-{extra[1]}"
            gateway = procs.start(label, argv + extra)
            world.gateways.append(gateway)
            # Each process's own log, not /readyz: through a shared port, /readyz may be
            # answered by a process started earlier. The line is printed once this process's
            # store is open, its workers run and it listens.
            gateway.wait_log(LISTENING, timeout=60.0)
        world.gateways[0].wait_ready(gateway_url + "/readyz", timeout=60.0)
        world.check_gateways()
    except BaseException:
        stop_world(procs, world)
        raise
    return world


def _gateway_args(using: Backend) -> list[list[str]]:
    """The extra options of each gateway process of a world, in start order."""
    if using.split:
        workers = ["--role", "workers", "--listen", f"127.0.0.1:{free_port()}"]
        return [["--role", "api"], workers]
    return [[] for _ in range(using.processes)]


def stop_world(procs: Processes, world: World) -> None:
    """Stop every process of the world, then drop its PostgreSQL schema (if any), even when
    stopping fails or is interrupted."""
    try:
        procs.stop(*world.all())
    finally:
        if world.schema:
            drop_schema(world.dsn, world.schema)


def scrape(url: str) -> dict[str, float]:
    """The gateway's Prometheus samples as ``name{labels}`` → value (comments dropped)."""
    status, body = get(url + "/metrics", timeout=10.0)
    if status != 200:
        return {}
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out


def metric_sum(samples: dict[str, float], prefix: str, contains: str = "") -> float:
    return sum(v for k, v in samples.items() if k.startswith(prefix) and contains in k)


def _metric(samples: dict[str, float] | None, prefix: str, contains: str = "") -> float | None:
    """:func:`metric_sum`, or None when there was no scrape that covers the whole gateway."""
    return None if samples is None else metric_sum(samples, prefix, contains)


# ---- wrk ------------------------------------------------------------------------------------


@dataclass
class WrkRun:
    figures: dict[str, Any]
    text: str
    cpu_seconds: float


def run_wrk(wrk: str, url: str, requests_file: Path, args: argparse.Namespace, mode: str) -> WrkRun:
    argv = [
        wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", "--latency",
        "--timeout", "10s", "-s", str(LUA), url + "/v1/cases", "--",
        str(requests_file), str(args.threads), mode,
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=args.duration + 120, check=False
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    figures: dict[str, Any] | None = None
    text = []
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            figures = json.loads(line[len("BENCH_JSON ") :])
        else:
            text.append(line)
    if figures is None:
        raise RuntimeError(f"wrk printed no figures:\n{done.stdout}\n{done.stderr}")
    seconds = figures["duration_us"] / 1e6
    statuses: dict[str, int] = {k: int(v) for k, v in figures["statuses"].items()}
    answered = sum(statuses.values())
    ok = sum(v for k, v in statuses.items() if k.startswith("2"))
    errors = sum(figures[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts"))
    figures.update(
        seconds=seconds,
        answered=answered,
        requests_per_second=answered / seconds,
        accepted=statuses.get("202", 0),
        accepted_per_second=statuses.get("202", 0) / seconds,
        non_2xx=answered - ok,
        socket_errors=errors,
        p50_ms=figures["p50_us"] / 1000,
        p90_ms=figures["p90_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        wrk_cpu_seconds=cpu,
        wrk_cpu_share=cpu / seconds,
    )
    return WrkRun(figures, "\n".join(text), cpu)


# ---- phases ---------------------------------------------------------------------------------


def accept_phase(
    procs: Processes,
    work: Path,
    wrk: str,
    args: argparse.Namespace,
    requests_file: Path,
    partners_up: bool = True,
) -> dict[str, Any]:
    """wrk against a fresh gateway; with ``partners_up=False`` the simulators are stopped
    first, so the workers find every partner unreachable and (circuits open) mostly idle:
    that isolates the cost of the submit path itself. A fresh gateway has a fresh nonce
    cache and database, so both runs can replay the same requests file."""
    name = "accept" if partners_up else "accept-idle"
    world = start_world(procs, work / name, name, args.batch_callbacks, backend(args))
    try:
        if not partners_up:
            procs.stop(*world.sims.values())
        gw_cpu = world.gateway_cpu_seconds()
        sim_cpu = sum(cpu_seconds(s.pid) for s in world.sims.values())
        run = run_wrk(wrk, world.gateway_url, requests_file, args, "once")
        world.check_gateways()
        f = run.figures
        f["gateway_processes"] = len(world.gateways)
        each = world.gateway_cpu_shares(gw_cpu, f["seconds"])
        f["gateway_cpu_share"] = sum(each)  # all processes
        f["gateway_cpu_share_per_process"] = each
        f["simulators_cpu_share"] = (
            sum(cpu_seconds(s.pid) for s in world.sims.values()) - sim_cpu
        ) / f["seconds"]
        f["dispatch_calls_meanwhile"] = f["callback_posts_meanwhile"] = None
        if world.metrics_cover_all():  # see World.metrics_cover_all: None with N processes
            samples = scrape(world.gateway_url)
            f["dispatch_calls_meanwhile"] = metric_sum(samples, "tongban_dispatch_calls_total")
            f["callback_posts_meanwhile"] = metric_sum(samples, "tongban_deliveries_total")
        hwm = world.gateway_vm_hwm_kb()
        f["gateway_vm_hwm_kb"] = max(hwm)  # the largest process
        f["gateway_vm_hwm_kb_per_process"] = hwm
        f["writer_vm_hwm_kb"] = world.writer_vm_hwm_kb()
        what = "partners up" if partners_up else "partners unreachable"
        if len(world.gateways) > 1:
            what += f", {len(world.gateways)} gateway processes"
        print(f"\n--- wrk against the gateway ({what}) ---")
        print(run.text)
        if f["exhausted"]:
            print("warning: wrk sent every pre-signed request; raise --requests")
        return f
    finally:
        stop_world(procs, world)


def bare_phase(
    procs: Processes, wrk: str, args: argparse.Namespace, requests_file: Path
) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    bare = procs.start(
        "bare", [sys.executable, "-m", "bench.bare", "--listen", f"127.0.0.1:{port}"]
    )
    try:
        bare.wait_ready(url + "/readyz")
        before = cpu_seconds(bare.pid)
        run = run_wrk(wrk, url, requests_file, args, "cycle")
        run.figures["server_cpu_share"] = (cpu_seconds(bare.pid) - before) / run.figures["seconds"]
        print("\n--- wrk against the bare aiohttp server ---")
        print(run.text)
        return run.figures
    finally:
        procs.stop(bare)


async def _submit_all(
    url: str, requests: list[tuple[dict[str, str], bytes]], concurrency: int
) -> dict[str, int]:
    statuses: dict[str, int] = {}
    queue = iter(requests)
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            for headers, body in queue:
                h = {**headers, "Content-Type": "application/json"}
                try:
                    async with session.post(url + "/v1/cases", data=body, headers=h) as resp:
                        await resp.read()
                        key = str(resp.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    key = type(exc).__name__
                statuses[key] = statuses.get(key, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def _receivers_done(world: World, expected: int) -> tuple[bool, dict[str, dict[str, int]]]:
    totals = {
        region: get_json(world.sim_urls[region] + "/bench/totals")
        for region in (ORIGIN, HUB_REGION)
    }
    # A receiver gets each case's events in order, so a case whose last event it holds is
    # ``completed`` has had all of them. (Not a count of five per case: a partner's report that
    # overtakes the dispatch answer, as it may with several processes, leaves no ``dispatched``.)
    done = all(t["completed"] >= expected for t in totals.values())
    return done, totals


def e2e_phase(procs: Processes, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    world = start_world(procs, work / "e2e", "e2e", args.batch_callbacks, backend(args))
    try:
        requests = signed_cases(args.cases, f"E2E{os.getpid()}")
        gw_cpu = world.gateway_cpu_seconds()
        sim_cpu = sum(cpu_seconds(s.pid) for s in world.sims.values())
        started = time.monotonic()
        statuses = asyncio.run(_submit_all(world.gateway_url, requests, args.e2e_concurrency))
        submitted = time.monotonic() - started
        accepted = statuses.get("202", 0)
        deadline = started + args.e2e_timeout
        done = False
        totals: dict[str, dict[str, int]] = {}
        finished = started
        while time.monotonic() < deadline:
            done, totals = _receivers_done(world, accepted)
            finished = time.monotonic()
            if done:
                break
            time.sleep(0.05)
        seconds = finished - started
        world.check_gateways()
        each = world.gateway_cpu_shares(gw_cpu, seconds)
        sim_share = (sum(cpu_seconds(s.pid) for s in world.sims.values()) - sim_cpu) / seconds
        # With N processes a scrape covers one of them: see World.metrics_cover_all.
        samples = scrape(world.gateway_url) if world.metrics_cover_all() else None
        hwm = world.gateway_vm_hwm_kb()
        completed = min(t["completed"] for t in totals.values()) if totals else 0
        figures = {
            "cases": args.cases,
            "concurrency": args.e2e_concurrency,
            "submit_statuses": statuses,
            "accepted": accepted,
            "submit_seconds": submitted,
            "submit_per_second": len(requests) / submitted,
            "all_delivered": done,
            "seconds": seconds,
            "completed_at_both": completed,
            "cases_per_second": completed / seconds if seconds else 0.0,
            "origin": totals.get(ORIGIN, {}),
            "hub": totals.get(HUB_REGION, {}),
            "gateway_processes": len(world.gateways),
            "gateway_cpu_share": sum(each),  # all processes
            "gateway_cpu_share_per_process": each,
            "simulators_cpu_share": sim_share,
            "delivery_posts_ok": _metric(samples, "tongban_deliveries_total", 'result="ok"'),
            "delivery_posts_failed": _metric(samples, "tongban_deliveries_total", 'result="error"'),
            "dispatch_calls": _metric(samples, "tongban_dispatch_calls_total"),
            "transitions_ignored": _metric(samples, "tongban_transitions_ignored_total"),
            "gateway_vm_hwm_kb": max(hwm),  # the largest process
            "gateway_vm_hwm_kb_per_process": hwm,
            "writer_vm_hwm_kb": world.writer_vm_hwm_kb(),
        }
        if not done:
            print(f"warning: not every case was delivered within {args.e2e_timeout:.0f} s")
        return figures
    finally:
        stop_world(procs, world)


# ---- report ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }


def _row(name: str, value: str, note: str = "") -> str:
    return f"  {name:<44} {value:>14}  {note}"


def _store_line(s: dict[str, Any]) -> str:
    """What the gateway ran on, for the header (results written before these settings existed
    were SQLite, one process)."""
    n = s.get("processes", 1)
    if s.get("store", "sqlite") == "postgres":
        server = " ".join(s.get("postgres_server", "PostgreSQL ?").split()[:2])  # name, version
        store = f"store=postgres ({server}, a fresh schema per world)"
    else:
        store = f"store=sqlite (synchronous={s.get('sqlite_synchronous', 'FULL')})"
    if s.get("split"):
        return f"{store}, split: an API process and a workers process (tongban serve --role)"
    shared = ", sharing one port with reuse_port" if n > 1 else ""
    return f"{store}, processes={n} (gateway processes per world{shared})"


def _mib(kb: float) -> str:
    return f"{kb / 1024:.0f} MiB"


def _cpu_note(figures: dict[str, Any]) -> str:
    """With several gateway processes: how their summed CPU share splits."""
    per = figures.get("gateway_cpu_share_per_process", [])
    if len(per) < 2:
        return ""
    return f"sum of {len(per)} processes: " + " + ".join(f"{c:.2f}" for c in per) + "; "


def _memory_row(name: str, figures: dict[str, Any]) -> str:
    per = figures.get("gateway_vm_hwm_kb_per_process", [])
    note = ""
    if len(per) > 1:
        note = f"largest of {len(per)} processes: " + ", ".join(f"{kb / 1024:.0f}" for kb in per)
        note += " MiB"
    if figures.get("writer_vm_hwm_kb"):
        note += (
            "; " if note else ""
        ) + f"its SQLite writer process {_mib(figures['writer_vm_hwm_kb'])}"
    return _row(name, _mib(figures["gateway_vm_hwm_kb"]), note)


def report(result: dict[str, Any]) -> str:
    a, b, e = result["accept"], result["bare"], result.get("e2e")
    idle = result.get("accept_idle")
    ratio, bars, s = result["accept_ratio"], result["bars"], result["settings"]
    mark = {True: "ok", False: "MISSED"}
    lines = [
        "",
        f"Tongban gateway benchmark ({result['machine']['cpus']} CPUs, "
        f"wrk -t{s['threads']} -c{s['connections']} -d{s['duration']}s, "
        f"batch_callbacks={str(s['batch_callbacks']).lower()})",
        f"  {_store_line(s)}",
        "",
        "Accept (POST /v1/cases, pre-signed, each nonce once; workers dispatching and delivering)",
        _row("gateway accepted cases/s (202 only)", f"{a['accepted_per_second']:.0f}",
             "EXHAUSTED: rate understated, raise --requests" if a["exhausted"] else ""),
        _row("gateway latency p50 / p99 (ms)", f"{a['p50_ms']:.1f} / {a['p99_ms']:.1f}"),
        _row("gateway non-2xx answers", f"{a['non_2xx']}", f"socket errors {a['socket_errors']}"),
        _row("gateway CPU during the run", f"{a['gateway_cpu_share']:.2f} cores",
             _cpu_note(a) + f"simulators {a['simulators_cpu_share']:.2f}, "
             f"wrk {a['wrk_cpu_share']:.2f}"),
        _row("bare aiohttp req/s", f"{b['requests_per_second']:.0f}",
             f"p50 {b['p50_ms']:.1f} ms, p99 {b['p99_ms']:.1f} ms"),
        _row("bare server CPU / wrk CPU during its run",
             f"{b['server_cpu_share']:.2f} / {b['wrk_cpu_share']:.2f}", "cores"),
        _row("ratio gateway / bare", f"{ratio:.3f}",
             f"bar >= {ACCEPT_RATIO_BAR}: {mark[bars['accept_ratio']['ok']]}"),
    ]  # fmt: skip
    if idle is not None:
        lines += [
            _row("accept, partners unreachable (workers idle)",
                 f"{idle['accepted_per_second']:.0f}",
                 f"p50 {idle['p50_ms']:.1f} ms, p99 {idle['p99_ms']:.1f} ms, "
                 f"ratio {idle['accepted_per_second'] / b['requests_per_second']:.3f}"
                 + (" EXHAUSTED" if idle["exhausted"] else "")),
        ]  # fmt: skip
    if e is not None:
        o, h = e["origin"], e["hub"]
        posts = "n/a"  # several processes: /metrics answers for one of them (not reported)
        if e["delivery_posts_ok"] is not None:
            posts = f"{e['delivery_posts_ok']:.0f} / {e['delivery_posts_failed']:.0f}"
        lines += [
            "",
            f"End to end ({e['accepted']} cases; origin and hub each get every event of each)",
            _row("cases carried end to end per second", f"{e['cases_per_second']:.0f}",
                 f"bar >= {E2E_BAR:.0f}: {mark[bars['e2e']['ok']]}"),
            _row("time until everything was delivered (s)", f"{e['seconds']:.2f}",
                 f"submitting took {e['submit_seconds']:.2f} s"),
            _row("out of order / duplicates (origin; hub)",
                 f"{o.get('out_of_order')}/{o.get('duplicates')}; "
                 f"{h.get('out_of_order')}/{h.get('duplicates')}"),
            _row("callback POSTs (ok / failed)", posts,
                 "" if posts != "n/a" else "/metrics of one of the processes: left out"),
            _row("gateway CPU during the run", f"{e['gateway_cpu_share']:.2f} cores",
                 _cpu_note(e) + f"simulators {e['simulators_cpu_share']:.2f}"),
        ]  # fmt: skip
    lines += [
        "",
        "Memory (gateway peak RSS, VmHWM)",
        _memory_row("accept run", a),
    ]
    if e is not None:
        lines.append(_memory_row("end-to-end run", e))
    lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--connections", type=int, default=64, help="wrk connections")
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    p.add_argument(
        "--requests", type=int, default=0,
        help="pre-signed requests for the accept run (default: 8000 per second of --duration)",
    )  # fmt: skip
    p.add_argument("--cases", type=int, default=3000, help="cases carried end to end")
    p.add_argument("--e2e-concurrency", type=int, default=64)
    p.add_argument("--e2e-timeout", type=float, default=180.0, help="seconds")
    p.add_argument(
        "--batch-callbacks", action="store_true",
        help="let the provinces take batched callbacks (default: one event per POST, as shipped)",
    )  # fmt: skip
    p.add_argument("--skip-e2e", action="store_true")
    p.add_argument(
        "--skip-idle", action="store_true", help="skip the accept run with partners unreachable"
    )
    p.add_argument(
        "--store", choices=("sqlite", "postgres"), default="sqlite",
        help="the gateway's store: SQLite in the temporary folder (default), or a fresh schema "
        "per gateway world on the PostgreSQL server of --postgres-dsn",
    )  # fmt: skip
    p.add_argument(
        "--postgres-dsn",
        default=os.environ.get("TONGBAN_BENCH_POSTGRES") or DEFAULT_POSTGRES_DSN,
        help="PostgreSQL server and database for --store postgres (default: "
        f"$TONGBAN_BENCH_POSTGRES or {DEFAULT_POSTGRES_DSN})",
    )
    p.add_argument(
        "--processes", type=int, default=1,
        help="gateway processes per world, sharing one port (reuse_port; needs --store postgres)",
    )  # fmt: skip
    p.add_argument(
        "--split", action="store_true",
        help="run each gateway as an API process and a workers process (tongban serve --role)",
    )  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, db)")
    p.add_argument(
        "--rounds", type=int, default=1,
        help="run every phase this many times, alternating; the figures shown are the round with "
        "the median accept ratio, and every round is listed (the machine's speed drifts)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.split and args.processes > 1:
        p.error("--split runs two processes of its own: leave --processes at 1")
    if args.processes < 1:
        p.error("--processes must be at least 1")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.processes > 1 and args.store != "postgres":
        p.error(
            f"--processes {args.processes} needs --store postgres: the processes share one port "
            "(reuse_port), which the gateway allows only with a PostgreSQL store"
        )
    if args.store == "postgres" and not args.postgres_dsn.startswith(
        ("postgresql://", "postgres://")
    ):
        p.error("--postgres-dsn must be a URL: postgresql://user@host:port/database")
    return args


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every ``finally``: children are stopped


def _round(
    procs: Processes, work: Path, wrk: str, args: argparse.Namespace, requests_file: Path
) -> dict[str, Any]:
    """Every phase once, each on a fresh gateway (a new database in ``work``, a new nonce
    cache)."""
    out: dict[str, Any] = {}
    print("accept run: wrk against the gateway ...")
    out["accept"] = accept_phase(procs, work, wrk, args, requests_file)
    if not args.skip_idle:
        print("accept run with the partners unreachable ...")
        out["accept_idle"] = accept_phase(procs, work, wrk, args, requests_file, partners_up=False)
    print("baseline run: wrk against the bare aiohttp server ...")
    out["bare"] = bare_phase(procs, wrk, args, requests_file)
    if not args.skip_e2e:
        print(f"end-to-end run: {args.cases} cases ...")
        out["e2e"] = e2e_phase(procs, work, args)
    return out


def _ratio(r: dict[str, Any]) -> float:
    return float(r["accept"]["accepted_per_second"]) / float(r["bare"]["requests_per_second"])


def _round_figures(r: dict[str, Any]) -> dict[str, float | None]:
    idle, e2e = r.get("accept_idle"), r.get("e2e")
    bare = float(r["bare"]["requests_per_second"])
    return {
        "accepted_per_second": r["accept"]["accepted_per_second"],
        "idle_accepted_per_second": idle["accepted_per_second"] if idle else None,
        "bare_requests_per_second": bare,
        "ratio": _ratio(r),
        "idle_ratio": idle["accepted_per_second"] / bare if idle else None,
        "e2e_cases_per_second": e2e["cases_per_second"] if e2e else None,
    }


def rounds_report(rounds: list[dict[str, float | None]]) -> str:
    """One line per round, in the order they ran."""

    def f(v: float | None, spec: str) -> str:
        width = spec.partition(".")[0]
        return format("-", f">{width or 1}") if v is None else format(v, spec)

    lines = ["", "Rounds (in order; the figures above are the round with the median ratio)",
             "  round  accepts/s  idle/s  bare req/s  ratio (idle)    end to end/s"]  # fmt: skip
    for i, r in enumerate(rounds, 1):
        lines.append(
            f"  {i:>5}  {f(r['accepted_per_second'], '9.0f')}  "
            f"{f(r['idle_accepted_per_second'], '6.0f')}  "
            f"{f(r['bare_requests_per_second'], '10.0f')}"
            f"  {f(r['ratio'], '.3f')} ({f(r['idle_ratio'], '.3f')})  "
            f"{f(r['e2e_cases_per_second'], '10.0f')}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    postgres_server = ""
    if args.store == "postgres":
        try:
            postgres_server = "PostgreSQL " + postgres_version(args.postgres_dsn)
        except Exception as exc:  # whatever the failure, there is nothing to benchmark on
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            print(
                f"PostgreSQL at {redact(args.postgres_dsn)} is not usable ({reason}); "
                "start it or pass --postgres-dsn / set TONGBAN_BENCH_POSTGRES",
                file=sys.stderr,
            )
            return 2
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed: apt-get install -y wrk (or run `make bench`)", file=sys.stderr)
        return 2
    count = args.requests or 8000 * args.duration
    started_at = datetime.now(UTC)
    result: dict[str, Any] = {
        "when": started_at.isoformat(timespec="seconds"),
        "command": "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "settings": {
            "threads": args.threads, "connections": args.connections, "duration": args.duration,
            "accept_requests": count, "e2e_cases": args.cases,
            "e2e_concurrency": args.e2e_concurrency,
            "sqlite_synchronous": "FULL" if args.store == "sqlite" else None,
            "simulator_latency": 0.0, "batch_callbacks": args.batch_callbacks,
            "store": args.store, "processes": args.processes, "split": args.split,
        },
    }  # fmt: skip
    if args.store == "postgres":
        result["settings"]["postgres_dsn"] = redact(args.postgres_dsn)
        result["settings"]["postgres_server"] = postgres_server
    work = Path(tempfile.mkdtemp(prefix="tongban-bench-"))
    print(f"working in {work}")
    try:
        with Processes(work / "logs") as procs:
            requests_file = work / "requests.tsv"
            rounds = []
            for i in range(args.rounds):
                # Signed afresh each round: a signature is good for 300 s.
                print(f"signing {count} distinct case submissions ...")
                write_requests(requests_file, signed_cases(count, f"ACC{os.getpid()}-{i}"))
                if i == 0:
                    digest = hashlib.sha256(requests_file.read_bytes()).hexdigest()[:12]
                    result["settings"]["requests_file_sha256"] = digest
                folder = work if args.rounds == 1 else work / f"round-{i + 1}"
                rounds.append(_round(procs, folder, wrk, args, requests_file))
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    by_ratio = sorted(rounds, key=_ratio)
    result.update(by_ratio[(len(rounds) - 1) // 2])  # the median round (the lower, if even)
    result["rounds"] = [_round_figures(r) for r in rounds]
    ratio = _ratio(result)
    result["accept_ratio"] = ratio
    e2e_rate = result["e2e"]["cases_per_second"] if "e2e" in result else 0.0
    result["bars"] = {
        "accept_ratio": {"bar": ACCEPT_RATIO_BAR, "value": ratio, "ok": ratio >= ACCEPT_RATIO_BAR},
        "e2e": {
            "bar": E2E_BAR,
            "value": e2e_rate,
            "ok": e2e_rate >= E2E_BAR and bool(result.get("e2e", {}).get("all_delivered")),
        },
    }
    result["machine"]["load_average_at_end"] = os.getloadavg()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "latest.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(report(result))
    if len(rounds) > 1:
        print(rounds_report(result["rounds"]))
    print(f"figures written to {OUT / 'latest.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
