"""The store interface: what the gateway keeps, as plain records, and the operations on it.

Every write goes through :meth:`Store.write`, a list of operations applied in one transaction
(and, by the backend, grouped with other callers' lists into one commit). Accepting a case writes
the case, its first event, the delivery cursors and the dispatch job together: the transactional
outbox. Claims hand out leased work to the dispatcher and the delivery worker.

Delivery is tracked by one *cursor* per (case, recipient): the last ``seq`` acknowledged and the
last ``seq`` written. Events above the acknowledged one are pending, and only the next one may go
out, so per-case order holds by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from gateway.lifecycle import Status

JSON = dict[str, Any]


# ---- records ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseRecord:
    case_id: str
    request_id: str
    origin_region: str
    handling_region: str
    item_code: str
    contract_version: int
    mode: str
    status: Status
    outcome: str | None
    result: JSON | None
    partner_ref: str | None
    body_hash: str
    applicant: JSON
    payload: JSON
    attachments: list[JSON]
    recipients: list[str]
    created_at: float
    updated_at: float
    deadline: float | None
    last_seq: int
    prior_status: Status | None = None  # the status before supplement_required
    paused_at: float | None = None  # when the time-limit clock stopped (补正), if it is stopped
    legs: list[JSON] = field(default_factory=list)  # multi_site: every leg's state (gateway.legs)
    leg: int = 0  # multi_site: the index of the leg under way
    # ``region:id`` of the partner reports applied to the case, newest last (at most
    # ``gateway.transition.PARTNER_EVENTS_KEPT``): a report that comes again under the same id
    # is ignored.
    partner_events: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EventRecord:
    event_id: str
    case_id: str
    seq: int
    status: str
    outcome: str | None
    at: float
    item_code: str
    contract_version: int
    origin_region: str
    handling_region: str
    data: JSON
    feed_id: int = 0


@dataclass(frozen=True)
class CursorRecord:
    """Delivery state of one case to one recipient."""

    recipient: str
    case_id: str
    acked_seq: int
    head_seq: int
    attempts: int
    next_attempt_at: float
    last_error: str | None


@dataclass(frozen=True)
class IgnoredRecord:
    case_id: str
    at: float
    status: str
    source: str
    reason: str


JobKind = Literal["submit", "supplement", "withdraw"]
JobState = Literal["pending", "done", "dead", "cancelled"]


@dataclass(frozen=True)
class JobRecord:
    job_id: int
    kind: JobKind
    case_id: str
    region: str
    data: JSON
    state: JobState
    attempts: int
    next_attempt_at: float
    last_error: str | None


@dataclass(frozen=True)
class CaseDetail:
    case: CaseRecord
    events: list[EventRecord]
    cursors: list[CursorRecord]
    ignored: list[IgnoredRecord]


@dataclass(frozen=True)
class DeliveryClaim:
    """Claimed pending events of one case for one recipient, in ``seq`` order."""

    recipient: str
    case_id: str
    attempts: int
    events: list[EventRecord]


@dataclass(frozen=True)
class RevisionRecord:
    """One published revision of the whole contract list (content: its canonical JSON)."""

    revision: int
    created_at: float
    author: str
    note: str
    content: str


@dataclass(frozen=True)
class AuditItem:
    """What one audit entry records (see :mod:`gateway.audit`)."""

    at: float
    kind: str  # "event", "ignored", "replay", "revision", "pause", "resume"
    case_id: str | None
    ref: str  # the event id, the revision number, …
    actor: str  # who caused it: "origin:330000", "partner:510000", "gateway", an operator
    digest: str  # SHA-256 of what it records


@dataclass(frozen=True)
class AuditRecord:
    audit_id: int
    item: AuditItem
    prev_hash: str
    hash: str

    @property
    def kind(self) -> str:
        return self.item.kind

    @property
    def ref(self) -> str:
        return self.item.ref

    @property
    def digest(self) -> str:
        return self.item.digest


class StoreWriteFailed(RuntimeError):
    """A write could not be committed: the store is unreachable, closed, or refused it. Nothing
    of it was written, unless the connection broke during the commit itself; either way the
    caller was not told it succeeded, and a retry of an idempotent request is safe."""


class VersionConflict(Exception):
    """A published version would be stored again with different content."""


class RevisionMoved(Exception):
    """Another publish came first: the newest revision is not the one the publisher expected."""


# ---- operations -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewJob:
    kind: JobKind
    region: str
    data: JSON = field(default_factory=dict)
    only_if_partner_has_case: bool = False  # e.g. a withdraw notice for a case never sent


@dataclass(frozen=True)
class Submit:
    """Accept a new case, idempotent by (origin_region, request_id)."""

    case: CaseRecord
    first_event: EventRecord
    jobs: tuple[NewJob, ...]
    blobs: tuple[tuple[str, str, bytes], ...] = ()  # (sha256, media_type, content)


@dataclass(frozen=True)
class SubmitResult:
    kind: Literal["created", "existing", "conflict"]
    case: CaseRecord


@dataclass(frozen=True)
class Transition:
    """Move a case to ``status`` if the state machine allows it; otherwise record and ignore.

    ``handler``/``origin`` authorise inside the transaction: the case must be handled by (or
    originate from) that region, or nothing happens. ``jobs`` are created only if it applies.
    """

    case_id: str
    status: Status | Literal["resume"]  # "resume": back to the status before the supplement
    event_id: str
    at: float
    source: str
    outcome: str | None = None
    data: JSON = field(default_factory=dict)
    result: JSON | None = None
    partner_ref: str | None = None
    handler: str | None = None
    origin: str | None = None
    jobs: tuple[NewJob, ...] = ()
    cancel_pending_jobs: bool = False
    leg: int | None = None  # multi_site: applies only while the case is on this leg
    # Applies only while the case (or its leg under way) is in one of these; empty: any status
    # the state machine allows a move from.
    only_from: frozenset[Status] = frozenset()
    # Why ``result`` breaks the contract's result fields (without any value): refuses the move
    # if it would complete the case other than as denied. Checked by the caller, which knows the
    # contract; a multi-site leg that hands over is not held to it.
    result_problem: str | None = None
    # The partner's own id of the report (``StatusUpdate.partner_event_id``): a report already
    # applied under that id is refused, even where the state machine would allow the move again
    # (a redelivered 补正 request after the origin answered it).
    partner_event_id: str | None = None
    # Attachments' content stored with the move if it applies, ``(sha256, media type, bytes)``:
    # a supplement's materials, which a partner may fetch by reference like a submission's.
    blobs: tuple[tuple[str, str, bytes], ...] = ()


@dataclass(frozen=True)
class TransitionResult:
    applied: bool
    reason: str = ""
    case: CaseRecord | None = None
    event: EventRecord | None = None


@dataclass(frozen=True)
class FinishJob:
    """Close or reschedule a claimed job."""

    job_id: int
    state: Literal["done", "dead", "retry"]
    next_attempt_at: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class Ack:
    recipient: str
    case_id: str
    seq: int


@dataclass(frozen=True)
class DeliveryFailed:
    recipient: str
    case_id: str
    next_attempt_at: float
    error: str


@dataclass(frozen=True)
class Enqueue:
    """Add a job to a case outside any transition (e.g. a compensating withdrawal notice)."""

    case_id: str
    job: NewJob


@dataclass(frozen=True)
class Replay:
    """Send dead-lettered jobs of a case on again."""

    case_id: str
    by: str = ""  # the operator who asked


@dataclass(frozen=True)
class Pause:
    """Stop calls to a handling partner (``paused``) or start them again, in every process that
    shares the store: jobs are claimed only for partners that are not paused."""

    region: str
    paused: bool
    by: str = ""  # the operator who asked


@dataclass(frozen=True)
class PauseRecord:
    region: str
    paused_at: float
    paused_by: str


Op = Submit | Transition | FinishJob | Ack | DeliveryFailed | Replay | Enqueue | Pause
OpResult = SubmitResult | TransitionResult | int | None


@dataclass(frozen=True)
class CaseFilter:
    region: str | None = None  # origin or handler; None = every case (operators)
    status: str | None = None
    item_code: str | None = None


# ---- the interface ----------------------------------------------------------------------------


class Store(Protocol):
    """What every backend provides. All times are epoch seconds from the injected clock."""

    ready: bool

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def write(self, ops: Sequence[Op], now: float) -> list[OpResult]:
        """Apply the operations in order, atomically, and commit before returning."""
        ...

    async def get_case(self, case_id: str) -> CaseDetail | None: ...

    async def cases(self, case_ids: Sequence[str]) -> dict[str, CaseRecord]:
        """The case records alone, without history: what the dispatcher needs."""
        ...

    async def list_cases(
        self, flt: CaseFilter, limit: int, before: str | None
    ) -> list[CaseRecord]: ...

    async def feed(self, region: str, after: int, limit: int) -> list[EventRecord]: ...

    async def find_by_partner_ref(self, region: str, refs: Sequence[str]) -> Mapping[str, str]:
        """Partner reference → case id, for cases that region handles."""
        ...

    async def claim_jobs(
        self, owner: str, now: float, lease: float, quotas: Mapping[str, int]
    ) -> list[JobRecord]:
        """Lease up to ``quotas[region]`` due pending jobs per region."""
        ...

    async def claim_deliveries(
        self,
        owner: str,
        now: float,
        lease: float,
        limit: int,
        skip: Sequence[str],
        max_events: int,
    ) -> list[DeliveryClaim]:
        """Lease due delivery cursors (not of the recipients in ``skip``) with pending events."""
        ...

    async def dead_jobs(self, limit: int) -> list[JobRecord]: ...

    async def open_cases(self, region: str, limit: int) -> list[CaseRecord]:
        """Cases that region handles, taken by it and not yet decided: what a poll asks about."""
        ...

    async def get_blob(self, sha256: str) -> bytes | None: ...

    async def queues(self, now: float) -> dict[str, dict[str, float]]:
        """Per partner region: pending jobs, the oldest one's age in seconds, dead letters."""
        ...

    async def handles_attachment(self, region: str, sha256: str) -> bool:
        """Does ``region`` handle a case that carries this attachment?"""
        ...

    async def paused_partners(self) -> dict[str, PauseRecord]:
        """The handling partners operators have paused, by region."""
        ...

    async def follow_changes(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` soon after another process sharing the store commits work (a case, an
        event, a job, a replay or a pause); runs until cancelled."""
        ...

    # ---- contract list revisions ----

    async def revision_number(self) -> int:
        """The newest revision's number, 0 if none: cheap, for every process to poll."""
        ...

    async def get_revision(self, revision: int | None = None) -> RevisionRecord | None:
        """One revision (the newest when None)."""
        ...

    async def revisions(self, limit: int) -> list[RevisionRecord]:
        """Newest first, without content."""
        ...

    async def published_versions(self) -> dict[tuple[str, int], str]:
        """Every version ever published → its immutable content (canonical JSON)."""
        ...

    async def publish_revision(
        self,
        content: str,
        versions: Mapping[tuple[str, int], str],
        author: str,
        note: str,
        now: float,
        if_revision: int | None = None,
    ) -> int:
        """Store a new revision and its versions atomically; return its number. Raises
        :class:`VersionConflict` if a version already published is given different content, and
        :class:`RevisionMoved` if ``if_revision`` is given and is no longer the newest."""
        ...

    async def audit_of_case(self, case_id: str) -> list[AuditRecord]:
        """The audit entries of one case, oldest first."""
        ...

    async def audit_page(self, after: int, limit: int) -> list[AuditRecord]:
        """Audit entries after ``audit_id`` ``after``, in chain order."""
        ...

    async def events_by_id(self, event_ids: Sequence[str]) -> dict[str, EventRecord]: ...

    async def stats(self, now: float) -> Mapping[str, float]:
        """Gauges for /metrics: pending jobs, dead jobs, pending deliveries, oldest waits."""
        ...
