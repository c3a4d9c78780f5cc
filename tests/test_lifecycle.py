"""The case state machine (SPEC §3), documented as an explicit table."""

from __future__ import annotations

import itertools

import pytest

from gateway.lifecycle import (
    PARTNER_REPORTS,
    TERMINAL,
    Outcome,
    Status,
    check,
    is_terminal,
    partner_has_case,
    resume_status,
)

S = Status

# SPEC §3, written out: every move a case may make. Anything not listed is refused.
# - main path received → dispatched → accepted → in_progress → completed; a partner may skip
#   steps forward (report completed straight after dispatched), never move backward;
# - rejected (不予受理) is a refusal to accept, so it comes before acceptance (or after 补正);
# - supplement_required (补正) can be asked at any point the handler holds the case, and the
#   supplement resumes it (dispatched/accepted/in_progress) or the handler decides at once;
# - withdrawn (撤件) from every non-terminal status;
# - failed only while the gateway still has to hand the case over; a replay dispatches it again.
EXPECTED: frozenset[tuple[Status, Status]] = frozenset(
    {
        (S.RECEIVED, S.DISPATCHED),
        (S.RECEIVED, S.WITHDRAWN),
        (S.RECEIVED, S.FAILED),
        (S.DISPATCHED, S.ACCEPTED),
        (S.DISPATCHED, S.IN_PROGRESS),
        (S.DISPATCHED, S.SUPPLEMENT_REQUIRED),
        (S.DISPATCHED, S.COMPLETED),
        (S.DISPATCHED, S.REJECTED),
        (S.DISPATCHED, S.WITHDRAWN),
        (S.ACCEPTED, S.IN_PROGRESS),
        (S.ACCEPTED, S.SUPPLEMENT_REQUIRED),
        (S.ACCEPTED, S.COMPLETED),
        (S.ACCEPTED, S.WITHDRAWN),
        (S.IN_PROGRESS, S.SUPPLEMENT_REQUIRED),
        (S.IN_PROGRESS, S.COMPLETED),
        (S.IN_PROGRESS, S.WITHDRAWN),
        (S.SUPPLEMENT_REQUIRED, S.DISPATCHED),
        (S.SUPPLEMENT_REQUIRED, S.ACCEPTED),
        (S.SUPPLEMENT_REQUIRED, S.IN_PROGRESS),
        (S.SUPPLEMENT_REQUIRED, S.COMPLETED),
        (S.SUPPLEMENT_REQUIRED, S.REJECTED),
        (S.SUPPLEMENT_REQUIRED, S.WITHDRAWN),
        (S.FAILED, S.DISPATCHED),
        (S.FAILED, S.WITHDRAWN),
    }
)
TERMINAL_EXPECTED = {S.COMPLETED, S.REJECTED, S.WITHDRAWN}
NON_TERMINAL = [s for s in Status if s not in TERMINAL_EXPECTED]


def outcome_for(target: Status) -> Outcome | None:
    return Outcome.APPROVED if target is S.COMPLETED else None


@pytest.mark.parametrize(
    ("current", "target"),
    list(itertools.product(Status, Status)),
    ids=lambda s: s.value,
)
def test_transition_table(current, target):
    verdict = check(current, target, outcome_for(target))
    assert verdict.allowed == ((current, target) in EXPECTED), verdict.reason
    if not verdict.allowed:
        assert verdict.reason


def test_every_status_is_covered():
    assert {s.value for s in Status} == {
        "received", "dispatched", "accepted", "in_progress", "supplement_required",
        "completed", "rejected", "withdrawn", "failed",
    }  # fmt: skip


@pytest.mark.parametrize("outcome", list(Outcome))
def test_happy_path(outcome):
    path = [S.RECEIVED, S.DISPATCHED, S.ACCEPTED, S.IN_PROGRESS]
    for current, target in itertools.pairwise(path):
        assert check(current, target).allowed
    assert check(S.IN_PROGRESS, S.COMPLETED, outcome).allowed


@pytest.mark.parametrize("current", [S.DISPATCHED, S.ACCEPTED, S.IN_PROGRESS])
def test_completed_without_outcome_is_refused(current):
    verdict = check(current, S.COMPLETED, None)
    assert not verdict.allowed
    assert "outcome" in verdict.reason


@pytest.mark.parametrize(
    ("current", "target"),
    [(current, target) for current, target in sorted(EXPECTED) if target is not S.COMPLETED],
    ids=str,
)
def test_outcome_on_a_non_completed_status_is_refused(current, target):
    assert check(current, target).allowed
    assert not check(current, target, Outcome.APPROVED).allowed
    assert not check(current, target, Outcome.DENIED).allowed


@pytest.mark.parametrize("current", sorted(TERMINAL_EXPECTED))
@pytest.mark.parametrize("target", list(Status))
@pytest.mark.parametrize("outcome", [None, Outcome.APPROVED, Outcome.DENIED])
def test_terminal_states_refuse_everything(current, target, outcome):
    verdict = check(current, target, outcome)
    assert not verdict.allowed
    assert current.value in verdict.reason


def test_terminal_set():
    assert TERMINAL == TERMINAL_EXPECTED
    for status in Status:
        assert is_terminal(status) == (status in TERMINAL_EXPECTED)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.IN_PROGRESS, S.ACCEPTED),
        (S.ACCEPTED, S.DISPATCHED),
        (S.IN_PROGRESS, S.DISPATCHED),
        (S.DISPATCHED, S.RECEIVED),
        (S.ACCEPTED, S.RECEIVED),
    ],
)
def test_backward_moves_are_refused(current, target):
    assert not check(current, target).allowed


@pytest.mark.parametrize("target", sorted(PARTNER_REPORTS))
def test_a_partner_report_on_a_case_whose_dispatch_is_not_recorded_yet_is_applied(target):
    # The partner has the case (its report overtook its answer to the dispatch, or the process
    # that sent it died before writing the answer down): the report moves the case on as if
    # from dispatched, and the dispatch answer that comes later is refused as a backward move.
    assert check(S.RECEIVED, target, outcome_for(target), by_partner=True).allowed


def test_the_gateway_itself_still_moves_a_received_case_only_by_dispatching_it():
    assert not check(S.RECEIVED, S.ACCEPTED).allowed
    assert not check(S.FAILED, S.ACCEPTED, by_partner=True).allowed


@pytest.mark.parametrize("status", NON_TERMINAL)
def test_duplicates_are_refused(status):
    assert not check(status, status, outcome_for(status)).allowed


def test_in_progress_twice_is_refused():
    verdict = check(S.IN_PROGRESS, S.IN_PROGRESS)
    assert not verdict.allowed
    assert "in_progress" in verdict.reason


@pytest.mark.parametrize("current", NON_TERMINAL)
def test_withdraw_is_allowed_from_every_non_terminal_status(current):
    assert check(current, S.WITHDRAWN).allowed
    assert not check(current, S.WITHDRAWN, Outcome.DENIED).allowed


def test_replay_of_a_failed_case_dispatches_it_again():
    assert check(S.FAILED, S.DISPATCHED).allowed
    assert not check(S.FAILED, S.ACCEPTED).allowed


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (S.DISPATCHED, S.DISPATCHED),
        (S.ACCEPTED, S.ACCEPTED),
        (S.IN_PROGRESS, S.IN_PROGRESS),
        (S.RECEIVED, S.DISPATCHED),
        (S.SUPPLEMENT_REQUIRED, S.DISPATCHED),
        (S.FAILED, S.DISPATCHED),
    ],
)
def test_resume_status(before, after):
    assert resume_status(before) is after
    assert check(S.SUPPLEMENT_REQUIRED, resume_status(before)).allowed


@pytest.mark.parametrize(
    ("status", "has"),
    [
        (S.RECEIVED, False),
        (S.FAILED, False),
        (S.DISPATCHED, True),
        (S.ACCEPTED, True),
        (S.IN_PROGRESS, True),
        (S.SUPPLEMENT_REQUIRED, True),
        (S.COMPLETED, True),
        (S.REJECTED, True),
    ],
)
def test_partner_has_case(status, has):
    assert partner_has_case(status) is has


def test_the_time_limit_clock_stops_during_a_supplement() -> None:
    from gateway.lifecycle import overdue, time_limit_clock

    deadline = 1_000.0
    d, paused = time_limit_clock(Status.ACCEPTED, deadline, None, Status.SUPPLEMENT_REQUIRED, 400.0)
    assert (d, paused) == (1_000.0, 400.0)
    # stopped: not overdue however late it gets, as it stopped before the deadline
    assert not overdue(Status.SUPPLEMENT_REQUIRED, d, paused, now=5_000.0)
    d, paused = time_limit_clock(Status.SUPPLEMENT_REQUIRED, d, paused, Status.ACCEPTED, 700.0)
    assert (d, paused) == (1_300.0, None)
    assert not overdue(Status.ACCEPTED, d, paused, now=1_299.0)
    assert overdue(Status.ACCEPTED, d, paused, now=1_301.0)
    assert not overdue(Status.COMPLETED, d, paused, now=9_999.0)
