"""A token bucket per caller, so one busy region cannot starve the others."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[str, _Bucket] = {}

    def take(self, who: str, now: float) -> float:
        """0 if allowed (a token is spent); else seconds until a token is available."""
        b = self._buckets.get(who)
        if b is None:
            b = self._buckets[who] = _Bucket(self.burst, now)
        b.tokens = min(self.burst, b.tokens + (now - b.at) * self.rate)
        b.at = now
        if b.tokens >= 1:
            b.tokens -= 1
            return 0.0
        return (1 - b.tokens) / self.rate
