"""Shared test machinery: a gateway with real simulators on free loopback ports."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import orjson
import pytest

from adapters.frontdb_exchange import import_asyncpg
from gateway.app import Gateway
from gateway.config import Config, parse
from gateway.identifiers import id_check_char
from gateway.signing import sign_headers
from gateway.simulators.rest import ProvinceSimulator, SimulatorSettings
from gateway.store import Role, sqlite_path

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS = ROOT / "contracts"
OPERATOR_TOKEN = "test-operator-token"  # role admin
VIEWER_TOKEN = "test-viewer-token"
ORIGIN, HANDLER = "330000", "510000"
KEYS = {
    ORIGIN: ("zj-test-01", "zj-test-secret-0000001"),
    HANDLER: ("sc-test-01", "sc-test-secret-0000001"),
}
CALLBACK = {ORIGIN: "zj-callback-secret-01", HANDLER: "sc-callback-secret-01"}
HUB_SECRET = "hub-secret-000001"
PG_BASE = os.environ.get("TONGBAN_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


_HANDED_OUT: set[int] = set()  # this test process's ports, never handed out twice


def free_port() -> int:
    """A port nothing listens on now, and one this test process has not handed out before (the
    OS may offer a just-released port again, and a test starting several servers would then give
    two of them the same port)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def pg_unavailable(reason: str) -> NoReturn:
    """Skip a PostgreSQL test that cannot run here; under ``CI=true`` fail it instead, since
    there a missing server or driver is a broken set-up, not an optional extra."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: PostgreSQL tests must run, not skip)")
    pytest.skip(reason)


@asynccontextmanager
async def pg_schema() -> AsyncIterator[str]:
    """A fresh schema ``t_<hex>`` on the test server (``PG_BASE``); yields a DSN whose
    search_path is that schema, and drops the schema with everything in it afterwards."""
    try:
        asyncpg = import_asyncpg()
    except ImportError:
        pg_unavailable("asyncpg is not installed")
    try:
        conn = await asyncpg.connect(PG_BASE, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        pg_unavailable(f"no PostgreSQL server reachable at {PG_BASE} ({type(exc).__name__})")
    schema = f"t_{secrets.token_hex(6)}"
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    joiner = "&" if "?" in PG_BASE else "?"
    try:
        yield f"{PG_BASE}{joiner}options=-csearch_path%3D{schema}"
    finally:
        conn = await asyncpg.connect(PG_BASE, timeout=5)
        try:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        finally:
            await conn.close()


def citizen_id(prefix17: str = "11010519491231002") -> str:
    return prefix17 + id_check_char(prefix17)


def medical_filing(request_id: str, **overrides: Any) -> dict[str, Any]:
    """A valid 异地就医登记备案 (KSTB-YB-001) submission, routed to Sichuan."""
    body: dict[str, Any] = {
        "request_id": request_id,
        "item_code": "KSTB-YB-001",
        "applicant": {"id_type": "111", "id_number": citizen_id(), "name": "张三",
                      "phone": "13800000000"},
        "payload": {
            "insured_region": "510100",
            "insurance_type": "310",
            "filing_type": "11",
            "treatment_region": "330100",
            "start_date": "2026-12-01",
            "contact_phone": "13800000000",
            "commitment_signed": True,
        },
    }  # fmt: skip
    body.update(overrides)
    return body


def pension_transfer(request_id: str, **payload: Any) -> dict[str, Any]:
    """A valid 基本养老保险关系转移接续 (KSTB-RS-001, multi_site) submission from Zhejiang: the
    transfer-out leg in Sichuan first, then the transfer-in leg back in Zhejiang."""
    example = json.loads((CONTRACTS / "examples" / "KSTB-RS-001.json").read_text("utf-8"))
    example.update({"transfer_out_region": "510104", "transfer_in_region": "330106", **payload})
    return {
        "request_id": request_id,
        "item_code": "KSTB-RS-001",
        "applicant": {"id_type": "111", "id_number": citizen_id(), "name": "李四",
                      "phone": "13900000000"},
        "payload": example,
    }  # fmt: skip


def gateway_config(
    store: str,
    port: int,
    sim_ports: dict[str, int],
    hub_port: int,
    top: dict[str, Any] | None = None,
    partner_settings: Mapping[str, Mapping[str, Any]] | None = None,
    **gateway: Any,
) -> Config:
    """A test configuration; ``top`` adds top-level sections (e.g. ``subscribers``) and
    ``partner_settings`` settings of a partner's entry, by region."""
    raw: dict[str, Any] = {
        "gateway": {
            "listen": f"127.0.0.1:{port}",
            "store": store,
            "contracts": str(CONTRACTS),
            "retry": {"base_seconds": 0.05, "cap_seconds": 0.5, "max_attempts": 200},
            **gateway,
        },
        "national_hub": {"url": f"http://127.0.0.1:{hub_port}/events", "secret": HUB_SECRET},
        "operators": [
            {
                "name": "ops",
                "token_sha256": hashlib.sha256(OPERATOR_TOKEN.encode()).hexdigest(),
                "role": "admin",
            },
            {
                "name": "watcher",
                "token_sha256": hashlib.sha256(VIEWER_TOKEN.encode()).hexdigest(),
                "role": "viewer",
            },
        ],
        "partners": [
            {
                "region": region,
                "name": f"platform {region}",
                "callback_url": f"http://127.0.0.1:{p}/events",
                "callback_secret": CALLBACK[region],
                "keys": {KEYS[region][0]: KEYS[region][1]},
                "adapter": {"kind": "rest_json", "base_url": f"http://127.0.0.1:{p}"},
                **(partner_settings or {}).get(region, {}),
            }
            for region, p in sim_ports.items()
        ],
        **(top or {}),
    }
    return parse(raw, "test config")


async def wait_for(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool], within: float = 30.0, what: str = ""
) -> None:
    """Poll a condition every 20 ms until it holds; fail after a generous deadline."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.02)


@dataclass
class Client:
    """A province's platform calling the gateway, signing every request."""

    session: aiohttp.ClientSession
    base: str
    region: str
    key: tuple[str, str] | None = None  # (key id, secret); default: the region's test key

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        sign: bool = True,
        scheme: str = "hmac-sha256",
    ) -> tuple[int, Any, dict[str, str]]:
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else b"")
        h = {"Content-Type": "application/json"} if data else {}
        if sign:
            key_id, secret = self.key or KEYS[self.region]
            h.update(sign_headers(key_id, secret, method, path, data, scheme=scheme))
        h.update(headers or {})
        async with self.session.request(method, self.base + path, data=data, headers=h) as r:
            text = await r.read()
            parsed = orjson.loads(text) if text and r.content_type.endswith("json") else text
            return r.status, parsed, dict(r.headers)

    async def case(self, case_id: str) -> dict[str, Any]:
        status, body, _ = await self.call("GET", f"/v1/cases/{case_id}")
        assert status == 200, body
        return dict(body)


@dataclass
class World:
    gateway: Gateway
    config: Config
    sims: dict[str, ProvinceSimulator]
    hub: ProvinceSimulator
    origin: Client
    handler: Client
    session: aiohttp.ClientSession
    extra: dict[str, Any] = field(default_factory=dict)


def simulator(region: str, gw_port: int, **kw: Any) -> ProvinceSimulator:
    return ProvinceSimulator(
        SimulatorSettings(
            region=region, gateway_url=f"http://127.0.0.1:{gw_port}", key_id=KEYS[region][0],
            secret=KEYS[region][1], callback_secret=CALLBACK[region], latency=0.01,
            report_batch_window=0.01, retry_backoff=0.05, retry_backoff_max=0.3, **kw,
        )
    )  # fmt: skip


@asynccontextmanager
async def world(
    tmp_path: Path,
    top: dict[str, Any] | None = None,
    *,
    store: str | None = None,
    role: Role = "all",
    partner_settings: Mapping[str, Mapping[str, Any]] | None = None,
    format_kinds: Mapping[str, type[Any]] | None = None,
    **gateway: Any,
) -> AsyncIterator[World]:
    """Everything on ports the OS picked (port 0), so parallel runs cannot collide; whatever
    started is stopped again even if a later step of the setup fails. ``store`` is the store URL
    (the ``store_url`` fixture gives one per backend); by default a SQLite file in ``tmp_path``.
    ``role``: the parts the gateway runs (``tongban serve --role``)."""
    async with AsyncExitStack() as stack:
        sims = {r: simulator(r, 0) for r in (ORIGIN, HANDLER)}
        hub = ProvinceSimulator(SimulatorSettings(region="100000", callback_secret=HUB_SECRET))
        ports = {}
        for r, sim in sims.items():
            ports[r] = await sim.start("127.0.0.1", 0)
            stack.push_async_callback(sim.stop)
        hub_port = await hub.start("127.0.0.1", 0)
        stack.push_async_callback(hub.stop)
        url = f"sqlite:///{tmp_path}/gw.db" if store is None else store
        config = gateway_config(url, 0, ports, hub_port, top, partner_settings, **gateway)
        gw = Gateway(config, poll_interval=0.05, role=role, format_kinds=format_kinds)
        stack.push_async_callback(gw.stop)
        gw_port = await gw.start()
        for sim in sims.values():
            sim.settings.gateway_url = f"http://127.0.0.1:{gw_port}"
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        stack.push_async_callback(session.close)
        base = f"http://127.0.0.1:{gw_port}"
        yield World(gw, config, sims, hub, Client(session, base, ORIGIN),
                    Client(session, base, HANDLER), session)  # fmt: skip


async def raw_sql(store_url: str, sql: str) -> None:
    """Run one statement on the gateway's store behind its back (as an intruder, or a broken
    store, would), on either backend."""
    if store_url.startswith("sqlite:"):
        db = sqlite3.connect(sqlite_path(store_url), isolation_level=None)
        try:
            db.execute(sql)
        finally:
            db.close()
        return
    conn = await import_asyncpg().connect(store_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def verified_audit(client: Client) -> dict[str, Any]:
    """The audit chain's verification through the operator API; it must hold."""
    token = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    status, verdict, _ = await client.call("GET", "/v1/ops/audit/verify", sign=False, headers=token)
    assert status == 200 and verdict["verified"] is True, verdict
    return dict(verdict)


def complete_in_order(receiver: ProvinceSimulator, case_ids: list[str]) -> bool:
    """Every case's events arrived at the receiver, in order, up to ``completed``. (Where a
    partner's report overtook the dispatch answer, as it may with two processes or after a kill,
    a case has no ``dispatched`` event: its events are numbered without a gap all the same.)"""
    for case_id in case_ids:
        events = receiver.events.get(case_id, [])
        if not events or events[-1]["status"] != "completed":
            return False
        if [e["seq"] for e in events] != list(range(1, len(events) + 1)):
            return False
    return True


async def submit_filings(origin: Client, prefix: str, n: int) -> list[str]:
    """Submit ``n`` medical filings (request ids ``prefix-0`` …), each answered 202; their ids."""
    ids = []
    for i in range(n):
        status, case, _ = await origin.call("POST", "/v1/cases", medical_filing(f"{prefix}-{i}"))
        assert status == 202, case
        ids.append(case["case_id"])
    return ids
