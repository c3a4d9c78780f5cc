"""Assembly: one :class:`Gateway` wires the store, contracts, adapters, workers and HTTP server.

Everything is built here and passed down; nothing below reaches for globals. Tests start a
Gateway in-process on a free port, or run ``tongban serve`` as a real process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from adapters.sdk import Adapter, AdapterContext, MaskingFilter, build, discover, discover_formats
from gateway import __version__
from gateway.audit_ops import AuditOps
from gateway.clock import Clock, SystemClock
from gateway.config import Config, ConfigError, contracts_path
from gateway.contract_ops import ContractOps
from gateway.contracts import ContractList
from gateway.delivery import Deliverer, targets
from gateway.dispatcher import Dispatcher, PartnerSlot
from gateway.http import openapi
from gateway.http.app import MONITORING, HttpDeps, build_app
from gateway.http.auth import Authenticator
from gateway.metrics import Metrics
from gateway.partner_ops import PartnerOps
from gateway.poller import Poller
from gateway.ratelimit import RateLimiter
from gateway.registry import ContractRegistry
from gateway.retry import Circuit
from gateway.service import CaseService, Counters, Wakeups
from gateway.signing import NonceCache
from gateway.store import Role, open_store
from gateway.store.base import Store
from gateway.store.postgres import PostgresStore
from gateway.supervisor import Supervisor

log = logging.getLogger(__name__)


def build_adapters(
    config: Config, registry: Mapping[str, type[Any]] | None = None
) -> dict[str, Adapter]:
    """Region → adapter for every partner that handles cases; ConfigError names a bad one."""
    registry = registry if registry is not None else discover()
    out: dict[str, Adapter] = {}
    for i, p in enumerate(config.partners):
        if p.adapter is None:
            continue
        try:
            out[p.region] = build(p.adapter, registry)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise ConfigError(f"partners[{i}].adapter: {exc}") from None
    return out


class Gateway:
    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        base_dir: Path | None = None,
        poll_interval: float = 0.5,
        adapter_kinds: Mapping[str, type[Any]] | None = None,
        format_kinds: Mapping[str, type[Any]] | None = None,
        role: Role = "all",
    ) -> None:
        self.config = config
        self.role = role
        self.clock = clock or SystemClock()
        self.base_dir = base_dir
        self.poll_interval = poll_interval
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.metrics = Metrics()
        self.supervisor = Supervisor()
        self.contracts = ContractList.load(contracts_path(config, base_dir))
        self.adapter_kinds = dict(adapter_kinds) if adapter_kinds is not None else discover()
        self.adapters = build_adapters(config, self.adapter_kinds)
        self.format_kinds = dict(format_kinds) if format_kinds is not None else discover_formats()
        self.targets = targets(config, self.format_kinds)  # a bad format table stops the start
        self.store: Store | None = None
        self.session: aiohttp.ClientSession | None = None
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, port: int | None = None) -> int:
        """Open the store, start the workers and the HTTP server; return the bound port.

        ``role`` "api" runs no workers; "workers" serves only ``/healthz``, ``/readyz`` and
        ``/metrics``. Workers that share the store with other processes are woken by their
        commits (:meth:`gateway.store.base.Store.follow_changes`), not only by their own."""
        g = self.config.gateway
        self.store = await open_store(
            g.store, synchronous=g.sqlite_synchronous, pool_size=g.store_pool_size, role=self.role
        )
        self.registry = ContractRegistry(self.store, self.contracts)
        await self.registry.bootstrap(self.contracts, self.clock.now())
        connector = aiohttp.TCPConnector(limit=512, limit_per_host=128)
        self.session = aiohttp.ClientSession(connector=connector)
        service = self._service(self.store)
        dispatcher = self._dispatcher(self.store, service, self.session)
        deliverer = Deliverer(
            store=self.store, session=self.session, config=self.config, recipients=self.targets,
            clock=self.clock, owner=self.owner, poll_interval=self.poll_interval,
            on_result=self.metrics.on_delivery,
        )  # fmt: skip
        service.wake = Wakeups(dispatch=dispatcher.wake, deliver=deliverer.wake)
        if self.role != "api":
            poller = Poller(store=self.store, service=service, partners=dispatcher.partners)
            self.supervisor.start("dispatcher", dispatcher.run)
            self.supervisor.start("deliverer", deliverer.run)
            self.supervisor.start("poller", poller.run)
        if self.role == "workers" or (self.role == "all" and isinstance(self.store, PostgresStore)):
            # Another process shares the store: wake the workers for the work it commits.
            store = self.store

            def wake() -> None:
                dispatcher.wake()
                deliverer.wake()

            self.supervisor.start("store-changes", lambda: store.follow_changes(wake))
        self.supervisor.start("contracts", self.registry.follow)
        self.service, self.dispatcher, self.deliverer = service, dispatcher, deliverer
        self.runner = web.AppRunner(self._http(service), access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(
            self.runner, g.host, g.port if port is None else port, backlog=1024,
            reuse_port=g.reuse_port or None,
        )  # fmt: skip
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else g.port
        log.info("gateway listening on %s:%d (store %s)", g.host, self.port,
                 urlsplit(g.store).scheme)  # fmt: skip
        return self.port

    def _service(self, store: Store) -> CaseService:
        return CaseService(
            config=self.config, store=store, registry=self.registry, adapters=self.adapters,
            clock=self.clock,
            count=Counters(submitted=self.metrics.on_submit, ignored=self.metrics.on_ignored),
        )  # fmt: skip

    def _dispatcher(
        self, store: Store, service: CaseService, session: aiohttp.ClientSession
    ) -> Dispatcher:
        g = self.config.gateway
        slots = {}
        for p in self.config.partners:
            if p.region not in self.adapters:
                continue
            logger = logging.getLogger(f"tongban.adapter.{p.region}")
            mask = MaskingFilter()
            logger.filters = [f for f in logger.filters if not isinstance(f, MaskingFilter)]
            logger.addFilter(mask)
            ctx = AdapterContext(p.region, session, self.clock, logger, g.request_timeout_seconds)
            circuit = Circuit(base=g.retry.base_seconds, cap=min(60.0, g.retry.cap_seconds))
            slots[p.region] = PartnerSlot(
                self.adapters[p.region], ctx, p.limits.concurrency, mask=mask, circuit=circuit
            )
        return Dispatcher(
            store=store, service=service, partners=slots, clock=self.clock, retry=g.retry,
            lease=g.lease_seconds, owner=self.owner, poll_interval=self.poll_interval,
            batch=g.dispatch_batch, on_outcome=self.metrics.on_dispatch,
        )  # fmt: skip

    def _http(self, service: CaseService) -> web.Application:
        assert self.store is not None
        g = self.config.gateway
        auth = Authenticator(
            self.config, self.clock, NonceCache(),
            RateLimiter(g.rate_limit_per_second, g.rate_limit_burst),
            shared_nonces=self.store if isinstance(self.store, PostgresStore) else None,
        )  # fmt: skip
        document: dict[str, Any] = openapi.build(__version__)
        deps = HttpDeps(
            service=service, auth=auth, metrics=self.metrics, store=self.store,
            is_ready=self.is_ready, openapi=lambda: document,
            contracts=ContractOps(
                self.store, self.registry, self.clock,
                frozenset(s.name for s in self.config.subscribers),
            ),
            partners=PartnerOps(
                self.config, self.store, self.dispatcher.partners, self.clock,
                self.dispatcher.wake, calls_here=self.role != "api",
            ),
            audit=AuditOps(self.store),
            adapter_kinds=self.adapter_kinds, format_kinds=self.format_kinds,
        )  # fmt: skip
        return build_app(deps, g.max_body_bytes, MONITORING if self.role == "workers" else None)

    def is_ready(self) -> bool:
        return bool(self.store and self.store.ready and self.supervisor.alive())

    async def stop(self) -> None:
        """Stop taking requests, stop the workers, then close the store: nothing half-done."""
        if self.runner:
            await self.runner.cleanup()
        await self.supervisor.stop()
        for adapter in self.adapters.values():
            close = getattr(adapter, "close", None)  # adapters holding pools may have one
            if close is not None:
                await close()
        if self.session:
            await self.session.close()
        if self.store:
            await self.store.close()

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()
