"""The service layer: every province-facing and operator action, independent of HTTP.

Handlers parse nothing and decide nothing; they authenticate, call one method here and render
its answer. Tests call these methods directly.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from adapters.sdk import Adapter, CanonicalCase, StatusUpdate
from gateway import errors, identifier_exceptions, legs, lifecycle
from gateway.clock import Clock, iso
from gateway.config import Config
from gateway.contracts import (
    ContractList,
    ContractVersion,
    attachment_errors,
    deadline_after,
    province_of,
)
from gateway.ids import new_id
from gateway.lifecycle import Status
from gateway.models import Attachment, CaseSubmission, Supplement, Withdrawal
from gateway.registry import ContractRegistry
from gateway.store.base import (
    CaseDetail,
    CaseFilter,
    CaseRecord,
    CursorRecord,
    EventRecord,
    NewJob,
    Replay,
    Store,
    Submit,
    SubmitResult,
    Transition,
    TransitionResult,
)

HUB = "hub"
M = TypeVar("M", bound=BaseModel)
MAX_PAGE = 500


def region_recipient(region: str) -> str:
    return f"region:{region}"


def subscriber_recipient(name: str) -> str:
    return f"sub:{name}"


@dataclass(frozen=True)
class Caller:
    """Who is asking: a province (by its key) or an operator (by bearer token)."""

    region: str | None = None
    operator: str | None = None
    role: str | None = None


@dataclass
class Wakeups:
    """Hooks the background workers register to hear of new work at once."""

    dispatch: Callable[[], None] = lambda: None
    deliver: Callable[[], None] = lambda: None


@dataclass
class Counters:
    """Hooks for metrics; the service knows nothing of Prometheus."""

    submitted: Callable[[str, str], None] = lambda item, result: None
    ignored: Callable[[str], None] = lambda source: None


@dataclass
class CaseService:
    config: Config
    store: Store
    registry: ContractRegistry
    adapters: Mapping[str, Adapter]
    clock: Clock
    wake: Wakeups = field(default_factory=Wakeups)
    count: Counters = field(default_factory=Counters)

    @property
    def contracts(self) -> ContractList:
        """The contract list in force now (it may change between two calls)."""
        return self.registry.current

    # ---- submit ---------------------------------------------------------------------------

    async def submit(self, origin: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """Accept a case: 202 with the case, 200 for an identical repeat, or an ApiError."""
        raw = _parse_json(body)
        try:  # the applicant's identifiers may be on the list's exception list
            tables = self.contracts.code_tables  # the applicant's 证件类型 table
            listed = identifier_exceptions.context(
                self.contracts.identifier_exceptions,
                tables.get("document_type") or tables.get("id_type"),
            )
            sub = CaseSubmission.model_validate(raw, context=listed)
        except ValidationError as exc:
            raise errors.Unprocessable(
                "the request body is invalid", errors=errors.field_errors(exc)
            ) from None
        version = self._contract(sub.item_code, sub.contract_version, origin)
        payload = self._validate_payload(sub.item_code, version, sub.payload)
        leg_plan = self._legs(sub, version, payload)
        handler = leg_plan[0]["region"] if leg_plan else self._route(sub, version, payload, origin)
        blobs = _attachment_blobs(sub.attachments)
        sizes = {sha: len(content) for sha, _, content in blobs}
        given = [(a.kind, a.media_type, sizes.get(a.sha256)) for a in sub.attachments]
        problems = attachment_errors(version.attachments, given)
        if problems:
            raise errors.Unprocessable("the attachments break the contract", errors=problems)
        now = self.clock.now()
        case = CaseRecord(
            case_id=new_id(now, "C"),
            request_id=sub.request_id,
            origin_region=origin,
            handling_region=handler,
            item_code=sub.item_code,
            contract_version=version.version,
            mode=version.mode,
            status=Status.RECEIVED,
            outcome=None,
            result=None,
            partner_ref=None,
            body_hash=hashlib.sha256(orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)).hexdigest(),
            applicant=sub.applicant.model_dump(mode="json", exclude_none=True),
            payload=payload,
            attachments=[
                a.model_dump(mode="json", exclude={"content_base64"}) for a in sub.attachments
            ],
            recipients=self._recipients(origin, version, [handler, *legs.of(leg_plan)]),
            created_at=now,
            updated_at=now,
            deadline=deadline_after(now, version.time_limit_days, self.contracts.calendar),
            last_seq=1,
            legs=leg_plan,
        )
        first = self._event(case, Status.RECEIVED, now, {})
        job = NewJob("submit", handler, {"leg": 0} if leg_plan else {})
        op = Submit(case, first, (job,), blobs)
        (result,) = await self.store.write([op], now)
        assert isinstance(result, SubmitResult)
        self.count.submitted(sub.item_code, result.kind)
        if result.kind == "conflict":
            raise errors.Conflict(
                f"request_id {sub.request_id} was already used with a different body"
            )
        if result.kind == "existing":
            detail = await self.store.get_case(result.case.case_id)
            assert detail is not None
            return 200, render_case(detail, self.clock.now())
        self.wake.dispatch()
        cursors = [CursorRecord(r, case.case_id, 0, 1, 0, now, None) for r in case.recipients]
        return 202, render_case(CaseDetail(case, [first], cursors, []), now)

    def _contract(self, item_code: str, number: int | None, origin: str) -> ContractVersion:
        item = self.contracts.items.get(item_code)
        if item is None:
            raise errors.NotFound(f"unknown service item {item_code}")
        dated = any(v.effective_from for v in item.versions)
        today = self.contracts.calendar.local_date(self.clock.now()) if dated else None
        version = item.version(number, today)
        if version is None:
            which = f"no version {number}" if number else "no active version in effect"
            raise errors.NotFound(f"service item {item_code} has {which}")
        if version.status in ("draft", "retired"):
            raise errors.NotFound(
                f"version {version.version} of {item_code} is {version.status}: not accepting cases"
            )
        if today is not None and not version.in_effect(today):
            raise errors.NotFound(
                f"version {version.version} of {item_code} takes effect on "
                f"{version.effective_from}: not accepting cases yet"
            )
        if not version.admits(origin):
            raise errors.Forbidden(f"region {origin} may not submit {item_code}")
        return version

    def _validate_payload(
        self, item_code: str, version: ContractVersion, payload: dict[str, Any]
    ) -> dict[str, Any]:
        validator = self.contracts.validator(item_code, version)
        try:
            return validator.validate(payload)
        except ValidationError as exc:
            raise errors.Unprocessable(
                "the payload breaks the contract", errors=errors.field_errors(exc, ["payload"])
            ) from None

    def _route(
        self,
        sub: CaseSubmission,
        version: ContractVersion,
        payload: Mapping[str, Any],
        origin: str,
    ) -> str:
        routed = version.routing.handling_region
        if routed is None and version.routing.from_field:
            value = payload.get(version.routing.from_field)
            if isinstance(value, str):
                routed = self._partner_region(value)
        if sub.handling_region and routed and sub.handling_region != routed:
            raise errors.invalid(["handling_region"], f"the contract routes this case to {routed}")
        handler = sub.handling_region or routed
        if handler is None:
            raise errors.invalid(["handling_region"], "required: the contract does not derive it")
        if handler not in self.adapters:
            raise errors.invalid(["handling_region"], f"no connected partner handles {handler}")
        if handler == origin:
            raise errors.invalid(["handling_region"], "must differ from the origin region")
        return handler

    def _legs(
        self,
        sub: CaseSubmission,
        version: ContractVersion,
        payload: Mapping[str, Any],
    ) -> list[dict[str, Any]]:
        """A multi-site case's legs, each to a connected partner; [] for other modes."""
        specs = version.routing.legs
        if not specs:
            return []
        try:
            planned = legs.plan(specs, payload, self._partner_region)
        except ValueError as exc:
            name, _, why = str(exc).partition(": ")
            raise errors.invalid(["payload", name], why) from None
        for i, (spec, leg) in enumerate(zip(specs, planned, strict=True)):
            loc: list[str | int] = (
                ["payload", spec.from_field] if spec.from_field else ["handling_region"]
            )
            if leg["region"] not in self.adapters:
                raise errors.invalid(loc, f"no connected partner handles {leg['region']}")
            if any(leg["region"] == other["region"] for other in planned[:i]):
                raise errors.invalid(loc, f"leg {i + 1} must go to a region no other leg has")
        first = planned[0]["region"]
        if sub.handling_region and sub.handling_region != first:
            raise errors.invalid(["handling_region"], f"the first leg goes to {first}")
        return planned

    def _partner_region(self, code: str) -> str:
        """The connected partner for a region code: itself, or its province's platform."""
        return code if code in self.adapters else province_of(code)

    def _recipients(
        self, origin: str, version: ContractVersion, handlers: Sequence[str]
    ) -> list[str]:
        """Origin (downward), hub (upward), and the subscribers the contract names that cover
        the case's regions. A subscriber not (or no longer) configured still gets its cursor:
        its events wait, visible in ``deliveries``, until it is configured again."""
        out = []
        partner = self.config.partner(origin)
        if partner and partner.callback_url:
            out.append(region_recipient(origin))
        if self.config.national_hub:
            out.append(HUB)
        for name in version.subscribers:
            sub = self.config.subscriber(name)
            if sub is None or sub.covers([origin, *handlers]):
                out.append(subscriber_recipient(name))
        return out

    def _event(
        self, case: CaseRecord, status: Status, at: float, data: dict[str, Any]
    ) -> EventRecord:
        return EventRecord(
            event_id=new_id(at, "E"),
            case_id=case.case_id,
            seq=case.last_seq,
            status=status.value,
            outcome=None,
            at=at,
            item_code=case.item_code,
            contract_version=case.contract_version,
            origin_region=case.origin_region,
            handling_region=case.handling_region,
            data=data,
        )

    # ---- reading --------------------------------------------------------------------------

    async def get(self, caller: Caller, case_id: str) -> dict[str, Any]:
        detail = await self.store.get_case(case_id)
        if detail is None or not _may_read(caller, detail.case):
            raise errors.NotFound(f"no case {case_id}")  # never confirm another region's case
        return render_case(detail, self.clock.now())

    async def list_cases(
        self,
        caller: Caller,
        status: str | None,
        item_code: str | None,
        limit: int,
        cursor: str | None,
    ) -> dict[str, Any]:
        if status is not None and status not in Status.__members__.values():
            raise errors.invalid(["query", "status"], "not a case status")
        limit = max(1, min(limit, MAX_PAGE))
        flt = CaseFilter(region=caller.region, status=status, item_code=item_code)
        rows = await self.store.list_cases(flt, limit, cursor)
        now = self.clock.now()
        return {
            "cases": [_summary(c, now) for c in rows],
            "next": rows[-1].case_id if len(rows) == limit else None,
        }

    async def feed(self, region: str, after: str | None, limit: int) -> dict[str, Any]:
        if after is not None and not after.isdigit():
            raise errors.invalid(["query", "after"], "not a cursor this gateway issued")
        start = int(after or 0)
        events = await self.store.feed(region, start, max(1, min(limit, MAX_PAGE)))
        last = events[-1].feed_id if events else start
        return {"events": [render_event(e) for e in events], "next": str(last)}

    # ---- origin actions -------------------------------------------------------------------

    async def supplement(self, origin: str, case_id: str, body: bytes) -> dict[str, Any]:
        sub = _model(Supplement, body)
        blobs = _attachment_blobs(sub.attachments)  # checked like a submission's
        now = self.clock.now()
        case = await self._own_case(case_id, origin)
        material = sub.model_dump(mode="json")
        t = Transition(
            case_id=case_id,
            status="resume",
            event_id=new_id(now, "E"),
            at=now,
            source=f"origin:{origin}",
            data={"supplement": True, "note": sub.note},
            origin=origin,
            jobs=(NewJob("supplement", case.handling_region, material),),
            blobs=blobs,
        )
        return await self._origin_transition(t, case_id)

    async def withdraw(self, origin: str, case_id: str, body: bytes) -> dict[str, Any]:
        w = _model(Withdrawal, body) if body.strip() else Withdrawal()
        now = self.clock.now()
        case = await self._own_case(case_id, origin)
        t = Transition(
            case_id=case_id,
            status=Status.WITHDRAWN,
            event_id=new_id(now, "E"),
            at=now,
            source=f"origin:{origin}",
            data={"reason": w.reason} if w.reason else {},
            origin=origin,
            cancel_pending_jobs=True,
            jobs=(
                NewJob(
                    "withdraw",
                    case.handling_region,
                    {"reason": w.reason},
                    only_if_partner_has_case=True,
                ),
            ),
        )
        return await self._origin_transition(t, case_id)

    async def _own_case(self, case_id: str, origin: str) -> CaseRecord:
        detail = await self.store.get_case(case_id)
        if detail is None or detail.case.origin_region != origin:
            raise errors.NotFound(f"no case {case_id}")
        return detail.case

    async def _origin_transition(self, t: Transition, case_id: str) -> dict[str, Any]:
        (result,) = await self.store.write([t], t.at)
        assert isinstance(result, TransitionResult)
        if not result.applied:
            raise errors.Conflict(f"not possible now: {result.reason}")
        self.wake.dispatch()
        self.wake.deliver()
        detail = await self.store.get_case(case_id)
        assert detail is not None
        return render_case(detail, self.clock.now())

    # ---- partner messages -----------------------------------------------------------------

    async def inbound(self, region: str, body: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
        """A handling partner's own message, parsed by its adapter, applied to its cases."""
        adapter = self.adapters.get(region)
        if adapter is None:
            raise errors.NotFound(f"region {region} has no adapter")
        try:
            updates = adapter.parse_inbound(body, headers)
        except ValueError as exc:
            raise errors.BadRequest(f"the partner message could not be read: {exc}") from None
        return await self.apply_updates(region, updates)

    async def apply_updates(self, region: str, updates: Sequence[StatusUpdate]) -> dict[str, Any]:
        """Apply a handling partner's updates (pushed or polled) to the cases it handles."""
        refs = [u.partner_ref for u in updates if not u.case_id and u.partner_ref]
        by_ref = await self.store.find_by_partner_ref(region, refs) if refs else {}
        ids = [u.case_id or by_ref.get(u.partner_ref or "", "") for u in updates]
        # Completions are held to their case's contract: read those cases first.
        completing = Status.COMPLETED.value
        done = {i for u, i in zip(updates, ids, strict=True) if i and u.status == completing}
        cases = await self.store.cases(sorted(done)) if done else {}
        now = self.clock.now()
        ops = [
            self.update_transition(region, u, by_ref, now, cases.get(i))
            for u, i in zip(updates, ids, strict=True)
        ]
        results = await self.store.write(ops, now) if ops else []
        details, applied = [], 0
        for u, r in zip(updates, results, strict=True):
            assert isinstance(r, TransitionResult)
            applied += r.applied
            if not r.applied:
                self.count.ignored(f"partner:{region}")
            details.append(
                {
                    "case_id": u.case_id,
                    "partner_ref": u.partner_ref,
                    "status": u.status,
                    "applied": r.applied,
                    "reason": r.reason,
                }
            )
        if applied:
            self.wake.deliver()
        return {"applied": applied, "ignored": len(updates) - applied, "details": details}

    def update_transition(
        self,
        region: str,
        u: StatusUpdate,
        by_ref: Mapping[str, str],
        now: float,
        case: CaseRecord | None = None,
    ) -> Transition:
        """A partner's status update as a transition that only that partner's case accepts.
        ``case``: the case as read before, to hold a completion to its contract's result
        fields."""
        case_id = u.case_id or by_ref.get(u.partner_ref or "", "")
        try:
            status = Status(u.status)
        except ValueError:
            status = Status.RECEIVED  # never allowed as a target: recorded and ignored
        data = dict(u.data)
        return Transition(
            case_id=case_id,
            status=status,
            event_id=new_id(now, "E"),
            at=now,
            source=f"partner:{region}",
            outcome=u.outcome,
            data=data,
            result=data if status is Status.COMPLETED else None,
            partner_ref=u.partner_ref,
            handler=region,
            result_problem=self.result_problem(case, data) if case and status is Status.COMPLETED
            else None,
            partner_event_id=u.partner_event_id,
        )  # fmt: skip

    def result_problem(self, case: CaseRecord, result: Mapping[str, Any]) -> str | None:
        """Which of the contract's result fields a result lacks or gets wrong (names and kinds
        of error, never a value); None if it holds. Fields the contract does not name pass."""
        item = self.contracts.items.get(case.item_code)
        version = item.version(case.contract_version) if item else None
        if version is None or not version.result_fields:
            return None
        given = {k: v for k, v in result.items() if k in version.result_fields}
        try:
            self.contracts.result_validator(case.item_code, version).validate(given)
        except ValidationError as exc:
            where = ", ".join(
                "result." + ".".join(str(p) for p in e["loc"]) + f" ({e['type']})"
                for e in exc.errors(include_input=False)
            )
            return f"the result breaks version {version.version} of {case.item_code}: {where}"
        return None

    async def attachment(self, region: str, sha256: str) -> bytes:
        """An attachment for the partner that handles a case carrying it, or was sent it with a
        supplement (by reference)."""
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise errors.NotFound("no such attachment")
        content = await self.store.get_blob(sha256)
        if content is None or not await self.store.handles_attachment(region, sha256):
            raise errors.NotFound("no such attachment")  # never confirm another region's
        return content

    # ---- operators ------------------------------------------------------------------------

    async def dead_letters(self, limit: int) -> dict[str, Any]:
        jobs = await self.store.dead_jobs(max(1, min(limit, MAX_PAGE)))
        return {
            "dead_letters": [
                {
                    "job_id": j.job_id,
                    "kind": j.kind,
                    "case_id": j.case_id,
                    "region": j.region,
                    "attempts": j.attempts,
                    "last_error": j.last_error,
                }
                for j in jobs
            ]
        }

    async def replay(self, case_ids: list[str], by: str = "") -> dict[str, Any]:
        now = self.clock.now()
        await self.store.write([Replay(c, by) for c in case_ids], now)
        self.wake.dispatch()
        return {"replayed": case_ids}


# ---- helpers ----------------------------------------------------------------------------------


def _parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise errors.BadRequest(
            "the body is not valid JSON",
            errors=[{"loc": ["body"], "msg": "invalid JSON", "type": "json_invalid"}],
        ) from None


def _model(model: type[M], body: bytes) -> M:
    raw = _parse_json(body)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise errors.Unprocessable(
            "the request body is invalid", errors=errors.field_errors(exc)
        ) from None


def _attachment_blobs(attachments: Sequence[Attachment]) -> tuple[tuple[str, str, bytes], ...]:
    """``(sha256, media type, content)`` of the attachments that carry their content; an
    ApiError naming the attachment whose content is not base64 or does not match its digest."""
    blobs = []
    for i, a in enumerate(attachments):
        if a.content_base64 is None:
            continue
        try:
            content = base64.b64decode(a.content_base64, validate=True)
        except (binascii.Error, ValueError):
            raise errors.invalid(["attachments", i, "content_base64"], "not valid base64") from None
        if hashlib.sha256(content).hexdigest() != a.sha256:
            raise errors.invalid(["attachments", i, "sha256"], "does not match the content")
        blobs.append((a.sha256, a.media_type, content))
    return tuple(blobs)


def _may_read(caller: Caller, case: CaseRecord) -> bool:
    if caller.operator:
        return True
    return caller.region == case.origin_region or caller.region in legs.regions(case)


def canonical(case: CaseRecord, attachments: Sequence[Mapping[str, Any]] = ()) -> CanonicalCase:
    """What an adapter is given of a case."""
    return CanonicalCase(
        case_id=case.case_id,
        request_id=case.request_id,
        item_code=case.item_code,
        contract_version=case.contract_version,
        origin_region=case.origin_region,
        handling_region=case.handling_region,
        applicant=case.applicant,
        payload=legs.payload_for(case),
        attachments=tuple(attachments),
        partner_ref=case.partner_ref,
    )


def render_event(e: EventRecord) -> dict[str, Any]:
    return {
        "event_id": e.event_id,
        "case_id": e.case_id,
        "seq": e.seq,
        "status": e.status,
        "outcome": e.outcome,
        "at": iso(e.at),
        "item_code": e.item_code,
        "contract_version": e.contract_version,
        "origin_region": e.origin_region,
        "handling_region": e.handling_region,
        "data": e.data,
    }


def _summary(c: CaseRecord, now: float) -> dict[str, Any]:
    return {
        "case_id": c.case_id,
        "request_id": c.request_id,
        "item_code": c.item_code,
        "contract_version": c.contract_version,
        "origin_region": c.origin_region,
        "handling_region": c.handling_region,
        "status": c.status.value,
        "outcome": c.outcome,
        "created_at": iso(c.created_at),
        "updated_at": iso(c.updated_at),
        "deadline": iso(c.deadline) if c.deadline else None,
        "overdue": lifecycle.overdue(c.status, c.deadline, c.paused_at, now),
    }


def _render_leg(i: int, leg: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "index": i + 1,
        "region": leg["region"],
        "title": leg["title"],
        "status": leg["status"],
        "outcome": leg["outcome"],
        "result": leg["result"],
        "partner_ref": leg["partner_ref"],
    }


def render_case(d: CaseDetail, now: float) -> dict[str, Any]:
    c = d.case
    return {
        **_summary(c, now),
        "mode": c.mode,
        "result": c.result,
        "partner_ref": c.partner_ref,
        "time_limit_stopped": c.paused_at is not None,
        "legs": [_render_leg(i, leg) for i, leg in enumerate(c.legs)] or None,
        "history": [render_event(e) for e in d.events],
        "deliveries": [
            {
                "recipient": k.recipient,
                "acked_seq": k.acked_seq,
                "head_seq": k.head_seq,
                "waiting": k.head_seq - k.acked_seq,
                "attempts": k.attempts,
                "next_attempt_at": iso(k.next_attempt_at) if k.head_seq > k.acked_seq else None,
                "last_error": k.last_error,
            }
            for k in d.cursors
        ],
        "ignored": [
            {"at": iso(i.at), "status": i.status, "source": i.source, "reason": i.reason}
            for i in d.ignored
        ],
    }
