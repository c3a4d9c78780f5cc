"""The conformance kit against ``file_exchange``, with a double of a front-end processor (前置机).

The double is the partner's share: an ``outbox`` it takes request files from and an ``inbox`` it
drops result files into, in the dialect of :mod:`gateway.simulators.files` (GBK, ``bjxx`` reports
with ``wbbh``/``bjbh``/``zt``… fields, its own status codes, 准予/不予, yyyyMMddHHmmss Beijing
times); the adapter's table is the simulator's own ``adapter_table``. The kit runs twice: with the
JSON dialect and with the XML one.

A folder has no answers: writing a request file either works or fails. So the only partner
behaviours a share can produce are ``ok`` and ``down`` (the share is not mounted); the others
(HTTP codes, answers quoting a refusal or a busy code, a proxy's page, a hung answer) raise
``NotImplementedError`` and the kit skips the rules that need them. The partner's own refusals
arrive later, as result files, and are covered by the inbound and polling rules.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import orjson

from adapters.conformance import Behaviour, ConformanceSuite
from adapters.file_exchange import FileExchangeAdapter
from gateway.simulators.files import (
    BEIJING,
    DATE_FORMAT,
    REPORT_FIELDS,
    REPORTS_KEY,
    RESULT_MAP,
    THEIR_STATUS_CODES,
    FileSimulatorSettings,
)

REGION = "510000"
ENCODING: Literal["gbk"] = "gbk"
DECLARED = "GBK"
SUSPENDED = "12"  # 挂起: in_progress too; the double reports 3 审核 for in_progress
THEIR_STATUS = {s: code for code, s in THEIR_STATUS_CODES.items() if code != SUSPENDED}
THEIR_OUTCOME = {"approved": "准予", "denied": "不予"}
THEIR_RESULT_NAMES = {ours: theirs for theirs, ours in RESULT_MAP.items()}
# The partner writes yyyyMMddHHmmss in Beijing time; file_exchange makes it RFC 3339 UTC with
# milliseconds (gateway.clock.iso), so that is the canonical form a round trip gives.
RESULT_DATES = {"decided_at"}
SAMPLE_RESULT: Mapping[str, Any] = {
    "decision_no": "川通办决字〔2026〕000123号",
    "decided_at": "2026-11-21T10:00:00.000Z",
}
IGNORED_PREFIXES = (".", "~")
IGNORED_SUFFIXES = (".part", ".tmp", ".temp", ".filepart")


def _their_date(value: str) -> str:
    return datetime.fromisoformat(value).astimezone(BEIJING).strftime(DATE_FORMAT)


def _to_xml(tag: str, value: Any) -> ET.Element:
    element = ET.Element(tag)
    if isinstance(value, Mapping):
        for key, item in value.items():
            element.append(_to_xml(str(key), item))
    elif value is not None:
        element.text = str(value)
    return element


def _from_xml(element: ET.Element) -> Any:
    """A request element as data: leaf text, or a dict of children (the first of a name wins)."""
    if len(element) == 0:
        return (element.text or "").strip()
    out: dict[str, Any] = {}
    for child in element:
        out.setdefault(child.tag, _from_xml(child))
    return out


class FileExchangeDouble:
    """The partner's front-end processor share, in a fresh directory; misbehaves on demand.

    :meth:`received` takes every complete request file from the outbox (as the partner's
    processor does: moved to ``outbox/taken``), oldest first, and returns all it ever took.
    :meth:`settle` drops a result file into the inbox, written atomically.
    """

    format: ClassVar[Literal["json", "xml"]] = "json"

    def __init__(self, workdir: Path) -> None:
        self.share = workdir / "qzj"
        self.unmounted = workdir / "qzj.unmounted"
        self.outbox = self.share / "outbox"
        self.inbox = self.share / "inbox"
        self.archive = workdir / "archive"
        self._received: list[Any] = []
        self._files = 0

    # -- PartnerDouble ------------------------------------------------------------------------

    async def start(self) -> None:
        self.outbox.mkdir(parents=True)
        self.inbox.mkdir(parents=True)

    async def stop(self) -> None:
        self._mount()

    def adapter_settings(self) -> dict[str, Any]:
        partner = FileSimulatorSettings(
            region=REGION,
            outbox=self.outbox,
            inbox=self.inbox,
            encoding=ENCODING,
            format=self.format,
        )
        return partner.adapter_table(self.archive, poll_interval=0.05)

    def behave(self, mode: Behaviour) -> None:
        if mode == "ok":
            self._mount()
        elif mode == "down":  # the share is not mounted: its folders are gone
            self._unmount()
        else:  # a folder gives no answers, so no HTTP status, body, page or slow answer
            raise NotImplementedError(f"a shared folder cannot simulate {mode!r}")

    def received(self) -> list[Any]:
        self._take()
        return list(self._received)

    def native_report(
        self,
        case_id: str,
        status: str,
        outcome: str | None,
        result: Mapping[str, Any],
        partner_ref: str,
    ) -> bytes:
        """A result document with one report, as the partner writes it into the inbox."""
        return self._render([self._report(case_id, partner_ref, status, outcome, result)])

    def settle(
        self,
        case_id: str,
        partner_ref: str | None,
        status: str,
        outcome: str | None,
        result: Mapping[str, Any],
    ) -> None:
        ref = partner_ref or f"FX51{case_id[-12:]}"
        data = self.native_report(case_id, status, outcome, result, ref)
        self._files += 1
        name = f"JG_{REGION}_{datetime.now(BEIJING):%Y%m%d%H%M%S}_{self._files:06d}.{self.format}"
        tmp = self.inbox / f"{name}.part"  # the partner's own convention: .part, then rename
        tmp.write_bytes(data)
        os.replace(tmp, self.inbox / name)

    # -- the partner's side ---------------------------------------------------------------------

    def _mount(self) -> None:
        if self.unmounted.exists() and not self.share.exists():
            os.replace(self.unmounted, self.share)

    def _unmount(self) -> None:
        if self.share.exists():
            os.replace(self.share, self.unmounted)

    def _take(self) -> None:
        try:
            entries = [e for e in os.scandir(self.outbox) if self._is_request(e)]
        except FileNotFoundError:
            return  # not mounted: nothing to take
        taken = self.outbox / "taken"
        taken.mkdir(exist_ok=True)
        for entry in sorted(entries, key=lambda e: (e.stat().st_mtime_ns, e.name)):
            path = Path(entry.path)
            self._received.append(self._parse(path.read_bytes()))
            os.replace(path, taken / entry.name)

    def _is_request(self, entry: os.DirEntry[str]) -> bool:
        name = entry.name
        if name.startswith(IGNORED_PREFIXES) or name.lower().endswith(IGNORED_SUFFIXES):
            return False  # still being written
        stem, _, ext = name.rpartition(".")
        if len(stem) == 64 and all(c in "0123456789abcdef" for c in stem):
            return False  # an attachment, content-addressed, beside its request
        return ext.lower() == self.format and entry.is_file(follow_symlinks=False)

    def _parse(self, data: bytes) -> Any:
        text = data.decode(ENCODING)
        if self.format == "json":
            return orjson.loads(text)
        return _from_xml(ET.fromstring(text))

    @staticmethod
    def _report(
        case_id: str, ref: str, status: str, outcome: str | None, result: Mapping[str, Any]
    ) -> dict[str, Any]:
        fields = REPORT_FIELDS
        code = THEIR_STATUS[status]
        report: dict[str, Any] = {
            fields["case_id"]: case_id,
            fields["ref"]: ref,
            fields["status"]: code,
            "sj": "20261121100000",
            fields["event_id"]: f"{ref}-{code}",
        }
        if outcome is not None:
            report[fields["outcome"]] = THEIR_OUTCOME[outcome]
        if result:
            report[fields["result"]] = {
                THEIR_RESULT_NAMES.get(name, name): (
                    _their_date(str(value)) if name in RESULT_DATES else value
                )
                for name, value in result.items()
            }
        if status in ("rejected", "supplement_required"):
            report[fields["message"]] = "申请材料不齐全"
        return report

    def _render(self, reports: list[dict[str, Any]]) -> bytes:
        batch, made = f"PC{self._files:08d}", "20261121100000"
        if self.format == "json":
            doc = {"pch": batch, "scsj": made, REPORTS_KEY: reports}
            return orjson.dumps(doc).decode().encode(ENCODING)
        root = ET.Element("bjjgpc", {"pch": batch, "scsj": made})
        for report in reports:
            root.append(_to_xml(REPORTS_KEY, report))
        head = f'<?xml version="1.0" encoding="{DECLARED}"?>\n'
        body = ET.tostring(root, encoding="unicode")
        return (head + body + "\n").encode(ENCODING, "xmlcharrefreplace")


class XmlFileExchangeDouble(FileExchangeDouble):
    format: ClassVar[Literal["json", "xml"]] = "xml"


class TestFileExchangeConformance(ConformanceSuite):
    adapter_class = FileExchangeAdapter
    double_factory = FileExchangeDouble
    native_fields: ClassVar[Mapping[str, str]] = {
        "case_id": "caseId",
        "item_code": "itemCode",
        "id_number": "applicant.id_number",
        "name": "applicant.name",
    }
    sample_result: ClassVar[Mapping[str, Any]] = SAMPLE_RESULT
    context_timeout: ClassVar[float] = 1.0  # ctx.timeout (file writes have no timeout setting)


class TestFileExchangeXmlConformance(TestFileExchangeConformance):
    double_factory = XmlFileExchangeDouble
