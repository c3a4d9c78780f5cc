"""A province reached through a front-end processor (前置机): shared folders instead of HTTP.

:class:`FileProvinceSimulator` plays the partner side of :mod:`adapters.file_exchange`. A
background task watches the *outbox* the gateway writes, takes each complete request file (never a
name that starts with ``.`` or ``~`` or ends in ``.part``/``.tmp``: those are still being written),
checks the attachments the request lists beside it, and moves what it took to ``<outbox>/taken``
(a request it cannot read goes to ``<outbox>/bad``). Each case is worked on a timer and every
status change becomes a report; reports are batched into result files written **atomically**
(``<name>.part``, fsync, rename) into the *inbox*, in the partner's own dialect:

- encoding GBK by default (``encoding``), JSON or XML (``format``);
- its own names: a batch ``{"pch": 批次号, "scsj": 生成时间, "bjxx": [report, …]}``, a report
  ``{"wbbh": 外部编号 (our case id), "bjbh": 办件编号 (its ticket), "zt": 状态, "sj": 时间,
  "xxid": 消息编号, "jg": 准予|不予, "jgxx": {"jdswh": 决定书文号, "bjsj": 办结时间,
  "blqh": 办理区划}, "yj": 意见}``; in XML a root ``<bjjgpc pch=… scsj=…>`` with one
  ``<bjxx>`` element per report;
- its own status codes: 1 收件, 2 受理, 3 审核, 4 办结, 5 不予受理, 11 补齐补正, 12 挂起;
- its own dates: ``yyyyMMddHHmmss`` in Beijing time.

:meth:`FileSimulatorSettings.adapter_table` gives the ``adapter = {…}`` table that makes the
gateway's ``file_exchange`` adapter speak this dialect.

Cases go 受理 → 审核 → 办结 (accepted → in_progress → completed), one step per ``latency``. The
origin's ``request_id`` suffix picks a scenario: ``-REJECT`` (不予受理), ``-SUPPLEMENT`` (补齐补正,
then waits for the supplement file), ``-DENY``, ``-APPROVE``. A repeated submit of a known case is
counted and otherwise ignored; a withdrawal stops the case. ``failure_rate`` makes it write, now and
then, a malformed result file before the good one (as a partner whose export broke and was re-run).

The request documents taken are kept in memory (``requests``) for tests to inspect; nothing about
an applicant is ever logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import random
import re
import secrets
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import orjson

from gateway.simulators.base import BackgroundTasks, next_batch
from gateway.simulators.results import item_result
from gateway.supervisor import Supervisor

log = logging.getLogger(__name__)

# Their status codes → our lifecycle words (what the adapter must be told).
THEIR_STATUS_CODES = {
    "1": "dispatched",  # 收件
    "2": "accepted",  # 受理
    "3": "in_progress",  # 审核
    "4": "completed",  # 办结
    "5": "rejected",  # 不予受理
    "11": "supplement_required",  # 补齐补正
    "12": "in_progress",  # 挂起
}
ACCEPTED, IN_PROGRESS, COMPLETED, REJECTED, SUPPLEMENT = "2", "3", "4", "5", "11"
REPORTS_KEY = "bjxx"
REPORT_FIELDS = {
    "case_id": "wbbh",
    "ref": "bjbh",
    "status": "zt",
    "outcome": "jg",
    "result": "jgxx",
    "message": "yj",
    "event_id": "xxid",
}
RESULT_MAP = {"jdswh": "decision_no", "bjsj": "decided_at", "blqh": "handling_region"}
DATE_FORMAT = "%Y%m%d%H%M%S"
BEIJING = timezone(timedelta(hours=8))
MAX_REPORTS_PER_FILE = 200
MAX_REQUEST_BYTES = 64 * 1024 * 1024
_IGNORED_PREFIXES = (".", "~")
_IGNORED_SUFFIXES = (".part", ".tmp", ".temp", ".filepart")
_CONTENT_NAME = re.compile(r"[0-9a-f]{64}(\.[A-Za-z0-9]{1,10})?")
_DECLARED = {"utf-8": "UTF-8", "gbk": "GBK", "gb18030": "GB18030"}


@dataclass
class FileSimulatorSettings:
    """How the simulated province behaves; rates are probabilities in [0, 1].

    ``outbox`` is where the gateway writes requests (the partner reads there); ``inbox`` is where
    the partner writes results (the gateway reads there): both named from the gateway's side."""

    region: str
    outbox: Path
    inbox: Path
    encoding: Literal["utf-8", "gbk", "gb18030"] = "gbk"
    format: Literal["json", "xml"] = "json"
    latency: float = 0.05
    scan_interval: float = 0.02
    batch_window: float = 0.01
    failure_rate: float = 0.0
    deny_rate: float = 0.0

    def adapter_table(self, archive: Path, **overrides: Any) -> dict[str, Any]:
        """The gateway's ``adapter = {…}`` table for a partner that speaks this dialect."""
        return {
            "kind": "file_exchange",
            "outbox": str(self.outbox),
            "inbox": str(self.inbox),
            "archive": str(archive),
            "encoding": self.encoding,
            "format": self.format,
            "reports_key": REPORTS_KEY,
            "report_fields": dict(REPORT_FIELDS),
            "status_codes": dict(THEIR_STATUS_CODES),
            "approved_values": ["准予"],
            "denied_values": ["不予"],
            "result_map": dict(RESULT_MAP),
            "result_date_fields": ["decided_at"],
            "date_format": DATE_FORMAT,
            "utc_offset_hours": 8,
            **overrides,
        }


@dataclass
class _Case:
    """One case the simulated province handles; only what processing needs, no applicant data."""

    case_id: str
    ticket: str
    scenario: str | None
    item_code: str = ""
    steps: int = 0
    supplement_requested: bool = False
    supplements: int = 0
    withdrawn: bool = False
    finished: bool = False
    supplemented: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


@dataclass(frozen=True)
class _Taken:
    """One request file read from the outbox."""

    name: str
    doc: dict[str, Any]
    attachments_ok: bool


def _now_text() -> str:
    return datetime.now(BEIJING).strftime(DATE_FORMAT)


def _ignored(name: str) -> bool:
    return name.startswith(_IGNORED_PREFIXES) or name.lower().endswith(_IGNORED_SUFFIXES)


def _marker(request_id: str) -> str | None:
    suffix = request_id.rsplit("-", 1)[-1].lower()
    return suffix if suffix in ("reject", "supplement", "deny", "approve") else None


def _write_atomically(folder: Path, name: str, data: bytes) -> None:
    """The partner's own convention: ``<name>.part``, fsync, rename."""
    tmp = folder / f"{name}.part"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _from_xml(el: ET.Element) -> Any:
    children = list(el)
    if not children and not el.attrib:
        return (el.text or "").strip()
    out: dict[str, Any] = dict(el.attrib)
    for child in children:
        key, value = child.tag, _from_xml(child)
        if key == "item":
            out.setdefault("__items__", []).append(value)
        elif key in out:
            prior = out[key]
            out[key] = [*prior, value] if isinstance(prior, list) else [prior, value]
        else:
            out[key] = value
    if set(out) == {"__items__"}:
        return out["__items__"]
    return out


def _to_xml(tag: str, value: Any) -> ET.Element:
    el = ET.Element(tag)
    if isinstance(value, dict):
        for k, v in value.items():
            el.append(_to_xml(str(k), v))
    elif value is not None:
        el.text = str(value)
    return el


class FileProvinceSimulator:
    """One simulated province behind a front-end processor. :meth:`start` / :meth:`stop`."""

    def __init__(self, settings: FileSimulatorSettings, *, rng: random.Random | None = None):
        self.settings = dataclasses.replace(settings)
        self._rng = rng or random.Random()
        self._cases: dict[str, _Case] = {}
        self._ticket_seq = 0
        self._file_seq = 0
        self._reports: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._inflight: list[dict[str, Any]] | None = None
        self._supervisor: Supervisor | None = None
        self._tasks = BackgroundTasks(log, "file simulator")
        self.requests: list[dict[str, Any]] = []
        self.result_files: list[str] = []
        self.counters: dict[str, int] = {
            "requests_taken": 0,
            "submits": 0,
            "submit_repeats": 0,
            "supplements": 0,
            "withdrawals": 0,
            "bad_requests": 0,
            "attachments_verified": 0,
            "attachment_problems": 0,
            "reports_written": 0,
            "files_written": 0,
            "malformed_written": 0,
            "write_failures": 0,
        }

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start watching the outbox and writing results (supervised: a crash restarts them)."""
        if self._supervisor is not None:
            raise RuntimeError("simulator already started")
        self._supervisor = Supervisor(max_restart_delay=1.0)
        self._supervisor.start(f"filesim-{self.settings.region}-scan", self._scan_loop)
        self._supervisor.start(f"filesim-{self.settings.region}-write", self._write_loop)
        log.info("file simulator %s watching its outbox", self.settings.region)

    async def stop(self) -> None:
        """Stop the watcher, the writer and every case timer, and wait for them."""
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            await supervisor.stop()
        await self._tasks.cancel_all()

    async def __aenter__(self) -> FileProvinceSimulator:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    def partner_view(self, case_id: str) -> dict[str, Any] | None:
        """What this partner holds of a case (None if it never took it)."""
        case = self._cases.get(case_id)
        if case is None:
            return None
        return {
            "ticket": case.ticket,
            "withdrawn": case.withdrawn,
            "finished": case.finished,
            "supplements": case.supplements,
        }

    # -- reading requests -------------------------------------------------------------------

    async def _scan_loop(self) -> None:
        while True:
            for taken in await asyncio.to_thread(self._collect):
                self._handle(taken)
            await asyncio.sleep(self.settings.scan_interval)

    def _collect(self) -> list[_Taken]:
        """Take every complete request file in the outbox, oldest first (runs in a thread)."""
        outbox = self.settings.outbox
        try:
            with os.scandir(outbox) as it:
                found = []
                for e in it:
                    if _ignored(e.name) or _CONTENT_NAME.fullmatch(e.name):
                        continue  # partial files, and attachments (read with their request)
                    if not e.name.lower().endswith(f".{self.settings.format}"):
                        continue
                    if e.is_file(follow_symlinks=False):
                        found.append((e.stat().st_mtime_ns, e.name))
        except FileNotFoundError:
            return []
        taken = []
        for _, name in sorted(found):
            path = outbox / name
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            try:
                doc = self._parse_request(data)
            except ValueError:
                self.counters["bad_requests"] += 1
                self._move(path, outbox / "bad")
                log.warning("file simulator %s: unreadable request file", self.settings.region)
                continue
            ok = self._take_attachments(doc)
            self._move(path, outbox / "taken")
            self.counters["requests_taken"] += 1
            taken.append(_Taken(name, doc, ok))
        return taken

    def _decode(self, data: bytes) -> str:
        enc = self.settings.encoding
        try:
            return data.decode("utf-8-sig" if enc == "utf-8" else enc)
        except UnicodeDecodeError:
            if enc != "gbk":
                raise ValueError("not text in the partner's encoding") from None
            try:
                return data.decode("gb18030")
            except UnicodeDecodeError:
                raise ValueError("not text in the partner's encoding") from None

    def _parse_request(self, data: bytes) -> dict[str, Any]:
        if len(data) > MAX_REQUEST_BYTES:
            raise ValueError("too large")
        text = self._decode(data)
        if self.settings.format == "json":
            try:
                doc = orjson.loads(text)
            except orjson.JSONDecodeError:
                raise ValueError("not JSON") from None
        else:
            if "<!DOCTYPE" in text.upper():
                raise ValueError("DOCTYPE not accepted")
            try:
                doc = _from_xml(ET.fromstring(text))
            except ET.ParseError:
                raise ValueError("not XML") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("caseId"), str):
            raise ValueError("not a request")
        return doc

    def _take_attachments(self, doc: dict[str, Any]) -> bool:
        """Check every attachment file the request names (beside it, or already taken with an
        earlier copy of the request) and move it to ``taken``."""
        listed = doc.get("attachments") or []
        if isinstance(listed, dict):  # XML: a single <item> is an object
            listed = [listed]
        if not isinstance(listed, list):
            return False
        outbox, ok = self.settings.outbox, True
        for a in listed:
            if not isinstance(a, dict) or not a.get("file"):
                continue  # listed without content: nothing to fetch
            name = str(a["file"])
            if not _CONTENT_NAME.fullmatch(name):
                ok = False
                continue
            for path in (outbox / name, outbox / "taken" / name):
                try:
                    content = path.read_bytes()
                except OSError:
                    continue
                if hashlib.sha256(content).hexdigest() == a.get("sha256"):
                    self.counters["attachments_verified"] += 1
                    if path.parent == outbox:
                        self._move(path, outbox / "taken")
                    break
            else:
                self.counters["attachment_problems"] += 1
                ok = False
        return ok

    def _move(self, path: Path, folder: Path) -> None:
        folder.mkdir(exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, folder / path.name)

    def _handle(self, taken: _Taken) -> None:
        doc = taken.doc
        self.requests.append(doc)
        kind, case_id = doc.get("type"), doc["caseId"]
        case = self._cases.get(case_id)
        if kind == "submit":
            if case is not None:
                self.counters["submit_repeats"] += 1
                return
            self._ticket_seq += 1
            ticket = f"FX{self.settings.region[:2]}{_now_text()[:8]}{self._ticket_seq:06d}"
            scenario = _marker(str(doc.get("requestId", "")))
            if not taken.attachments_ok:
                scenario = "reject"
            case = _Case(case_id, ticket, scenario, str(doc.get("itemCode", "")))
            self._cases[case_id] = case
            self.counters["submits"] += 1
            case.task = self._tasks.spawn(self._process(case), f"filesim-case-{ticket}")
            log.info("file simulator %s: case %s taken as %s", self.settings.region, case_id,
                     ticket)  # fmt: skip
        elif kind == "supplement":
            self.counters["supplements"] += 1
            if case is not None and case.supplement_requested and not case.withdrawn:
                case.supplements += 1
                case.supplemented.set()
        elif kind == "withdraw":
            self.counters["withdrawals"] += 1
            if case is not None and not case.withdrawn:
                case.withdrawn = True
                if case.task is not None:
                    case.task.cancel()

    # -- working cases --------------------------------------------------------------------------

    async def _process(self, case: _Case) -> None:
        await self._step()
        if case.scenario == "reject":
            await self._report(case, REJECTED, yj="申请材料不齐全或附件校验不符，不予受理")
            case.finished = True
            return
        await self._report(case, ACCEPTED)
        if case.scenario == "supplement":
            await self._step()
            case.supplement_requested = True
            await self._report(case, SUPPLEMENT, yj="请补充户口簿首页及本人页复印件")
            await case.supplemented.wait()
            case.supplement_requested = False
        await self._step()
        await self._report(case, IN_PROGRESS)
        await self._step()
        denied = case.scenario == "deny" or (
            case.scenario != "approve" and self._roll(self.settings.deny_rate)
        )
        now = datetime.now(BEIJING)
        result = {
            "jdswh": f"川通办决字〔{now.year}〕{case.ticket[-6:]}号",
            "bjsj": now.strftime(DATE_FORMAT),
            "blqh": self.settings.region,
        }
        if not denied:  # what the item's contract promises the origin, in the gateway's names
            result |= item_result(case.item_code, ref=case.ticket, region=self.settings.region,
                                  now=now)  # fmt: skip
        await self._report(case, COMPLETED, jg="不予" if denied else "准予", jgxx=result)
        case.finished = True

    async def _step(self) -> None:
        await asyncio.sleep(max(0.0, self.settings.latency))

    async def _report(self, case: _Case, code: str, **extra: Any) -> None:
        case.steps += 1
        report = {
            "wbbh": case.case_id,
            "bjbh": case.ticket,
            "zt": code,
            "sj": _now_text(),
            "xxid": f"{case.ticket}-{case.steps:02d}",
            **extra,
        }
        await self._reports.put(report)

    def _roll(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    # -- writing results ----------------------------------------------------------------------

    async def _write_loop(self) -> None:
        """Batch reports into result files, one file at a time so their order is kept. The batch
        being written lives on the instance, so a restart after a crash resumes it."""
        delay = 0.05
        while True:
            if self._inflight is None:
                self._inflight = await self._next_batch()
            try:
                await asyncio.to_thread(self._write_batch, self._inflight)
            except OSError as exc:
                self.counters["write_failures"] += 1
                log.warning("file simulator %s: cannot write results (%s)", self.settings.region,
                            type(exc).__name__)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)
                continue
            delay = 0.05
            self._inflight = None

    async def _next_batch(self) -> list[dict[str, Any]]:
        return await next_batch(self._reports, self.settings.batch_window, MAX_REPORTS_PER_FILE)

    def _render(self, batch: list[dict[str, Any]], batch_id: str) -> bytes:
        s = self.settings
        if s.format == "json":
            text = orjson.dumps({"pch": batch_id, "scsj": _now_text(), REPORTS_KEY: batch}).decode()
            return text.encode(s.encoding)
        root = ET.Element("bjjgpc", {"pch": batch_id, "scsj": _now_text()})
        for report in batch:
            root.append(_to_xml(REPORTS_KEY, report))
        body = ET.tostring(root, encoding="unicode")
        head = f'<?xml version="1.0" encoding="{_DECLARED[s.encoding]}"?>\n'
        return (head + body + "\n").encode(s.encoding, "xmlcharrefreplace")

    def _next_name(self) -> str:
        self._file_seq += 1
        s = self.settings
        return f"JG_{s.region}_{_now_text()}_{self._file_seq:06d}.{s.format}"

    def _write_batch(self, batch: list[dict[str, Any]]) -> None:
        inbox = self.settings.inbox
        if not inbox.is_dir():
            raise FileNotFoundError(2, "inbox folder does not exist")
        batch_id = secrets.token_hex(6).upper()
        data = self._render(batch, batch_id)
        if self._roll(self.settings.failure_rate):
            # A broken export: a complete file (written atomically) whose content is cut short.
            name = self._next_name()
            _write_atomically(inbox, name, data[: max(1, len(data) // 2)])
            self.result_files.append(name)
            self.counters["malformed_written"] += 1
        name = self._next_name()
        _write_atomically(inbox, name, data)
        self.result_files.append(name)
        self.counters["files_written"] += 1
        self.counters["reports_written"] += len(batch)
