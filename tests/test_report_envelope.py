"""A recipient that reads report envelopes (办件信息汇聚报文) instead of the gateway's events.

SPEC §4: "A recipient whose system expects its own format (the national platform's report
envelope, say) is given an adapter that renders events into it, exactly as partners are; the
guarantees stay the same." Here the national hub is such a platform, a real HTTP server on
loopback that answers HTTP 200 with its verdict in the body.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters import report_envelope
from adapters.sdk import discover_formats
from gateway.config import ConfigError, parse
from gateway.delivery import targets
from gateway.simulators.report import PATH, ReportPlatform
from tests.support import HANDLER, ORIGIN, World, medical_filing, wait_for, world

SECRET = "report-platform-secret-01"
EVENT = {
    "event_id": "E01", "case_id": "C01", "seq": 5, "status": "completed", "outcome": "approved",
    "at": "2026-11-21T02:00:00Z", "item_code": "KSTB-YB-001", "contract_version": 1,
    "origin_region": "330000", "handling_region": "510000",
    "data": {"decision_no": "川通办决字1号"},
}  # fmt: skip


def test_an_event_becomes_a_record_in_the_platform_s_vocabulary() -> None:
    envelope = orjson.loads(
        report_envelope.render([EVENT], "ZJ-TONGBAN-01", "2026-11-21T02:00:05Z")
    )
    assert envelope["head"] == {"senderCode": "ZJ-TONGBAN-01", "reportTime": "20261121100005",
                                "batchId": "E01", "recordCount": 1}  # fmt: skip
    (r,) = envelope["records"]
    assert (r["projId"], r["eventId"], r["seqNo"]) == ("C01", "E01", 5)
    assert (r["stateCode"], r["stateName"], r["resultName"]) == ("11", "办结", "准予许可")
    assert r["occurTime"] == "20261121100000"  # Beijing time
    assert (r["acceptAreaCode"], r["handleAreaCode"]) == ("330000", "510000")
    assert r["data"] == {"decision_no": "川通办决字1号"}


@pytest.mark.parametrize(
    ("status", "body", "verdict"),
    [
        (200, b'{"code": "0", "msg": "ok"}', None),
        (200, b'{"code": 200}', None),
        (200, b'{"code": "500", "msg": "busy"}', "refused with code 500"),
        (200, b"<html>gateway error</html>", "unreadable answer"),
        (200, b'{"msg": "?"}', "answer without a code"),
        (503, b'{"code": "0"}', "HTTP 503"),
    ],
)
def test_only_an_accepting_code_acknowledges(status: int, body: bytes, verdict: str | None) -> None:
    assert report_envelope.refusal(status, body) == verdict


def test_a_report_envelope_needs_its_sender_code() -> None:
    hub = {"url": "http://127.0.0.1:9000/report/cases", "secret": SECRET}
    config = parse({"national_hub": {**hub, "format": {"kind": "report_envelope"}}})
    with pytest.raises(ConfigError, match=r"national_hub\.format: .*sender_code"):
        targets(config, discover_formats())
    fmt = {"kind": "report_envelope", "sender_code": "ZJ-TONGBAN-01"}
    config = parse({"national_hub": {**hub, "format": fmt}})
    assert targets(config, discover_formats())["hub"].fmt.kind == "report_envelope"


async def _platform_world(tmp_path: Path, platform: ReportPlatform, store: str) -> Any:
    port = await platform.start()
    hub = {"url": f"http://127.0.0.1:{port}{PATH}", "secret": SECRET, "batch": True,
           "format": {"kind": "report_envelope", "sender_code": "ZJ-TONGBAN-01"}}  # fmt: skip
    return world(tmp_path, top={"national_hub": hub}, store=store)


async def _submit(w: World, request_id: str) -> str:
    status, case, _ = await w.origin.call("POST", "/v1/cases", medical_filing(request_id))
    assert status == 202, case
    return str(case["case_id"])


async def test_the_platform_gets_every_status_change_in_order_as_records(
    tmp_path: Path, store_url: str
) -> None:
    platform = ReportPlatform(SECRET)
    try:
        async with await _platform_world(tmp_path, platform, store_url) as w:
            ids = [await _submit(w, f"ZJ-RPT-{i}") for i in range(5)]
            await wait_for(lambda: all(len(platform.records[c]) == 5 for c in ids),
                           what="five records of every case")  # fmt: skip
            for case_id in ids:
                records = platform.records[case_id]
                assert [r["stateCode"] for r in records] == ["1", "2", "3", "8", "11"]
                case = await w.origin.case(case_id)
                assert [r["eventId"] for r in records] == [e["event_id"] for e in case["history"]]
                assert {r["acceptAreaCode"] for r in records} == {ORIGIN}
                assert {r["handleAreaCode"] for r in records} == {HANDLER}
            assert platform.out_of_order == 0 and platform.duplicates == 0
            assert all(e["head"]["senderCode"] == "ZJ-TONGBAN-01" for e in platform.envelopes)
    finally:
        await platform.stop()


async def test_a_busy_answer_in_the_body_is_not_an_acknowledgement(
    tmp_path: Path, store_url: str
) -> None:
    platform = ReportPlatform(SECRET)
    try:
        async with await _platform_world(tmp_path, platform, store_url) as w:
            platform.busy = True
            case_id = await _submit(w, "ZJ-RPT-BUSY")

            async def hub_waiting() -> bool:
                case = await w.origin.case(case_id)
                (hub,) = [d for d in case["deliveries"] if d["recipient"] == "hub"]
                return hub["attempts"] >= 2 and hub["last_error"] == "refused with code 500"

            await wait_for(hub_waiting, what="the hub's refusals counted as failures")
            assert platform.records[case_id] == []
            platform.busy = False
            await wait_for(lambda: len(platform.records[case_id]) == 5, what="all five records")
            assert platform.out_of_order == 0 and platform.duplicates == 0
            assert platform.refused >= 2
    finally:
        await platform.stop()


async def test_a_province_that_reads_envelopes_gets_its_own_cases_back_as_records(
    tmp_path: Path,
) -> None:
    platform = ReportPlatform(SECRET)
    port = await platform.start()
    origin = {
        "callback_url": f"http://127.0.0.1:{port}{PATH}",
        "callback_secret": SECRET,
        "callback_format": {"kind": "report_envelope", "sender_code": "TONGBAN-GW"},
    }
    try:
        async with world(tmp_path, partner_settings={ORIGIN: origin}) as w:
            case_id = await _submit(w, "ZJ-RPT-DOWN")
            await wait_for(lambda: len(platform.records[case_id]) == 5, what="five records")
            records = platform.records[case_id]
            assert [r["stateCode"] for r in records] == ["1", "2", "3", "8", "11"]
            assert {e["head"]["senderCode"] for e in platform.envelopes} == {"TONGBAN-GW"}
            assert w.sims[ORIGIN].events.get(case_id) is None  # nothing went the old way
            assert platform.out_of_order == 0 and platform.duplicates == 0
    finally:
        await platform.stop()
