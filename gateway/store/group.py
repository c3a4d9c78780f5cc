"""Group commit: many callers' writes in one transaction and one commit.

A caller's ``write`` waits in a bounded queue; one task takes everything queued (up to
``max_group`` callers), hands it to the backend's transaction function, and answers every caller
once that transaction has committed. If the group fails as a whole, each caller's operations are
retried alone, so one bad caller cannot fail another. With ``synchronous=FULL`` (SQLite) or a
synchronous commit (PostgreSQL) every answered write survives a power cut, at one flush per group
rather than per case.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from gateway.store.base import Op, OpResult
from gateway.store.batch import OpLists

log = logging.getLogger(__name__)

Transaction = Callable[[OpLists], Awaitable[list[list[OpResult]]]]
_Waiting = tuple[Sequence[Op], float, "asyncio.Future[list[OpResult]]"]


class GroupCommit:
    def __init__(self, transaction: Transaction, *, max_group: int = 512) -> None:
        self._transaction = transaction
        self.max_group = max_group
        self._queue: asyncio.Queue[_Waiting] = asyncio.Queue(maxsize=10_000)
        self._task: asyncio.Task[None] | None = None

    def start(self, name: str) -> None:
        self._task = asyncio.create_task(self._loop(), name=name)

    async def stop(self) -> None:
        """Stop committing; whoever still waits is told the store closed."""
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        while not self._queue.empty():
            _, _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(RuntimeError("store closed"))

    async def write(self, ops: Sequence[Op], now: float) -> list[OpResult]:
        fut: asyncio.Future[list[OpResult]] = asyncio.get_running_loop().create_future()
        await self._queue.put((ops, now, fut))
        return await fut

    async def _loop(self) -> None:
        while True:
            group = [await self._queue.get()]
            while len(group) < self.max_group and not self._queue.empty():
                group.append(self._queue.get_nowait())
            await self._commit(group)

    async def _commit(self, group: list[_Waiting]) -> None:
        try:
            results = await self._transaction([(ops, now) for ops, now, _ in group])
        except Exception:
            if len(group) == 1:
                log.exception("store write failed")
                _settle(group[0][2], exc=RuntimeError("store write failed"))
                return
            for item in group:  # isolate the caller that broke the group
                await self._commit([item])
            return
        for (_, _, fut), result in zip(group, results, strict=True):
            _settle(fut, result=result)


def _settle(
    fut: asyncio.Future[list[OpResult]],
    result: list[OpResult] | None = None,
    exc: BaseException | None = None,
) -> None:
    if fut.done():  # the caller was cancelled meanwhile; its write stands
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result or [])
