"""A store written by the previous release is upgraded in place, with cases in flight.

The newest migration is undone behind the gateway's back (its column dropped, its version row
deleted), as a store of the release before would be; the next start applies it again and the
case accepted before the upgrade is carried to its end and delivered, on both backends.
"""

from __future__ import annotations

from pathlib import Path

from gateway.store import postgres, sqlite
from gateway.store.rows import PARTNER_EVENTS_COLUMN
from tests.support import (
    HANDLER,
    ORIGIN,
    complete_in_order,
    raw_sql,
    submit_filings,
    wait_for,
    world,
)


async def test_cases_in_flight_complete_after_the_store_is_upgraded(
    tmp_path: Path, store_url: str
) -> None:
    # Short leases: on PostgreSQL a stopped process's leases run out rather than being released.
    leases = {"lease_seconds": 9, "request_timeout_seconds": 2}
    async with world(tmp_path, store=store_url, **leases) as w:
        w.sims[HANDLER].set_down(True)  # the cases wait in the store for the next release
        before = await submit_filings(w.origin, "ZJ-UPG", 3)
    # The store as the previous release left it: without the newest migration's column.
    newest_migrations = (sqlite.MIGRATIONS[-1], postgres.MIGRATIONS[-1])
    assert newest_migrations == (PARTNER_EVENTS_COLUMN,) * 2, "undo the newest migration here"
    await raw_sql(store_url, "ALTER TABLE cases DROP COLUMN partner_events")
    newest = "(SELECT max(version) FROM schema_version)"
    await raw_sql(store_url, f"DELETE FROM schema_version WHERE version = {newest}")

    async with world(tmp_path, store=store_url, **leases) as w:
        after = await submit_filings(w.origin, "ZJ-UPG-NEW", 2)
        ids = before + after

        async def all_delivered() -> bool:
            cases = [await w.origin.case(i) for i in ids]
            done = all(c["status"] == "completed" for c in cases)
            return done and all(d["waiting"] == 0 for c in cases for d in c["deliveries"])

        await wait_for(all_delivered, within=90, what="every case completed and delivered")
        # The new world's origin receiver got the events of the cases accepted after the
        # upgrade, every one in order (the earlier ones went partly to the first world's).
        assert complete_in_order(w.sims[ORIGIN], after)
