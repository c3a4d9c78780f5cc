"""Group commit: many callers' writes in one transaction and one commit.

A caller's ``submit`` waits in a bounded queue; one task takes everything queued (up to
``max_group`` callers), hands their items to the backend's transaction function, and answers
every caller with its own result once that transaction has committed. If the group fails as a
whole, each caller's item is retried alone, so one bad caller cannot fail another. With
``synchronous=FULL`` (SQLite) or a synchronous commit (PostgreSQL) every answered write survives
a power cut, at one flush per group rather than per case.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from gateway import logs
from gateway.store.base import StoreWriteFailed

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    """``transaction`` gets the items of one group in order and returns one result per item."""

    def __init__(
        self,
        transaction: Callable[[list[Item]], Awaitable[list[Result]]],
        *,
        max_group: int = 512,
        weigh: Callable[[Item], int] | None = None,
        max_weight: int = 0,
    ) -> None:
        """``weigh`` and ``max_weight`` bound a group by the bytes it carries as well (a group
        always takes its first item, however heavy)."""
        self._transaction = transaction
        self.max_group = max_group
        self._weigh = weigh
        self._max_weight = max_weight
        self._queue: asyncio.Queue[tuple[Item, asyncio.Future[Result]]] = asyncio.Queue(
            maxsize=10_000
        )
        self._carry: list[tuple[Item, asyncio.Future[Result]]] = []  # the next group's first
        self._task: asyncio.Task[None] | None = None

    def start(self, name: str) -> None:
        self._task = asyncio.create_task(self._loop(), name=name)

    async def stop(self) -> None:
        """Stop committing; whoever still waits is told the store closed."""
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        while self._carry or not self._queue.empty():
            _, fut = self._carry.pop() if self._carry else self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(StoreWriteFailed("store closed"))

    async def submit(self, item: Item) -> Result:
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        await self._queue.put((item, fut))
        return await fut

    async def _loop(self) -> None:
        while True:
            group = [self._carry.pop() if self._carry else await self._queue.get()]
            weight = self._weight(group[0])
            while len(group) < self.max_group and not self._queue.empty():
                waiting = self._queue.get_nowait()
                weight += self._weight(waiting)
                if self._weigh is not None and weight > self._max_weight:
                    self._carry.append(waiting)
                    break
                group.append(waiting)
            await self._commit(group)

    def _weight(self, waiting: tuple[Item, asyncio.Future[Result]]) -> int:
        return self._weigh(waiting[0]) if self._weigh is not None else 0

    async def _commit(self, group: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._transaction([item for item, _ in group])
        except Exception as exc:
            if len(group) == 1:
                log.error("store write failed (%s)", logs.failure(exc))
                _settle(group[0][1], exc=StoreWriteFailed("store write failed"))
                return
            for waiting in group:  # isolate the caller that broke the group
                await self._commit([waiting])
            return
        for (_, fut), result in zip(group, results, strict=True):
            _settle(fut, result)


def _settle(
    fut: asyncio.Future[Result], result: Any = None, exc: BaseException | None = None
) -> None:
    if fut.done():  # the caller was cancelled meanwhile; its write stands
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)
