"""A recipient adapter: events rendered into a report envelope (办件信息汇聚报文).

National and provincial supervision platforms collect case records (办件信息) in their own report
format rather than in the gateway's event JSON: a head naming the sender and the batch, and one
record per status change, with the platform's own state codes (已接件, 已受理, 不予受理, 补齐补正,
办理中, 办结…), area codes and ``yyyyMMddHHmmss`` times in Beijing time. They answer HTTP 200 even
when they refuse a batch, with the verdict in the body: ``{"code": "0"}`` (or ``"200"``) accepts
it, any other code (``"500"`` busy, ``"401"`` …) refuses it and it is sent again, unchanged.

The delivery guarantees stay the gateway's: per-case order, the same records on every retry (the
``eventId`` of each record is the event's), acknowledgement only on an accepting answer.

Pure: :func:`render` and :func:`refusal` do no I/O; :class:`ReportEnvelope` is the recipient
format (``format = { kind = "report_envelope", sender_code = "…" }``) the delivery worker uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo

import orjson
from pydantic import Field

from adapters.sdk import AdapterSettings

BEIJING = ZoneInfo("Asia/Shanghai")
CONTENT_TYPE = "application/json"

# The gateway's statuses as the report's state codes and names.
STATES: Mapping[str, tuple[str, str]] = {
    "received": ("1", "已接件"),
    "dispatched": ("2", "已转办"),
    "accepted": ("3", "已受理"),
    "rejected": ("4", "不予受理"),
    "supplement_required": ("6", "补齐补正"),
    "in_progress": ("8", "办理中"),
    "completed": ("11", "办结"),
    "withdrawn": ("12", "撤回"),
    "failed": ("13", "转办失败"),
}
OUTCOMES = {"approved": "准予许可", "denied": "不予许可"}
ACCEPTING = frozenset({"0", "200"})


def compact_time(iso_utc: str) -> str:
    """``2026-11-21T02:00:00Z`` → ``20261121100000`` (Beijing time)."""
    moment = datetime.fromisoformat(iso_utc.replace("Z", "+00:00"))
    return moment.astimezone(BEIJING).strftime("%Y%m%d%H%M%S")


def record(event: Mapping[str, Any]) -> dict[str, Any]:
    """One event (as the gateway delivers it) as one report record."""
    code, name = STATES.get(event["status"], ("99", event["status"]))
    return {
        "projId": event["case_id"],
        "eventId": event["event_id"],
        "seqNo": event["seq"],
        "itemCode": event["item_code"],
        "itemVersion": event["contract_version"],
        "stateCode": code,
        "stateName": name,
        "resultName": OUTCOMES.get(event.get("outcome") or "", ""),
        "acceptAreaCode": event["origin_region"],
        "handleAreaCode": event["handling_region"],
        "occurTime": compact_time(event["at"]),
        "data": event.get("data") or {},
    }


def render(events: Sequence[Mapping[str, Any]], sender_code: str, now_iso: str) -> bytes:
    """The envelope of these events (one record each, in the order given)."""
    head = {
        "senderCode": sender_code,
        "reportTime": compact_time(now_iso),
        "batchId": events[0]["event_id"],  # the same batch on every retry of the same events
        "recordCount": len(events),
    }
    return orjson.dumps({"head": head, "records": [record(e) for e in events]})


def refusal(status: int, body: bytes) -> str | None:
    """None if the platform accepted the batch; otherwise why not (never echoing the body)."""
    if not 200 <= status < 300:
        return f"HTTP {status}"
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "unreadable answer"
    raw = answer.get("code") if isinstance(answer, dict) else None
    if raw is None:
        return "answer without a code"
    code = str(raw)
    return None if code in ACCEPTING else f"refused with code {code[:16]}"


class ReportEnvelopeSettings(AdapterSettings):
    kind: Literal["report_envelope"] = "report_envelope"
    sender_code: str = Field(
        pattern=r"^[A-Za-z0-9_-]{1,32}$", description="the sender code the recipient knows us by"
    )


class ReportEnvelope:
    """Events as report envelopes (办件信息汇聚报文); only an accepting code in the body
    acknowledges them."""

    kind: ClassVar[str] = "report_envelope"
    Settings: ClassVar[type[AdapterSettings]] = ReportEnvelopeSettings
    content_type = CONTENT_TYPE

    def __init__(self, settings: AdapterSettings) -> None:
        assert isinstance(settings, ReportEnvelopeSettings)
        self.sender_code = settings.sender_code

    def render(self, events: Sequence[Mapping[str, Any]], batch: bool, now_iso: str) -> bytes:
        return render(events, self.sender_code, now_iso)

    def refusal(self, status: int, body: bytes) -> str | None:
        return refusal(status, body)
