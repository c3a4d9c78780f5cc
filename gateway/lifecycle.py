"""The case state machine (SPEC §3): statuses, allowed transitions, terminal states.

Pure: no I/O. The store asks :func:`check` before it appends an event; a transition that is not
allowed (a late, duplicate or out-of-order partner answer) is recorded by the caller and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    RECEIVED = "received"
    DISPATCHED = "dispatched"
    ACCEPTED = "accepted"  # 受理
    IN_PROGRESS = "in_progress"  # 办理中
    SUPPLEMENT_REQUIRED = "supplement_required"  # 补正
    COMPLETED = "completed"  # 办结
    REJECTED = "rejected"  # 不予受理
    WITHDRAWN = "withdrawn"  # 撤件
    FAILED = "failed"  # dead-lettered by the gateway


class Outcome(StrEnum):
    APPROVED = "approved"
    DENIED = "denied"


TERMINAL: frozenset[Status] = frozenset({Status.COMPLETED, Status.REJECTED, Status.WITHDRAWN})

S = Status
# From each status, the statuses a case may move to. A partner may skip steps forward
# (report ``completed`` straight after ``dispatched``) but never move backward.
ALLOWED: dict[Status, frozenset[Status]] = {
    S.RECEIVED: frozenset({S.DISPATCHED, S.WITHDRAWN, S.FAILED}),
    S.DISPATCHED: frozenset(
        {S.ACCEPTED, S.IN_PROGRESS, S.SUPPLEMENT_REQUIRED, S.COMPLETED, S.REJECTED, S.WITHDRAWN}
    ),
    S.ACCEPTED: frozenset({S.IN_PROGRESS, S.SUPPLEMENT_REQUIRED, S.COMPLETED, S.WITHDRAWN}),
    S.IN_PROGRESS: frozenset({S.SUPPLEMENT_REQUIRED, S.COMPLETED, S.WITHDRAWN}),
    # The origin's supplement resumes the status the case had before (see ``resume_status``);
    # the handler may also decide straight away.
    S.SUPPLEMENT_REQUIRED: frozenset(
        {S.DISPATCHED, S.ACCEPTED, S.IN_PROGRESS, S.COMPLETED, S.REJECTED, S.WITHDRAWN}
    ),
    # A replay of a dead-lettered case: once the partner takes it, it is dispatched again.
    S.FAILED: frozenset({S.DISPATCHED, S.WITHDRAWN}),
    S.COMPLETED: frozenset(),
    S.REJECTED: frozenset(),
    S.WITHDRAWN: frozenset(),
}


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str = ""


# What a handling partner may report. Withdrawal is the origin's act and ``failed`` the
# gateway's; a partner claiming either is recorded and ignored.
PARTNER_REPORTS: frozenset[Status] = frozenset(
    {S.DISPATCHED, S.ACCEPTED, S.IN_PROGRESS, S.SUPPLEMENT_REQUIRED, S.COMPLETED, S.REJECTED}
)


def check(
    current: Status, target: Status, outcome: Outcome | None = None, *, by_partner: bool = False
) -> Verdict:
    """May a case in ``current`` move to ``target``? ``by_partner``: the handler reports it."""
    if by_partner and target not in PARTNER_REPORTS:
        return Verdict(False, f"a handling partner may not report {target.value}")
    if current in TERMINAL:
        return Verdict(False, f"case is already {current.value}")
    if by_partner and current is S.RECEIVED and target is not S.DISPATCHED:
        # A partner that reports on a case has it, though its answer to the dispatch is not
        # recorded yet: the report overtook the answer, or the gateway process that sent the
        # case died before writing the answer down. The report counts as from ``dispatched``
        # (and the dispatch answer, when it is written, is recorded and ignored).
        current = S.DISPATCHED
    if target not in ALLOWED[current]:
        return Verdict(False, f"{current.value} → {target.value} is not a valid transition")
    if target is Status.COMPLETED and outcome is None:
        return Verdict(False, "completed needs an outcome (approved or denied)")
    if target is not Status.COMPLETED and outcome is not None:
        return Verdict(False, f"{target.value} takes no outcome")
    return Verdict(True)


def is_terminal(status: Status) -> bool:
    return status in TERMINAL


def resume_status(before_supplement: Status) -> Status:
    """Where a case goes when the origin answers a ``supplement_required``."""
    if before_supplement in (S.ACCEPTED, S.IN_PROGRESS):
        return before_supplement
    return S.DISPATCHED


def partner_has_case(status: Status) -> bool:
    """Has the handling partner taken the case (so a withdrawal must be passed on to it)?"""
    return status not in (S.RECEIVED, S.FAILED)


def time_limit_clock(
    status: Status, deadline: float | None, paused_at: float | None, target: Status, at: float
) -> tuple[float | None, float | None]:
    """A case's (deadline, paused_at) after it moves from ``status`` to ``target`` at ``at``.

    The time limit (承诺时限) stops while the case waits for the origin's supplement (补正): on
    entering ``supplement_required`` the clock stops; on leaving it, the deadline moves later by
    the time it was stopped.
    """
    if target is S.SUPPLEMENT_REQUIRED and status is not S.SUPPLEMENT_REQUIRED:
        return deadline, at
    if status is S.SUPPLEMENT_REQUIRED and paused_at is not None:
        return (deadline + (at - paused_at) if deadline is not None else None), None
    return deadline, paused_at


def overdue(status: Status, deadline: float | None, paused_at: float | None, now: float) -> bool:
    """Past its deadline and not decided; a stopped clock counts only up to when it stopped."""
    if deadline is None or status in TERMINAL:
        return False
    return (paused_at if paused_at is not None else now) > deadline
