"""The poller: asks partners whose adapters poll (tickets, result folders, front-end database
tables) for news on a schedule, and applies what they report like any pushed message.

Contract with polling adapters: ``poll`` is called again only after everything the previous call
returned has been stored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from adapters.sdk import PollingAdapter, StatusUpdate
from gateway.dispatcher import PartnerSlot
from gateway.service import CaseService, canonical
from gateway.store.base import Store

log = logging.getLogger(__name__)
OPEN_CASES_PER_POLL = 200


class Poller:
    def __init__(
        self, *, store: Store, service: CaseService, partners: Mapping[str, PartnerSlot]
    ) -> None:
        self.store = store
        self.service = service
        self.partners = {
            region: slot
            for region, slot in partners.items()
            if isinstance(slot.adapter, PollingAdapter)
        }

    async def run(self) -> None:
        """One loop per polling partner; returns at once when there is none."""
        if self.partners:
            await asyncio.gather(*(self._loop(r, s) for r, s in self.partners.items()))

    async def _loop(self, region: str, slot: PartnerSlot) -> None:
        adapter = slot.adapter
        assert isinstance(adapter, PollingAdapter)
        while True:
            if region not in await self.store.paused_partners():
                await self.poll_once(region, slot)
            await asyncio.sleep(adapter.poll_interval)

    async def poll_once(self, region: str, slot: PartnerSlot) -> int:
        """Poll one partner once; return how many updates were applied."""
        adapter = slot.adapter
        assert isinstance(adapter, PollingAdapter)
        cases = await self.store.open_cases(region, OPEN_CASES_PER_POLL)
        try:
            async with asyncio.timeout(slot.ctx.timeout * 2):
                updates = await adapter.poll([canonical(c) for c in cases], slot.ctx)
        except TimeoutError:
            log.warning("poll of %s timed out", region)
            return 0
        except Exception as exc:  # an adapter bug must not stop polling
            log.error("poll of %s raised %s", region, type(exc).__name__)
            return 0
        if not updates:
            return 0
        return await self._store(region, updates)

    async def _store(self, region: str, updates: list[StatusUpdate]) -> int:
        """Store what a poll returned before polling that partner again, however long it takes:
        an adapter may take its next poll as proof that the last one's updates are stored (and,
        say, archive the result files they came from)."""
        delay = 0.1
        while True:
            try:
                result = await self.service.apply_updates(region, updates)
                return int(result["applied"])
            except Exception as exc:
                log.error("storing a poll of %s failed (%s); retrying", region,
                          type(exc).__name__)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
