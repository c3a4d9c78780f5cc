"""Operators watch partners and pause them: a paused partner's cases wait, none is lost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support import (
    HANDLER,
    OPERATOR_TOKEN,
    VIEWER_TOKEN,
    World,
    medical_filing,
    wait_for,
    world,
)

ADMIN = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
VIEWER = {"Authorization": f"Bearer {VIEWER_TOKEN}"}


async def ops(w: World, method: str, path: str, token: dict[str, str] = ADMIN) -> Any:
    return await w.origin.call(method, path, sign=False, headers=token)


async def test_pause_holds_cases_and_health_shows_the_queue(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        status, answer, _ = await ops(w, "POST", f"/v1/ops/partners/{HANDLER}/pause", VIEWER)
        assert status == 403
        status, answer, _ = await ops(w, "POST", f"/v1/ops/partners/{HANDLER}/pause")
        assert status == 200 and answer == {"region": HANDLER, "paused": True}
        status, case, _ = await w.origin.call("POST", "/v1/cases", medical_filing("ZJ-PAUSE-1"))
        assert status == 202

        async def queued() -> bool:
            _, health, _ = await ops(w, "GET", "/v1/ops/partners", VIEWER)
            mine = next(p for p in health["partners"] if p["region"] == HANDLER)
            return bool(mine["paused"] and mine["queue_depth"] == 1)

        await wait_for(queued, what="the case waiting in the paused partner's queue")
        assert w.sims[HANDLER].counters["submits"] == 0
        await ops(w, "POST", f"/v1/ops/partners/{HANDLER}/resume")

        async def completed() -> bool:
            return bool((await w.origin.case(case["case_id"]))["status"] == "completed")

        await wait_for(completed, what="the case completed after resume")
        _, health, _ = await ops(w, "GET", "/v1/ops/partners", VIEWER)
        mine = next(p for p in health["partners"] if p["region"] == HANDLER)
        assert mine["queue_depth"] == 0 and mine["circuit"] == "closed"
        assert mine["successes"] >= 1 and mine["adapter"] == "rest_json"
        status, _, _ = await ops(w, "POST", "/v1/ops/partners/999999/pause")
        assert status == 404
