"""The ``tongban`` command: serve, demo, simulate, contracts, backup, openapi."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Any

from gateway import contracts_cli, logs
from gateway.config import Config, ConfigError, demo_config, load
from gateway.store import StoreUnavailable


def _config(path: str | None) -> tuple[Config, Path | None]:
    if path is None:
        return demo_config(), None
    return load(Path(path)), Path(path).resolve().parent


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _serve(args: argparse.Namespace) -> None:
    from gateway.app import Gateway

    config, base = _config(args.config)
    if args.role != "all" and config.demo:
        raise ConfigError("--role: the bundled demo runs as one process; give --config")
    if args.role == "workers" and not args.listen:
        raise ConfigError("--role workers: give --listen, its own port for /healthz and /metrics")
    if args.listen:
        config = config.model_copy(
            update={"gateway": config.gateway.model_copy(update={"listen": args.listen})}
        )
    async with contextlib.AsyncExitStack() as stack:
        if config.demo:
            from gateway.demo.partners import DemoPartners

            partners = DemoPartners(config, f"http://{config.gateway.listen}", Path("var/demo"))
            stack.push_async_callback(partners.stop)
            config = await partners.start()
        gateway = Gateway(config, base_dir=base, role=args.role)
        stack.push_async_callback(gateway.stop)
        port = await gateway.start()
        print(f"tongban gateway listening on http://{config.gateway.host}:{port}", flush=True)
        if config.demo:
            print("demo partners running; submit sample cases with: tongban demo", flush=True)
        await _until_signalled()


async def _simulate(args: argparse.Namespace) -> None:
    from gateway.simulators import launch

    host, _, port = args.listen.rpartition(":")
    partner = launch.Partner(
        region=args.region, gateway_url=args.gateway, key_id=args.key_id, secret=args.secret,
        callback_secret=args.callback_secret, latency=args.latency,
        failure_rate=args.failure_rate, deny_rate=args.deny_rate,
    )  # fmt: skip
    folder = Path(args.folder)
    sim, table = await launch.start(args.style, partner, host or "127.0.0.1", int(port), folder)
    print(f"simulating {args.region} ({args.style}); the gateway's adapter table for it:")
    print(json.dumps(table, ensure_ascii=False), flush=True)
    try:
        await _until_signalled()
    finally:
        await sim.stop()


async def _demo(args: argparse.Namespace) -> None:
    from gateway.demo.client import run_demo

    config, base = _config(args.config)
    url = args.gateway or f"http://{config.gateway.listen}"
    await run_demo(config, url, args.cases, base_dir=base)


def _backup(args: argparse.Namespace) -> int:
    """Copy the configured SQLite store to ``args.dest``; 2 with the reason if it cannot."""
    from gateway.backup import BackupError, backup
    from gateway.store import sqlite_path

    config, _ = _config(args.config)
    url = config.gateway.store
    if not url.startswith("sqlite:"):
        print("tongban: the store is PostgreSQL: back it up with pg_dump", file=sys.stderr)
        return 2
    source = Path(sqlite_path(url))  # relative to the working directory, as for serve
    try:
        done = backup(source, Path(args.dest))
    except BackupError as exc:
        print(f"tongban: {exc}", file=sys.stderr)
        return 2
    print(f"backed up {source} to {done.path}: {done.size} bytes, {done.cases} cases, "
          f"store migration {done.schema_version}, integrity ok")  # fmt: skip
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tongban", description="跨省通办 interoperability gateway")
    p.add_argument("--log-level", default="INFO")
    p.add_argument(
        "--log-format", choices=("text", "json"), default="text",
        help="text lines (default) or JSON lines for a log collector",
    )  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway (no --config: the bundled demo)")
    serve.add_argument("--config", help="TOML configuration file")
    serve.add_argument("--listen", help="HOST:PORT, overriding gateway.listen")
    serve.add_argument(
        "--role", choices=["all", "api", "workers"], default="all",
        help="all: API and workers in this process (default); api: the API only; workers: the "
        "dispatcher, deliverer and poller only, serving /healthz, /readyz and /metrics on "
        "--listen (required)",
    )  # fmt: skip

    sub.add_parser("openapi", help="print the OpenAPI document of the HTTP API")
    backup = sub.add_parser(
        "backup", help="copy the SQLite store to a new file, safely while the gateway runs"
    )
    backup.add_argument("dest", help="the backup file to write (must not exist)")
    backup.add_argument("--config", help="the gateway's configuration (default: the demo's)")
    contracts_cli.add_parser(sub)

    demo = sub.add_parser("demo", help="submit sample cases to a running gateway and watch them")
    demo.add_argument("--config", help="the gateway's configuration (default: the demo's)")
    demo.add_argument("--gateway", help="gateway URL (default: from the configuration)")
    demo.add_argument("--cases", type=int, default=12, help="how many cases to submit")

    sim = sub.add_parser("simulate", help="play a province's platform on loopback")
    sim.add_argument(
        "--style", choices=["rest", "soap", "ticket", "files", "frontdb"], default="rest"
    )
    sim.add_argument(
        "--folder", default="var/simulator", help="files and frontdb styles: where they live"
    )
    sim.add_argument("--region", required=True)
    sim.add_argument("--listen", default="127.0.0.1:9101")
    sim.add_argument("--gateway", default="http://127.0.0.1:8080")
    sim.add_argument("--key-id", required=True, help="this province's key id at the gateway")
    sim.add_argument("--secret", required=True, help="that key's secret")
    sim.add_argument("--callback-secret", help="verify the gateway's callbacks with this")
    sim.add_argument("--latency", type=float, default=0.2, help="seconds between status reports")
    sim.add_argument("--failure-rate", type=float, default=0.0, help="share of submits → 503")
    sim.add_argument("--deny-rate", type=float, default=0.0, help="share of denied outcomes")
    return p


def run_event_loop(main: Any) -> None:
    """Run on uvloop where it is installed: the same asyncio, faster I/O. (The benchmarks run
    an in-process gateway through this too, so that it runs as ``tongban serve`` does.)

    The switch interval is shortened so a thread beside the loop (the SQLite store's reader, the
    file adapters' workers), which gives up the GIL for every call into C, gets it back in well
    under the default 5 ms rather than waiting a whole interval behind the busy event loop. (The
    SQLite writer is a process of its own for the same reason: see gateway.store.sqlite_writer.)
    """
    sys.setswitchinterval(0.0005)
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    if args.command == "openapi":
        from gateway import __version__
        from gateway.http.openapi import build

        print(json.dumps(build(__version__), ensure_ascii=False, indent=2))
        return 0
    if args.command == "contracts":
        code: int = asyncio.run(contracts_cli.run(args))
        return code
    if args.command == "backup":
        try:
            return _backup(args)
        except ConfigError as exc:
            print(f"tongban: configuration error: {exc}", file=sys.stderr)
            return 2
    run = {"serve": _serve, "simulate": _simulate, "demo": _demo}[args.command]
    try:
        run_event_loop(run(args))
    except ConfigError as exc:
        print(f"tongban: configuration error: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"tongban: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
