"""One transition applied to one case record: pure, the same for every store backend.

A backend loads the case inside its transaction, calls :func:`apply`, and writes what it returns
(the updated case, its new event, the jobs it creates) or records the refusal. Whether a move is
allowed is the state machine's (:mod:`gateway.lifecycle`) or, for a multi-site case, the leg's
(:mod:`gateway.legs`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gateway import legs, lifecycle
from gateway.lifecycle import Status
from gateway.store.base import CaseRecord, EventRecord, NewJob, Transition


@dataclass(frozen=True)
class Applied:
    case: CaseRecord
    event: EventRecord
    jobs: tuple[NewJob, ...]


@dataclass(frozen=True)
class Refused:
    reason: str
    record: bool = True  # False: the caller may not learn the case exists; nothing is kept


NOT_FOUND = Refused("no such case", record=False)
PARTNER_EVENTS_KEPT = 64  # a case's applied partner report ids kept for spotting repeats
REPEATED = "the partner already reported this event (same partner event id)"


def apply(case: CaseRecord, t: Transition, now: float) -> Applied | Refused:
    """The case after ``t``, or why ``t`` is refused (recorded as ignored when ``record``)."""
    if t.origin and case.origin_region != t.origin:
        return NOT_FOUND  # never confirm another's case
    if t.handler and case.handling_region != t.handler:
        if t.handler in legs.regions(case):
            return Refused(f"{t.handler} does not handle the leg under way")
        return NOT_FOUND
    seen = f"{t.handler}:{t.partner_event_id}" if t.partner_event_id else None
    if seen and seen in case.partner_events:
        return Refused(REPEATED)
    moved = _move(case, t)
    if isinstance(moved, str):
        return Refused(moved)
    step = moved
    deadline, paused_at = lifecycle.time_limit_clock(
        case.status, case.deadline, case.paused_at, step.status, t.at
    )
    event = EventRecord(
        event_id=t.event_id,
        case_id=case.case_id,
        seq=case.last_seq + 1,
        status=step.status.value,
        outcome=t.outcome,
        at=t.at,
        item_code=case.item_code,
        contract_version=case.contract_version,
        origin_region=case.origin_region,
        handling_region=case.handling_region,
        data={**t.data, **step.data},
    )
    updated = replace(
        step.case,
        deadline=deadline,
        paused_at=paused_at,
        prior_status=case.status if step.status is Status.SUPPLEMENT_REQUIRED
        else case.prior_status,
        updated_at=now,
        last_seq=event.seq,
        partner_events=[*case.partner_events, seen][-PARTNER_EVENTS_KEPT:] if seen
        else case.partner_events,
    )  # fmt: skip
    partner_has_it = lifecycle.partner_has_case(legs.leg_status(case))
    jobs = tuple(j for j in t.jobs if partner_has_it or not j.only_if_partner_has_case)
    return Applied(updated, event, jobs + step.jobs)


def _move(case: CaseRecord, t: Transition) -> legs.Step | str:
    moved = _step(case, t)
    if (
        isinstance(moved, legs.Step)
        and t.result_problem
        and moved.status is Status.COMPLETED
        and t.outcome != lifecycle.Outcome.DENIED.value
    ):
        return t.result_problem  # the case would complete without what the contract promises
    return moved


def _step(case: CaseRecord, t: Transition) -> legs.Step | str:
    if t.only_from and legs.leg_status(case) not in t.only_from:
        return f"case is already {legs.leg_status(case).value}"
    target = t.status
    if target == "resume":
        if case.status is not Status.SUPPLEMENT_REQUIRED:
            return "case is not waiting for a supplement"
        target = legs.resume_target(case)
    by_partner = t.handler is not None
    if case.legs:
        return legs.step(
            case, target, t.outcome, t.result, t.partner_ref, by_partner=by_partner, leg=t.leg
        )
    outcome = lifecycle.Outcome(t.outcome) if t.outcome else None
    verdict = lifecycle.check(case.status, target, outcome, by_partner=by_partner)
    if not verdict.allowed:
        return verdict.reason
    updated = replace(
        case,
        status=target,
        outcome=t.outcome if target is Status.COMPLETED else case.outcome,
        result=t.result if t.result is not None else case.result,
        partner_ref=t.partner_ref or case.partner_ref,
    )
    return legs.Step(updated, target, {})
