"""Leases held in memory by SQLite's workers process (gateway/store/leases.py)."""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from gateway.app import Gateway
from gateway.store.leases import Leases
from tests.support import HANDLER, ORIGIN, gateway_config, medical_filing


def test_a_held_key_is_not_taken_again_until_released_or_expired() -> None:
    leases = Leases()
    claim = leases.begin(now=0.0)
    assert leases.take("job-1", now=0.0, until=60.0, since=claim)
    assert not leases.take("job-1", now=1.0, until=61.0, since=claim)
    leases.end(claim)
    # Expired: the holder is taken to be gone (a call that hung past its lease).
    later = leases.begin(now=61.0)
    assert leases.take("job-1", now=61.0, until=121.0, since=later)
    leases.end(later)


def test_a_key_released_while_a_claim_reads_is_left_to_the_next_claim() -> None:
    leases = Leases()
    first = leases.begin(now=0.0)
    assert leases.take("cursor", now=0.0, until=60.0, since=first)
    leases.end(first)
    reading = leases.begin(now=1.0)  # this claim's read may predate the acknowledgement
    leases.release(["cursor"])  # the acknowledgement committed meanwhile
    assert not leases.take("cursor", now=1.0, until=61.0, since=reading)
    leases.end(reading)
    fresh = leases.begin(now=2.0)  # reads after the commit: may take it
    assert leases.take("cursor", now=2.0, until=62.0, since=fresh)
    leases.end(fresh)


def test_a_key_released_before_a_claim_began_is_free_and_nothing_piles_up() -> None:
    leases = Leases()
    claim = leases.begin(now=0.0)
    for i in range(100):
        assert leases.take(i, now=0.0, until=60.0, since=claim)
    leases.end(claim)
    leases.release(range(100))  # no claim under way: nothing to remember
    assert leases.held == {} and leases.released == {}
    claim = leases.begin(now=1.0)
    leases.release(range(50))  # released during a claim: remembered until it ends
    assert len(leases.released) == 50
    leases.end(claim)
    assert leases.released == {}
    claim = leases.begin(now=2.0)
    assert all(leases.take(i, now=2.0, until=62.0, since=claim) for i in range(100))
    leases.end(claim)
    leases.begin(now=100.0)
    assert leases.held == {}  # expired ones are dropped


async def test_a_claim_leases_only_the_cursors_it_returns(tmp_path: Path) -> None:
    """The claim's read fetches extra rows to step over held ones; any it does not return must
    stay free, or their events wait out a whole lease unsent (seen as a 60 s stall)."""
    config = gateway_config(f"sqlite:///{tmp_path}/gw.db", 0, {ORIGIN: 1, HANDLER: 2}, 3)
    gw = Gateway(config)
    await gw.start()
    await gw.supervisor.stop()  # nothing claims but this test
    try:
        for i in range(6):
            status, _ = await gw.service.submit(ORIGIN, orjson.dumps(medical_filing(f"L-{i}")))
            assert status == 202
        store = gw.store
        assert store is not None
        now, origin = time.time(), f"region:{ORIGIN}"

        async def claim(limit: int, skip: list[str]) -> set[tuple[str, str]]:
            claims = await store.claim_deliveries("me", now, 60.0, limit, skip, 1)
            return {(c.recipient, c.case_id) for c in claims}

        first = await claim(2, ["hub"])  # two of the origin's cursors, held from now on
        second = await claim(2, [origin])  # reads 2 + 2 rows of the hub's; takes two
        assert len(first) == len(second) == 2
        rest = await claim(100, [])
        assert len(rest) == 12 - 4, "a cursor was leased without being returned"
        assert not rest & (first | second)
    finally:
        await gw.stop()
