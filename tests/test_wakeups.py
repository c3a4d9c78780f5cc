"""Workers that share the store with another process are woken by its commits.

The API process accepts the case and takes the partner's reports; the workers process must
dispatch and deliver them. Its poll interval here is a minute, far longer than the deadline, so
the case completes in time only if the workers are woken by the other process's commits (SQLite:
``PRAGMA data_version``; PostgreSQL: LISTEN/NOTIFY).
"""

from __future__ import annotations

from pathlib import Path

from gateway.app import Gateway
from tests.support import ORIGIN, complete_in_order, medical_filing, wait_for, world

A_MINUTE = 60.0


async def test_a_workers_process_is_woken_by_the_api_process_commits(
    tmp_path: Path, store_url: str
) -> None:
    async with world(tmp_path, store=store_url, role="api") as w:
        workers = Gateway(w.config, poll_interval=A_MINUTE, role="workers")
        try:
            await workers.start()
            # The workers' first rounds at start found nothing; from here only a wake-up helps.
            status, case, _ = await w.origin.call("POST", "/v1/cases", medical_filing("ZJ-W-1"))
            assert status == 202

            await wait_for(lambda: complete_in_order(w.sims[ORIGIN], [case["case_id"]]),
                           within=30, what="the case carried without a poll")  # fmt: skip
        finally:
            await workers.stop()
