"""``gateway.dispatch_batch``: how many dispatch jobs one claim round takes at most."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.dispatcher import share
from gateway.store.base import JobRecord
from tests.support import medical_filing, wait_for, world


def test_the_budget_goes_round_the_partners_in_turn() -> None:
    assert share({"510000": 64, "440000": 64, "330000": 64}, 5) == {
        "510000": 2, "440000": 2, "330000": 1,
    }  # fmt: skip


def test_a_partner_gets_no_more_than_its_free_slots_and_one_without_any_is_left_out() -> None:
    assert share({"510000": 1, "440000": 0, "330000": 9}, 6) == {"510000": 1, "330000": 5}
    assert share({"510000": 2, "330000": 3}, 64) == {"510000": 2, "330000": 3}
    assert share({"510000": 0}, 64) == {}


async def test_cases_go_out_in_rounds_of_at_most_dispatch_batch_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with world(tmp_path, dispatch_batch=2) as w:
        assert w.gateway.store is not None
        claim = w.gateway.store.claim_jobs
        rounds: list[tuple[int, int]] = []

        async def recorded(*args: Any) -> list[JobRecord]:
            jobs = await claim(*args)
            rounds.append((sum(args[-1].values()), len(jobs)))
            return jobs

        monkeypatch.setattr(w.gateway.store, "claim_jobs", recorded)
        ids = []
        for i in range(7):
            status, case, _ = await w.origin.call("POST", "/v1/cases", medical_filing(f"DB-{i}"))
            assert status == 202, case
            ids.append(case["case_id"])

        async def all_completed() -> bool:
            statuses = [(await w.origin.case(c))["status"] for c in ids]
            return statuses == ["completed"] * len(ids)

        await wait_for(all_completed, what="every case completed")
        assert rounds, "the dispatcher claimed nothing through the store"
        assert max(asked for asked, _ in rounds) <= 2
        assert max(got for _, got in rounds) <= 2
        assert sum(got for _, got in rounds) >= 7
