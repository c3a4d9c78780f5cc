"""The bare baseline: an aiohttp server that reads each body and answers 202, nothing else.

Same aiohttp, same event loop and same listening options as the gateway, so the ratio
gateway/bare measures what the gateway's own work costs. Run: ``python -m bench.bare --listen
127.0.0.1:PORT``; it stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from aiohttp import web

from gateway.cli import run_event_loop

ANSWER = b'{"status":"received"}'


async def _accept(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=ANSWER, status=202, content_type="application/json")


async def _ready(_request: web.Request) -> web.Response:
    return web.Response(body=b'{"ready":true}', content_type="application/json")


async def serve(host: str, port: int) -> None:
    app = web.Application(client_max_size=20 * 1024 * 1024)
    app.router.add_post("/v1/cases", _accept)
    app.router.add_get("/readyz", _ready)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await web.TCPSite(runner, host, port, backlog=1024).start()
        print(f"bare server listening on http://{host}:{port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--listen", default="127.0.0.1:0")
    args = p.parse_args()
    host, _, port = args.listen.rpartition(":")
    run_event_loop(serve(host or "127.0.0.1", int(port)))  # uvloop, as ``tongban serve`` runs


if __name__ == "__main__":
    main()
