"""The gateway's own event JSON, the format every recipient reads unless told otherwise.

One event object per POST, or for a recipient that takes batches a JSON array of events (each
case's in order); any ``2xx`` acknowledges. SPEC §4 gives the event's shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import orjson

from adapters.sdk import AdapterSettings


class EventJsonSettings(AdapterSettings):
    kind: Literal["events"] = "events"


class EventJson:
    """Events as the gateway writes them: an object, or an array when batched."""

    kind: ClassVar[str] = "events"
    Settings: ClassVar[type[AdapterSettings]] = EventJsonSettings
    content_type = "application/json"

    def __init__(self, settings: AdapterSettings) -> None:
        self.settings = settings

    def render(self, events: Sequence[Mapping[str, Any]], batch: bool, now_iso: str) -> bytes:
        return orjson.dumps(list(events) if batch else events[0])

    def refusal(self, status: int, body: bytes) -> str | None:
        return None if 200 <= status < 300 else f"HTTP {status}"
