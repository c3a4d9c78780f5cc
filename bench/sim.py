"""A province simulator in its own process, for the benchmark.

It is :class:`gateway.simulators.rest.ProvinceSimulator` as ``tongban simulate`` runs it, plus the
settings the CLI does not expose (report batch window, retry backoff) and one cheap read-only
route, ``GET /bench/totals``: the counts of events received, of cases that reached ``completed``
and of ordering faults, without the full ``/events/state`` dump (which costs the simulator a few
milliseconds per poll at thousands of cases). It stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

import orjson
from aiohttp import web

from gateway.simulators.rest import ProvinceSimulator, SimulatorSettings


def totals(sim: ProvinceSimulator) -> dict[str, int]:
    events = sim.events
    return {
        "total": sum(len(evs) for evs in events.values()),
        "cases": len(events),
        "completed": sum(1 for evs in events.values() if evs and evs[-1]["status"] == "completed"),
        "out_of_order": sim.out_of_order,
        "duplicates": sim.duplicates,
        "seq_conflicts": sim.seq_conflicts,
        **sim.counters,
    }


async def serve(settings: SimulatorSettings, host: str, port: int) -> None:
    sim = ProvinceSimulator(settings)
    app = sim.app()

    async def bench_totals(_request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(totals(sim)), content_type="application/json")

    app.router.add_get("/bench/totals", bench_totals)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await web.TCPSite(runner, host, port, backlog=1024).start()
        print(f"simulating {settings.region} on http://{host}:{port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--region", required=True)
    p.add_argument("--listen", required=True)
    p.add_argument("--gateway", required=True)
    p.add_argument("--key-id", default="")
    p.add_argument("--secret", default="")
    p.add_argument("--callback-secret")
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--report-batch-window", type=float, default=0.05)
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args()
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = SimulatorSettings(
        region=args.region,
        gateway_url=args.gateway,
        key_id=args.key_id,
        secret=args.secret,
        callback_secret=args.callback_secret,
        latency=args.latency,
        report_batch_window=args.report_batch_window,
        retry_backoff=0.05,
        retry_backoff_max=1.0,
    )
    host, _, port = args.listen.rpartition(":")
    asyncio.run(serve(settings, host or "127.0.0.1", int(port)))


if __name__ == "__main__":
    main()
