"""Multi-site cases (多地联办): ordered legs, each worked by one region in its turn.

Pure: no I/O. A ``multi_site`` case keeps one record per leg (its region, its own status under
the ordinary state machine, its outcome and result). Partner reports move the leg under way; the
case's own status is derived from it so that the origin sees a case that only ever moves forward:

- on the first leg the case has the leg's status (``dispatched``, ``accepted`` …);
- on a later leg the case stays ``in_progress`` while the leg is sent, accepted and worked;
- ``supplement_required``, ``rejected``, ``failed`` and ``withdrawn`` of any leg are the case's;
- a leg that completes ``approved`` hands the case to the next leg: the next leg is given the
  result fields its ``carry`` names, and a submit job goes to its region;
- the last leg completing (either outcome), or any leg completing ``denied``, completes the case.

Each event of a multi-site case carries ``data.leg`` (which leg, its region and status), so the
origin and the hub see every leg's progress.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from gateway import lifecycle
from gateway.lifecycle import Outcome, Status
from gateway.store.base import JSON, CaseRecord, NewJob

if TYPE_CHECKING:  # an annotation only: the store's writer process need not load the contracts
    from gateway.contracts import LegSpec

WAITING = "waiting"  # a leg whose turn has not come
_OWN_STATUS = frozenset(
    {Status.SUPPLEMENT_REQUIRED, Status.COMPLETED, Status.REJECTED, Status.WITHDRAWN, Status.FAILED}
)


def plan(
    specs: Sequence[LegSpec], payload: Mapping[str, Any], resolve: Callable[[str], str]
) -> list[JSON]:
    """The leg records of a new case: each leg's region from its spec and the payload.

    ``resolve`` turns a region code from the payload into the connected partner's region.
    Raises ``ValueError("<field>: <why>")`` when a leg's region cannot be found.
    """
    out: list[JSON] = []
    for i, spec in enumerate(specs):
        region = spec.handling_region
        if region is None:
            value = payload.get(spec.from_field or "")
            if not isinstance(value, str):
                raise ValueError(f"{spec.from_field}: required to route leg {i + 1}")
            region = resolve(value)
        out.append(
            {
                "region": region,
                "title": spec.title,
                "carry": dict(spec.carry),
                "status": Status.RECEIVED.value if i == 0 else WAITING,
                "outcome": None,
                "result": None,
                "partner_ref": None,
                "carried": {},
            }
        )
    return out


def of(planned: Sequence[Mapping[str, Any]]) -> list[str]:
    """The regions of planned legs, in order."""
    return [leg["region"] for leg in planned]


def leg_status(case: CaseRecord) -> Status:
    """The status of what the handling partner holds now: the leg under way, or the case."""
    if not case.legs:
        return case.status
    return Status(case.legs[case.leg]["status"])


def payload_for(case: CaseRecord) -> JSON:
    """What the partner of the leg under way is sent: the case's payload and what it carries
    over from the previous leg's result."""
    if not case.legs:
        return case.payload
    return {**case.payload, **case.legs[case.leg]["carried"]}


def regions(case: CaseRecord) -> set[str]:
    """Every region that handles (or handled) a leg of the case."""
    return {leg["region"] for leg in case.legs} or {case.handling_region}


@dataclass(frozen=True)
class Step:
    """A transition of a multi-site case: the case after it, what its event says, new jobs."""

    case: CaseRecord
    status: Status
    data: JSON
    jobs: tuple[NewJob, ...] = ()


def step(
    case: CaseRecord,
    target: Status,
    outcome: str | None,
    result: JSON | None,
    partner_ref: str | None,
    *,
    by_partner: bool,
    leg: int | None = None,
) -> Step | str:
    """Apply ``target`` to the leg under way; a string is the reason it is refused."""
    k = case.leg
    if leg is not None and leg != k:
        return f"leg {leg + 1} is over: the case is on leg {k + 1}"
    if case.status in lifecycle.TERMINAL:
        return f"case is already {case.status.value}"
    current = dict(case.legs[k])
    now_status = Status(current["status"])
    verdict = lifecycle.check(
        now_status, target, Outcome(outcome) if outcome else None, by_partner=by_partner
    )
    if not verdict.allowed:
        return f"leg {k + 1}: {verdict.reason}"
    current.update(status=target.value, partner_ref=partner_ref or current["partner_ref"])
    if target is Status.SUPPLEMENT_REQUIRED:
        current["prior_status"] = now_status.value
    if target is Status.COMPLETED:
        current.update(outcome=outcome, result=result)
        if outcome == Outcome.APPROVED.value and k + 1 < len(case.legs):
            return _hand_over(case, current, result or {})
    legs = [*case.legs[:k], current, *case.legs[k + 1 :]]
    status = target if (k == 0 or target in _OWN_STATUS) else Status.IN_PROGRESS
    done = target is Status.COMPLETED
    updated = replace(
        case,
        legs=legs,
        status=status,
        outcome=outcome if done else case.outcome,
        result=result if done and result is not None else case.result,
        partner_ref=current["partner_ref"],
    )
    return Step(updated, status, {"leg": _leg_info(k, current, len(legs))})


def resume_target(case: CaseRecord) -> Status:
    """Where the leg under way goes back to when the origin answers a supplement."""
    prior = case.legs[case.leg].get("prior_status") if case.legs else None
    before = Status(prior) if prior else case.prior_status
    return lifecycle.resume_status(before or Status.DISPATCHED)


def _hand_over(case: CaseRecord, done: JSON, result: Mapping[str, Any]) -> Step | str:
    k = case.leg
    nxt = dict(case.legs[k + 1])
    missing = [src for src in nxt["carry"].values() if src not in result]
    if missing:
        return f"leg {k + 1}'s result lacks {', '.join(sorted(missing))}, which leg {k + 2} needs"
    nxt.update(
        status=Status.RECEIVED.value,
        carried={dst: result[src] for dst, src in nxt["carry"].items()},
    )
    legs = [*case.legs[:k], done, nxt, *case.legs[k + 2 :]]
    updated = replace(
        case,
        legs=legs,
        leg=k + 1,
        status=Status.IN_PROGRESS,
        handling_region=nxt["region"],
        partner_ref=None,
    )
    data = {
        "leg": _leg_info(k, done, len(legs)),
        "next_leg": {"index": k + 2, "region": nxt["region"], "title": nxt["title"]},
    }
    job = NewJob("submit", nxt["region"], {"leg": k + 1})
    return Step(updated, Status.IN_PROGRESS, data, (job,))


def _leg_info(k: int, leg: Mapping[str, Any], count: int) -> JSON:
    info: JSON = {"index": k + 1, "of": count, "region": leg["region"], "status": leg["status"]}
    if leg.get("outcome"):
        info["outcome"] = leg["outcome"]
    return info
