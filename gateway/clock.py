"""Clocks, injected everywhere time matters so tests can control it."""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Protocol


class Clock(Protocol):
    """Wall-clock seconds since the epoch."""

    def now(self) -> float: ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._t = start

    def now(self) -> float:
        return self._t

    def advance(self, seconds: float) -> None:
        self._t += seconds


def iso(ts: float) -> str:
    """RFC 3339 UTC with a ``Z``, millisecond precision."""
    seconds, millis = divmod(round(ts * 1000), 1000)
    return f"{_second(seconds)}.{millis:03d}Z"


@lru_cache(maxsize=4096)
def _second(seconds: int) -> str:
    # Events cluster in time, so the formatted second is nearly always cached.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
