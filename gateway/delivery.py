"""The delivery worker: every event to every recipient, at least once, in per-case order.

Work comes from the store as leased *cursors*: for one case and one recipient, the events after
the last one acknowledged. A recipient that takes batches gets a JSON array of events of many
cases (each case's events in order); any other gets the next event of each case alone, and the
one after only once that is acknowledged. Any ``2xx`` acknowledges (for a recipient that reads
report envelopes, :mod:`adapters.report_envelope`, only an accepting code in the body does);
anything else is retried with backoff, with the same ``event_id``, for as long as it takes. A
recipient that keeps failing has its circuit opened so its backlog does not crowd out the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from pydantic import ValidationError
from yarl import URL

from adapters.event_json import EventJson, EventJsonSettings
from adapters.sdk import RecipientFormat, build_format
from gateway import logs
from gateway.clock import Clock, iso
from gateway.config import Config, ConfigError, RetryPolicy, problems
from gateway.retry import Circuit, backoff
from gateway.service import HUB, render_event, subscriber_recipient
from gateway.signing import sign_headers
from gateway.store.base import Ack, DeliveryClaim, DeliveryFailed, EventRecord, Op, Store
from gateway.supervisor import Signal

log = logging.getLogger(__name__)
CLAIM_LIMIT = 500  # cursors per claim; a full claim goes again at once
LINGER = 0.005  # seconds to let work gather after a wake-up


def _event_json() -> RecipientFormat:
    return EventJson(EventJsonSettings())


@dataclass(frozen=True)
class Target:
    """Where and how one recipient is reached, and what its system reads."""

    url: str
    secret: str
    batch: bool
    fmt: RecipientFormat = field(default_factory=_event_json)

    def render(self, events: list[EventRecord], batch: bool, now: float) -> bytes:
        return self.fmt.render([render_event(e) for e in events], batch, iso(now))

    def refusal(self, status: int, body: bytes) -> str | None:
        """None if the answer acknowledges the events; else why not."""
        return self.fmt.refusal(status, body)


@dataclass
class RecipientState:
    target: Target | None
    circuit: Circuit = field(default_factory=Circuit)
    inflight: int = 0


def _circuit(retry: RetryPolicy) -> Circuit:
    """A recipient that is back is tried again within the retry policy's cap (30 s at most)."""
    return Circuit(threshold=3, base=retry.base_seconds, cap=min(30.0, retry.cap_seconds))


def targets(config: Config, formats: Mapping[str, type[Any]]) -> dict[str, Target]:
    """Recipient name → target, from the configuration; ``formats``: the recipient format
    kinds installed. ConfigError names a format table that is unknown or invalid."""

    def fmt(key: str, table: Mapping[str, Any]) -> RecipientFormat:
        try:
            return build_format(table, formats)
        except ValidationError as exc:
            raise ConfigError(f"{key}: {'; '.join(problems(exc))}") from None
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None

    out: dict[str, Target] = {}
    if config.national_hub:
        hub = config.national_hub
        out[HUB] = Target(hub.url, hub.secret, hub.batch, fmt("national_hub.format", hub.format))
    for i, p in enumerate(config.partners):
        if p.callback_url and p.callback_secret:
            key = f"partners[{i}].callback_format"
            out[f"region:{p.region}"] = Target(
                p.callback_url, p.callback_secret, p.batch_callbacks, fmt(key, p.callback_format)
            )
    for i, s in enumerate(config.subscribers):
        key = f"subscribers[{i}].format"
        out[subscriber_recipient(s.name)] = Target(s.url, s.secret, s.batch, fmt(key, s.format))
    return out


class Deliverer:
    def __init__(
        self,
        *,
        store: Store,
        session: aiohttp.ClientSession,
        config: Config,
        recipients: Mapping[str, Target],
        clock: Clock,
        owner: str,
        poll_interval: float = 0.5,
        per_recipient: int = 64,
        on_result: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.store = store
        self.session = session
        self.clock = clock
        self.owner = owner
        self.poll_interval = poll_interval
        self.per_recipient = per_recipient
        g = config.gateway
        self.key_id = g.callback_key_id
        self.retry: RetryPolicy = g.retry
        self.lease = g.lease_seconds
        self.timeout = aiohttp.ClientTimeout(total=g.request_timeout_seconds)
        self.max_events = g.delivery_batch
        self.recipients = {
            name: RecipientState(t, _circuit(self.retry)) for name, t in recipients.items()
        }
        self.signal = Signal()
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_result = on_result or (lambda recipient, ok: None)

    def wake(self) -> None:
        self.signal.set()

    async def run(self) -> None:
        try:
            while True:
                if await self._round() < CLAIM_LIMIT:
                    await self.signal.wait(self.poll_interval, LINGER)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _round(self) -> int:
        now = self.clock.now()
        busy = [
            name
            for name, st in self.recipients.items()
            if not st.circuit.allows(now) or st.inflight >= self.per_recipient
        ]
        claims = await self.store.claim_deliveries(
            self.owner, now, self.lease, CLAIM_LIMIT, busy, self.max_events
        )
        by_recipient: dict[str, list[DeliveryClaim]] = defaultdict(list)
        for claim in claims:
            if claim.events:
                by_recipient[claim.recipient].append(claim)
        for recipient, group in by_recipient.items():
            state = self.recipients.setdefault(
                recipient, RecipientState(None, _circuit(self.retry))
            )
            for request in self._requests(state, group):
                state.inflight += 1
                task = asyncio.create_task(self._send(recipient, state, request))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return len(claims)

    def _requests(
        self, state: RecipientState, group: list[DeliveryClaim]
    ) -> list[list[DeliveryClaim]]:
        """Split claims into requests: batches up to ``max_events``, or one case each."""
        if state.target is None or not state.target.batch:
            return [[c] for c in group]
        requests: list[list[DeliveryClaim]] = [[]]
        size = 0
        for claim in group:
            if size + len(claim.events) > self.max_events and requests[-1]:
                requests.append([])
                size = 0
            requests[-1].append(claim)
            size += len(claim.events)
        return requests

    async def _send(
        self, recipient: str, state: RecipientState, claims: list[DeliveryClaim]
    ) -> None:
        try:
            ops = await self._post(recipient, state, claims)
            await self.store.write(ops, self.clock.now())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("delivery to %s failed unexpectedly (%s); leases will expire", recipient,
                      logs.failure(exc))  # fmt: skip
        finally:
            state.inflight -= 1
            self.signal.set()

    async def _post(
        self, recipient: str, state: RecipientState, claims: list[DeliveryClaim]
    ) -> list[Op]:
        """One batch POST, or for a one-event recipient each claimed event of the case in turn,
        the next only after the previous was acknowledged. Acknowledged ones are written as
        acks; on the first failure the rest waits for a retry."""
        target = state.target
        if target is not None and target.batch:
            error = await self._http(target, [e for c in claims for e in c.events], True)
            self._count(recipient, state, error)
            if error is None:
                return [Ack(recipient, c.case_id, c.events[-1].seq) for c in claims]
            return [self._failed(recipient, c, error) for c in claims]
        (claim,) = claims
        acked: int | None = None
        error = None
        for event in claim.events:
            error = await self._http(target, [event], False)
            self._count(recipient, state, error)
            if error is not None:
                break
            acked = event.seq
        ops: list[Op] = [] if acked is None else [Ack(recipient, claim.case_id, acked)]
        if error is not None:
            ops.append(self._failed(recipient, claim, error))
        return ops

    def _count(self, recipient: str, state: RecipientState, error: str | None) -> None:
        self._on_result(recipient, error is None)
        if error is None:
            state.circuit.success()
        else:
            state.circuit.failure(self.clock.now(), error)
            log.info("delivery to %s failed (%s); will retry", recipient, error)

    def _failed(self, recipient: str, claim: DeliveryClaim, error: str) -> DeliveryFailed:
        delay = backoff(claim.attempts, self.retry.base_seconds, self.retry.cap_seconds)
        return DeliveryFailed(recipient, claim.case_id, self.clock.now() + delay, error)

    async def _http(
        self, target: Target | None, events: list[EventRecord], batch: bool
    ) -> str | None:
        """POST the events; None once acknowledged, else a short reason (never the payload)."""
        if target is None:
            return "recipient is not configured"
        body = target.render(events, batch, self.clock.now())
        url = target.url
        path = URL(url).raw_path_qs
        headers = sign_headers(self.key_id, target.secret, "POST", path, body)
        headers["Content-Type"] = target.fmt.content_type
        try:
            async with self.session.post(
                url, data=body, headers=headers, timeout=self.timeout
            ) as resp:
                return target.refusal(resp.status, await resp.read())
        except TimeoutError:
            return "timeout"
        except aiohttp.ClientError as exc:
            return f"connection error: {type(exc).__name__}"
