"""``rest_json``: a partner with a modern JSON-over-HTTP interface.

Native protocol (the shape most provincial JSON platforms share; names are configurable):

- submit: ``POST {base_url}{submit_path}`` with ``{"caseId", "requestId", "itemCode", "itemVersion",
  "originRegion", "applicant", "form", "attachments"}`` (reshaped by the mapping below).
  The answer is ``{"code": "0", "ticket": "…", "statusCode": "…"}``; a non-zero ``code`` is a
  refusal even under HTTP 200, except the ``busy_codes``, which mean "later".
- supplement / withdraw: ``POST {base_url}/cases/{ticket}/supplements|withdraw``.
- inbound: ``{"reports": [{"caseId", "ticket", "statusCode", "outcome", "result", "eventId"}]}``,
  with ``statusCode`` translated through ``status_codes`` (their table → our lifecycle words).

Declarative mapping of the submit body (all empty by default, which sends the body above as it is):
``code_tables`` and ``date_formats`` rewrite values, then the ``encrypted_fields`` are
SM4-encrypted (``encryption``: ECB or CBC, hex or base64), then ``field_map`` moves fields, then
``constants`` are put in every request (supplements and withdrawals too); inbound, ``result.<name>``
entries bring result fields back in our words (decrypted first). The mapping is
:mod:`adapters.body_mapping`, shared with ``async_ticket``, which sends the same body.

Attachments (``attachment_transport``) go inline by default, each ``{"name", "media_type",
"sha256", "content_base64"}`` in the body; by reference with ``attachment_url`` (``url`` instead of
the content); or, with ``"multipart"``, as an upload of materials (申请材料): submit and supplement
are ``multipart/form-data``, one part (``multipart_body_field``) holding the JSON body with its
attachments listed without their content, and one file part (``multipart_file_field``) per
attachment that has content. Withdrawals are JSON in every form. How each form is built is
:mod:`adapters.uploads`, shared with ``async_ticket``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import aiohttp
import orjson
from pydantic import Field

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

# One platform's table (1 已接件, 3 已受理, 4 不受理, 6 补正, 8 开始办理, 11 办结).
DEFAULT_STATUS_CODES = {
    "1": "dispatched",
    "3": "accepted",
    "4": "rejected",
    "6": "supplement_required",
    "8": "in_progress",
    "11": "completed",
}


class RestJsonSettings(BodyMappingSettings, AttachmentSettings):
    kind: Literal["rest_json"] = "rest_json"
    base_url: str = Field(pattern=r"^https?://")
    submit_path: str = "/cases"
    supplement_path: str = "/cases/{ref}/supplements"
    withdraw_path: str = "/cases/{ref}/withdraw"
    status_codes: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_STATUS_CODES))
    approved_values: list[str] = Field(default_factory=lambda: ["approved", "1", "准予"])
    denied_values: list[str] = Field(default_factory=lambda: ["denied", "0", "2", "不予"])
    ok_codes: list[str] = Field(default_factory=lambda: ["0", "200"])
    busy_codes: list[str] = Field(default_factory=lambda: ["BUSY", "429", "503"])
    auth_header: str | None = None
    auth_token: str | None = None
    timeout: float = Field(10.0, gt=0)


class RestJsonAdapter:
    kind: ClassVar[str] = "rest_json"
    Settings: ClassVar[type[AdapterSettings]] = RestJsonSettings

    def __init__(self, settings: AdapterSettings) -> None:
        assert isinstance(settings, RestJsonSettings)
        self.settings = settings
        self._mapping = BodyMapping(settings)
        self._uploads = Uploads(settings)

    # -- outbound ---------------------------------------------------------------------------

    def render(self, case: CanonicalCase) -> dict[str, Any]:
        """The native submit body: pure, so tests and the conformance kit can inspect it.

        RenderError (a ValueError naming the field, never its value) when a value has no entry
        in its code table, is not an ISO date, or a mapped field has no place to go.
        """
        attachments = [self._uploads.listed(a) for a in case.attachments]
        return self._mapping.render(submit_body(case, attachments))

    async def submit(self, case: CanonicalCase, ctx: AdapterContext) -> Outcome:
        try:
            body = self.render(case)
            files = self._uploads.files(case.attachments)
        except RenderError as exc:
            return Permanent(f"cannot render the case: {exc}")
        return await self._post(self.settings.submit_path, body, case, ctx, files)

    async def supplement(
        self, case: CanonicalCase, material: Mapping[str, Any], ctx: AdapterContext
    ) -> Outcome:
        path = self.settings.supplement_path.format(ref=case.partner_ref or case.case_id)
        try:
            material, files = self._uploads.supplement(material)
            body = self._mapping.supplement(case.case_id, material)
        except RenderError as exc:
            return Permanent(f"cannot render the supplement: {exc}")
        return await self._post(path, body, case, ctx, files)

    async def withdraw(self, case: CanonicalCase, reason: str, ctx: AdapterContext) -> Outcome:
        path = self.settings.withdraw_path.format(ref=case.partner_ref or case.case_id)
        try:
            body = self._mapping.withdrawal(case.case_id, reason)
        except RenderError as exc:
            return Permanent(f"cannot render the withdrawal: {exc}")
        return await self._post(path, body, case, ctx)

    async def _post(
        self,
        path: str,
        body: dict[str, Any],
        case: CanonicalCase,
        ctx: AdapterContext,
        files: Sequence[FilePart] | None = None,
    ) -> Outcome:
        """POST ``body`` as JSON, or, given ``files``, as a multipart upload; the answer is
        classified the same either way."""
        data, headers = self._uploads.request_body(body, files)
        if self.settings.auth_header and self.settings.auth_token:
            headers[self.settings.auth_header] = self.settings.auth_token
        timeout = aiohttp.ClientTimeout(total=min(self.settings.timeout, ctx.timeout))
        url = self.settings.base_url.rstrip("/") + path
        try:
            async with ctx.session.post(url, data=data, headers=headers, timeout=timeout) as resp:
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
        data = self._mapping.result(data)
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


_SECONDS = re.compile(r"[0-9]{1,9}")
