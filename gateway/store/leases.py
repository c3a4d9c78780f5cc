"""Leases held in memory, for a store whose leases only one process ever takes.

On SQLite the process running the workers is the only one that claims jobs and delivery cursors
(its part is held by a lock file, and a successor releases what a dead one held). Its leases can
therefore live in its memory: a claim is then a plain read on the reader connection and a lease
taken here, not a write transaction with a commit (and, with ``synchronous=FULL``, an fsync)
queued behind every other write in the one writer process.

A read sees the database as it was when the read began (the SQLite store runs each read whole,
so it never shares an older read's snapshot). A write that finishes a job or
acknowledges an event may commit, and release its lease, while a claim's read is under way; that
claim's rows still show the job pending or the event unacknowledged. So a key released after a
claim began is not taken by that claim: the next claim reads it afresh.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field


@dataclass
class Leases:
    """Who holds what until when, for one kind of key (job ids, or recipient and case)."""

    held: dict[Hashable, float] = field(default_factory=dict)  # key → end of its lease
    released: dict[Hashable, int] = field(default_factory=dict)  # key → epoch of its release
    epoch: int = 0
    _claims: set[int] = field(default_factory=set)  # the epochs of the claims under way

    def begin(self, now: float) -> int:
        """A claim starts (before its read); returns its mark for :meth:`take` and :meth:`end`."""
        self.held = {k: end for k, end in self.held.items() if end > now}
        self.epoch += 1
        self._claims.add(self.epoch)
        return self.epoch

    def take(self, key: Hashable, now: float, until: float, since: int) -> bool:
        """Lease ``key`` until ``until`` for the claim begun at ``since``; False if it is held,
        or was released after that claim began (its row may be stale)."""
        end = self.held.get(key)
        if end is not None and end > now:
            return False
        if self.released.get(key, 0) >= since:
            return False
        self.held[key] = until
        return True

    def end(self, since: int) -> None:
        """The claim begun at ``since`` is over: forget releases no claim under way can mind."""
        self._claims.discard(since)
        oldest = min(self._claims, default=self.epoch + 1)
        self.released = {k: e for k, e in self.released.items() if e >= oldest}

    def release(self, keys: Iterable[Hashable]) -> None:
        """The writes that close these leases have committed."""
        self.epoch += 1
        for key in keys:
            self.held.pop(key, None)
            if self._claims:
                self.released[key] = self.epoch
