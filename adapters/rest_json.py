"""``rest_json``: a partner with a modern JSON-over-HTTP interface.

Native protocol (the shape most provincial JSON platforms share; names are configurable):

- submit: ``POST {base_url}{submit_path}`` with ``{"caseId", "requestId", "itemCode", "itemVersion",
  "originRegion", "applicant", "form", "attachments"}`` (reshaped by the mapping below).
  The answer is ``{"code": "0", "ticket": "…", "statusCode": "…"}``; a non-zero ``code`` is a
  refusal even under HTTP 200, except the ``busy_codes``, which mean "later".
- supplement / withdraw: ``POST {base_url}/cases/{ticket}/supplements|withdraw``.
- inbound: ``{"reports": [{"caseId", "ticket", "statusCode", "outcome", "result", "eventId"}]}``,
  with ``statusCode`` translated through ``status_codes`` (their table → our lifecycle words).

Declarative mapping of the submit body (all empty by default, which sends the body above as it is).
Our paths are dotted and start with a name of that body or its canonical name (``payload.x`` is
``form.x``, ``case_id`` is ``caseId``):

- ``code_tables`` (our path → {our code: theirs}, ``"*"`` for the rest) and ``date_formats`` (our
  path → a Java-style pattern) rewrite values in place;
- then ``field_map`` (our path → their dotted path) moves fields; the rest stay where they are;
- then ``constants`` (their path → value) are put in every request.

Inbound, ``result.<name>`` entries of ``code_tables`` (in reverse) and ``date_formats`` (their
format → ISO 8601) bring result fields back in our words.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any, ClassVar, Literal

import aiohttp
import orjson
from pydantic import Field, field_validator, model_validator

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
from adapters.soap_xml import format_date, iso_to_local, parse_date

# One platform's table (1 已接件, 3 已受理, 4 不受理, 6 补正, 8 开始办理, 11 办结).
DEFAULT_STATUS_CODES = {
    "1": "dispatched",
    "3": "accepted",
    "4": "rejected",
    "6": "supplement_required",
    "8": "in_progress",
    "11": "completed",
}

# The submit body's top-level names, and the canonical names that may stand for them in paths.
BODY_NAMES = (
    "caseId", "requestId", "itemCode", "itemVersion", "originRegion", "applicant", "form",
    "attachments",
)  # fmt: skip
CANONICAL_NAMES = {
    "case_id": "caseId",
    "request_id": "requestId",
    "item_code": "itemCode",
    "contract_version": "itemVersion",
    "origin_region": "originRegion",
    "payload": "form",
}


class RestJsonSettings(AdapterSettings):
    kind: Literal["rest_json"] = "rest_json"
    base_url: str = Field(pattern=r"^https?://")
    submit_path: str = "/cases"
    supplement_path: str = "/cases/{ref}/supplements"
    withdraw_path: str = "/cases/{ref}/withdraw"
    field_map: dict[str, str] = Field(
        default_factory=dict, description="our dotted path → their dotted path"
    )
    constants: dict[str, Any] = Field(
        default_factory=dict, description="their dotted path → a value put in every request"
    )
    code_tables: dict[str, dict[str, str | int]] = Field(
        default_factory=dict, description="our dotted path → {our code: theirs}; '*' for the rest"
    )
    date_formats: dict[str, str] = Field(
        default_factory=dict, description="our dotted path → Java-style pattern"
    )
    utc_offset_hours: float = Field(8.0, ge=-12, le=14)
    status_codes: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_STATUS_CODES))
    approved_values: list[str] = Field(default_factory=lambda: ["approved", "1", "准予"])
    denied_values: list[str] = Field(default_factory=lambda: ["denied", "0", "2", "不予"])
    ok_codes: list[str] = Field(default_factory=lambda: ["0", "200"])
    busy_codes: list[str] = Field(default_factory=lambda: ["BUSY", "429", "503"])
    auth_header: str | None = None
    auth_token: str | None = None
    attachment_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="send attachments by reference: this URL prefix + sha256 (the gateway's "
        "GET /v1/partners/{region}/attachments/{sha256}); unset: inline base64",
    )
    timeout: float = Field(10.0, gt=0)

    @field_validator("field_map")
    @classmethod
    def _moves(cls, value: dict[str, str]) -> dict[str, str]:
        ours: set[tuple[str, ...]] = set()
        for source, target in value.items():
            if "." not in source and source not in BODY_NAMES and source not in CANONICAL_NAMES:
                continue  # a top-level name the body does not have: ignored, as it always was
            normal = our_path(source, inbound=False)
            if normal in ours:
                raise ValueError(f"{source!r} names a field already mapped")
            ours.add(normal)
            _their_path(target)
        targets = list(value.values())
        if len(set(targets)) != len(targets):
            raise ValueError("two fields are mapped to the same place")
        return value

    @field_validator("constants")
    @classmethod
    def _constant_paths(cls, value: dict[str, Any]) -> dict[str, Any]:
        for target in value:
            _their_path(target)
        return value

    @field_validator("code_tables")
    @classmethod
    def _table_paths(
        cls, value: dict[str, dict[str, str | int]]
    ) -> dict[str, dict[str, str | int]]:
        for path in value:
            our_path(path, inbound=True)
        return value

    @field_validator("date_formats")
    @classmethod
    def _date_patterns(cls, value: dict[str, str]) -> dict[str, str]:
        for path, pattern in value.items():
            our_path(path, inbound=True)
            format_date(datetime(2000, 1, 1), pattern)  # ValueError names a bad pattern
        return value

    @model_validator(mode="after")
    def _normalised_once(self) -> RestJsonSettings:
        for name in ("code_tables", "date_formats"):
            paths = [our_path(p, inbound=True) for p in getattr(self, name)]
            if len(set(paths)) != len(paths):
                raise ValueError(f"{name}: one field is named twice (e.g. payload.x and form.x)")
        return self


def our_path(path: str, *, inbound: bool) -> tuple[str, ...]:
    """Our dotted path as the submit body's keys (``payload.x`` → ``("form", "x")``).

    With ``inbound``, ``result.<name>`` (a field of an inbound report's result) is allowed too.
    ValueError if it does not start with a name of the body.
    """
    parts = _their_path(path)
    head = CANONICAL_NAMES.get(parts[0], parts[0])
    if head not in BODY_NAMES and not (inbound and head == "result" and len(parts) > 1):
        known = ", ".join([*BODY_NAMES, *CANONICAL_NAMES, *(["result.<name>"] if inbound else [])])
        raise ValueError(f"{path!r} does not start with a field of the request ({known})")
    return (head, *parts[1:])


def _their_path(path: str) -> tuple[str, ...]:
    parts = tuple(path.split("."))
    if not all(parts):
        raise ValueError(f"{path!r} is not a dotted path like sqr.zjhm")
    return parts


class RenderError(ValueError):
    """A case that cannot be put in the partner's form; names the field, never its value."""


class RestJsonAdapter:
    kind: ClassVar[str] = "rest_json"
    Settings: ClassVar[type[AdapterSettings]] = RestJsonSettings

    def __init__(self, settings: AdapterSettings) -> None:
        assert isinstance(settings, RestJsonSettings)
        self.settings = settings
        self._tz = timezone(timedelta(hours=settings.utc_offset_hours))
        # (path in the body, the name as configured for reasons, table or pattern)
        self._tables = [(our_path(k, inbound=True), k, v) for k, v in settings.code_tables.items()]
        self._dates = [(our_path(k, inbound=True), k, v) for k, v in settings.date_formats.items()]
        # Their code → ours for result fields; the first of our codes wins, "*" is not reversed.
        self._reverse = {
            path[1:]: {str(theirs): ours for ours, theirs in reversed(table.items()) if ours != "*"}
            for path, _, table in self._tables
            if path[0] == "result"
        }
        moves = [
            (our_path(k, inbound=False), _their_path(v))
            for k, v in settings.field_map.items()
            if "." in k or k in BODY_NAMES or k in CANONICAL_NAMES
        ]
        # Top-level renames keep their place in the body (as before nested paths were allowed);
        # other moves take the field out (deepest first) and put it in (shallowest first).
        self._renames = {s[0]: t[0] for s, t in moves if len(s) == len(t) == 1}
        self._moves = sorted(
            [(s, t) for s, t in moves if not len(s) == len(t) == 1], key=lambda m: -len(m[0])
        )
        self._constants = [(_their_path(k), v) for k, v in settings.constants.items()]

    # -- outbound ---------------------------------------------------------------------------

    def render(self, case: CanonicalCase) -> dict[str, Any]:
        """The native submit body: pure, so tests and the conformance kit can inspect it.

        RenderError (a ValueError naming the field, never its value) when a value has no entry
        in its code table, is not an ISO date, or a mapped field has no place to go.
        """
        body: dict[str, Any] = {
            "caseId": case.case_id,
            "requestId": case.request_id,
            "itemCode": case.item_code,
            "itemVersion": case.contract_version,
            "originRegion": case.origin_region,
            "applicant": copy.deepcopy(dict(case.applicant)),
            "form": copy.deepcopy(dict(case.payload)),
            "attachments": [self._attachment(a) for a in case.attachments],
        }
        for path, name, table in self._tables:
            _rewrite(body, path, partial(_coded, table=table, name=name))
        for path, name, pattern in self._dates:
            _rewrite(body, path, partial(self._dated, pattern=pattern, name=name))
        taken = [(target, _pop(body, source)) for source, target in self._moves]
        body = {self._renames.get(k, k): v for k, v in body.items()}
        for target, value in sorted(taken, key=lambda m: len(m[0])):
            if value is not _ABSENT:
                _put(body, target, value, replace=False)
        return self._with_constants(body)

    def _with_constants(self, body: dict[str, Any]) -> dict[str, Any]:
        for target, value in self._constants:
            _put(body, target, copy.deepcopy(value), replace=True)
        return body

    def _dated(self, value: Any, pattern: str, name: str) -> str:
        try:
            if not isinstance(value, str):
                raise ValueError(value)
            return format_date(iso_to_local(value, self._tz), pattern)
        except ValueError:
            raise RenderError(f"{name}: not an ISO 8601 date or date-time") from None

    def _attachment(self, a: Mapping[str, Any]) -> dict[str, Any]:
        """Inline (base64 content) by default; by reference when ``attachment_url`` is set."""
        item = copy.deepcopy(dict(a))
        if self.settings.attachment_url:
            item.pop("content_base64", None)
            item["url"] = self.settings.attachment_url + str(a.get("sha256", ""))
        return item

    async def submit(self, case: CanonicalCase, ctx: AdapterContext) -> Outcome:
        try:
            body = self.render(case)
        except RenderError as exc:
            return Permanent(f"cannot render the case: {exc}")
        return await self._post(self.settings.submit_path, body, case, ctx)

    async def supplement(
        self, case: CanonicalCase, material: Mapping[str, Any], ctx: AdapterContext
    ) -> Outcome:
        path = self.settings.supplement_path.format(ref=case.partner_ref or case.case_id)
        try:
            body = self._with_constants({"caseId": case.case_id, **copy.deepcopy(dict(material))})
        except RenderError as exc:
            return Permanent(f"cannot render the supplement: {exc}")
        return await self._post(path, body, case, ctx)

    async def withdraw(self, case: CanonicalCase, reason: str, ctx: AdapterContext) -> Outcome:
        path = self.settings.withdraw_path.format(ref=case.partner_ref or case.case_id)
        try:
            body = self._with_constants({"caseId": case.case_id, "reason": reason})
        except RenderError as exc:
            return Permanent(f"cannot render the withdrawal: {exc}")
        return await self._post(path, body, case, ctx)

    async def _post(
        self, path: str, body: dict[str, Any], case: CanonicalCase, ctx: AdapterContext
    ) -> Outcome:
        headers = {"Content-Type": "application/json"}
        if self.settings.auth_header and self.settings.auth_token:
            headers[self.settings.auth_header] = self.settings.auth_token
        timeout = aiohttp.ClientTimeout(total=min(self.settings.timeout, ctx.timeout))
        url = self.settings.base_url.rstrip("/") + path
        try:
            async with ctx.session.post(
                url, data=orjson.dumps(body), headers=headers, timeout=timeout
            ) as resp:
                raw = await resp.read()
                return self.classify(resp.status, raw, resp.headers.get("Retry-After"), case)
        except TimeoutError:
            return Retryable("timeout")
        except aiohttp.ClientError as exc:
            return Retryable(f"connection error: {type(exc).__name__}")

    def classify(
        self, status: int, raw: bytes, retry_after: str | None, case: CanonicalCase
    ) -> Outcome:
        """HTTP status and body → outcome. Pure; errors carry codes, never the request's data."""
        if status == 429 or status >= 500:
            delay = float(retry_after) if retry_after and _SECONDS.fullmatch(retry_after) else None
            return Retryable(f"partner answered HTTP {status}", delay)
        try:
            answer = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            return Retryable(f"partner answered HTTP {status} with a body that is not JSON")
        if not isinstance(answer, dict):
            return Retryable(f"partner answered HTTP {status} with an unexpected JSON shape")
        code = str(answer.get("code", "0" if status < 300 else status))
        if code in self.settings.busy_codes:
            return Retryable(f"partner busy (code {printable_code(code)})")
        if status >= 400 or code not in self.settings.ok_codes:
            return Permanent(
                f"partner refused the request (HTTP {status}, code {printable_code(code)})"
            )
        ref = answer.get("ticket")
        updates: tuple[StatusUpdate, ...] = ()
        if answer.get("statusCode") is not None:
            try:
                updates = (self._update(answer, case.case_id),)
            except ValueError:
                updates = ()  # the answer's status is unreadable; its later reports will tell
        return Accepted(partner_ref=str(ref) if ref else None, updates=updates)

    # -- inbound ----------------------------------------------------------------------------

    def parse_inbound(self, body: bytes, headers: Mapping[str, str]) -> list[StatusUpdate]:
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ValueError("body is not JSON") from None
        reports = message.get("reports") if isinstance(message, dict) else None
        if not isinstance(reports, list):
            raise ValueError("expected an object with a 'reports' list")
        updates = []
        for i, report in enumerate(reports):
            if not isinstance(report, dict):
                raise ValueError(f"reports[{i}] is not an object")
            try:
                updates.append(self._update(report, None))
            except ValueError as exc:
                raise ValueError(f"reports[{i}].{exc}") from None
        return updates

    def _update(self, report: Mapping[str, Any], case_id: str | None) -> StatusUpdate:
        """One native report as a canonical update; ValueError names the bad field."""
        status = self.settings.status_codes.get(str(report.get("statusCode")))
        if status is None:
            raise ValueError("statusCode is not a known status code")
        outcome = None
        if status == "completed":
            given = str(report.get("outcome", ""))
            if given in self.settings.approved_values:
                outcome = "approved"
            elif given in self.settings.denied_values:
                outcome = "denied"
            else:
                raise ValueError("outcome is neither an approved nor a denied value")
        data = report.get("result") or {}
        if not isinstance(data, dict):
            data = {"value": data}
        data = self._result(data)
        if status in ("rejected", "supplement_required") and report.get("message"):
            data = {**data, "message": str(report["message"])}
        given_case = report.get("caseId")
        if given_case is not None and not isinstance(given_case, str):
            raise ValueError("caseId is not a string")
        return StatusUpdate(
            status=status,
            case_id=given_case or case_id,
            partner_ref=str(report["ticket"]) if report.get("ticket") else None,
            outcome=outcome,
            data=data,
            partner_event_id=str(report["eventId"]) if report.get("eventId") else None,
        )

    def _result(self, data: dict[str, Any]) -> dict[str, Any]:
        """Result fields back in our words: codes through their tables in reverse, dates in
        ``date_formats`` as ISO 8601. A value with no entry, or not in the pattern, is kept."""
        if not self._reverse and not any(path[0] == "result" for path, _, _ in self._dates):
            return data
        data = copy.deepcopy(data)  # the caller's report stays as it was
        for path, reverse in self._reverse.items():
            _rewrite(data, path, partial(_uncoded, reverse=reverse))
        for path, _, pattern in self._dates:
            if path[0] == "result":
                _rewrite(data, path[1:], partial(self._undated, pattern=pattern))
        return data

    def _undated(self, value: Any, pattern: str) -> Any:
        if isinstance(value, str):
            return parse_date(value, pattern, self._tz) or value
        if isinstance(value, int) and not isinstance(value, bool):  # 20261201 sent as a number
            return parse_date(str(value), pattern, self._tz) or value
        return value


# ---- paths in JSON objects --------------------------------------------------------------------

_ABSENT = object()


def _rewrite(obj: dict[str, Any], path: tuple[str, ...], change: Callable[[Any], Any]) -> None:
    """Replace the value at ``path`` by ``change(value)``; nothing if it is absent or null."""
    *parents, last = path
    for name in parents:
        obj = obj.get(name)  # type: ignore[assignment]
        if not isinstance(obj, dict):
            return
    if obj.get(last) is not None:
        obj[last] = change(obj[last])


def _pop(obj: dict[str, Any], path: tuple[str, ...]) -> Any:
    """Take the value at ``path`` out of ``obj``; ``_ABSENT`` if there is none."""
    *parents, last = path
    for name in parents:
        obj = obj.get(name)  # type: ignore[assignment]
        if not isinstance(obj, dict):
            return _ABSENT
    return obj.pop(last, _ABSENT)


def _put(obj: dict[str, Any], path: tuple[str, ...], value: Any, *, replace: bool) -> None:
    """Put ``value`` at ``path``, making the objects on the way; RenderError when the place is
    taken by a value that is not an object (or, without ``replace``, by any value)."""
    *parents, last = path
    for i, name in enumerate(parents):
        inner = obj.setdefault(name, {})
        if not isinstance(inner, dict):
            raise RenderError(f"{'.'.join(path[: i + 1])}: holds a value, not an object")
        obj = inner
    if not replace and last in obj:
        raise RenderError(f"{'.'.join(path)}: a field is mapped onto another field")
    obj[last] = value


def _coded(value: Any, table: Mapping[str, str | int], name: str) -> str | int:
    """Our code as theirs; RenderError names the field, never the value."""
    if isinstance(value, bool):
        key = "true" if value else "false"
    elif isinstance(value, str | int):
        key = str(value)
    else:
        raise RenderError(f"{name}: holds a {type(value).__name__}, not a code")
    if key in table:
        return table[key]
    if "*" in table:
        return table["*"]
    raise RenderError(f"{name}: the value has no entry in its code table")


def _uncoded(value: Any, reverse: Mapping[str, str]) -> Any:
    if isinstance(value, str | int) and not isinstance(value, bool):
        return reverse.get(str(value), value)
    return value


_SECONDS = re.compile(r"[0-9]{1,9}")
