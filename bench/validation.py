"""Validation cost: the accept rate with the smallest and the largest shipped contract.

``python -m bench.validation`` takes the shipped item with the fewest field specs and the one with
the most, each with its example payload (``contracts/examples``), and measures two rates:

1. **service layer**: ``CaseService.submit`` called directly, 64 at a time (JSON parse, validation,
   routing, records and the SQLite group commit; no HTTP);
2. **HTTP accept**: wrk replaying distinct pre-signed ``POST /v1/cases`` (``bench/replay.lua``,
   each nonce once; the helpers of :mod:`bench.run`) against the gateway's HTTP server; only
   ``202`` answers count. This is the rate the product requirement speaks of.
3. **HTTP accept, workers running**: the main benchmark's accept phase
   (:func:`bench.run.accept_phase`): ``tongban serve`` as its own process with its simulators up,
   so that every accepted case is also dispatched and its events delivered meanwhile, as in
   service. The same requests as 2.

Every run gets a fresh gateway, built in this process from the main benchmark's configuration
(:func:`bench.run.write_config`: SQLite with ``synchronous=FULL`` in a temporary folder, rate limit
lifted) and started as ``tongban serve`` starts it (uvloop, short GIL switch interval), with its
workers (dispatcher, deliverer, poller) stopped, so that only the accept path is timed (except
for measure 3, which runs the whole gateway). Rounds
alternate between the two items and the best rate of each item is kept. The bar: the largest
item's rate is at least 0.9 of the smallest item's.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.procs import ROOT, Processes, free_port
from bench.run import (
    HANDLER,
    ORIGIN,
    OUT,
    accept_phase,
    machine,
    run_wrk,
    signed_cases,
    write_config,
    write_requests,
)
from gateway.app import Gateway
from gateway.cli import run_event_loop
from gateway.config import load
from gateway.contracts import ContractList, walk
from gateway.identifiers import id_check_char

CONTRACTS = ROOT / "contracts"
BAR = 0.9
APPLICANT_ID = "11010519491231002" + id_check_char("11010519491231002")


@dataclass
class Item:
    code: str
    specs: int  # field specs, nested ones and list elements included
    example_bytes: int
    make_body: Callable[[str], dict[str, Any]]


def shipped_items() -> tuple[Item, Item]:
    """The smallest and the largest active contract, by field specs, with their example bodies."""
    lst = ContractList.load(CONTRACTS)
    found = []
    for code, service_item in lst.items.items():
        version = service_item.version(None)
        if version is None:
            continue
        raw = (CONTRACTS / "examples" / f"{code}.json").read_bytes()
        payload = orjson.loads(raw)
        if version.routing.from_field:  # route the case to the handler the gateway knows
            payload[version.routing.from_field] = HANDLER
        found.append(Item(code, len(walk(version.fields, "")), len(raw), submission(code, payload)))
    found.sort(key=lambda i: i.specs)
    return found[0], found[-1]


def submission(code: str, payload: dict[str, Any]) -> Callable[[str], dict[str, Any]]:
    def make(request_id: str) -> dict[str, Any]:
        return {
            "request_id": request_id,
            "item_code": code,
            "applicant": {"id_number": APPLICANT_ID, "name": "张三", "phone": "13800000000"},
            "payload": payload,
        }

    return make


@asynccontextmanager
async def fresh_gateway(work: Path) -> AsyncIterator[Gateway]:
    """A gateway on a new database and nonce cache, its HTTP server up, its workers stopped."""
    folder = Path(tempfile.mkdtemp(dir=work))
    port = free_port()
    partners = {ORIGIN: free_port(), HANDLER: free_port()}  # nothing listens: never called
    gw = Gateway(load(write_config(folder, port, partners, free_port())))
    await gw.start(port)
    await gw.supervisor.stop()
    try:
        yield gw
    finally:
        await gw.stop()
        shutil.rmtree(folder, ignore_errors=True)


async def service_rate(gw: Gateway, bodies: list[bytes]) -> float:
    """Cases/s through ``CaseService.submit``, 64 in flight (one group commit each)."""
    started = time.perf_counter()
    for i in range(0, len(bodies), 64):
        done = await asyncio.gather(*(gw.service.submit(ORIGIN, b) for b in bodies[i : i + 64]))
        assert all(status == 202 for status, _ in done)
    return len(bodies) / (time.perf_counter() - started)


async def http_rate(
    gw: Gateway, wrk: str, requests_file: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """wrk against the gateway's port; the event loop keeps serving while wrk runs."""
    url = f"http://127.0.0.1:{gw.port}"
    run = await asyncio.to_thread(run_wrk, wrk, url, requests_file, args, "once")
    f = run.figures
    if f["non_2xx"] or f["socket_errors"]:
        print(f"warning: {f['non_2xx']} non-2xx answers, {f['socket_errors']} socket errors")
    if f["exhausted"]:
        print("warning: wrk sent every pre-signed request; raise --requests")
    return f


def working_rate(work: Path, wrk: str, args: argparse.Namespace, requests_file: Path) -> float:
    """Accepted/s of a whole gateway process whose workers dispatch and deliver meanwhile."""
    folder = Path(tempfile.mkdtemp(dir=work))  # a new database: the requests are replayed
    procs = Processes(folder / "logs")
    try:
        figures = accept_phase(procs, folder, wrk, args, requests_file, partners_up=True)
    finally:
        procs.stop(*procs.procs)
        shutil.rmtree(folder, ignore_errors=True)
    return float(figures["accepted_per_second"])


async def measure(args: argparse.Namespace, wrk: str, work: Path) -> dict[str, Any]:
    small, large = shipped_items()
    count = args.requests or 6000 * args.duration
    requests_file = work / "requests.tsv"
    service: dict[str, float] = {}
    http: dict[str, dict[str, Any]] = {}
    working: dict[str, float] = {}
    for r in range(args.rounds):
        for item in (small, large):
            warm_up, bodies = (
                [orjson.dumps(item.make_body(f"{tag}-{i}")) for i in range(n)]
                for tag, n in (("W", args.cases // 10), ("S", args.cases))
            )
            async with fresh_gateway(work) as gw:
                await service_rate(gw, warm_up)  # the validator compiled, caches warm
                gc.collect()
                rate = await service_rate(gw, bodies)
            service[item.code] = max(service.get(item.code, 0.0), rate)
            # Signed afresh for each run: a signature is good for 300 s.
            write_requests(requests_file, signed_cases(count, item.code, item.make_body))
            async with fresh_gateway(work) as gw:
                gc.collect()
                figures = await http_rate(gw, wrk, requests_file, args)
            best = http.get(item.code)
            if best is None or figures["accepted_per_second"] > best["accepted_per_second"]:
                http[item.code] = figures
            busy = await asyncio.to_thread(working_rate, work, wrk, args, requests_file)
            working[item.code] = max(working.get(item.code, 0.0), busy)
            print(
                f"round {r + 1}: {item.code} service {rate:,.0f}/s, "
                f"HTTP {figures['accepted_per_second']:,.0f} accepted/s "
                f"(p50 {figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms), "
                f"workers running {busy:,.0f} accepted/s"
            )
    ratio_service = service[large.code] / service[small.code]
    ratio_http = http[large.code]["accepted_per_second"] / http[small.code]["accepted_per_second"]
    ratio_working = working[large.code] / working[small.code]
    return {
        "items": {
            i.code: {"field_specs": i.specs, "example_bytes": i.example_bytes}
            for i in (small, large)
        },
        "smallest": small.code,
        "largest": large.code,
        "service_cases_per_second": service,
        "http": http,
        "working_accepted_per_second": working,
        "ratio_service": ratio_service,
        "ratio_http": ratio_http,
        "ratio_working": ratio_working,
        "bar": BAR,
        "settings": {
            "rounds": args.rounds, "cases": args.cases, "duration": args.duration,
            "connections": args.connections, "threads": args.threads, "requests": count,
        },
    }  # fmt: skip


def report(result: dict[str, Any]) -> str:
    small, large = result["smallest"], result["largest"]
    mark = {True: "ok", False: "MISSED"}
    lines = [
        "",
        "Validation cost (best of each; fresh gateway per run, workers stopped)",
        f"  {'item':<12} {'specs':>5} {'example':>8}  {'service layer':>15}  {'HTTP accept':>13}"
        f"  {'workers running':>15}",
    ]
    for code in (small, large):
        i = result["items"][code]
        service = result["service_cases_per_second"][code]
        http = result["http"][code]["accepted_per_second"]
        busy = result["working_accepted_per_second"][code]
        lines.append(
            f"  {code:<12} {i['field_specs']:>5} {i['example_bytes']:>6} B  "
            f"{service:>9,.0f} /s     {http:>7,.0f} /s  {busy:>11,.0f} /s"
        )
    rs, rh, rw = result["ratio_service"], result["ratio_http"], result["ratio_working"]
    lines += [
        f"  {'largest / smallest':<29} {rs:>9.2f} {mark[rs >= BAR]:<6}  {rh:>7.2f} "
        f"{mark[rh >= BAR]:<6} {rw:>7.2f} {mark[rw >= BAR]}",
        f"  bar: >= {BAR} (the requirement speaks of the accept rate: the HTTP figures)",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.validation", description=__doc__.split("\n")[0]
    )
    p.add_argument("--rounds", type=int, default=3, help="runs per item and measure (best kept)")
    p.add_argument("--cases", type=int, default=3000, help="cases per service-layer run")
    p.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--connections", type=int, default=64, help="wrk connections")
    p.add_argument(
        "--requests", type=int, default=0,
        help="pre-signed requests per item (default: 6000 per second of --duration)",
    )  # fmt: skip
    p.set_defaults(batch_callbacks=False)  # the main benchmark's accept phase reads it
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed: apt-get install -y wrk (or run `make bench`)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="tongban-validation-"))
    result: dict[str, Any] = {"machine": machine()}

    async def run() -> None:
        result.update(await measure(args, wrk, work))

    try:
        run_event_loop(run())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["machine"]["load_average_at_end"] = os.getloadavg()
    print(report(result))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "validation.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"figures written to {OUT / 'validation.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
