"""Operators watching partners: health (circuit, queue, counts, last error) and pause/resume.

Pausing stops new calls to a partner (its jobs wait, nothing is lost). A pause is kept in the
store, so it holds in every gateway process sharing it and across restarts, until an operator
resumes the partner; both acts are entries of the audit chain, with the operator's name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from adapters.sdk import HealthReporting, describe
from gateway import errors
from gateway.clock import Clock, iso
from gateway.config import Config
from gateway.dispatcher import PartnerSlot
from gateway.store.base import Pause, PauseRecord, Store


@dataclass
class PartnerOps:
    config: Config
    store: Store
    partners: Mapping[str, PartnerSlot]
    clock: Clock
    wake: Callable[[], None] = lambda: None  # the dispatcher, when a partner is resumed
    calls_here: bool = True  # False in an API-only process: its dispatcher makes no calls

    async def health(self) -> dict[str, Any]:
        now = self.clock.now()
        queues = await self.store.queues(now)
        paused = await self.store.paused_partners()
        reports = [self._one(p.region, p.name, queues, paused, now) for p in self.config.partners]
        for report in reports:
            slot = self.partners.get(report["region"])
            if slot is not None and isinstance(slot.adapter, HealthReporting):
                report["adapter_health"] = await _adapter_health(slot)
        return {"partners": reports}

    def _one(
        self,
        region: str,
        name: str,
        queues: Mapping[str, Mapping[str, float]],
        paused: Mapping[str, PauseRecord],
        now: float,
    ) -> dict[str, Any]:
        slot = self.partners.get(region)
        q = queues.get(region, {})
        report: dict[str, Any] = {
            "region": region,
            "name": name,
            "adapter": slot.adapter.kind if slot else None,
            "queue_depth": int(q.get("pending", 0)),
            "oldest_waiting_seconds": round(q.get("oldest_pending_seconds", 0.0), 1),
            "dead_letters": int(q.get("dead", 0)),
        }
        if slot is not None:
            pause = paused.get(region)
            report.update({
                "paused": pause is not None,
                "paused_at": iso(pause.paused_at) if pause else None,
                "paused_by": pause.paused_by if pause else None,
            })  # fmt: skip
            report.update(self._calls(slot, now))
        return report

    def _calls(self, slot: PartnerSlot, now: float) -> dict[str, Any]:
        """This process's calls to the partner: none to show in an API-only process."""
        c = slot.circuit
        if not self.calls_here:
            keys = ("circuit", "in_flight", "successes", "errors", "last_error", "retry_at")
            return dict.fromkeys(keys)
        return {
            "circuit": c.state(now), "in_flight": slot.inflight,
            "successes": c.successes, "errors": c.errors, "last_error": c.last_error,
            "retry_at": iso(c.open_until) if c.open_until > now else None,
        }  # fmt: skip

    def kinds(
        self, registry: Mapping[str, type[Any]], formats: Mapping[str, type[Any]]
    ) -> dict[str, Any]:
        """The installed adapter kinds and recipient formats, with their settings' schemas."""
        return {
            "adapters": [describe(cls) for _, cls in sorted(registry.items())],
            "recipient_formats": [describe(cls) for _, cls in sorted(formats.items())],
        }

    async def pause(self, region: str, paused: bool, by: str = "") -> dict[str, Any]:
        """Pause (or resume) a partner for every process; a repeat changes nothing."""
        if region not in self.partners:
            raise errors.NotFound(f"no handling partner {region}")
        await self.store.write([Pause(region, paused, by)], self.clock.now())
        if not paused:
            self.wake()
        return {"region": region, "paused": paused}


async def _adapter_health(slot: PartnerSlot) -> dict[str, Any]:
    adapter = slot.adapter
    assert isinstance(adapter, HealthReporting)
    try:
        async with asyncio.timeout(slot.ctx.timeout):
            return dict(await adapter.health(slot.ctx))
    except Exception as exc:  # an adapter's report must not break the operator's view
        return {"error": f"health report failed: {type(exc).__name__}"}
