"""The adapter SDK: what an adapter is, what it returns, and how one is found.

An adapter turns a canonical case into a partner's native request and the partner's native answers
into canonical updates. It never raises for a partner's behaviour: every call returns an outcome,
and every failure is classified *retryable* (timeouts, connection errors, 5xx, 429, a closed
service window) or *permanent* (the partner's own validation refusal).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar, Protocol, runtime_checkable

import aiohttp
from pydantic import BaseModel, ConfigDict

from gateway.clock import Clock
from gateway.lifecycle import PARTNER_REPORTS, Status
from gateway.privacy import masked

ENTRY_POINT_GROUP = "tongban.adapters"
FORMAT_ENTRY_POINT_GROUP = "tongban.recipient_formats"
log = logging.getLogger(__name__)


# ---- canonical data handed to adapters -------------------------------------------------------


@dataclass(frozen=True)
class CanonicalCase:
    """What an adapter needs to know of a case to send it."""

    case_id: str
    request_id: str
    item_code: str
    contract_version: int
    origin_region: str
    handling_region: str
    applicant: Mapping[str, Any]
    payload: Mapping[str, Any]
    attachments: tuple[Mapping[str, Any], ...] = ()
    partner_ref: str | None = None


@dataclass(frozen=True)
class StatusUpdate:
    """One status report from a partner, in canonical words.

    ``case_id`` or ``partner_ref`` identifies the case; ``status`` is a lifecycle status name.
    """

    status: str
    case_id: str | None = None
    partner_ref: str | None = None
    outcome: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    partner_event_id: str | None = None


# The lifecycle statuses a handling partner may report, in lifecycle order (never ``withdrawn``,
# the origin's act, nor ``failed``, the gateway's): what a ``StatusUpdate.status`` may say.
PARTNER_STATUSES: tuple[str, ...] = tuple(s.value for s in Status if s in PARTNER_REPORTS)


# ---- outcomes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    """The partner took the request. ``updates`` are statuses it reported with its answer."""

    partner_ref: str | None = None
    updates: tuple[StatusUpdate, ...] = ()


@dataclass(frozen=True)
class Retryable:
    """Try again later: timeouts, connection errors, 5xx, 429, a closed service window."""

    reason: str
    retry_after: float | None = None


@dataclass(frozen=True)
class Permanent:
    """The partner refused the request as invalid; retrying the same request cannot help."""

    reason: str


Outcome = Accepted | Retryable | Permanent


_CODE = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_DIGIT_RUN = re.compile(r"[0-9]{7}")


def printable_code(code: object) -> str:
    """A partner's error code for a reason or a log line, only if it looks like a code.

    Some platforms put a message in the code field, or the applicant's ID or phone number; free
    text and long runs of digits are replaced, so no personal data reaches a reason.
    """
    if isinstance(code, bool) or not isinstance(code, str | int):
        return "<not a code>"
    text = str(code)
    return text if _CODE.fullmatch(text) and not _DIGIT_RUN.search(text) else "<not a code>"


# ---- context and protocol ---------------------------------------------------------------------


class MaskingFilter(logging.Filter):
    """Masks known sensitive values (``***``) in every record that passes the adapter's logger.

    The gateway registers the values of each case while an adapter works on it (:meth:`masking`)
    — the applicant's ID number, name and phone and the contract's sensitive fields — so an
    adapter that logs a request by mistake still leaks nothing.
    """

    def __init__(self, sensitive: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self._counts: dict[str, int] = dict.fromkeys(sensitive, 1)

    @property
    def sensitive(self) -> frozenset[str]:
        return frozenset(self._counts)

    @contextmanager
    def masking(self, values: Iterable[str]) -> Iterator[None]:
        """Mask ``values`` for as long as the block runs (calls may overlap)."""
        held = [v for v in set(values) if len(v) >= 2]
        for v in held:
            self._counts[v] = self._counts.get(v, 0) + 1
        try:
            yield
        finally:
            for v in held:
                left = self._counts[v] - 1
                if left:
                    self._counts[v] = left
                else:
                    del self._counts[v]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._counts:
            return True
        record.msg, record.args = masked(record.getMessage(), self._counts), None
        return True


@dataclass
class AdapterContext:
    """What the gateway gives an adapter: an HTTP session, a clock, a logger and its region."""

    region: str
    session: aiohttp.ClientSession
    clock: Clock
    logger: logging.Logger
    timeout: float = 15.0


class AdapterSettings(BaseModel):
    """Base of every adapter kind's settings; unknown keys are refused. A validation error never
    shows the input: settings hold tokens, secrets and DSNs."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    kind: str


@runtime_checkable
class Adapter(Protocol):
    """A partner adapter. Implementations are plain classes built from validated settings."""

    kind: ClassVar[str]
    Settings: ClassVar[type[AdapterSettings]]

    async def submit(self, case: CanonicalCase, ctx: AdapterContext) -> Outcome: ...

    async def supplement(
        self, case: CanonicalCase, material: Mapping[str, Any], ctx: AdapterContext
    ) -> Outcome: ...

    async def withdraw(self, case: CanonicalCase, reason: str, ctx: AdapterContext) -> Outcome: ...

    def parse_inbound(self, body: bytes, headers: Mapping[str, str]) -> list[StatusUpdate]:
        """Turn a partner's own message into updates; raise ValueError for a malformed one."""
        ...


@runtime_checkable
class PollingAdapter(Protocol):
    """An adapter whose partner does not (only) call back: the gateway asks on a schedule.

    ``poll`` gets the cases the partner holds and has not decided yet (it may ignore them, e.g.
    when it reads a result folder or table instead) and returns whatever updates it found. It
    must not raise for the partner's behaviour; an exception is logged and the poll retried.
    The gateway calls ``poll`` again only once everything the previous call returned is stored.
    """

    poll_interval: float

    async def poll(
        self, open_cases: Sequence[CanonicalCase], ctx: AdapterContext
    ) -> list[StatusUpdate]: ...


@runtime_checkable
class HealthReporting(Protocol):
    """An adapter that can say more about its partner than the gateway's own counts: e.g. a
    folder's free space, a pool's connections, the partner's status page. Optional; it must
    answer quickly and never raise for the partner's behaviour."""

    async def health(self, ctx: AdapterContext) -> Mapping[str, Any]: ...


@runtime_checkable
class RecipientFormat(Protocol):
    """How a recipient's system reads the gateway's events: the national hub, a subscriber, or a
    province's own callback. Plain classes built from validated settings, like adapters; both
    methods are pure. The delivery guarantees stay the gateway's: it signs and POSTs the body,
    keeps per-case order and sends the same events again until ``refusal`` returns None."""

    kind: ClassVar[str]
    Settings: ClassVar[type[AdapterSettings]]
    content_type: str

    def render(self, events: Sequence[Mapping[str, Any]], batch: bool, now_iso: str) -> bytes:
        """The body for these events (as the gateway delivers them, in order): all of them for
        a recipient that takes batches, else exactly one."""
        ...

    def refusal(self, status: int, body: bytes) -> str | None:
        """None if the answer acknowledges the events; else a short reason, never the body."""
        ...


def describe(kind: type[Any]) -> dict[str, Any]:
    """An adapter kind's settings, as JSON Schema: what an operator may write in its table."""
    schema: dict[str, Any] = kind.Settings.model_json_schema()
    return {"kind": kind.kind, "doc": (kind.__doc__ or "").strip(), "settings": schema}


class AdapterFactory(Protocol):
    kind: ClassVar[str]
    Settings: ClassVar[type[AdapterSettings]]

    def __call__(self, settings: Any) -> Adapter: ...


def builtin_adapters() -> dict[str, type[Any]]:
    from adapters.async_ticket import AsyncTicketAdapter
    from adapters.file_exchange import FileExchangeAdapter
    from adapters.frontdb_exchange import FrontDbAdapter
    from adapters.rest_json import RestJsonAdapter
    from adapters.soap_xml import SoapXmlAdapter

    kinds = (
        RestJsonAdapter,
        SoapXmlAdapter,
        AsyncTicketAdapter,
        FileExchangeAdapter,
        FrontDbAdapter,
    )
    return {cls.kind: cls for cls in kinds}


def builtin_formats() -> dict[str, type[Any]]:
    from adapters.event_json import EventJson
    from adapters.report_envelope import ReportEnvelope

    return {cls.kind: cls for cls in (EventJson, ReportEnvelope)}


def discover() -> dict[str, type[Any]]:
    """Built-in adapter classes plus third-party ones registered under ``tongban.adapters``.

    A built-in kind cannot be replaced, and of two packages registering the same kind the first
    wins; either case is logged, since a silently ignored adapter is hard to debug.
    """
    return _with_entry_points(builtin_adapters(), ENTRY_POINT_GROUP, "adapter")


def discover_formats() -> dict[str, type[Any]]:
    """Built-in recipient formats plus those registered under ``tongban.recipient_formats``,
    by the same rules as :func:`discover`."""
    return _with_entry_points(builtin_formats(), FORMAT_ENTRY_POINT_GROUP, "recipient format")


def _with_entry_points(found: dict[str, type[Any]], group: str, what: str) -> dict[str, type[Any]]:
    for ep in entry_points(group=group):
        if ep.name in found:
            log.warning("%s kind %r from %s ignored: the kind is already taken",
                        what, ep.name, ep.value)  # fmt: skip
            continue
        found[ep.name] = ep.load()
    return found


def build(settings: Mapping[str, Any], registry: Mapping[str, type[Any]]) -> Adapter:
    """Validate an ``adapter = {kind = …}`` table and build the adapter; ValueError if bad."""
    adapter: Adapter = _built(settings, registry, "adapter")
    return adapter


def build_format(settings: Mapping[str, Any], registry: Mapping[str, type[Any]]) -> RecipientFormat:
    """Validate a ``format = {kind = …}`` table and build the format; ValueError if bad."""
    fmt: RecipientFormat = _built(settings, registry, "recipient format")
    return fmt


def _built(settings: Mapping[str, Any], registry: Mapping[str, type[Any]], what: str) -> Any:
    kind = str(settings.get("kind"))
    if kind not in registry:
        raise ValueError(f"unknown {what} kind {kind!r}; known: {', '.join(sorted(registry))}")
    cls = registry[kind]
    return cls(cls.Settings.model_validate(dict(settings)))
