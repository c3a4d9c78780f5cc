"""Start a simulator of any style and say how the gateway should talk to it.

Used by ``tongban simulate`` and by the bundled demo: each style's simulator plays a partner in
its own dialect, and :func:`start` returns the ``adapter = {…}`` table that speaks it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

Style = Literal["rest", "soap", "ticket", "files", "frontdb"]
STYLES: tuple[Style, ...] = ("rest", "soap", "ticket", "files", "frontdb")
# The adapter kind that speaks each style.
KIND_STYLE: dict[str, Style] = {
    "rest_json": "rest",
    "soap_xml": "soap",
    "async_ticket": "ticket",
    "file_exchange": "files",
    "frontdb_exchange": "frontdb",
}


class Running(Protocol):
    async def stop(self) -> None: ...


@dataclass(frozen=True)
class Partner:
    """Who the simulated partner is at the gateway."""

    region: str
    gateway_url: str
    key_id: str
    secret: str
    callback_secret: str | None = None
    latency: float = 0.2
    failure_rate: float = 0.0
    deny_rate: float = 0.0


async def start(
    style: Style, p: Partner, host: str, port: int, folder: Path
) -> tuple[Running, dict[str, Any]]:
    """Start the simulator; return it and the gateway's adapter table for it."""
    if style == "rest":
        from gateway.simulators.rest import ProvinceSimulator, SimulatorSettings

        rest = ProvinceSimulator(SimulatorSettings(
            region=p.region, gateway_url=p.gateway_url, key_id=p.key_id, secret=p.secret,
            callback_secret=p.callback_secret, latency=p.latency, failure_rate=p.failure_rate,
            deny_rate=p.deny_rate,
        ))  # fmt: skip
        bound = await rest.start(host, port)
        return rest, {"kind": "rest_json", "base_url": f"http://{host}:{bound}"}
    if style == "soap":
        from gateway.simulators.soap import SoapProvinceSimulator, SoapSimulatorSettings

        soap = SoapProvinceSimulator(SoapSimulatorSettings(
            region=p.region, gateway_url=p.gateway_url, key_id=p.key_id, secret=p.secret,
            latency=p.latency, failure_rate=p.failure_rate, deny_rate=p.deny_rate,
        ))  # fmt: skip
        await soap.start(host, port)
        return soap, soap.adapter_settings()
    if style == "ticket":
        from gateway.simulators.ticket import TicketProvinceSimulator, TicketSimulatorSettings

        ticket_settings = TicketSimulatorSettings(
            region=p.region, callbacks=True, gateway_url=p.gateway_url, key_id=p.key_id,
            secret=p.secret, latency=p.latency, failure_rate=p.failure_rate,
            deny_rate=p.deny_rate,
        )  # fmt: skip
        ticket = TicketProvinceSimulator(ticket_settings)
        bound = await ticket.start(host, port)
        table = {
            "kind": "async_ticket", "base_url": f"http://{host}:{bound}", "mode": "both",
            "poll_interval": 5.0, "app_key": ticket_settings.app_key,
            "app_secret": ticket_settings.app_secret,
        }  # fmt: skip
        return ticket, table
    if style == "frontdb":
        from gateway.simulators.frontdb import FrontDbProvinceSimulator, FrontDbSimulatorSettings

        _make_dirs(folder)
        dsn = f"sqlite:///{folder / 'frontdb.db'}"
        db = FrontDbProvinceSimulator(FrontDbSimulatorSettings(
            dsn=dsn, region=p.region, latency=p.latency, failure_rate=p.failure_rate,
            deny_rate=p.deny_rate,
        ))  # fmt: skip
        await db.start()
        return db, {"kind": "frontdb_exchange", "dsn": dsn, "poll_interval": 0.5}
    from gateway.simulators.files import FileProvinceSimulator, FileSimulatorSettings

    files_settings = FileSimulatorSettings(
        region=p.region, outbox=folder / "outbox", inbox=folder / "inbox", latency=p.latency,
        failure_rate=p.failure_rate, deny_rate=p.deny_rate,
    )  # fmt: skip
    _make_dirs(files_settings.outbox, files_settings.inbox)
    files = FileProvinceSimulator(files_settings)
    await files.start()
    return files, files_settings.adapter_table(folder / "archive", poll_interval=0.5)


def _make_dirs(*folders: Path) -> None:
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
