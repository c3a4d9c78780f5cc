"""``async_ticket``: a partner whose submit answers only a ticket (受理回执 / 流水号) at once.

The result comes later, by one of two roads (``mode``):

- **callback**: the partner posts its own notices to ``POST /v1/partners/{region}/inbound``, which
  the gateway authenticates and hands to :meth:`AsyncTicketAdapter.parse_inbound`;
- **poll**: the gateway's poller calls :meth:`AsyncTicketAdapter.poll` every ``poll_interval``
  seconds with the open cases, and the adapter asks the partner for each ticket's status;
- **both** (the default): callbacks for speed, polling as the safety net for a lost callback.

Native protocol (paths configurable; names as below):

- every call carries ``X-App-Key``, ``X-Timestamp`` (Unix seconds) and ``X-Sign``, the lowercase
  hex SHA-256 of ``app_key + app_secret + timestamp`` (header names configurable);
- submit: ``POST {base_url}{submit_path}`` with ``{"caseId", "requestId", "itemCode",
  "itemVersion", "originRegion", "applicant", "form", "attachments"}`` (reshaped by the mapping
  below); the answer is ``{"code": "0", "ticket": "…"}``. ``caseId`` is our external reference,
  so a repeated submit gets the same ticket back;
- status: ``GET {base_url}{status_path}`` (``{ticket}`` filled in) answers ``{"code": "0",
  "ticket", "caseId"?, "statusCode", "outcome"?, "result"?, "message"?, "eventId"?}``;
- supplement / withdraw: ``POST`` to the ticket's path with ``{"caseId", "note", "payload",
  "attachments"}`` / ``{"caseId", "reason"}``; the answer is ``{"code": "0"}``;
- callback: one notice object, or a JSON array of them, each shaped like a status answer without
  ``code`` and with at least ``ticket`` or ``caseId``.

The submit body is the one ``rest_json`` sends, and so is its declarative mapping
(:mod:`adapters.body_mapping`; all empty by default, which sends the body as it is):
``code_tables`` and ``date_formats`` rewrite values, then the ``encrypted_fields`` are
SM4-encrypted (``encryption``), then ``field_map`` moves fields, then ``constants`` are put in
every request (supplements and withdrawals too); the ``result.<name>`` entries bring the result
fields of status answers and callbacks back decrypted, in our codes and ISO 8601.
A case the mapping cannot render (a code with no entry, a date that is not ISO 8601) is
permanent, and its reason names the field, never the value.

Attachments travel as ``rest_json``'s do, with the same settings (:mod:`adapters.uploads` serves
both): inline by default; by reference with ``attachment_url``; or, with ``attachment_transport
= "multipart"``, submit and supplement go as ``multipart/form-data`` uploads (the JSON body in
``multipart_body_field``, one file part per attachment in ``multipart_file_field``), signed as any
call: the signature covers key, secret and timestamp, not the body. Withdrawals stay JSON, and an
answer is classified the same whatever the request's form.

Polling reports what the partner says, stale or not: the gateway's state machine records a
backward or repeated move as ignored. To keep that list short, a poll reports a ticket's status
only when it differs from what the last poll reported (an unchanged decision is repeated now and
then, in case the last report did not land). Callbacks are parsed as they come, duplicates and all.

Classification (SPEC §6): HTTP 429/5xx → retryable (with a numeric ``Retry-After``); timeouts and
connection errors → retryable; an answer that is not a JSON object (a proxy's error page) →
retryable; a body ``code`` in ``busy_codes`` → retryable, even under HTTP 200; any other code that
is not in ``ok_codes``, and HTTP 4xx → permanent. A code we do not know is permanent, so an operator
sees it at once. Reasons carry HTTP statuses and codes that look like codes, never the partner's
message nor anything of the applicant.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import aiohttp
import orjson
from pydantic import Field, field_validator, model_validator

from adapters.body_mapping import BodyMapping, BodyMappingSettings, RenderError, submit_body
from adapters.sdk import (
    Accepted,
    AdapterContext,
    AdapterSettings,
    CanonicalCase,
    Outcome,
    Permanent,
    Retryable,
    StatusUpdate,
    printable_code,
)
from adapters.uploads import AttachmentSettings, FilePart, Uploads
from gateway.lifecycle import PARTNER_REPORTS

# The second platform of DOMAIN.md: 1 已接件, 3 已受理, 4 不受理, 6 补正, 8 开始办理, 11 办结.
DEFAULT_STATUS_CODES: dict[str, str] = {
    "1": "dispatched",
    "3": "accepted",
    "4": "rejected",
    "6": "supplement_required",
    "8": "in_progress",
    "11": "completed",
}
REPORTABLE: frozenset[str] = frozenset(s.value for s in PARTNER_REPORTS)
DECIDED: frozenset[str] = frozenset({"completed", "rejected"})
MAX_MESSAGE_CHARS = 500
MAX_TICKET_CHARS = 128
MAX_POLL_PAUSE = 600.0  # the longest a Retry-After on a status query may stop polling
# An unchanged decision seen on a poll is reported again (in case the last report did not land)
# after this many seconds (or two poll intervals, if longer), at most this many times.
DECISION_REPEAT_SECONDS = 60.0
DECISION_REPEATS = 10

_SECONDS = re.compile(r"[0-9]{1,9}")  # ASCII digits only: "²" is a digit to str.isdigit()


def sign(app_key: str, app_secret: str, timestamp: str) -> str:
    """The partner's signature: lowercase hex SHA-256 of key + secret + timestamp."""
    return hashlib.sha256(f"{app_key}{app_secret}{timestamp}".encode()).hexdigest()


def retry_after_seconds(value: str | None) -> float | None:
    """A numeric ``Retry-After`` in seconds; None for a date, a fraction or garbage."""
    return float(value) if value is not None and _SECONDS.fullmatch(value) else None


def _scalar(value: object) -> str | None:
    """A string or an integer as text; None for anything else (booleans included)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value)


class AsyncTicketSettings(BodyMappingSettings, AttachmentSettings):
    kind: Literal["async_ticket"] = "async_ticket"
    base_url: str = Field(pattern=r"^https?://\S+$")
    submit_path: str = "/tickets"
    status_path: str = "/tickets/{ticket}"
    supplement_path: str = "/tickets/{ticket}/supplements"
    withdraw_path: str = "/tickets/{ticket}/withdraw"
    mode: Literal["callback", "poll", "both"] = "both"
    poll_interval: float = Field(30.0, gt=0, le=86_400)
    poll_concurrency: int = Field(8, ge=1, le=64)
    status_codes: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_STATUS_CODES))
    approved_values: list[str] = Field(default_factory=lambda: ["approved", "1", "准予"])
    denied_values: list[str] = Field(default_factory=lambda: ["denied", "0", "2", "不予"])
    ok_codes: list[str] = Field(default_factory=lambda: ["0"])
    busy_codes: list[str] = Field(default_factory=lambda: ["BUSY", "429", "503"])
    app_key: str = Field(min_length=1, max_length=256)
    app_secret: str = Field(min_length=8)
    key_header: str = Field("X-App-Key", pattern=r"^[A-Za-z0-9-]+$")
    timestamp_header: str = Field("X-Timestamp", pattern=r"^[A-Za-z0-9-]+$")
    sign_header: str = Field("X-Sign", pattern=r"^[A-Za-z0-9-]+$")
    timeout: float = Field(10.0, gt=0)

    @field_validator("submit_path")
    @classmethod
    def _plain_path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with /")
        return v

    @field_validator("status_path", "supplement_path", "withdraw_path")
    @classmethod
    def _ticket_path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with /")
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(v) if name is not None}
        except ValueError:
            raise ValueError("is not a valid path template") from None
        if fields != {"ticket"}:
            raise ValueError("must contain {ticket} and no other placeholder")
        return v

    @field_validator("status_codes")
    @classmethod
    def _status_codes(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            raise ValueError("must map at least one code")
        for code, status in v.items():
            if status not in REPORTABLE:
                raise ValueError(
                    f"code {code!r} maps to {status!r}; use one of {', '.join(sorted(REPORTABLE))}"
                )
        return v

    @model_validator(mode="after")
    def _disjoint(self) -> AsyncTicketSettings:
        if set(self.approved_values) & set(self.denied_values):
            raise ValueError("approved_values and denied_values overlap")
        if set(self.ok_codes) & set(self.busy_codes):
            raise ValueError("ok_codes and busy_codes overlap")
        if len({self.key_header.lower(), self.timestamp_header.lower(),
                self.sign_header.lower()}) != 3:  # fmt: skip
            raise ValueError("key_header, timestamp_header and sign_header must differ")
        return self


@dataclass(frozen=True)
class _Reported:
    seen: tuple[str, str | None]  # (status, outcome)
    at: float
    repeats: int = 0


Answer = dict[str, Any] | Retryable | Permanent
QueryResult = StatusUpdate | Retryable | Permanent | None


class AsyncTicketAdapter:
    """Ticket now, result later: by callback, by polling, or both."""

    kind: ClassVar[str] = "async_ticket"
    Settings: ClassVar[type[AdapterSettings]] = AsyncTicketSettings
    poll_interval: float  # set only when the mode polls: only then is this a PollingAdapter

    def __init__(self, settings: AdapterSettings) -> None:
        assert isinstance(settings, AsyncTicketSettings)
        self.settings = settings
        if settings.mode != "callback":
            self.poll_interval = settings.poll_interval
        # Per ticket, what a poll last reported: so an unchanged status is not reported on every
        # poll. Tickets no longer open are dropped after a grace period, so it stays small.
        self._reported: dict[str, _Reported] = {}
        self._poll_not_before = 0.0
        self._repeat_after = max(DECISION_REPEAT_SECONDS, 2 * settings.poll_interval)
        self._mapping = BodyMapping(settings)
        self._uploads = Uploads(settings)

    # -- outbound ---------------------------------------------------------------------------

    def render(self, case: CanonicalCase) -> dict[str, Any]:
        """The native submit body: pure, so tests can inspect it.

        RenderError (a ValueError naming the field, never its value) when the mapping cannot
        put a value in the partner's form.
        """
        attachments = [self._uploads.listed(a) for a in case.attachments]
        return self._mapping.render(submit_body(case, attachments))

    def auth_headers(self, now: float) -> dict[str, str]:
        s = self.settings
        ts = str(int(now))
        return {
            s.key_header: s.app_key,
            s.timestamp_header: ts,
            s.sign_header: sign(s.app_key, s.app_secret, ts),
        }

    async def submit(self, case: CanonicalCase, ctx: AdapterContext) -> Outcome:
        try:
            body = self.render(case)
            files = self._uploads.files(case.attachments)
        except RenderError as exc:
            return Permanent(f"cannot render the case: {exc}")
        answer = await self._call("POST", self.settings.submit_path, body, ctx, files)
        if not isinstance(answer, dict):
            return answer
        ticket = _ticket(answer.get("ticket"))
        if ticket is None:
            return Retryable("answer has no usable ticket")
        # Accepted moves the case to dispatched, which is what 已接件 says: not news on a poll.
        self._reported[ticket] = _Reported(("dispatched", None), ctx.clock.now())
        ctx.logger.info("case %s taken as ticket %s", case.case_id, ticket)
        return Accepted(partner_ref=ticket)

    async def supplement(
        self, case: CanonicalCase, material: Mapping[str, Any], ctx: AdapterContext
    ) -> Outcome:
        if not case.partner_ref:
            return Permanent("no ticket to send the supplement to")
        path = self._path(self.settings.supplement_path, case.partner_ref)
        try:
            material, files = self._uploads.supplement(material)
            body = self._mapping.supplement(case.case_id, material)
        except RenderError as exc:
            return Permanent(f"cannot render the supplement: {exc}")
        answer = await self._call("POST", path, body, ctx, files)
        return Accepted() if isinstance(answer, dict) else answer

    async def withdraw(self, case: CanonicalCase, reason: str, ctx: AdapterContext) -> Outcome:
        if not case.partner_ref:
            return Permanent("no ticket to withdraw")
        path = self._path(self.settings.withdraw_path, case.partner_ref)
        try:
            body = self._mapping.withdrawal(case.case_id, reason)
        except RenderError as exc:
            return Permanent(f"cannot render the withdrawal: {exc}")
        answer = await self._call("POST", path, body, ctx)
        return Accepted() if isinstance(answer, dict) else answer

    def _path(self, template: str, ticket: str) -> str:
        return template.format(ticket=quote(ticket, safe=""))

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        ctx: AdapterContext,
        files: Sequence[FilePart] | None = None,
    ) -> Answer:
        """One call; the answer object on success, else a classified failure. Never raises.

        ``body`` goes as JSON, or, given ``files``, as a multipart upload; the signature headers
        are the same either way (they do not cover the body)."""
        headers = self.auth_headers(ctx.clock.now())
        data = None
        if body is not None:
            data, content_type = self._uploads.request_body(body, files)
            headers.update(content_type)
        timeout = aiohttp.ClientTimeout(total=min(self.settings.timeout, ctx.timeout))
        url = self.settings.base_url.rstrip("/") + path
        try:
            async with ctx.session.request(
                method, url, data=data, headers=headers, timeout=timeout
            ) as resp:
                raw = await resp.read()
                return self.classify(resp.status, raw, resp.headers.get("Retry-After"))
        except TimeoutError:
            return Retryable("timeout")
        except aiohttp.ClientError as exc:
            return Retryable(f"connection error: {type(exc).__name__}")

    def classify(self, status: int, raw: bytes, retry_after: str | None) -> Answer:
        """Pure: HTTP status and body → the answer object, or a classified failure."""
        if status == 429 or status >= 500:
            return Retryable(f"HTTP {status}", retry_after_seconds(retry_after))
        try:
            answer: Any = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            answer = None
        if not 200 <= status < 300:
            code = answer.get("code") if isinstance(answer, dict) else None
            suffix = f", code {printable_code(code)}" if code is not None else ""
            return Permanent(f"HTTP {status}{suffix}")
        if answer is None:
            return Retryable("answer is not JSON")
        if not isinstance(answer, dict):
            return Retryable("answer is not a JSON object")
        if answer.get("code") is None:
            return answer  # no code under 2xx: success
        text = printable_code(answer["code"])
        if text in self.settings.ok_codes:
            return answer
        if text in self.settings.busy_codes:
            return Retryable(f"busy (code {text})")
        return Permanent(f"refused (code {text})")

    # -- polling ----------------------------------------------------------------------------

    async def poll(
        self, open_cases: Sequence[CanonicalCase], ctx: AdapterContext
    ) -> list[StatusUpdate]:
        """Ask the status of each open case's ticket; report what changed since the last poll.

        A failed query is not an exception: it is counted, logged once per poll at info (reasons
        only) and asked again next time. The first retryable failure stops further queries in
        this poll, and a numeric ``Retry-After`` pauses polling for that long (at most
        ``MAX_POLL_PAUSE``), so a partner that is down is not asked about every case.
        """
        if self.settings.mode == "callback":
            return []
        if ctx.clock.now() < self._poll_not_before:
            return []
        targets = [(c.case_id, c.partner_ref) for c in open_cases if c.partner_ref]
        self._forget_closed({ticket for _, ticket in targets}, ctx.clock.now())
        if not targets:
            return []
        results = await self._query_all(targets, ctx)
        updates: list[StatusUpdate] = []
        failures: Counter[str] = Counter()
        not_asked = 0
        for (_case_id, ticket), result in zip(targets, results, strict=True):
            if result is None:
                not_asked += 1
            elif isinstance(result, Retryable | Permanent):
                failures[result.reason] += 1
                if isinstance(result, Retryable) and result.retry_after is not None:
                    pause = min(result.retry_after, MAX_POLL_PAUSE)
                    self._poll_not_before = max(self._poll_not_before, ctx.clock.now() + pause)
            elif (entry := self._news(ticket, result, ctx.clock.now())) is not None:
                self._reported[ticket] = entry
                updates.append(result)
        if failures or not_asked:
            summary = ", ".join(f"{reason} x{n}" for reason, n in sorted(failures.items()))
            ctx.logger.info(
                "poll of %s: %d of %d status queries failed (%s); %d not asked",
                ctx.region, sum(failures.values()), len(targets), summary or "none", not_asked,
            )  # fmt: skip
        return updates

    def _forget_closed(self, open_tickets: set[str], now: float) -> None:
        """Drop what is remembered of tickets no longer open. Only after a grace period: the
        open-case list may predate a submit that just remembered its ticket."""
        grace = self._repeat_after
        for ticket in [t for t in self._reported if t not in open_tickets]:
            if now - self._reported[ticket].at > grace:
                del self._reported[ticket]

    def _news(self, ticket: str, update: StatusUpdate, now: float) -> _Reported | None:
        """The memory entry to keep if ``update`` is worth reporting, else None.

        A changed status is news. An unchanged one is not, except a decision (completed,
        rejected) for a case the gateway still holds open: the last report may not have landed
        (a failed write), so it is repeated now and then, a bounded number of times. An unchanged
        补正 is never repeated: the origin may have answered it already, and a repeat would send
        the case back to supplement_required.
        """
        seen = (update.status, update.outcome)
        last = self._reported.get(ticket)
        if last is None or last.seen != seen:
            return _Reported(seen, now)
        if update.status not in DECIDED or last.repeats >= DECISION_REPEATS:
            return None
        if now - last.at < self._repeat_after:
            return None
        return _Reported(seen, now, last.repeats + 1)

    async def _query_all(
        self, targets: Sequence[tuple[str, str]], ctx: AdapterContext
    ) -> list[QueryResult]:
        """Query every ticket, at most ``poll_concurrency`` at once, within a time budget that
        ends before the poller's own timeout; what did not finish is reported as not asked."""
        gate = asyncio.Semaphore(self.settings.poll_concurrency)
        stop = False

        async def one(case_id: str, ticket: str) -> QueryResult:
            nonlocal stop
            async with gate:
                if stop:
                    return None
                result = await self._query(case_id, ticket, ctx)
                if isinstance(result, Retryable):
                    stop = True
                return result

        tasks = [asyncio.ensure_future(one(c, t)) for c, t in targets]
        try:
            await asyncio.wait(tasks, timeout=ctx.timeout * 1.5)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        results: list[QueryResult] = []
        for task in tasks:
            if task.cancelled():
                results.append(None)
            elif (exc := task.exception()) is not None:
                results.append(Permanent(f"adapter error: {type(exc).__name__}"))
            else:
                results.append(task.result())
        return results

    async def _query(self, case_id: str, ticket: str, ctx: AdapterContext) -> QueryResult:
        answer = await self._call("GET", self._path(self.settings.status_path, ticket), None, ctx)
        if not isinstance(answer, dict):
            return answer
        given_case = answer.get("caseId")
        if given_case is not None and given_case != case_id:
            return Permanent("status answer names another case")
        given_ticket = answer.get("ticket")
        if given_ticket is not None and _ticket(given_ticket) != ticket:
            return Permanent("status answer names another ticket")
        try:
            return self._update(answer, case_id=case_id, ticket=ticket)
        except ValueError as exc:
            return Permanent(f"unreadable status answer: {exc}")

    # -- inbound ----------------------------------------------------------------------------

    def parse_inbound(self, body: bytes, headers: Mapping[str, str]) -> list[StatusUpdate]:
        """One notice or a list of them; ValueError names the bad field, never its value."""
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ValueError("body is not JSON") from None
        if isinstance(message, dict):
            notices: list[Any] = [message]
        elif isinstance(message, list):
            notices = message
        else:
            raise ValueError("expected a notice object or a list of them")
        updates = []
        for i, notice in enumerate(notices):
            where = f"[{i}]" if isinstance(message, list) else ""
            if not isinstance(notice, dict):
                raise ValueError(f"{where or 'notice'} is not an object")
            try:
                ticket = _ticket(notice.get("ticket"))
                if notice.get("ticket") is not None and ticket is None:
                    raise ValueError("ticket: not a ticket")
                case_id = notice.get("caseId")
                if case_id is not None and (not isinstance(case_id, str) or not case_id):
                    raise ValueError("caseId: not a non-empty string")
                if ticket is None and case_id is None:
                    raise ValueError("ticket: needed when there is no caseId")
                updates.append(self._update(notice, case_id=case_id, ticket=ticket))
            except ValueError as exc:
                raise ValueError(f"{where}.{exc}" if where else str(exc)) from None
        return updates

    def _update(
        self, report: Mapping[str, Any], *, case_id: str | None, ticket: str | None
    ) -> StatusUpdate:
        """One native report as a canonical update; ValueError names the bad field."""
        code = _scalar(report.get("statusCode"))
        if code is None:
            raise ValueError("statusCode: missing or not a code")
        status = self.settings.status_codes.get(code)
        if status is None:
            raise ValueError("statusCode: not a known status code")
        outcome = None
        if status == "completed":
            value = _scalar(report.get("outcome"))
            if value in self.settings.approved_values:
                outcome = "approved"
            elif value in self.settings.denied_values:
                outcome = "denied"
            else:
                raise ValueError("outcome: neither an approved nor a denied value")
        result = report.get("result")
        data: dict[str, Any] = {}
        if isinstance(result, dict):
            data = dict(result)
        elif result is not None:
            data = {"value": result}
        data = self._mapping.result(data)
        message = report.get("message")
        if status in ("rejected", "supplement_required") and isinstance(message, str) and message:
            data["message"] = message[:MAX_MESSAGE_CHARS]
        event_id = _scalar(report.get("eventId"))
        return StatusUpdate(
            status=status,
            case_id=case_id,
            partner_ref=ticket,
            outcome=outcome,
            data=data,
            partner_event_id=event_id[:128] if event_id else None,
        )


def _ticket(value: object) -> str | None:
    """A partner's ticket as a string, if it looks like one: printable, no spaces, bounded."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if (
        isinstance(value, str)
        and 0 < len(value) <= MAX_TICKET_CHARS
        and value.isprintable()
        and not any(ch.isspace() for ch in value)
    ):
        return value
    return None
