"""Recipient formats plug in like partner adapters (SPEC §4): a recipient whose system reads its
own format is given a format that renders the gateway's events into it.

Here an outside format — plain text, one line per event, acknowledged only by the body ``OK`` —
serves a hub that is a real HTTP server on loopback, and the guarantees stay the gateway's: every
event, in order, sent again until acknowledged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
from aiohttp import web

from adapters.sdk import AdapterSettings, RecipientFormat, discover_formats
from gateway.app import Gateway
from gateway.config import ConfigError
from tests.support import gateway_config, medical_filing, wait_for, world

SECRET = "line-receiver-secret-01"


class LinesSettings(AdapterSettings):
    kind: Literal["lines"] = "lines"
    separator: str = " "


class Lines:
    """One line per event: case id, sequence number and status."""

    kind: ClassVar[str] = "lines"
    Settings: ClassVar[type[AdapterSettings]] = LinesSettings
    content_type = "text/plain; charset=utf-8"

    def __init__(self, settings: AdapterSettings) -> None:
        assert isinstance(settings, LinesSettings)
        self.sep = settings.separator

    def render(self, events: Sequence[Mapping[str, Any]], batch: bool, now_iso: str) -> bytes:
        lines = [self.sep.join([e["case_id"], str(e["seq"]), e["status"]]) for e in events]
        return ("\n".join(lines) + "\n").encode()

    def refusal(self, status: int, body: bytes) -> str | None:
        return None if status == 200 and body.strip() == b"OK" else "not OK"


class LineReceiver:
    """The recipient's system: answers BUSY to the first few posts, then OK."""

    def __init__(self, busy_first: int) -> None:
        self.busy_left = busy_first
        self.lines: list[list[str]] = []
        self.content_types: set[str] = set()
        self.runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_post("/lines", self._take)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()

    async def _take(self, request: web.Request) -> web.Response:
        self.content_types.add(request.content_type)
        body = await request.text()
        if self.busy_left > 0:
            self.busy_left -= 1
            return web.Response(text="BUSY")  # HTTP 200, but not an acknowledgement
        self.lines += [line.split("|") for line in body.splitlines()]
        return web.Response(text="OK")


def test_the_format_meets_the_protocol() -> None:
    assert isinstance(Lines(LinesSettings()), RecipientFormat)
    assert {"events", "report_envelope"} <= set(discover_formats())


async def test_an_outside_format_serves_the_hub_with_every_event_in_order(
    tmp_path: Path,
) -> None:
    receiver = LineReceiver(busy_first=2)
    port = await receiver.start()
    hub = {"url": f"http://127.0.0.1:{port}/lines", "secret": SECRET, "batch": True,
           "format": {"kind": "lines", "separator": "|"}}  # fmt: skip
    formats = {**discover_formats(), "lines": Lines}
    try:
        async with world(tmp_path, {"national_hub": hub}, format_kinds=formats) as w:
            body = medical_filing("ZJ-LINES-1")
            status, case, _ = await w.origin.call("POST", "/v1/cases", body)
            assert status == 202, case

            def all_lines() -> bool:
                return [ln[2] for ln in receiver.lines if ln[0] == case["case_id"]] == [
                    "received", "dispatched", "accepted", "in_progress", "completed",
                ]  # fmt: skip

            await wait_for(all_lines, what="every event as a line, in order")
            assert [ln[1] for ln in receiver.lines] == ["1", "2", "3", "4", "5"]
            assert receiver.busy_left == 0  # the two refusals were sent again
            assert receiver.content_types == {"text/plain"}
    finally:
        await receiver.stop()


def test_an_unknown_format_is_refused_at_start_naming_the_key(tmp_path: Path) -> None:
    subscriber = {"name": "supervision", "url": "http://127.0.0.1:9/lines", "secret": SECRET,
                  "format": {"kind": "lines"}}  # fmt: skip
    config = gateway_config(f"sqlite:///{tmp_path}/gw.db", 0, {}, 9, {"subscribers": [subscriber]})
    with pytest.raises(ConfigError, match=r"subscribers\[0\]\.format: unknown recipient format"):
        Gateway(config)
