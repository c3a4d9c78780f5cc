"""Run a simulator for each partner of a demo configuration, on the ports its URLs name."""

from __future__ import annotations

from urllib.parse import urlsplit

from gateway.config import Config
from gateway.simulators.rest import ProvinceSimulator, SimulatorSettings


def _port(url: str) -> int:
    return urlsplit(url).port or 80


class DemoPartners:
    """One simulator per partner (handler and callback receiver on one port) plus the hub."""

    def __init__(self, config: Config, gateway_url: str) -> None:
        self.simulators: list[tuple[ProvinceSimulator, int]] = []
        ports: set[int] = set()
        for p in config.partners:
            url = (p.adapter or {}).get("base_url") or p.callback_url
            if not url or not p.keys:
                continue
            key_id, secret = next(iter(p.keys.items()))
            settings = SimulatorSettings(
                region=p.region, gateway_url=gateway_url, key_id=key_id, secret=secret,
                callback_secret=p.callback_secret, latency=0.4,
            )  # fmt: skip
            self.simulators.append((ProvinceSimulator(settings), _port(url)))
            ports.add(_port(url))
        hub = config.national_hub
        if hub and _port(hub.url) not in ports:
            settings = SimulatorSettings(region="100000", callback_secret=hub.secret)
            self.simulators.append((ProvinceSimulator(settings), _port(hub.url)))

    async def start(self) -> None:
        for sim, port in self.simulators:
            await sim.start("127.0.0.1", port)

    async def stop(self) -> None:
        for sim, _ in self.simulators:
            await sim.stop()
