"""The adapter conformance kit: the rules every adapter follows, as a pytest suite.

An adapter developer checks an adapter against the rules the built-in adapters pass (SPEC §6). You
write a *double* of your partner: a fake of its system that is real enough to talk to, such as a
small server on loopback, a folder or a database. Then you subclass :class:`ConformanceSuite` in a
test module::

    from adapters.conformance import ConformanceSuite
    from myprov_adapter import MyProvAdapter
    from myprov_double import MyProvDouble          # implements PartnerDouble

    class TestMyProvConformance(ConformanceSuite):
        adapter_class = MyProvAdapter
        double_factory = MyProvDouble               # called with a fresh empty directory, or none
        native_fields = {"case_id": "wbbh", "item_code": "sxbm",
                         "id_number": "sqr.zjhm", "name": "sqr.xm"}

pytest then collects one test per rule (``test_rule_01_…`` to ``test_rule_25_…``). A broken rule
fails with a message that starts ``rule N (title): …``. Every test starts a fresh double, builds
the adapter the way the gateway does (``build(settings, registry)``) and drives it with a real
:class:`~adapters.sdk.AdapterContext` inside its own event loop, so no pytest-asyncio setup is
needed. A rule whose partner behaviour the double cannot produce (``behave`` raises
``NotImplementedError``) is *skipped* with a message that says so. The polling rules are skipped
for an adapter that is not a :class:`~adapters.sdk.PollingAdapter`.

A single rule can also be run directly, outside pytest collection, with
``TestMyProvConformance().run_rule(7, workdir)``: it raises :class:`RuleBroken`, an
``AssertionError``, when the rule is broken.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import dataclasses
import hashlib
import inspect
import io
import json
import logging
import math
import random
import secrets
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web

from adapters.sdk import (
    PARTNER_STATUSES,
    Accepted,
    Adapter,
    AdapterContext,
    AdapterSettings,
    CanonicalCase,
    MaskingFilter,
    Outcome,
    Permanent,
    PollingAdapter,
    Retryable,
    StatusUpdate,
    build,
)
from gateway.clock import SystemClock
from gateway.identifiers import id_check_char

__all__ = [
    "BEHAVIOURS",
    "RULES",
    "Behaviour",
    "ConformanceSuite",
    "HarnessError",
    "PartnerDouble",
    "PollingPartnerDouble",
    "Rule",
    "RuleBroken",
]

# ---- the rules ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    number: int
    title: str
    text: str


_RULE_LIST = [
    Rule(1, "kind and Settings declared",
         "The class declares `kind` (a non-empty name) and `Settings` (a subclass of "
         "AdapterSettings whose `kind` accepts only that name); `build()` makes an Adapter of it "
         "whose submit/supplement/withdraw are coroutines and whose parse_inbound is not."),
    Rule(2, "unknown settings refused",
         "A settings table with a key the adapter does not know is refused with a ValueError "
         "that names the key."),
    Rule(3, "missing settings named",
         "A settings table without a required key is refused with a ValueError that names it."),
    Rule(4, "taken cases are Accepted",
         "When the partner takes the case, submit returns Accepted."),
    Rule(5, "required fields reach the partner",
         "The partner receives the case id, the item code, the applicant's ID number and name, "
         "under its own names."),
    Rule(6, "resubmits are idempotent",
         "Submitting the same case again (after a lost answer, a crash, a replay) is Accepted "
         "again with the same partner reference, and carries the case id the partner deduplicates "
         "on."),
    Rule(7, "timeouts are retryable",
         "A partner that does not answer in time gives Retryable, and the call returns within "
         "ctx.timeout."),
    Rule(8, "connection failures are retryable",
         "A partner that is down (connection refused, unreachable) gives Retryable."),
    Rule(9, "HTTP 5xx is retryable",
         "A partner whose server fails (HTTP 5xx or the transport's equivalent) gives Retryable."),
    Rule(10, "HTTP 429 is retryable",
         "A rate-limited partner (HTTP 429, a quota) gives Retryable; retry_after, if set, is a "
         "non-negative number of seconds."),
    Rule(11, "busy in the body is retryable",
         "A 'system busy' or closed-service-window code inside a successful answer gives "
         "Retryable: classify by the body, not by the HTTP status."),
    Rule(12, "foreign answers are retryable",
         "An answer that is not in the partner's format at all (a proxy's HTML error page) gives "
         "Retryable."),
    Rule(13, "refusals are permanent",
         "The partner's own validation refusal gives Permanent."),
    Rule(14, "supplement and withdraw classified",
         "supplement and withdraw of a case the partner holds give Accepted when it takes them, "
         "and Retryable when it fails or is down."),
    Rule(15, "never raises for partner behaviour",
         "submit, supplement and withdraw return an outcome for every partner behaviour: they "
         "never raise, always return within ctx.timeout and leave the shared session open."),
    Rule(16, "updates are canonical",
         "Every StatusUpdate (in Accepted, from parse_inbound, from poll) has a lifecycle status "
         "a partner may report, names its case, carries an outcome exactly with completed, and "
         "JSON data; updates inside Accepted carry the submitted case's id."),
    Rule(17, "inbound round trip",
         "parse_inbound reads the partner's report of every status the adapter claims to support "
         "as exactly that update for that case; completed carries its outcome and result data."),
    Rule(18, "parse_inbound is pure",
         "parse_inbound is synchronous and does no I/O; the same bytes give the same updates, "
         "whatever was parsed before and on whichever instance."),
    Rule(19, "malformed inbound is a ValueError",
         "A message that cannot be read (not the format at all, cut short) raises ValueError, "
         "never another exception."),
    Rule(20, "inbound raises only ValueError",
         "For any mutation of a valid message (wrong types, missing members, stray bytes) "
         "parse_inbound returns a list of StatusUpdate or raises ValueError; nothing else."),
    Rule(21, "no personal data in logs",
         "No log record (message, arguments, extra fields, traceback) and nothing written to "
         "stdout or stderr during any call carries the applicant's ID number, name or phone."),
    Rule(22, "no personal data in reasons",
         "No Retryable or Permanent reason carries the applicant's ID number, name or phone, even "
         "when the partner's answer quotes them."),
    Rule(23, "poll reports open cases",
         "A PollingAdapter declares a positive poll_interval, and poll returns the partner's "
         "updates for the open cases it is given."),
    Rule(24, "poll survives the partner",
         "poll returns a list, without raising and within its time, while the partner fails, "
         "times out or is down."),
    Rule(25, "partner event ids tell reports apart",
         "Where parse_inbound fills in partner_event_id, the reports of different statuses of "
         "one case carry different ids: the gateway ignores a report whose id it has already "
         "applied to the case."),
]  # fmt: skip
RULES: dict[int, Rule] = {rule.number: rule for rule in _RULE_LIST}


class RuleBroken(AssertionError):
    """A rule is broken; the message starts ``rule N (title):``."""

    def __init__(self, rule: int, detail: str) -> None:
        self.rule = RULES[rule]
        super().__init__(f"rule {rule} ({self.rule.title}): {detail}")


class HarnessError(AssertionError):
    """The double or the suite's configuration is wrong, not (necessarily) the adapter."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"conformance harness: {detail}")


# ---- what the developer provides ----------------------------------------------------------------

Behaviour = Literal[
    "ok", "timeout", "http_500", "http_429", "refuse", "busy_in_body", "garbage", "down"
]
BEHAVIOURS: tuple[Behaviour, ...] = (
    "ok", "busy_in_body", "refuse", "http_429", "http_500", "garbage", "timeout", "down"
)  # fmt: skip
"""Every behaviour, in the order the sweeping rules use (``down`` last: it need not come back)."""


class PartnerDouble(Protocol):
    """The developer's fake of their partner, driven by the suite. One instance per test.

    A double is a real peer of the adapter: a server on loopback (port 0), a folder, a database.
    It records what it receives and behaves as told, so the suite can check the adapter's side.
    """

    async def start(self) -> None:
        """Start serving (bind the port, create the folders)."""
        ...

    async def stop(self) -> None:
        """Stop and release everything; must work in any behaviour, also after ``down``."""
        ...

    def adapter_settings(self) -> dict[str, Any]:
        """The adapter's settings table pointing at this double (after start).

        ``kind`` may be omitted: the suite sets it to the adapter class's. Lower the adapter's own
        timeout here (0.2 s is plenty on loopback) so the timeout rules run fast.
        """
        ...

    def behave(self, mode: Behaviour) -> Awaitable[None] | None:
        """From now on, answer every call of the adapter like this (may be ``async``):

        - ``ok``: take the request; a repeat of a case it holds gets the same reference;
        - ``timeout``: do not answer for longer than the adapter's timeout;
        - ``http_500``: the partner's server fails (HTTP 5xx or the transport's equivalent);
        - ``http_429``: rate limited or over a quota;
        - ``refuse``: the partner's own validation refuses the request;
        - ``busy_in_body``: a successful answer (HTTP 200) carrying a "system busy" code;
        - ``garbage``: a successful answer that is not the partner's format (an HTML page);
        - ``down``: unreachable (connection refused); it need not come back.

        Quote the applicant (ID number, name, phone) in refusals and errors, as real partners do,
        so rule 22 has something to catch. Raise ``NotImplementedError`` for a behaviour the
        double cannot produce: the rules that need it are then skipped, with a message.
        """
        ...

    def received(self) -> list[Any]:
        """The native requests received so far, oldest first, decoded (dict, str or bytes)."""
        ...

    def native_report(
        self,
        case_id: str,
        status: str,
        outcome: str | None,
        result: Mapping[str, Any],
        partner_ref: str,
    ) -> bytes:
        """A message body in the partner's own format reporting one status of one case.

        ``status`` is a canonical lifecycle word; translate it to the partner's code. ``outcome``
        is ``approved``/``denied`` with ``completed``, else None; ``result`` is the result data.
        """
        ...


class HttpPartnerDouble(ABC):
    """The plumbing every HTTP double shares, for subclassing: a server on a free loopback port,
    the current behaviour, the decoded requests received, and ``down`` as really not listening.

    A subclass adds its routes in :meth:`routes` (and ``url_path`` if the adapter is given a full
    endpoint rather than a base URL), appends what it receives to ``self._received``, and
    implements the rest of :class:`PartnerDouble`.
    """

    url_path: ClassVar[str] = ""

    def __init__(self) -> None:
        self.mode: Behaviour = "ok"
        self._received: list[Any] = []
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._url = ""

    @abstractmethod
    def routes(self, app: web.Application) -> None:
        """Add the partner's routes to ``app``."""

    async def start(self) -> None:
        app = web.Application()
        self.routes(app)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self._runner = runner
        self._url = f"http://127.0.0.1:{runner.addresses[0][1]}{self.url_path}"

    async def stop(self) -> None:
        self._closing.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def behave(self, mode: Behaviour) -> None:
        self.mode = mode
        if mode == "down":  # nothing listens any more: connection refused
            await self.stop()

    def received(self) -> list[Any]:
        return list(self._received)


class PollingPartnerDouble(PartnerDouble, Protocol):
    """A double for a :class:`~adapters.sdk.PollingAdapter`: it can also hold news to be polled."""

    def settle(
        self,
        case_id: str,
        partner_ref: str | None,
        status: str,
        outcome: str | None,
        result: Mapping[str, Any],
    ) -> Awaitable[None] | None:
        """Make the partner hold this status for the case, so that the next poll finds it."""
        ...


# ---- the sample case ----------------------------------------------------------------------------

_ID17 = "51010419850612004"
SAMPLE_ID_NUMBER = _ID17 + id_check_char(_ID17)
SAMPLE_NAME = "欧阳晓燕"
SAMPLE_PHONE = "13912345678"
SAMPLE_ADDRESS = "浙江省杭州市西湖区文三路100号3幢502室"
SAMPLE_RESULT: Mapping[str, Any] = {
    "decision_no": "川通办决字〔2026〕000123号",
    "decided_at": "2026-11-21T10:00:00Z",
}
_SAMPLE_PDF = b"%PDF-1.4\n%conformance sample\n%%EOF\n"
_SAMPLE_PDF_BASE64 = base64.b64encode(_SAMPLE_PDF).decode("ascii")
_SAMPLE_PDF_SHA256 = hashlib.sha256(_SAMPLE_PDF).hexdigest()
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_GRACE = 0.5  # seconds past ctx.timeout before a call counts as hung


def new_case_id() -> str:
    """A fresh gateway-style case id (26 characters)."""
    return "C01" + "".join(secrets.choice(_CROCKFORD) for _ in range(23))


SENSITIVE_PATHS = (
    "applicant.id_number",
    "applicant.name",
    "applicant.phone",
    "applicant.representative.id_number",
    "applicant.representative.name",
    "applicant.representative.phone",
    "payload.contact_phone",
    "payload.residence_address",
)
"""Where a case carries personal data (a contract's ``sensitive_fields`` name such paths)."""


def _sensitive_values(case: CanonicalCase, paths: Sequence[str]) -> list[str]:
    """The case's values at the sensitive paths that are present."""
    doc = {"applicant": case.applicant, "payload": case.payload}
    found: list[str] = []
    for path in paths:
        ok, value = _find(doc, path)
        if ok and isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            found.append(str(value))
    return found


def _forms(value: str) -> set[str]:
    """The ways a value shows up in text: as is, JSON/Python-escaped, percent- or byte-encoded."""
    forms = {value, value.lower(), value.upper()}
    forms.add(json.dumps(value)[1:-1])
    forms.add(value.encode("unicode_escape").decode("ascii"))
    forms.add(quote(value))
    for encoding in ("utf-8", "gb18030"):
        with contextlib.suppress(UnicodeEncodeError):
            forms.add(str(value.encode(encoding))[2:-1])
    return {f for f in forms if f}


# ---- the harness --------------------------------------------------------------------------------

_Op = Literal["submit", "supplement", "withdraw"]
_OPS: tuple[_Op, ...] = ("submit", "supplement", "withdraw")


@dataclass
class Harness:
    """One running check: the double, the adapter built from its settings, and a real context."""

    suite: ConformanceSuite
    double: PartnerDouble
    settings: dict[str, Any]
    adapter: Adapter
    ctx: AdapterContext
    sensitive: list[str] = field(default_factory=list)

    @property
    def adapter_class(self) -> type[Any]:
        return type(self.suite).adapter_class

    def new_case(self, partner_ref: str | None = None) -> CanonicalCase:
        case = self.suite.sample_case(new_case_id())
        if partner_ref is not None:
            case = dataclasses.replace(case, partner_ref=partner_ref)
        found = _sensitive_values(case, type(self.suite).sensitive_paths)
        self.sensitive = sorted(set(self.sensitive) | set(found))
        return case

    def redact(self, text: str) -> str:
        """Failure messages must not spread the applicant's data either."""
        for value in self.sensitive:
            for form in sorted(_forms(value), key=len, reverse=True):
                text = text.replace(form, "***")
        return text

    def fail(self, rule: int, detail: str) -> RuleBroken:
        return RuleBroken(rule, self.redact(detail))

    async def behave(self, rule: int, mode: Behaviour) -> None:
        """Set the double's behaviour; skip the test if the double cannot produce it."""
        if not await self.try_behave(mode):
            pytest.skip(f"rule {rule}: the double cannot simulate {mode!r} (NotImplementedError)")

    async def try_behave(self, mode: Behaviour) -> bool:
        try:
            result = self.double.behave(mode)
            if inspect.isawaitable(result):
                await result
        except NotImplementedError:
            return False
        return True

    async def call(self, rule: int, op: _Op, case: CanonicalCase, during: str = "") -> Outcome:
        """Call one operation as the dispatcher does; any misbehaviour breaks ``rule``."""
        what = f"{op}{' during ' + during if during else ''}"
        started = time.monotonic()
        limit = self.ctx.timeout + _GRACE
        try:
            async with asyncio.timeout(limit) as guard:
                if op == "submit":
                    outcome = await self.adapter.submit(case, self.ctx)
                elif op == "supplement":
                    outcome = await self.adapter.supplement(case, SAMPLE_MATERIAL, self.ctx)
                else:
                    outcome = await self.adapter.withdraw(case, "申请人主动撤回", self.ctx)
        except TimeoutError:
            if guard.expired():
                raise self.fail(
                    rule,
                    f"{what} did not return within ctx.timeout ({self.ctx.timeout} s) + "
                    f"{_GRACE} s; the gateway would cancel it (see rules 7 and 15)",
                ) from None
            raise self.fail(
                rule, f"{what} raised TimeoutError instead of returning Retryable"
            ) from None
        except Exception as exc:
            see = "" if rule == 15 else " (see rule 15)"
            raise self.fail(
                rule, f"{what} raised {exc!r} instead of returning an outcome{see}"
            ) from None
        if not isinstance(outcome, Accepted | Retryable | Permanent):
            raise self.fail(rule, f"{what} returned {outcome!r}, which is not an Outcome")
        elapsed = time.monotonic() - started
        if elapsed > limit:  # pragma: no cover - the guard fires first
            raise self.fail(rule, f"{what} took {elapsed:.2f} s")
        return outcome

    def expect(self, rule: int, outcome: Outcome, kind: type[Outcome], what: str) -> None:
        if not isinstance(outcome, kind):
            raise self.fail(rule, f"{what} returned {outcome!r}, expected {kind.__name__}")
        if isinstance(outcome, Retryable) and outcome.retry_after is not None:
            delay = outcome.retry_after
            if not isinstance(delay, int | float) or not math.isfinite(delay) or delay < 0:
                raise self.fail(
                    rule, f"{what} returned retry_after={delay!r}; need None or seconds >= 0"
                )

    def parse(self, body: bytes, adapter: Adapter | None = None) -> list[StatusUpdate]:
        headers = dict(type(self.suite).inbound_headers)
        return (adapter or self.adapter).parse_inbound(body, headers)

    def report(self, case_id: str, status: str, outcome: str | None, partner_ref: str) -> bytes:
        result = type(self.suite).sample_result if status == "completed" else {}
        try:
            body = self.double.native_report(case_id, status, outcome, dict(result), partner_ref)
        except NotImplementedError:
            raise HarnessError(
                f"the double cannot render a {status!r} report, but the suite's "
                f"inbound_statuses claims the adapter reads it"
            ) from None
        if not isinstance(body, bytes):
            raise HarnessError(f"native_report returned {type(body).__name__}, not bytes")
        return body

    def valid_reports(self) -> list[tuple[str, str | None, bytes]]:
        """One native report per claimed status (both outcomes for completed)."""
        reports = []
        for status in type(self.suite).inbound_statuses:
            outcomes: tuple[str | None, ...] = (
                ("approved", "denied") if status == "completed" else (None,)
            )
            for outcome in outcomes:
                case_id = new_case_id()
                reports.append((status, outcome, self.report(case_id, status, outcome, "T-1")))
        return reports


SAMPLE_MATERIAL: Mapping[str, Any] = {
    "note": "已补充户口簿首页及本人页",
    "payload": {},
    "attachments": [
        {"name": "hukou.pdf", "media_type": "application/pdf", "sha256": _SAMPLE_PDF_SHA256,
         "content_base64": _SAMPLE_PDF_BASE64}
    ],
}  # fmt: skip


# ---- output capture (rule 21) -------------------------------------------------------------------

_STANDARD_RECORD_KEYS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


class _Collector(logging.Handler):
    def __init__(self, ignore: Sequence[str]) -> None:
        super().__init__(logging.DEBUG)
        self.ignore = tuple(ignore)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if any(record.name == n or record.name.startswith(n + ".") for n in self.ignore):
            return
        try:
            text = self.format(record)
        except Exception:  # a record that cannot even be formatted: look at its parts
            text = f"{record.msg!r} {record.args!r}"
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD_RECORD_KEYS}
        if extra:
            text += f" extra={extra!r}"
        self.lines.append(text)


@contextlib.contextmanager
def capture_output(ignore: Sequence[str] = ()) -> Iterator[list[str]]:
    """Every log record (any logger, any level) and everything printed, as lines of text."""
    lines: list[str] = []
    collector = _Collector(ignore)
    root = logging.getLogger()
    saved_levels: dict[logging.Logger, int] = {root: root.level}
    extra_hosts: list[logging.Logger] = []
    saved_disable = logging.root.manager.disable
    for logger in list(logging.root.manager.loggerDict.values()):
        if not isinstance(logger, logging.Logger):
            continue
        if logger.level > logging.DEBUG:
            saved_levels[logger] = logger.level
        if not logger.propagate:
            extra_hosts.append(logger)
    out, err = io.StringIO(), io.StringIO()
    try:
        logging.disable(logging.NOTSET)
        for logger in saved_levels:
            logger.setLevel(logging.DEBUG)
        root.addHandler(collector)
        for logger in extra_hosts:
            logger.addHandler(collector)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield lines
    finally:
        root.removeHandler(collector)
        for logger in extra_hosts:
            logger.removeHandler(collector)
        for logger, level in saved_levels.items():
            logger.setLevel(level)
        logging.disable(saved_disable)
        lines += collector.lines
        lines += [f"stdout: {line}" for line in out.getvalue().splitlines()]
        lines += [f"stderr: {line}" for line in err.getvalue().splitlines()]


# ---- helpers ------------------------------------------------------------------------------------


def _find(value: Any, path: str) -> tuple[bool, Any]:
    """The value at a dotted path (``applicant.id_number``, ``attachments.0.name``)."""
    node = value
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, Sequence) and not isinstance(node, str | bytes) and part.isdigit():
            index = int(part)
            if index >= len(node):
                return False, None
            node = node[index]
        else:
            return False, None
    return True, node


def _contains(value: Any, wanted: str) -> bool:
    """Whether a decoded request carries ``wanted`` anywhere (keys, values, text, bytes)."""
    if isinstance(value, str):
        return wanted in value
    if isinstance(value, bytes | bytearray):
        for encoding in ("utf-8", "gb18030"):
            with contextlib.suppress(UnicodeDecodeError):
                if wanted in bytes(value).decode(encoding):
                    return True
        return False
    if isinstance(value, Mapping):
        return any(_contains(k, wanted) or _contains(v, wanted) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return any(_contains(v, wanted) for v in value)
    return value is not None and str(value) == wanted


def _identifies(update: StatusUpdate, case_id: str, partner_ref: str | None) -> bool:
    return update.case_id == case_id or (
        partner_ref is not None and update.partner_ref == partner_ref
    )


def _update_problem(update: Any, case_id: str | None = None) -> str | None:
    """Why an update is not canonical, or None."""
    if not isinstance(update, StatusUpdate):
        return f"{type(update).__name__} is not a StatusUpdate"
    if update.status not in PARTNER_STATUSES:
        return f"status {update.status!r} is not one a partner may report ({PARTNER_STATUSES})"
    if not (isinstance(update.case_id, str) and update.case_id) and not (
        isinstance(update.partner_ref, str) and update.partner_ref
    ):
        return "it names no case: give case_id or partner_ref (a non-empty string)"
    if case_id is not None and update.case_id != case_id:
        return f"case_id is {update.case_id!r}; an update inside Accepted must carry {case_id!r}"
    if update.status == "completed" and update.outcome not in ("approved", "denied"):
        return f"completed with outcome {update.outcome!r}; need 'approved' or 'denied'"
    if update.status != "completed" and update.outcome is not None:
        return f"{update.status} with outcome {update.outcome!r}; only completed has one"
    if not isinstance(update.data, Mapping):
        return f"data is a {type(update.data).__name__}, not a mapping"
    try:
        json.dumps(dict(update.data), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return f"data is not JSON ({type(exc).__name__})"
    if update.partner_event_id is not None and not isinstance(update.partner_event_id, str):
        return "partner_event_id is not a string"
    return None


_ODD_VALUES: tuple[Any, ...] = (
    None, 0, -1, 1.5, 10**30, True, "", "x", "\u0000", [], {}, [None], {"": None}, [[]]
)  # fmt: skip


def _json_paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _json_paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _json_paths(value, (*path, index))


def _replaced(doc: Any, path: tuple[Any, ...], value: Any, delete: bool = False) -> Any:
    if not path:
        return value
    doc = copy.deepcopy(doc)
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


def mutations(body: bytes, limit: int = 1500) -> Iterator[tuple[str, bytes]]:
    """Deterministic mutations of a valid message: byte-level, and structural for JSON."""
    rng = random.Random(len(body))
    n = len(body)
    for k in range(1, 10):
        yield f"cut to {n * k // 10} of {n} bytes", body[: n * k // 10]
    for i in sorted(rng.sample(range(n), min(n, 12))):
        for stray in (b"\x00", b"\xff", b'"', b"<", b"\x81"):
            yield f"byte {i} replaced by {stray!r}", body[:i] + stray + body[i + 1 :]
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return
    count = 0
    for path in _json_paths(doc):
        where = "/" + "/".join(str(p) for p in path)
        variants: list[tuple[str, Any]] = [(f"{where} = {v!r}", v) for v in _ODD_VALUES]
        for label, value in variants:
            yield label, json.dumps(_replaced(doc, path, value), ensure_ascii=False).encode()
            count += 1
        if path and isinstance(path[-1], str):
            mutated = _replaced(doc, path, None, delete=True)
            yield f"{where} removed", json.dumps(mutated, ensure_ascii=False).encode()
            count += 1
        if count >= limit:
            return


# ---- the checks ---------------------------------------------------------------------------------

Check = Callable[[Harness], Awaitable[None]]


async def check_declared(h: Harness) -> None:
    cls = h.adapter_class
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str) or not kind or kind.strip() != kind or " " in kind:
        raise h.fail(1, f"{cls.__name__}.kind is {kind!r}; need a non-empty name, no spaces")
    settings_cls = getattr(cls, "Settings", None)
    if not (isinstance(settings_cls, type) and issubclass(settings_cls, AdapterSettings)):
        raise h.fail(1, f"{cls.__name__}.Settings is {settings_cls!r}; need an AdapterSettings")
    try:
        settings_cls.model_validate({**h.settings, "kind": kind + "_other"})
    except ValueError:
        pass
    else:
        raise h.fail(1, f"Settings accepts kind {kind + '_other'!r}; type it Literal[{kind!r}]")
    if not isinstance(h.adapter, Adapter):
        raise h.fail(1, f"build() made a {type(h.adapter).__name__}, which is not an Adapter")
    for name in ("submit", "supplement", "withdraw"):
        if not inspect.iscoroutinefunction(getattr(h.adapter, name)):
            raise h.fail(1, f"{name} is not an async method")
    if inspect.iscoroutinefunction(h.adapter.parse_inbound):
        raise h.fail(1, "parse_inbound is async; it must be a plain method (no I/O)")


async def check_unknown_setting(h: Harness) -> None:
    key = "conformance_unknown_key"
    registry = {h.adapter_class.kind: h.adapter_class}
    try:
        build({**h.settings, key: "x"}, registry)
    except ValueError as exc:
        if key not in str(exc):
            raise h.fail(2, f"the ValueError does not name {key!r}: {exc}") from None
    except Exception as exc:
        raise h.fail(2, f"an unknown key raised {exc!r}, not a ValueError") from None
    else:
        raise h.fail(2, f"settings with an unknown key {key!r} were accepted")


async def check_missing_setting(h: Harness) -> None:
    settings_cls: type[AdapterSettings] = h.adapter_class.Settings
    registry = {h.adapter_class.kind: h.adapter_class}
    for name, info in settings_cls.model_fields.items():
        if name == "kind" or not info.is_required():
            continue
        key = info.alias or name
        table = {k: v for k, v in h.settings.items() if k not in (name, key)}
        try:
            build(table, registry)
        except ValueError as exc:
            if key not in str(exc):
                raise h.fail(3, f"the ValueError for a missing {key!r} does not name it") from None
        except Exception as exc:
            raise h.fail(3, f"a missing {key!r} raised {exc!r}, not a ValueError") from None
        else:
            raise h.fail(3, f"settings without the required {key!r} were accepted")


async def check_submit_ok(h: Harness) -> None:
    await h.behave(4, "ok")
    outcome = await h.call(4, "submit", h.new_case())
    h.expect(4, outcome, Accepted, "submit to a partner that takes the case")
    assert isinstance(outcome, Accepted)
    if outcome.partner_ref is not None and not (
        isinstance(outcome.partner_ref, str) and outcome.partner_ref
    ):
        raise h.fail(4, f"partner_ref is {outcome.partner_ref!r}; need a non-empty str or None")


async def check_fields_mapped(h: Harness) -> None:
    await h.behave(5, "ok")
    case = h.new_case()
    before = len(h.double.received())
    outcome = await h.call(5, "submit", case)
    h.expect(5, outcome, Accepted, "submit to a partner that takes the case")
    new = h.double.received()[before:]
    if not new:
        raise h.fail(5, "the partner received nothing for an Accepted submit")
    wanted = {
        "case_id": case.case_id,
        "item_code": case.item_code,
        "id_number": str(case.applicant.get("id_number", "")),
        "name": str(case.applicant.get("name", "")),
    }
    paths = type(h.suite).native_fields
    for canonical, value in wanted.items():
        if canonical in paths:
            path = paths[canonical]
            found = [_find(request, path) for request in new]
            values = [v for ok, v in found if ok]
            if not values:
                raise h.fail(5, f"the partner's request has no {path!r} (our {canonical})")
            if not any(str(v) == value for v in values):
                raise h.fail(5, f"{path!r} is {values[0]!r}, not the case's {canonical}")
        elif not any(_contains(request, value) for request in new):
            raise h.fail(5, f"the partner's request does not carry the case's {canonical}")


async def check_idempotent(h: Harness) -> None:
    await h.behave(6, "ok")
    case = h.new_case()
    first = await h.call(6, "submit", case)
    h.expect(6, first, Accepted, "the first submit")
    before = len(h.double.received())
    again = await h.call(6, "submit", case)
    h.expect(6, again, Accepted, "a repeated submit of the same case")
    assert isinstance(first, Accepted) and isinstance(again, Accepted)
    if first.partner_ref != again.partner_ref:
        raise h.fail(
            6,
            f"the repeat got partner_ref {again.partner_ref!r}, the first {first.partner_ref!r}:"
            " the partner took it as a new case",
        )
    # Nothing new is fine (a folder partner sees the same file rewritten); anything new must
    # carry the case id, or the partner cannot tell it is a repeat.
    new = h.double.received()[before:]
    if new and not any(_contains(request, case.case_id) for request in new):
        raise h.fail(6, "the repeated request does not carry the case id to deduplicate on")
    if first.partner_ref:
        replay = dataclasses.replace(case, partner_ref=first.partner_ref)
        third = await h.call(6, "submit", replay)
        h.expect(6, third, Accepted, "a replayed submit of a case with its partner_ref")


async def _expect_submit(h: Harness, rule: int, mode: Behaviour, kind: type[Outcome]) -> None:
    await h.behave(rule, mode)
    outcome = await h.call(rule, "submit", h.new_case(), during=f"partner behaviour {mode!r}")
    h.expect(rule, outcome, kind, f"submit during partner behaviour {mode!r}")


async def check_timeout(h: Harness) -> None:
    await h.behave(7, "timeout")
    started = time.monotonic()
    outcome = await h.call(7, "submit", h.new_case(), during="a partner timeout")
    elapsed = time.monotonic() - started
    h.expect(7, outcome, Retryable, "submit during a partner timeout")
    if elapsed > h.ctx.timeout + _GRACE:  # pragma: no cover - call() guards this
        raise h.fail(7, f"submit took {elapsed:.2f} s, more than ctx.timeout {h.ctx.timeout} s")


async def check_down(h: Harness) -> None:
    await _expect_submit(h, 8, "down", Retryable)


async def check_5xx(h: Harness) -> None:
    await _expect_submit(h, 9, "http_500", Retryable)


async def check_429(h: Harness) -> None:
    await _expect_submit(h, 10, "http_429", Retryable)


async def check_busy(h: Harness) -> None:
    await _expect_submit(h, 11, "busy_in_body", Retryable)


async def check_garbage(h: Harness) -> None:
    await _expect_submit(h, 12, "garbage", Retryable)


async def check_refusal(h: Harness) -> None:
    await _expect_submit(h, 13, "refuse", Permanent)


async def check_supplement_withdraw(h: Harness) -> None:
    await h.behave(14, "ok")
    case = h.new_case()
    first = await h.call(14, "submit", case)
    h.expect(14, first, Accepted, "submit to a partner that takes the case")
    assert isinstance(first, Accepted)
    held = dataclasses.replace(case, partner_ref=first.partner_ref)
    ops: tuple[_Op, ...] = ("supplement", "withdraw")
    for op in ops:
        outcome = await h.call(14, op, held)
        h.expect(14, outcome, Accepted, f"{op} to a partner that takes it")
    modes: tuple[Behaviour, ...] = ("http_500", "down")
    for mode in modes:
        if not await h.try_behave(mode):
            continue
        for op in ops:
            outcome = await h.call(14, op, held, during=f"partner behaviour {mode!r}")
            h.expect(14, outcome, Retryable, f"{op} during partner behaviour {mode!r}")


async def _sweep(h: Harness, rule: int) -> list[tuple[str, Outcome]]:
    """Every operation under every behaviour the double can produce; the outcomes."""
    await h.behave(rule, "ok")
    case = h.new_case()
    first = await h.call(rule, "submit", case)
    held = case
    if isinstance(first, Accepted) and first.partner_ref:
        held = dataclasses.replace(case, partner_ref=first.partner_ref)
    outcomes: list[tuple[str, Outcome]] = [("submit (ok)", first)]
    for mode in BEHAVIOURS:
        if not await h.try_behave(mode):
            continue
        for op in _OPS:
            target = h.new_case() if op == "submit" else held
            outcome = await h.call(rule, op, target, during=f"partner behaviour {mode!r}")
            outcomes.append((f"{op} during {mode!r}", outcome))
    if h.ctx.session.closed:
        raise h.fail(rule, "the shared ctx.session was closed by the adapter")
    return outcomes


async def check_never_raises(h: Harness) -> None:
    await _sweep(h, 15)


async def check_updates_canonical(h: Harness) -> None:
    await h.behave(16, "ok")
    case = h.new_case()
    outcome = await h.call(16, "submit", case)
    if isinstance(outcome, Accepted):
        for update in outcome.updates:
            problem = _update_problem(update, case.case_id)
            if problem:
                raise h.fail(16, f"an update in submit's Accepted: {problem}")
    for status, _outcome, body in h.valid_reports():
        try:
            updates = h.parse(body)
        except ValueError as exc:
            raise h.fail(16, f"parse_inbound refused a valid {status!r} report: {exc}") from None
        for update in updates:
            problem = _update_problem(update)
            if problem:
                raise h.fail(16, f"an update parsed from a {status!r} report: {problem}")


async def check_round_trip(h: Harness) -> None:
    statuses = type(h.suite).inbound_statuses
    if not statuses:
        pytest.skip("rule 17: the suite's inbound_statuses is empty (no inbound messages)")
    for status in statuses:
        if status not in PARTNER_STATUSES:
            raise HarnessError(f"inbound_statuses has {status!r}, not a partner status")
        outcomes: tuple[str | None, ...] = (
            ("approved", "denied") if status == "completed" else (None,)
        )
        for outcome in outcomes:
            case_id, ref = new_case_id(), "SC2026112100012345"
            label = status + (f"/{outcome}" if outcome else "")
            body = h.report(case_id, status, outcome, ref)
            try:
                updates = h.parse(body)
            except Exception as exc:
                raise h.fail(17, f"parse_inbound raised {exc!r} for a {label} report") from None
            if not isinstance(updates, list) or len(updates) != 1:
                raise h.fail(17, f"a {label} report gave {updates!r}, not exactly one update")
            (update,) = updates
            if not isinstance(update, StatusUpdate):
                raise h.fail(17, f"a {label} report gave {update!r}, not a StatusUpdate")
            if update.status != status:
                raise h.fail(17, f"a {label} report was read as status {update.status!r}")
            if not _identifies(update, case_id, ref):
                raise h.fail(
                    17,
                    f"a {label} report for case {case_id} (partner ref {ref}) was read as case "
                    f"{update.case_id!r} / ref {update.partner_ref!r}",
                )
            if update.outcome != outcome:
                raise h.fail(17, f"a {label} report was read with outcome {update.outcome!r}")
            if status == "completed":
                for key, value in type(h.suite).sample_result.items():
                    got = update.data.get(key) if isinstance(update.data, Mapping) else None
                    if got != value:
                        raise h.fail(
                            17, f"result field {key!r} came back as {got!r}, not {value!r}"
                        )


async def check_event_ids(h: Harness) -> None:
    statuses = type(h.suite).inbound_statuses
    if not statuses:
        pytest.skip("rule 25: the suite's inbound_statuses is empty (no inbound messages)")
    case_id, ref = new_case_id(), "SC2026112100012345"
    seen: dict[str, str] = {}  # partner event id → the status whose report carried it
    for status in statuses:
        outcome = "approved" if status == "completed" else None
        try:
            updates = h.parse(h.report(case_id, status, outcome, ref))
        except ValueError as exc:
            raise h.fail(25, f"parse_inbound refused a valid {status!r} report: {exc}") from None
        for update in updates:
            event_id = update.partner_event_id
            if event_id is None:
                continue
            other = seen.setdefault(event_id, status)
            if other != status:
                raise h.fail(
                    25,
                    f"the {other!r} and {status!r} reports of one case both carry partner event "
                    f"id {event_id!r}: the second would be ignored as a repeat",
                )


async def check_pure(h: Harness) -> None:
    if inspect.iscoroutinefunction(h.adapter.parse_inbound):
        raise h.fail(18, "parse_inbound is async; it must be a plain method")
    reports = h.valid_reports()
    if not reports:
        pytest.skip("rule 18: the suite's inbound_statuses is empty (no inbound messages)")
    before = len(h.double.received())
    first = {}
    for status, _outcome, body in reports:
        try:
            first[body] = h.parse(body)
        except ValueError as exc:
            raise h.fail(18, f"parse_inbound refused a valid {status!r} report: {exc}") from None
    other = build(h.settings, {h.adapter_class.kind: h.adapter_class})
    for status, outcome, body in reversed(reports):
        label = status + (f"/{outcome}" if outcome else "")
        again = h.parse(body)
        if again != first[body]:
            raise h.fail(18, f"the same {label} report gave {again!r}, then {first[body]!r}")
        if h.parse(body, other) != first[body]:
            raise h.fail(18, f"the same {label} report read differently by a second instance")
        for update in again:
            if isinstance(update, StatusUpdate) and isinstance(update.data, dict):
                update.data["conformance_probe"] = 1  # a caller changing what it got back
        if h.parse(body) != first[body]:
            raise h.fail(18, f"changing the updates of a {label} report changed later parses")
    if len(h.double.received()) != before:
        raise h.fail(18, "parse_inbound sent something to the partner (it must do no I/O)")


async def check_malformed(h: Harness) -> None:
    reports = h.valid_reports()
    valid = reports[-1][2] if reports else None
    for label, body in h.suite.malformed_inbound(valid):
        try:
            updates = h.parse(body)
        except ValueError:
            continue
        except Exception as exc:
            raise h.fail(19, f"{label}: parse_inbound raised {exc!r}, not a ValueError") from None
        raise h.fail(19, f"{label}: parse_inbound returned {updates!r}, not a ValueError")


async def check_mutations(h: Harness) -> None:
    reports = h.valid_reports()
    if not reports:
        pytest.skip("rule 20: the suite's inbound_statuses is empty (no inbound messages)")
    for status, outcome, body in reports:
        label = status + (f"/{outcome}" if outcome else "")
        for mutation, mutated in mutations(body):
            try:
                updates = h.parse(mutated)
            except ValueError:
                continue
            except Exception as exc:
                raise h.fail(
                    20, f"a {label} report with {mutation}: parse_inbound raised {exc!r}"
                ) from None
            if not isinstance(updates, list) or not all(
                isinstance(u, StatusUpdate) for u in updates
            ):
                raise h.fail(20, f"a {label} report with {mutation} gave {updates!r}")


async def check_no_logged_pii(h: Harness) -> None:
    with capture_output(type(h.suite).double_loggers) as lines:
        await _sweep(h, 21)
        for _status, _outcome, body in h.valid_reports():
            with contextlib.suppress(ValueError):
                h.parse(body)
        for _label, body in h.suite.malformed_inbound(None):
            with contextlib.suppress(ValueError):
                h.parse(body)
        if isinstance(h.adapter, PollingAdapter):
            case = h.new_case(partner_ref="SC2026112100012345")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(h.adapter.poll([case], h.ctx), h.ctx.timeout * 2 + _GRACE)
    for line in lines:
        for value in h.sensitive:
            for form in _forms(value):
                if form in line:
                    raise h.fail(
                        21, f"this output carries the applicant's data: {h.redact(line)[:300]}"
                    )


async def check_no_pii_in_reasons(h: Harness) -> None:
    for what, outcome in await _sweep(h, 22):
        if isinstance(outcome, Retryable | Permanent):
            for value in h.sensitive:
                if any(form in outcome.reason for form in _forms(value)):
                    raise h.fail(
                        22,
                        f"{what} returned {type(outcome).__name__} whose reason carries the "
                        f"applicant's data: {h.redact(outcome.reason)!r}",
                    )


def _polling(h: Harness, rule: int) -> PollingAdapter:
    if not isinstance(h.adapter, PollingAdapter):
        pytest.skip(f"rule {rule}: {h.adapter_class.__name__} is not a PollingAdapter")
    return h.adapter


async def _poll(
    h: Harness, rule: int, adapter: PollingAdapter, cases: Sequence[CanonicalCase], during: str
) -> list[StatusUpdate]:
    limit = h.ctx.timeout * 2 + _GRACE  # the poller's own limit is ctx.timeout * 2
    try:
        async with asyncio.timeout(limit) as guard:
            updates = await adapter.poll(cases, h.ctx)
    except TimeoutError:
        if guard.expired():
            raise h.fail(rule, f"poll {during} did not return within {limit} s") from None
        raise h.fail(rule, f"poll {during} raised TimeoutError") from None
    except Exception as exc:
        raise h.fail(rule, f"poll {during} raised {exc!r}") from None
    if not isinstance(updates, list):
        raise h.fail(rule, f"poll {during} returned {updates!r}, not a list")
    for update in updates:
        problem = _update_problem(update)
        if problem:
            raise h.fail(rule, f"poll {during} gave an update that is not canonical: {problem}")
    return updates


async def check_poll(h: Harness) -> None:
    adapter = _polling(h, 23)
    interval = getattr(adapter, "poll_interval", None)
    if not isinstance(interval, int | float) or not math.isfinite(interval) or interval <= 0:
        raise h.fail(23, f"poll_interval is {interval!r}; need a positive number of seconds")
    settle = getattr(h.double, "settle", None)
    if not callable(settle):
        raise HarnessError(
            "a PollingAdapter's double must implement settle() (PollingPartnerDouble)"
        )
    await h.behave(23, "ok")
    await _poll(h, 23, adapter, [], "with no open cases")
    case = h.new_case()
    first = await h.call(23, "submit", case)
    h.expect(23, first, Accepted, "submit to a partner that takes the case")
    assert isinstance(first, Accepted)
    held = dataclasses.replace(case, partner_ref=first.partner_ref)
    other = h.new_case()
    result = dict(type(h.suite).sample_result)
    for status, outcome in (("in_progress", None), ("completed", "approved")):
        done = settle(held.case_id, held.partner_ref, status, outcome, result)
        if inspect.isawaitable(done):
            await done
        updates = await _poll(h, 23, adapter, [other, held], f"after the partner reported {status}")
        mine = [
            u
            for u in updates
            if _identifies(u, held.case_id, held.partner_ref)
            and u.status == status
            and u.outcome == outcome
        ]
        if not mine:
            seen = [(u.status, u.outcome) for u in updates]
            raise h.fail(
                23, f"the partner holds {status} for an open case, but poll gave only {seen}"
            )
    for key, value in result.items():
        if not any(u.data.get(key) == value for u in mine):
            raise h.fail(23, f"poll's completed update lacks result field {key!r} = {value!r}")


async def check_poll_survives(h: Harness) -> None:
    adapter = _polling(h, 24)
    await h.behave(24, "ok")
    case = h.new_case()
    first = await h.call(24, "submit", case)
    ref = first.partner_ref if isinstance(first, Accepted) else None
    held = dataclasses.replace(case, partner_ref=ref)
    tried = 0
    modes: tuple[Behaviour, ...] = ("http_500", "garbage", "timeout", "down")
    for mode in modes:
        if not await h.try_behave(mode):
            continue
        tried += 1
        await _poll(h, 24, adapter, [held], f"during partner behaviour {mode!r}")
    if not tried:
        pytest.skip("rule 24: the double can simulate none of http_500, garbage, timeout, down")


CHECKS: dict[int, Check] = {
    1: check_declared,
    2: check_unknown_setting,
    3: check_missing_setting,
    4: check_submit_ok,
    5: check_fields_mapped,
    6: check_idempotent,
    7: check_timeout,
    8: check_down,
    9: check_5xx,
    10: check_429,
    11: check_busy,
    12: check_garbage,
    13: check_refusal,
    14: check_supplement_withdraw,
    15: check_never_raises,
    16: check_updates_canonical,
    17: check_round_trip,
    18: check_pure,
    19: check_malformed,
    20: check_mutations,
    21: check_no_logged_pii,
    22: check_no_pii_in_reasons,
    23: check_poll,
    24: check_poll_survives,
    25: check_event_ids,
}


# ---- the suite ----------------------------------------------------------------------------------


class ConformanceSuite:
    """Subclass as ``Test…`` and set ``adapter_class`` and ``double_factory``; pytest does the rest.

    Optional settings (class attributes):

    - ``native_fields``: where the partner's request carries our fields, as dotted paths into a
      decoded request from ``received()``: keys ``case_id``, ``item_code``, ``id_number``,
      ``name``. A field without a path is looked for anywhere in the request.
    - ``inbound_statuses``: the statuses the partner reports and the adapter reads (default: all
      six a partner may report). Empty: the adapter reads no inbound messages.
    - ``inbound_headers``: the headers handed to ``parse_inbound``.
    - ``sample_result``: the result data of a completed report.
    - ``context_timeout``: ``ctx.timeout`` in seconds (the adapter's own timeout should be lower).
    - ``region``: the partner's region code.
    - ``double_loggers``: logger names of the double itself; rule 21 ignores their records.
    - ``sensitive_paths``: where the sample case carries personal data (``applicant.…``,
      ``payload.…``); rules 21 and 22 look for those values.

    Override :meth:`sample_case` when the partner needs particular payload fields, and
    :meth:`malformed_inbound` when the default malformed messages are valid in its format.
    """

    adapter_class: ClassVar[type[Any]]
    double_factory: ClassVar[Callable[..., PartnerDouble]]
    native_fields: ClassVar[Mapping[str, str]] = {}
    inbound_statuses: ClassVar[tuple[str, ...]] = PARTNER_STATUSES
    inbound_headers: ClassVar[Mapping[str, str]] = {}
    sample_result: ClassVar[Mapping[str, Any]] = SAMPLE_RESULT
    context_timeout: ClassVar[float] = 1.0
    region: ClassVar[str] = "510000"
    double_loggers: ClassVar[tuple[str, ...]] = ("aiohttp.access", "aiohttp.server", "aiohttp.web")
    sensitive_paths: ClassVar[tuple[str, ...]] = SENSITIVE_PATHS

    # -- hooks ------------------------------------------------------------------------------

    def sample_case(self, case_id: str) -> CanonicalCase:
        """The case every check sends: a natural person with an ID number, name and phone."""
        return CanonicalCase(
            case_id=case_id,
            request_id=f"ZJ-20261121-{secrets.randbelow(10**6):06d}",
            item_code="KSTB-YB-001",
            contract_version=1,
            origin_region="330000",
            handling_region=type(self).region,
            applicant={
                "kind": "natural_person",
                "id_type": "111",
                "id_number": SAMPLE_ID_NUMBER,
                "name": SAMPLE_NAME,
                "phone": SAMPLE_PHONE,
            },
            payload={
                "insured_region": "510100",
                "insurance_type": "310",
                "filing_type": "11",
                "treatment_region": "330106",
                "start_date": "2026-12-01",
                "end_date": "2027-11-30",
                "residence_address": SAMPLE_ADDRESS,
                "contact_phone": SAMPLE_PHONE,
                "commitment_signed": True,
            },
            attachments=(
                {"name": "residence.pdf", "media_type": "application/pdf",
                 "sha256": _SAMPLE_PDF_SHA256, "content_base64": _SAMPLE_PDF_BASE64},
            ),
        )  # fmt: skip

    def malformed_inbound(self, valid: bytes | None) -> list[tuple[str, bytes]]:
        """Messages no partner could mean (rule 19), from a valid report where there is one.

        An empty body is not among them: some protocols use it as a bare "batch ready" notice.
        Add it (and any message your format cannot mean) by overriding this method."""
        found = [
            ("bytes that are no format at all", b"\x00\xff\xfe\x81<<not a message>>\xc3\x28"),
            ("a lone NUL byte", b"\x00"),
        ]
        if valid:
            found.append(("a valid report cut in half", valid[: len(valid) // 2]))
        return found

    # -- running ----------------------------------------------------------------------------

    def make_double(self, workdir: Path) -> PartnerDouble:
        factory = type(self).double_factory
        try:
            takes_dir = bool(inspect.signature(factory).parameters)
        except (TypeError, ValueError):
            takes_dir = True
        return factory(workdir) if takes_dir else factory()

    def run_rule(self, number: int, workdir: Path | None = None) -> None:
        """Check one rule in a fresh event loop; raises RuleBroken when it is broken."""
        if workdir is None:
            with tempfile.TemporaryDirectory(prefix="tongban-conformance-") as tmp:
                asyncio.run(self._run(CHECKS[number], Path(tmp)))
        else:
            asyncio.run(self._run(CHECKS[number], workdir))

    async def _run(self, check: Check, workdir: Path) -> None:
        cls = type(self)
        if not isinstance(getattr(cls, "adapter_class", None), type):
            raise HarnessError(f"{cls.__name__}.adapter_class is not set to the adapter class")
        if not callable(getattr(cls, "double_factory", None)):
            raise HarnessError(f"{cls.__name__}.double_factory is not set")
        double = self.make_double(workdir)
        await double.start()
        logger = logging.getLogger(f"tongban.adapter.{cls.region}")
        masking = MaskingFilter()  # as the gateway installs it: with no values configured
        logger.addFilter(masking)
        try:
            settings = {**double.adapter_settings(), "kind": cls.adapter_class.kind}
            try:
                adapter = build(settings, {cls.adapter_class.kind: cls.adapter_class})
            except Exception as exc:
                raise HarnessError(
                    f"the adapter cannot be built from the double's settings: {exc}"
                ) from None
            async with aiohttp.ClientSession() as session:
                ctx = AdapterContext(
                    cls.region, session, SystemClock(), logger, cls.context_timeout
                )
                harness = Harness(self, double, settings, adapter, ctx)
                harness.new_case()  # learn the sample's personal data, for redaction
                await check(harness)
        finally:
            logger.removeFilter(masking)
            await double.stop()

    # -- one test per rule ------------------------------------------------------------------

    def test_rule_01_kind_and_settings_declared(self, tmp_path: Path) -> None:
        """Rule 1: `kind` and `Settings` declared; build() makes an Adapter."""
        self.run_rule(1, tmp_path)

    def test_rule_02_unknown_settings_refused(self, tmp_path: Path) -> None:
        """Rule 2: an unknown settings key is refused, named."""
        self.run_rule(2, tmp_path)

    def test_rule_03_missing_settings_named(self, tmp_path: Path) -> None:
        """Rule 3: a missing required settings key is refused, named."""
        self.run_rule(3, tmp_path)

    def test_rule_04_taken_cases_are_accepted(self, tmp_path: Path) -> None:
        """Rule 4: a partner that takes the case → Accepted."""
        self.run_rule(4, tmp_path)

    def test_rule_05_required_fields_reach_the_partner(self, tmp_path: Path) -> None:
        """Rule 5: case id, item code, ID number and name reach the partner."""
        self.run_rule(5, tmp_path)

    def test_rule_06_resubmits_are_idempotent(self, tmp_path: Path) -> None:
        """Rule 6: the same case again → Accepted with the same partner reference."""
        self.run_rule(6, tmp_path)

    def test_rule_07_timeouts_are_retryable(self, tmp_path: Path) -> None:
        """Rule 7: a partner timeout → Retryable, within ctx.timeout."""
        self.run_rule(7, tmp_path)

    def test_rule_08_connection_failures_are_retryable(self, tmp_path: Path) -> None:
        """Rule 8: a partner that is down → Retryable."""
        self.run_rule(8, tmp_path)

    def test_rule_09_http_5xx_is_retryable(self, tmp_path: Path) -> None:
        """Rule 9: HTTP 5xx → Retryable."""
        self.run_rule(9, tmp_path)

    def test_rule_10_http_429_is_retryable(self, tmp_path: Path) -> None:
        """Rule 10: HTTP 429 → Retryable."""
        self.run_rule(10, tmp_path)

    def test_rule_11_busy_in_the_body_is_retryable(self, tmp_path: Path) -> None:
        """Rule 11: a busy code under HTTP 200 → Retryable."""
        self.run_rule(11, tmp_path)

    def test_rule_12_foreign_answers_are_retryable(self, tmp_path: Path) -> None:
        """Rule 12: an answer not in the partner's format → Retryable."""
        self.run_rule(12, tmp_path)

    def test_rule_13_refusals_are_permanent(self, tmp_path: Path) -> None:
        """Rule 13: the partner's validation refusal → Permanent."""
        self.run_rule(13, tmp_path)

    def test_rule_14_supplement_and_withdraw_classified(self, tmp_path: Path) -> None:
        """Rule 14: supplement and withdraw → Accepted, or Retryable on failure."""
        self.run_rule(14, tmp_path)

    def test_rule_15_never_raises(self, tmp_path: Path) -> None:
        """Rule 15: no partner behaviour makes submit/supplement/withdraw raise."""
        self.run_rule(15, tmp_path)

    def test_rule_16_updates_are_canonical(self, tmp_path: Path) -> None:
        """Rule 16: every StatusUpdate is canonical."""
        self.run_rule(16, tmp_path)

    def test_rule_17_inbound_round_trip(self, tmp_path: Path) -> None:
        """Rule 17: each claimed status, and completed with its result, reads back."""
        self.run_rule(17, tmp_path)

    def test_rule_18_parse_inbound_is_pure(self, tmp_path: Path) -> None:
        """Rule 18: same bytes → same updates; no state, no I/O."""
        self.run_rule(18, tmp_path)

    def test_rule_19_malformed_inbound_is_value_error(self, tmp_path: Path) -> None:
        """Rule 19: a malformed message → ValueError."""
        self.run_rule(19, tmp_path)

    def test_rule_20_inbound_raises_only_value_error(self, tmp_path: Path) -> None:
        """Rule 20: mutated messages → updates or ValueError, nothing else."""
        self.run_rule(20, tmp_path)

    def test_rule_21_no_personal_data_in_logs(self, tmp_path: Path) -> None:
        """Rule 21: the ID number, name and phone are never logged or printed."""
        self.run_rule(21, tmp_path)

    def test_rule_22_no_personal_data_in_reasons(self, tmp_path: Path) -> None:
        """Rule 22: the ID number, name and phone are never in a reason."""
        self.run_rule(22, tmp_path)

    def test_rule_23_poll_reports_open_cases(self, tmp_path: Path) -> None:
        """Rule 23: poll returns the partner's updates for open cases (PollingAdapter only)."""
        self.run_rule(23, tmp_path)

    def test_rule_24_poll_survives_the_partner(self, tmp_path: Path) -> None:
        """Rule 24: poll never raises while the partner fails (PollingAdapter only)."""
        self.run_rule(24, tmp_path)

    def test_rule_25_partner_event_ids_tell_reports_apart(self, tmp_path: Path) -> None:
        """Rule 25: one case's reports of different statuses never share a partner event id."""
        self.run_rule(25, tmp_path)


def rule_table() -> str:
    """The rules as a Markdown table, for documentation."""
    rows = [f"| {r.number} | {r.title} | {r.text} |" for r in _RULE_LIST]
    return "\n".join(["| rule | title | what it checks |", "| --- | --- | --- |", *rows])


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(rule_table() + "\n")
