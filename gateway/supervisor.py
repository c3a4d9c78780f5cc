"""Supervised background tasks: restarted with backoff if they crash, cancelled on stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from gateway import logs

log = logging.getLogger(__name__)


class Supervisor:
    """Runs long-lived coroutines; a crash is logged and the coroutine started again."""

    def __init__(self, max_restart_delay: float = 10.0) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._max_delay = max_restart_delay
        self.restarts: dict[str, int] = {}

    def start(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        self._tasks[name] = asyncio.create_task(self._keep(name, factory), name=name)

    async def _keep(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        delay = 0.1
        while True:
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.restarts[name] = self.restarts.get(name, 0) + 1
                log.error("background task %s crashed (%s); restarting in %.1fs", name,
                          logs.failure(exc), delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(self._max_delay, delay * 2)

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()

    def alive(self) -> bool:
        """Every task is running, or has finished its work (a worker with nothing to do)."""
        return all(not t.done() or not t.cancelled() for t in self._tasks.values())


class Signal:
    """A wake-up flag for a worker loop: set by producers, awaited with a timeout."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, seconds: float, linger: float = 0.0) -> None:
        """Wait until set or ``seconds`` pass. Once set, linger a moment so that work arriving
        together is claimed together: fewer, larger claims under load."""
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
        # arrives as the event is set, and the worker would never stop.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._event.wait()
        if linger and self._event.is_set():
            await asyncio.sleep(linger)
        self._event.clear()
