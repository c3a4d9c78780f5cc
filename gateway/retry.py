"""Backoff and circuit breaking shared by the dispatcher and the delivery worker."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


def backoff(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before attempt ``attempt + 1``: exponential with full jitter,
    but never less than half the exponential step so retries do not bunch at zero."""
    step = min(cap, base * float(2 ** min(attempt, 30)))
    r = rng.random() if rng else random.random()
    return step / 2 + r * step / 2


@dataclass
class Circuit:
    """Per-target breaker: after ``threshold`` consecutive failures, stop calling the target
    until a backoff has passed, then let one round through (half-open)."""

    threshold: int = 5
    base: float = 1.0
    cap: float = 60.0
    failures: int = 0
    open_until: float = 0.0
    successes: int = 0
    errors: int = 0
    last_error: str | None = field(default=None)

    def allows(self, now: float) -> bool:
        return now >= self.open_until

    def state(self, now: float) -> str:
        if self.failures < self.threshold:
            return "closed"
        return "open" if now < self.open_until else "half_open"

    def success(self) -> None:
        self.failures = 0
        self.open_until = 0.0
        self.successes += 1

    def failure(self, now: float, reason: str) -> None:
        self.failures += 1
        self.errors += 1
        self.last_error = reason
        if self.failures >= self.threshold:
            self.open_until = now + backoff(self.failures - self.threshold, self.base, self.cap)
