"""Group commit (gateway/store/group.py): every caller answered with its own result, in order,
and a group bounded by the bytes it carries as well as by its count."""

from __future__ import annotations

import asyncio

from gateway.store.group import GroupCommit


async def _run(weights: list[int], max_weight: int) -> tuple[list[list[int]], list[int]]:
    """Submit one item per weight at once; the groups the transaction saw and what each got."""
    groups: list[list[int]] = []

    async def transaction(items: list[int]) -> list[int]:
        groups.append([weights[i] for i in items])
        return [i * 10 for i in items]

    commit: GroupCommit[int, int] = GroupCommit(
        transaction, weigh=lambda i: weights[i], max_weight=max_weight
    )
    commit.start("test-group-commit")
    try:
        answers = await asyncio.gather(*(commit.submit(i) for i in range(len(weights))))
    finally:
        await commit.stop()
    return groups, list(answers)


async def test_a_group_stops_before_its_bytes_would_pass_the_bound() -> None:
    groups, answers = await _run([40, 40, 40, 10, 90], max_weight=100)
    assert groups == [[40, 40], [40, 10], [90]]
    assert answers == [0, 10, 20, 30, 40]  # each caller its own result, none lost


async def test_an_item_heavier_than_the_bound_goes_alone() -> None:
    groups, answers = await _run([5, 500, 5, 5], max_weight=100)
    assert groups == [[5], [500], [5, 5]]
    assert answers == [0, 10, 20, 30]
