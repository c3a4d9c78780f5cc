"""The contract list in force: the store's newest revision, followed by every process.

Each gateway process polls the store's revision number (a cheap query) and loads a newer revision
when one appears, so a publish takes effect everywhere without a restart. Cases keep the version
they were accepted under: versions are immutable, and a case records its version number.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway import revisions
from gateway.contracts import ContractList
from gateway.store.base import RevisionMoved, Store

log = logging.getLogger(__name__)


class ContractRegistry:
    def __init__(self, store: Store, initial: ContractList) -> None:
        self.store = store
        self.current = initial
        self.revision = 0

    async def bootstrap(self, shipped: ContractList, now: float) -> None:
        """A store with no revision gets the shipped list as revision 1; then load the newest."""
        if await self.store.revision_number() == 0:
            # Another process starting at the same time may come first: its revision stands.
            with contextlib.suppress(RevisionMoved):
                await self.store.publish_revision(
                    revisions.dumps(shipped).decode(),
                    revisions.published_contents_json(shipped),
                    author="tongban",
                    note="the contract list folder, loaded at first start",
                    now=now,
                    if_revision=0,
                )
        await self.refresh()

    async def refresh(self) -> bool:
        """Load the newest revision if it is not the one in force; True if it changed."""
        number = await self.store.revision_number()
        if number == self.revision:
            return False
        record = await self.store.get_revision(number)
        if record is None:
            return False
        self.current = revisions.loads(record.content)
        self.revision = record.revision
        log.info("contract list revision %d in force", number)
        return True

    async def follow(self, interval: float = 2.0) -> None:
        """Supervised loop: pick up revisions published by any process."""
        while True:
            await asyncio.sleep(interval)
            await self.refresh()
