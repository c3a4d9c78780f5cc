"""Run the demo's partners: for each province, a simulator in the style its adapter speaks, and a
receiver for the events of the cases it submitted; plus the national hub's receiver."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.config import Config, PartnerSection
from gateway.simulators import launch
from gateway.simulators.rest import ProvinceSimulator, SimulatorSettings


def _port(url: str) -> int:
    return urlsplit(url).port or 80


def _adapter_port(adapter: dict[str, Any]) -> int:
    url = adapter.get("base_url") or adapter.get("endpoint")
    return _port(str(url)) if url else 0


class DemoPartners:
    def __init__(self, config: Config, gateway_url: str, folder: Path) -> None:
        self.config = config
        self.gateway_url = gateway_url
        self.folder = folder
        self.running: list[launch.Running] = []

    async def start(self) -> Config:
        """Start every simulator; return the configuration with each partner's adapter table
        replaced by the one that speaks its simulator's dialect."""
        partners = [await self._partner(p) for p in self.config.partners]
        hub = self.config.national_hub
        if hub and _port(hub.url) not in {_port(p.callback_url or "") for p in partners}:
            settings = SimulatorSettings(region="100000", callback_secret=hub.secret)
            receiver = ProvinceSimulator(settings)
            await receiver.start("127.0.0.1", _port(hub.url))
            self.running.append(receiver)
        return self.config.model_copy(update={"partners": partners})

    async def _partner(self, p: PartnerSection) -> PartnerSection:
        if not p.keys or p.adapter is None:
            return p
        key_id, secret = next(iter(p.keys.items()))
        who = launch.Partner(p.region, self.gateway_url, key_id, secret, p.callback_secret)
        style = launch.KIND_STYLE.get(str(p.adapter.get("kind")), "rest")
        port = _adapter_port(p.adapter)
        sim, table = await launch.start(style, who, "127.0.0.1", port, self.folder / p.region)
        self.running.append(sim)
        receives_at = _port(p.callback_url) if p.callback_url else None
        if receives_at is not None and not (style == "rest" and receives_at == port):
            settings = SimulatorSettings(region=p.region, callback_secret=p.callback_secret)
            receiver = ProvinceSimulator(settings)
            await receiver.start("127.0.0.1", receives_at)
            self.running.append(receiver)
        return p.model_copy(update={"adapter": table})

    async def stop(self) -> None:
        for sim in reversed(self.running):
            await sim.stop()
