"""``file_exchange``: request files written atomically to an outbox, result files read from an
inbox, quarantined when malformed and archived once the gateway has them; end to end against the
front-end-processor simulator."""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from pydantic import ValidationError

from adapters.file_exchange import FileExchangeAdapter, FileExchangeSettings
from adapters.sdk import (
    Accepted,
    AdapterContext,
    CanonicalCase,
    Permanent,
    PollingAdapter,
    Retryable,
    StatusUpdate,
    discover,
)
from gateway.app import Gateway
from gateway.clock import SystemClock
from gateway.simulators.files import FileProvinceSimulator, FileSimulatorSettings
from gateway.simulators.rest import ProvinceSimulator, SimulatorSettings
from tests.support import (
    HANDLER,
    HUB_SECRET,
    ORIGIN,
    Client,
    citizen_id,
    gateway_config,
    medical_filing,
    simulator,
    wait_for,
)

ID_NUMBER = citizen_id()
PDF = b"%PDF-1.4 \xe5\xa4\x87\xe6\xa1\x88\x00\x01\x02 binary tail \xff\xfe"
PDF_SHA = hashlib.sha256(PDF).hexdigest()


def case(**overrides: Any) -> CanonicalCase:
    fields: dict[str, Any] = {
        "case_id": "C01FILEX0000000000000000001",
        "request_id": "ZJ-FILE-0001",
        "item_code": "KSTB-YB-001",
        "contract_version": 1,
        "origin_region": ORIGIN,
        "handling_region": HANDLER,
        "applicant": {"kind": "natural_person", "id_type": "111", "id_number": ID_NUMBER,
                      "name": "张三", "phone": "13800000000"},
        "payload": {"insured_region": "510100", "start_date": "2026-12-01",
                    "residence_address": "杭州市西湖区𠮷祥路1号"},
    }  # fmt: skip
    fields.update(overrides)
    return CanonicalCase(**fields)


def with_pdf() -> CanonicalCase:
    return case(
        attachments=(
            {"name": "承诺书.pdf", "media_type": "application/pdf", "sha256": PDF_SHA,
             "content_base64": base64.b64encode(PDF).decode()},
            {"name": "photo.jpg", "media_type": "image/jpeg", "sha256": "ab" * 32},
        )
    )  # fmt: skip


@dataclass
class Folders:
    outbox: Path
    inbox: Path
    archive: Path

    @property
    def rejected(self) -> Path:
        return self.inbox / "rejected"


@pytest.fixture
def folders(tmp_path: Path) -> Folders:
    f = Folders(tmp_path / "outbox", tmp_path / "inbox", tmp_path / "archive")
    f.outbox.mkdir()
    f.inbox.mkdir()
    return f


@pytest.fixture
async def ctx() -> AsyncIterator[AdapterContext]:
    async with aiohttp.ClientSession() as session:
        yield AdapterContext(HANDLER, session, SystemClock(), logging.getLogger("t.file"), 5.0)


def adapter(folders: Folders, **kw: Any) -> FileExchangeAdapter:
    table = {"outbox": folders.outbox, "inbox": folders.inbox, "archive": folders.archive, **kw}
    return FileExchangeAdapter(FileExchangeSettings(**table))


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def write_result(folder: Path, name: str, doc: Any, encoding: str = "utf-8") -> Path:
    """A result file as a partner drops it (already complete: written, then renamed)."""
    raw = doc if isinstance(doc, bytes) else orjson.dumps(doc).decode().encode(encoding)
    tmp = folder / f".{name}.part"
    tmp.write_bytes(raw)
    os.replace(tmp, folder / name)
    return folder / name


def report(status: str, **kw: Any) -> dict[str, Any]:
    return {"caseId": "C01FILEX0000000000000000001", "statusCode": status, **kw}


# ---- writing requests ---------------------------------------------------------------------------


def test_it_is_a_polling_adapter_with_its_settings(folders: Folders) -> None:
    a = adapter(folders, poll_interval=0.5)
    assert isinstance(a, PollingAdapter) and a.poll_interval == 0.5
    assert FileExchangeAdapter.kind == "file_exchange"
    assert FileExchangeAdapter.Settings is FileExchangeSettings


async def test_a_request_file_appears_only_complete(
    folders: Folders, ctx: AdapterContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the bytes are written and synced, only a hidden .part name exists."""
    a = adapter(folders)
    final = a.request_name("submit", case())
    assert final == "KSTB-YB-001_C01FILEX0000000000000000001.json"
    seen: list[list[str]] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        seen.append(sorted(os.listdir(folders.outbox)))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    assert await a.submit(case(), ctx) == Accepted()
    (during, *_after) = seen
    assert final not in during
    assert len(during) == 1 and during[0].startswith(".") and during[0].endswith(".part")
    assert visible(folders.outbox) == [final]  # and the temporary name is gone
    doc = orjson.loads((folders.outbox / final).read_bytes())
    assert doc["type"] == "submit" and doc["caseId"] == case().case_id
    assert doc["requestId"] == "ZJ-FILE-0001" and doc["form"]["insured_region"] == "510100"


async def test_a_failed_write_leaves_nothing_and_is_retryable(
    folders: Folders, ctx: AdapterContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = adapter(folders)

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    outcome = await a.submit(with_pdf(), ctx)
    assert isinstance(outcome, Retryable) and "ENOSPC" in outcome.reason
    assert os.listdir(folders.outbox) == []  # no final name, no temporary leftover
    monkeypatch.undo()

    real_open = os.open

    def denied(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        if str(path).startswith(str(folders.outbox)):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(os, "open", denied)
    outcome = await a.submit(with_pdf(), ctx)
    assert isinstance(outcome, Retryable) and "EACCES" in outcome.reason
    for sensitive in (ID_NUMBER, "张三", "13800000000", "承诺书"):
        assert sensitive not in outcome.reason
    assert os.listdir(folders.outbox) == []


async def test_a_missing_outbox_is_retryable_until_it_appears(
    folders: Folders, ctx: AdapterContext
) -> None:
    folders.outbox.rmdir()
    a = adapter(folders)
    assert await a.submit(case(), ctx) == Retryable("outbox folder does not exist")
    assert not folders.outbox.exists()  # never created in place of a missing mount
    folders.outbox.mkdir()
    assert await a.submit(case(), ctx) == Accepted()
    made = adapter(folders, create_dirs=True, outbox=folders.outbox.parent / "new" / "out")
    assert await made.submit(case(), ctx) == Accepted()
    assert len(visible(folders.outbox.parent / "new" / "out")) == 1


async def test_writing_is_idempotent(folders: Folders, ctx: AdapterContext) -> None:
    a = adapter(folders)
    for _ in range(3):
        assert await a.submit(with_pdf(), ctx) == Accepted()
    assert visible(folders.outbox) == sorted([f"{PDF_SHA}.pdf", a.request_name("submit", case())])
    material = {"note": "补充材料", "payload": {"residence_address": "成都市"}, "attachments": []}
    other = {**material, "note": "第二次补正"}
    for m in (material, material, other):
        assert await a.supplement(case(), m, ctx) == Accepted()
    assert await a.withdraw(case(), "申请人撤回", ctx) == Accepted()
    names = visible(folders.outbox)
    assert len([n for n in names if "_BZ_" in n]) == 2  # a retry rewrites, a new one is new
    (cx,) = [n for n in names if n.endswith("_CX.json")]
    assert orjson.loads((folders.outbox / cx).read_bytes())["reason"] == "申请人撤回"


async def test_attachments_are_written_beside_the_request(
    folders: Folders, ctx: AdapterContext
) -> None:
    a = adapter(folders)
    assert await a.submit(with_pdf(), ctx) == Accepted()
    assert (folders.outbox / f"{PDF_SHA}.pdf").read_bytes() == PDF
    doc = orjson.loads((folders.outbox / a.request_name("submit", case())).read_bytes())
    pdf, photo = doc["attachments"]
    assert pdf == {"name": "承诺书.pdf", "mediaType": "application/pdf", "sha256": PDF_SHA,
                   "size": len(PDF), "file": f"{PDF_SHA}.pdf"}  # fmt: skip
    assert "file" not in photo  # the origin sent no content for it: listed only

    bad = case(attachments=({**with_pdf().attachments[0], "sha256": "cd" * 32},))
    outcome = await a.submit(bad, ctx)
    assert isinstance(outcome, Permanent) and "sha256" in outcome.reason
    traversal = case(attachments=({**with_pdf().attachments[0], "sha256": "../../etc/x"},))
    assert isinstance(await a.submit(traversal, ctx), Permanent)


async def test_gbk_round_trip_of_chinese_names(folders: Folders, ctx: AdapterContext) -> None:
    a = adapter(folders, encoding="GBK")
    assert await a.submit(case(), ctx) == Accepted()
    raw = (folders.outbox / a.request_name("submit", case())).read_bytes()
    assert "张三".encode("gbk") in raw
    doc = orjson.loads(raw.decode("gbk"))  # strict GBK; 𠮷 (not in GBK) travels as \u escapes
    assert doc["applicant"]["name"] == "张三"
    assert doc["form"]["residence_address"] == "杭州市西湖区𠮷祥路1号"

    write_result(folders.inbox, "R1.json", {"reports": [
        report("6", message="请补充户口簿首页"),
        report("11", outcome="准予", result={"filing_no": "川备2026-0001", "note": "𠮷"}),
    ]}, encoding="gb18030")  # fmt: skip
    supplement, completed = await a.poll([], ctx)
    assert supplement.data == {"message": "请补充户口簿首页"}
    assert completed.outcome == "approved"
    assert completed.data == {"filing_no": "川备2026-0001", "note": "𠮷"}


async def test_xml_requests_and_results(folders: Folders, ctx: AdapterContext) -> None:
    a = adapter(folders, format="xml", encoding="gbk", reports_key="report")
    assert await a.submit(with_pdf(), ctx) == Accepted()
    raw = (folders.outbox / a.request_name("submit", case())).read_bytes()
    assert raw.startswith(b'<?xml version="1.0" encoding="GBK"?>')
    assert "<name>张三</name>".encode("gbk") in raw and b"&#134071;" in raw
    result = (
        '<?xml version="1.0" encoding="GBK"?>\n<results><report><caseId>C01FILEX0000000000000000001'
        "</caseId><statusCode>11</statusCode><outcome>不予</outcome><result><reason>不符合条件"
        "</reason></result></report></results>"
    ).encode("gbk")
    write_result(folders.inbox, "R1.xml", result)
    (u,) = await a.poll([], ctx)
    assert (u.status, u.outcome, dict(u.data)) == ("completed", "denied", {"reason": "不符合条件"})
    write_result(folders.inbox, "R2.xml", b'<!DOCTYPE x [<!ENTITY a "b">]><results/>')
    assert await a.poll([], ctx) == []
    assert (folders.rejected / "R2.xml").exists()


# ---- reading results ----------------------------------------------------------------------------


async def test_results_become_updates_and_are_archived_after_the_next_poll(
    folders: Folders, ctx: AdapterContext
) -> None:
    a = adapter(folders)
    write_result(folders.inbox, "R1.json", {"reports": [
        report("3", ticket="SC0001", eventId="e1"), report("8", ticket="SC0001"),
    ]})  # fmt: skip
    first = await a.poll([], ctx)
    assert first == [
        StatusUpdate("accepted", case_id=case().case_id, partner_ref="SC0001",
                     partner_event_id="e1"),
        StatusUpdate("in_progress", case_id=case().case_id, partner_ref="SC0001"),
    ]  # fmt: skip
    # Not archived yet: the gateway stores these updates before it polls again.
    assert visible(folders.inbox) == ["R1.json"]
    assert await a.poll([], ctx) == []
    assert visible(folders.inbox) == [] and visible(folders.archive) == ["R1.json"]


async def test_a_restart_before_archiving_reads_the_file_again_and_a_redrop_is_not_applied(
    folders: Folders, ctx: AdapterContext
) -> None:
    doc = {"reports": [report("11", outcome="1", result={"filing_no": "B1"})]}
    write_result(folders.inbox, "R1.json", doc)
    assert len(await adapter(folders).poll([], ctx)) == 1
    restarted = adapter(folders)  # the gateway died after storing, before archiving
    (again,) = await restarted.poll([], ctx)  # at least once: the state machine drops repeats
    assert again.status == "completed"
    assert await restarted.poll([], ctx) == [] and visible(folders.archive) == ["R1.json"]

    write_result(folders.inbox, "R1.json", doc)  # the partner delivers the same file again
    assert await restarted.poll([], ctx) == []
    assert visible(folders.archive) == ["R1.1.json", "R1.json"] and visible(folders.inbox) == []

    write_result(folders.inbox, "R1.json", {"reports": [report("8")]})  # new content, same name
    assert [u.status for u in await restarted.poll([], ctx)] == ["in_progress"]


async def test_partial_and_foreign_names_are_left_alone(
    folders: Folders, ctx: AdapterContext
) -> None:
    good = orjson.dumps({"reports": [report("3")]})
    for name in (".R0.json.part", "R0.json.part", "R0.json.tmp", "~R0.json", "R0.txt"):
        (folders.inbox / name).write_bytes(good[:10])
    (folders.inbox / "sub.json").mkdir()
    a = adapter(folders)
    assert await a.poll([], ctx) == []
    assert await a.poll([], ctx) == []
    assert len(visible(folders.inbox)) == 5 and not folders.archive.exists()


async def test_a_malformed_file_is_quarantined_and_later_files_still_flow(
    folders: Folders, ctx: AdapterContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    a = adapter(folders, report_fields={"case_id": "wbbh"})
    write_result(folders.inbox, "R1.json", f'{{"reports": [{{"wbbh": "{ID_NUMBER}", '.encode())
    write_result(folders.inbox, "R2.json", {"reports": [
        {"wbbh": "C1", "statusCode": "3"}, {"wbbh": "C1", "statusCode": "99", "message": "张三"},
    ]})  # fmt: skip
    write_result(folders.inbox, "R3.json", {"reports": [{"wbbh": "C1", "statusCode": "11"}]})
    write_result(folders.inbox, "R4.json", {"reports": [{"wbbh": "C2", "statusCode": "3"}]})
    (u,) = await a.poll([], ctx)
    assert (u.case_id, u.status) == ("C2", "accepted")  # nothing of R1, R2 or R3 applied
    assert visible(folders.rejected) == sorted(
        ["R1.json", "R1.json.error", "R2.json", "R2.json.error", "R3.json", "R3.json.error"]
    )
    assert "reports[1].statusCode" in (folders.rejected / "R2.json.error").read_text()
    assert "outcome" in (folders.rejected / "R3.json.error").read_text()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "R1.json is malformed" in logged
    for sensitive in (ID_NUMBER, "张三"):
        assert sensitive not in logged
    write_result(folders.inbox, "R5.json", {"reports": [{"wbbh": "C2", "statusCode": "8"}]})
    assert [x.status for x in await a.poll([], ctx)] == ["in_progress"]
    assert visible(folders.archive) == ["R4.json"]


async def test_a_missing_inbox_is_reported_once_and_polling_resumes(
    folders: Folders, ctx: AdapterContext, caplog: pytest.LogCaptureFixture
) -> None:
    folders.inbox.rmdir()
    a = adapter(folders)
    for _ in range(3):
        assert await a.poll([], ctx) == []
    assert len([r for r in caplog.records if "inbox folder does not exist" in r.getMessage()]) == 1
    assert not folders.inbox.exists()
    folders.inbox.mkdir()
    write_result(folders.inbox, "R1.json", [report("3")])
    assert [u.status for u in await a.poll([], ctx)] == ["accepted"]


def test_parse_inbound_reads_a_pushed_result_document(folders: Folders) -> None:
    a = adapter(folders, encoding="gbk")
    body = orjson.dumps({"reports": [report("4", message="不予受理")]}).decode().encode("gbk")
    (u,) = a.parse_inbound(body, {})
    assert (u.status, dict(u.data)) == ("rejected", {"message": "不予受理"})
    assert a.parse_inbound(b"", {}) == []  # a bare "batch ready" notice
    with pytest.raises(ValueError) as err:
        a.parse_inbound(f'{{"reports": [{{"caseId": "{ID_NUMBER}", "statusCode": 1'.encode(), {})
    assert ID_NUMBER not in str(err.value)


def test_settings_are_checked(folders: Folders, tmp_path: Path) -> None:
    base = {"outbox": folders.outbox, "inbox": folders.inbox, "archive": folders.archive}
    bad: list[dict[str, Any]] = [
        {"submit_name": "{item}_{case_id}.json"},  # unknown placeholder
        {"submit_name": "{item_code}.json"},  # not one file per case
        {"supplement_name": "{case_id}_BZ.json"},  # supplements would overwrite each other
        {"withdraw_name": "sub/{case_id}.json"},
        {"withdraw_name": ".{case_id}.json"},  # a name the partner ignores
        {"submit_name": "{case_id}.json.part"},
        {"inbox": folders.outbox},
        {"archive": folders.inbox},
        {"archive": folders.inbox / "rejected"},  # the default quarantine folder
        {"quarantine": folders.outbox},
        {"status_codes": {"9": "withdrawn"}},  # not something a partner may report
        {"encoding": "big5"},
        {"format": "csv"},
        {"poll_interval": 0},
        {"date_format": "%H%M"},
        {"colour": "blue"},
    ]
    for change in bad:
        with pytest.raises(ValidationError):
            FileExchangeSettings(**{**base, **change})
    ok = FileExchangeSettings(**{**base, "encoding": "GBK", "archive": "rel/archive"})
    assert ok.encoding == "gbk" and ok.archive == Path.cwd() / "rel" / "archive"
    assert ok.quarantine_folder == folders.inbox / "rejected"


# ---- against the simulated province -------------------------------------------------------------


def sim_settings(folders: Folders, **kw: Any) -> FileSimulatorSettings:
    return FileSimulatorSettings(
        region=HANDLER, outbox=folders.outbox, inbox=folders.inbox, latency=0.01, **kw
    )


async def drain(
    a: FileExchangeAdapter, ctx: AdapterContext, until: Callable[[list[StatusUpdate]], bool]
) -> list[StatusUpdate]:
    got: list[StatusUpdate] = []

    async def done() -> bool:
        got.extend(await a.poll([], ctx))
        return until(got)

    await wait_for(done, what="result files from the simulator")
    return got


async def test_the_simulator_ignores_partial_requests(
    folders: Folders, ctx: AdapterContext
) -> None:
    crashed = f".KSTB-YB-001_{case().case_id}.json.3f2a.part"  # an adapter that died mid-write
    (folders.outbox / crashed).write_bytes(b'{"type": "submit", "caseId": "C0')
    (folders.outbox / "X.json.tmp").write_bytes(b"{")
    sim_s = sim_settings(folders)
    a = FileExchangeAdapter(FileExchangeSettings(**sim_s.adapter_table(folders.archive)))
    async with FileProvinceSimulator(sim_s) as sim:
        assert await a.submit(with_pdf(), ctx) == Accepted()
        got = await drain(a, ctx, lambda us: any(u.status == "completed" for u in us))
    assert [u.status for u in got] == ["accepted", "in_progress", "completed"]
    assert sim.counters["bad_requests"] == 0 and sim.counters["requests_taken"] == 1
    assert sim.counters["attachments_verified"] == 1
    assert sorted(os.listdir(folders.outbox)) == sorted([crashed, "X.json.tmp", "taken"])
    assert sim.requests[0]["applicant"]["name"] == "张三"  # read back from GBK
    completed = got[-1]
    assert completed.outcome == "approved" and completed.partner_ref
    # The partner's own names mapped to ours, and the result fields the item's contract names.
    assert set(completed.data) == {
        "decision_no", "decided_at", "handling_region",
        "filing_no", "filing_type", "treatment_region", "effective_from",
    }  # fmt: skip
    assert str(completed.data["decided_at"]).endswith("Z")  # yyyyMMddHHmmss Beijing → UTC


async def test_the_simulator_in_xml_with_broken_exports(
    folders: Folders, ctx: AdapterContext
) -> None:
    sim_s = sim_settings(folders, format="xml", failure_rate=1.0)
    a = FileExchangeAdapter(FileExchangeSettings(**sim_s.adapter_table(folders.archive)))
    async with FileProvinceSimulator(sim_s) as sim:
        assert await a.submit(case(request_id="ZJ-X-DENY"), ctx) == Accepted()
        got = await drain(a, ctx, lambda us: any(u.status == "completed" for u in us))
    assert [(u.status, u.outcome) for u in got] == [
        ("accepted", None), ("in_progress", None), ("completed", "denied")
    ]  # fmt: skip
    # Every batch came with a broken twin first; each was quarantined, none stopped the case.
    assert sim.counters["malformed_written"] == sim.counters["files_written"] >= 1
    quarantined = [n for n in visible(folders.rejected) if n.endswith(".xml")]
    assert len(quarantined) == sim.counters["malformed_written"]


# ---- end to end through a real gateway ----------------------------------------------------------


@dataclass
class FileWorld:
    gateway: Gateway
    origin: ProvinceSimulator
    partner: FileProvinceSimulator
    client: Client
    folders: Folders


@asynccontextmanager
async def file_world(tmp_path: Path, folders: Folders, **sim_kw: Any) -> AsyncIterator[FileWorld]:
    origin_sim = simulator(ORIGIN, 0)
    hub = ProvinceSimulator(SimulatorSettings(region="100000", callback_secret=HUB_SECRET))
    origin_port = await origin_sim.start("127.0.0.1", 0)
    hub_port = await hub.start("127.0.0.1", 0)
    partner = FileProvinceSimulator(sim_settings(folders, **sim_kw))
    gw: Gateway | None = None
    try:
        config = gateway_config(
            f"sqlite:///{tmp_path}/gw.db", 0, {ORIGIN: origin_port, HANDLER: origin_port}, hub_port
        )
        config.partners[1].adapter = partner.settings.adapter_table(
            folders.archive, poll_interval=0.02
        )
        kinds = {**discover(), "file_exchange": FileExchangeAdapter}
        gw = Gateway(config, poll_interval=0.05, adapter_kinds=kinds)
        port = await gw.start()
        await partner.start()
        async with aiohttp.ClientSession() as session:
            client = Client(session, f"http://127.0.0.1:{port}", ORIGIN)
            yield FileWorld(gw, origin_sim, partner, client, folders)
    finally:
        await partner.stop()
        if gw is not None:
            await gw.stop()
        await origin_sim.stop()
        await hub.stop()


async def wait_status(w: FileWorld, case_id: str, status: str) -> dict[str, Any]:
    async def reached() -> bool:
        return bool((await w.client.case(case_id))["status"] == status)

    await wait_for(reached, what=f"case {status}")
    return await w.client.case(case_id)


async def test_a_case_completes_end_to_end_through_the_folders(
    tmp_path: Path, folders: Folders
) -> None:
    attachment = {"name": "承诺书.pdf", "media_type": "application/pdf", "sha256": PDF_SHA,
                  "content_base64": base64.b64encode(PDF).decode()}  # fmt: skip
    async with file_world(tmp_path, folders) as w:
        body = medical_filing("ZJ-FILE-E2E-1", attachments=[attachment])
        status, created, _ = await w.client.call("POST", "/v1/cases", body)
        assert status == 202, created
        case_id = created["case_id"]
        done = await wait_status(w, case_id, "completed")
        statuses = ["received", "dispatched", "accepted", "in_progress", "completed"]
        assert [e["status"] for e in done["history"]] == statuses
        assert done["outcome"] == "approved" and done["partner_ref"].startswith("FX51")
        assert done["result"]["decision_no"].startswith("川通办决字")
        assert done["result"]["decided_at"].endswith("Z")

        async def all_delivered() -> bool:
            return [e["status"] for e in w.origin.events.get(case_id, [])] == statuses

        await wait_for(all_delivered, what="every event at the origin")
        seqs = [e["seq"] for e in w.origin.events[case_id]]
        assert seqs == sorted(seqs) and w.origin.out_of_order == 0 and w.origin.duplicates == 0

        async def archived() -> bool:
            return not visible(folders.inbox) and bool(visible(folders.archive))

        await wait_for(archived, what="result files archived")
        assert set(visible(folders.archive)) == set(w.partner.result_files)
        assert w.partner.requests[0]["applicant"]["name"] == "张三"
        assert w.partner.counters["attachments_verified"] == 1


async def test_a_supplement_travels_by_file_and_broken_exports_do_not_stop_the_case(
    tmp_path: Path, folders: Folders
) -> None:
    async with file_world(tmp_path, folders, failure_rate=1.0) as w:
        status, created, _ = await w.client.call(
            "POST", "/v1/cases", medical_filing("ZJ-FILE-E2E-SUPPLEMENT")
        )
        assert status == 202, created
        case_id = created["case_id"]
        needs = await wait_status(w, case_id, "supplement_required")
        assert needs["history"][-1]["data"]["message"].startswith("请补充")
        status, _, _ = await w.client.call(
            "POST", f"/v1/cases/{case_id}/supplements",
            {"note": "已补充户口簿", "payload": {"residence_address": "成都市武侯区"}},
        )  # fmt: skip
        assert status in (200, 202)
        done = await wait_status(w, case_id, "completed")
        assert [e["status"] for e in done["history"]] == [
            "received", "dispatched", "accepted", "supplement_required", "accepted",
            "in_progress", "completed",
        ]  # fmt: skip
        assert (w.partner.partner_view(case_id) or {})["supplements"] == 1
        quarantined = [n for n in visible(folders.rejected) if n.endswith(".json")]
        assert len(quarantined) == w.partner.counters["malformed_written"] >= 2
