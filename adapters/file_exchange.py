"""``file_exchange``: a partner reached through a front-end processor (前置机) and shared folders.

Native protocol (every name is configurable):

- **Requests** (submit, supplement, withdraw): one document per request, written to ``outbox``
  under a name built from a pattern (``{item_code}_{case_id}.json`` by default). A submit document
  is ``{"type": "submit", "caseId", "requestId", "itemCode", "itemVersion", "originRegion",
  "handlingRegion", "partnerRef", "sentAt", "applicant", "form", "attachments"}``; a supplement
  ``{"type": "supplement", "caseId", "partnerRef", "itemCode", "sentAt", "note", "form",
  "attachments"}``; a withdrawal ``{"type": "withdraw", "caseId", "partnerRef", "itemCode",
  "sentAt", "reason"}``. ``field_map`` renames these top-level names. Each attachment with content
  is written beside the request as ``<sha256>.<ext>`` and listed as ``{"name", "mediaType",
  "sha256", "size", "file"}``; one without content is listed without ``file``.
- **Results**: the partner drops result documents into ``inbox``. A document carries any number
  of reports: ``{"reports": [{"caseId", "ticket", "statusCode", "outcome", "result", "message",
  "eventId"}]}`` (``reports_key`` and ``report_fields`` rename them; a bare list or a single
  report object is read too). ``statusCode`` goes through ``status_codes``.
- In ``format = "xml"`` the same documents are XML: a request is ``<request>`` with one element per
  field (lists as repeated ``<item>``); a result document is any root element whose children named
  ``reports_key`` are the reports, each with one child element per field.

Guarantees and decisions:

- Every file is written **atomically**: to ``.<name>.<random>.part`` in the same folder, flushed and
  fsynced, then renamed over the final name with ``os.replace`` (and the folder fsynced), so the
  partner never sees a half-written file under a name it reads. Attachments are written first, the
  request last, so a visible request always has its attachments. Writing is idempotent: a repeated
  submit of the same case rewrites the same name (the partner drops repeats by ``caseId``); a
  supplement's name carries a digest of its material, so a retry rewrites it and a second,
  different supplement gets a new file.
- File I/O runs in worker threads (``asyncio.to_thread``), never on the event loop.
- Failures to write (disk full, permission denied, the folder missing) are ``Retryable`` with a
  reason that names the folder role and the errno only. An attachment whose content does not match
  its sha256 is ``Permanent``.
- **Missing folders are not a settings error**: a front-end processor's share may be mounted after
  the gateway starts, and one partner's missing mount must not stop the gateway. Paths are made
  absolute when the settings are read (relative ones from the working directory); ``outbox`` and
  ``inbox`` are never created (a local folder in place of a missing mount would swallow files)
  unless ``create_dirs = true``; while missing, writes are ``Retryable("outbox folder does not
  exist")`` and polls log one warning and return nothing. ``archive`` and the quarantine folder
  are the gateway's own and are created when first needed.
- **Polling**: each poll reads complete result files, oldest first (by modification time, then
  name), skipping names that start with ``.`` or ``~`` or end in ``.part``, ``.tmp``, ``.temp`` or
  ``.filepart``, anything not matching ``result_glob``, sub-folders and symlinks. A file is read
  as a whole: if any part of it is unreadable (not the configured encoding, not well-formed, an
  unknown status code, a missing outcome) the file is moved to the quarantine folder
  (``<inbox>/rejected`` by default) with a ``.error`` note beside it, nothing of it is applied, and
  the log names the file and the problem but never its content. Later files still flow.
- **Archiving happens after the gateway has applied a file's updates**: ``poll`` returns the
  updates and the gateway stores them before it polls again; the next poll first moves the files
  handed over last time to ``archive`` (atomically, under a fresh name if the name is taken). A
  crash can therefore never lose a result; a crash between storing and archiving means the file is
  read once more after the restart and its updates are applied again, which the state machine
  records as ignored duplicates. A file whose bytes equal an already-archived file of the same
  name (a partner re-dropping a file it already delivered) is archived without being applied.
  Run one gateway process's poller per inbox: two pollers would each apply every file.
- Text is decoded strictly with ``encoding``; GBK input that fails is retried as GB18030 (its
  superset) so rare characters in names survive. Characters the partner's encoding cannot hold are
  written losslessly: as ``\\uXXXX`` escapes in JSON, as character references in XML.
- ``parse_inbound`` reads a result document pushed inline (same format and encoding as a result
  file). An empty body is a bare "batch ready" notice: it is acknowledged and the files are picked
  up by the next poll.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
import errno
import fnmatch
import hashlib
import logging
import os
import re
import secrets
import string
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from adapters.sdk import (
    PARTNER_STATUSES,
    Accepted,
    AdapterContext,
    AdapterSettings,
    CanonicalCase,
    Outcome,
    Permanent,
    Retryable,
    StatusUpdate,
)
from gateway.clock import iso

RequestKind = Literal["submit", "supplement", "withdraw"]

# rest_json's reference table (1 已接件, 3 已受理, 4 不受理, 6 补正, 8 开始办理, 11 办结).
DEFAULT_STATUS_CODES = {
    "1": "dispatched",
    "3": "accepted",
    "4": "rejected",
    "6": "supplement_required",
    "8": "in_progress",
    "11": "completed",
}
IGNORED_PREFIXES = (".", "~")
IGNORED_SUFFIXES = (".part", ".tmp", ".temp", ".filepart")
NAME_FIELDS = frozenset(
    {"case_id", "request_id", "item_code", "region", "origin_region", "partner_ref", "ext"}
)
ERROR_SUFFIX = ".error"

_SAFE_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
_SHOWN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,160}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,10}")
_XML_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_XML_DECLARED = {"utf-8": "UTF-8", "gbk": "GBK", "gb18030": "GB18030"}
_JSON_ESCAPE = "tongban.json-escape"


def _json_escape(exc: UnicodeError) -> tuple[str, int]:
    """Codec error handler: characters the target encoding lacks become JSON ``\\u`` escapes.

    Only string contents can hold such characters (JSON's own syntax is ASCII), so the result
    is the same JSON value in any encoding."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = []
    for ch in exc.object[exc.start : exc.end]:
        cp = ord(ch)
        if cp > 0xFFFF:
            cp -= 0x10000
            out.append(f"\\u{0xD800 + (cp >> 10):04x}\\u{0xDC00 + (cp & 0x3FF):04x}")
        else:
            out.append(f"\\u{cp:04x}")
    return "".join(out), exc.end


codecs.register_error(_JSON_ESCAPE, _json_escape)


# ---- settings ---------------------------------------------------------------------------------


class ReportFields(BaseModel):
    """The partner's names for the fields of one status report (ours → theirs)."""

    model_config = ConfigDict(extra="forbid")

    case_id: str = "caseId"
    ref: str = "ticket"
    status: str = "statusCode"
    outcome: str = "outcome"
    result: str = "result"
    message: str = "message"
    event_id: str = "eventId"


class FileExchangeSettings(AdapterSettings):
    kind: Literal["file_exchange"] = "file_exchange"
    outbox: Path = Field(description="where request files are written for the partner")
    inbox: Path = Field(description="where the partner drops result files")
    archive: Path = Field(description="where processed result files are moved")
    quarantine: Path | None = Field(None, description="malformed result files; <inbox>/rejected")
    create_dirs: bool = False
    encoding: Literal["utf-8", "gbk", "gb18030"] = "utf-8"
    format: Literal["json", "xml"] = "json"
    submit_name: str = "{item_code}_{case_id}.{ext}"
    supplement_name: str = "{item_code}_{case_id}_BZ_{digest}.{ext}"
    withdraw_name: str = "{item_code}_{case_id}_CX.{ext}"
    result_glob: str | None = Field(None, description="result file names; default *.<ext>")
    field_map: dict[str, str] = Field(default_factory=dict, description="our name → theirs")
    reports_key: str = Field("reports", min_length=1)
    report_fields: ReportFields = Field(default_factory=ReportFields)
    result_map: dict[str, str] = Field(default_factory=dict, description="their name → ours")
    result_date_fields: list[str] = Field(default_factory=list)
    date_format: str = "%Y%m%d%H%M%S"
    utc_offset_hours: float = Field(8.0, ge=-14, le=14)
    status_codes: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_STATUS_CODES))
    approved_values: list[str] = Field(default_factory=lambda: ["approved", "1", "准予"])
    denied_values: list[str] = Field(default_factory=lambda: ["denied", "0", "2", "不予"])
    poll_interval: float = Field(5.0, gt=0)
    min_age_seconds: float = Field(0.0, ge=0, description="for partners that write in place")
    max_files_per_poll: int = Field(100, ge=1)
    max_file_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    fsync: bool = True

    @field_validator("encoding", mode="before")
    @classmethod
    def _encoding_name(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip().lower().replace("_", "-")
            return {"utf8": "utf-8"}.get(v, v)
        return v

    @field_validator("outbox", "inbox", "archive", "quarantine")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        return None if v is None else Path(os.path.abspath(v.expanduser()))

    @field_validator("submit_name", "supplement_name", "withdraw_name")
    @classmethod
    def _name_pattern(cls, v: str, info: ValidationInfo) -> str:
        allowed = NAME_FIELDS | ({"digest"} if info.field_name == "supplement_name" else set())
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(v) if f is not None}
        except ValueError:
            raise ValueError("is not a valid name pattern") from None
        unknown = fields - allowed
        if unknown:
            raise ValueError(
                f"unknown placeholder {{{sorted(unknown)[0]}}}; use {', '.join(sorted(allowed))}"
            )
        if "case_id" not in fields:
            raise ValueError("must contain {case_id}, so that every case has its own file")
        if info.field_name == "supplement_name" and "digest" not in fields:
            raise ValueError("must contain {digest}, so that each supplement has its own file")
        if "/" in v or "\\" in v or v.startswith(IGNORED_PREFIXES):
            raise ValueError("must be a plain file name, not starting with '.' or '~'")
        if v.lower().endswith(IGNORED_SUFFIXES):
            raise ValueError(f"must not end in {', '.join(IGNORED_SUFFIXES)}")
        return v

    @field_validator("status_codes")
    @classmethod
    def _statuses(cls, v: dict[str, str]) -> dict[str, str]:
        for code, status in v.items():
            if status not in PARTNER_STATUSES:
                raise ValueError(
                    f"code {code!r} maps to {status!r}; a partner may report only "
                    + ", ".join(sorted(PARTNER_STATUSES))
                )
        return v

    @field_validator("date_format")
    @classmethod
    def _date_format(cls, v: str) -> str:
        try:
            datetime.strptime(datetime(2026, 11, 21, 10, 0, 0).strftime(v), v)
        except ValueError:
            raise ValueError(
                "must be a strftime pattern that parses back, e.g. %Y%m%d%H%M%S"
            ) from None
        if "%Y" not in v:
            raise ValueError("must contain %Y")
        return v

    @model_validator(mode="after")
    def _distinct_folders(self) -> FileExchangeSettings:
        folders = {
            "outbox": self.outbox,
            "inbox": self.inbox,
            "archive": self.archive,
            "quarantine": self.quarantine_folder,
        }
        seen: dict[Path, str] = {}
        for role, path in folders.items():
            if path in seen:
                raise ValueError(f"{role} and {seen[path]} must be different folders")
            seen[path] = role
        return self

    @property
    def ext(self) -> str:
        return self.format

    @property
    def quarantine_folder(self) -> Path:
        return self.quarantine or self.inbox / "rejected"

    @property
    def tz(self) -> timezone:
        return timezone(timedelta(hours=self.utc_offset_hours))


# ---- helpers ----------------------------------------------------------------------------------


class _BadMaterial(Exception):
    """A request that can never be written as given (Permanent); the message names no data."""


class _FolderMissing(Exception):
    def __init__(self, role: str) -> None:
        super().__init__(role)
        self.role = role


@dataclass(frozen=True)
class _Seen:
    """A result file whose updates were handed to the gateway and that awaits archiving."""

    name: str
    fingerprint: tuple[int, int, int]


@dataclass
class _PollResult:
    updates: list[StatusUpdate]
    handed: list[_Seen]


def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


def _shown(name: str) -> str:
    """A partner's file name for a log line, only if it looks like an identifier."""
    return name if _SHOWN_NAME.fullmatch(name) else "<unprintable name>"


def _safe(value: str) -> str:
    return _SAFE_CHARS.sub("_", value).lstrip(".~") or "_"


def _fingerprint(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable; best effort (not every platform or file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(folder: Path, name: str, data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` as ``folder/name`` so that no reader ever sees part of it.

    The bytes go to a hidden ``.part`` file in the same folder (same file system, so the rename
    is atomic), are flushed and fsynced, and the file is then renamed over the final name. On any
    failure the temporary file is removed and the error raised; the final name is untouched."""
    final = folder / name
    tmp = folder / f".{name}.{secrets.token_hex(4)}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        _fsync_dir(folder)
    return final


def _free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``stem.N.suffix`` for the first N not taken."""
    target = folder / name
    if not os.path.lexists(target):
        return target
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        stem, suffix = name, ""
    for n in range(1, 100_000):
        candidate = folder / (f"{stem}.{n}.{suffix}" if suffix else f"{stem}.{n}")
        if not os.path.lexists(candidate):
            return candidate
    raise FileExistsError(errno.EEXIST, "no free name")


def move_atomically(src: Path, folder: Path, *, fsync: bool = True) -> Path:
    """Move a file into ``folder`` (never over an existing file); atomic on one file system,
    copy-then-rename-then-unlink across file systems. Returns where it went."""
    dest = _free_name(folder, src.name)
    try:
        os.replace(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        atomic_write(folder, dest.name, src.read_bytes(), fsync=fsync)
        os.unlink(src)
        return dest
    if fsync:
        _fsync_dir(folder)
    return dest


def _to_xml(tag: str, value: Any) -> ET.Element:
    """A JSON value as an element: objects as children, lists as repeated ``<item>``."""
    el = ET.Element(tag)
    if isinstance(value, Mapping):
        for k, v in value.items():
            key = str(k)
            if _XML_NAME.fullmatch(key) and not key.lower().startswith("xml"):
                el.append(_to_xml(key, v))
            else:
                child = _to_xml("field", v)
                child.set("name", key)
                el.append(child)
    elif isinstance(value, list | tuple):
        for v in value:
            el.append(_to_xml("item", v))
    elif isinstance(value, bool):
        el.text = "true" if value else "false"
    elif value is not None:
        el.text = str(value)
    return el


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _from_xml(el: ET.Element) -> Any:
    """An element as a JSON-like value: text if it is a leaf, else an object of its attributes
    and children (a repeated child name becomes a list)."""
    children = list(el)
    if not children and not el.attrib:
        return (el.text or "").strip()
    out: dict[str, Any] = {_local(k): v for k, v in el.attrib.items()}
    for child in children:
        key, value = _local(child.tag), _from_xml(child)
        if key in out:
            prior = out[key]
            out[key] = [*prior, value] if isinstance(prior, list) else [prior, value]
        else:
            out[key] = value
    return out


# ---- the adapter ------------------------------------------------------------------------------


class FileExchangeAdapter:
    kind: ClassVar[str] = "file_exchange"
    Settings: ClassVar[type[AdapterSettings]] = FileExchangeSettings

    def __init__(self, settings: AdapterSettings) -> None:
        assert isinstance(settings, FileExchangeSettings)
        self.settings = settings
        self.poll_interval = settings.poll_interval
        self._handed: list[_Seen] = []
        self._poll_lock = threading.Lock()  # a timed-out poll's thread may still be running
        self._state_lock = threading.Lock()
        self._missing: set[str] = set()

    # -- outbound: names, documents, bytes ----------------------------------------------------

    def request_name(
        self, kind: RequestKind, case: CanonicalCase, material: Mapping[str, Any] | None = None
    ) -> str:
        """The file name of one request: pure, and the same for a retry of the same request."""
        s = self.settings
        pattern = {"submit": s.submit_name, "supplement": s.supplement_name}.get(
            kind, s.withdraw_name
        )
        digest = ""
        if material is not None:
            raw = orjson.dumps(dict(material), option=orjson.OPT_SORT_KEYS)
            digest = hashlib.sha256(raw).hexdigest()[:12]
        values = {
            "case_id": case.case_id,
            "request_id": case.request_id,
            "item_code": case.item_code,
            "region": case.handling_region,
            "origin_region": case.origin_region,
            "partner_ref": case.partner_ref or case.case_id,
            "digest": digest,
        }
        name = pattern.format(**{k: _safe(v) for k, v in values.items()}, ext=s.ext)
        return name

    def render(
        self,
        kind: RequestKind,
        case: CanonicalCase,
        *,
        now: float,
        material: Mapping[str, Any] | None = None,
        reason: str = "",
    ) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
        """The request document and the attachment files to write beside it (name, bytes).

        Pure. Raises :class:`_BadMaterial` for an attachment that cannot be written."""
        sent_at = datetime.fromtimestamp(now, tz=self.settings.tz).strftime(
            self.settings.date_format
        )
        files: list[tuple[str, bytes]] = []
        body: dict[str, Any]
        if kind == "submit":
            body = {
                "type": "submit",
                "caseId": case.case_id,
                "requestId": case.request_id,
                "itemCode": case.item_code,
                "itemVersion": case.contract_version,
                "originRegion": case.origin_region,
                "handlingRegion": case.handling_region,
                "partnerRef": case.partner_ref,
                "sentAt": sent_at,
                "applicant": dict(case.applicant),
                "form": dict(case.payload),
                "attachments": self._attachments(case.attachments, files),
            }
        elif kind == "supplement":
            material = material or {}
            given = material.get("attachments") or []
            body = {
                "type": "supplement",
                "caseId": case.case_id,
                "partnerRef": case.partner_ref,
                "itemCode": case.item_code,
                "sentAt": sent_at,
                "note": str(material.get("note", "")),
                "form": dict(material.get("payload") or {}),
                "attachments": self._attachments(given if isinstance(given, list) else [], files),
            }
        else:
            body = {
                "type": "withdraw",
                "caseId": case.case_id,
                "partnerRef": case.partner_ref,
                "itemCode": case.item_code,
                "sentAt": sent_at,
                "reason": reason,
            }
        doc = {self.settings.field_map.get(k, k): v for k, v in body.items()}
        return doc, files

    def _attachments(
        self, given: Iterable[Any], files: list[tuple[str, bytes]]
    ) -> list[dict[str, Any]]:
        out = []
        for i, a in enumerate(given):
            if not isinstance(a, Mapping):
                raise _BadMaterial(f"attachment {i} is not an object")
            sha = str(a.get("sha256", "")).lower()
            if not _SHA256.fullmatch(sha):
                raise _BadMaterial(f"attachment {i} has no valid sha256")
            ref: dict[str, Any] = {
                "name": a.get("name"),
                "mediaType": a.get("media_type"),
                "sha256": sha,
            }
            content_b64 = a.get("content_base64")
            if content_b64:
                try:
                    content = base64.b64decode(str(content_b64), validate=True)
                except ValueError:
                    raise _BadMaterial(f"attachment {i} content is not base64") from None
                if hashlib.sha256(content).hexdigest() != sha:
                    raise _BadMaterial(f"attachment {i} content does not match its sha256")
                suffix = os.path.splitext(str(a.get("name", "")))[1].lower()
                file_name = sha + (suffix if _EXTENSION.fullmatch(suffix) else ".bin")
                files.append((file_name, content))
                ref["size"] = len(content)
                ref["file"] = file_name
            out.append(ref)
        return out

    def serialize(self, doc: Mapping[str, Any], root: str = "request") -> bytes:
        """A document as the partner's bytes: its format, its encoding, nothing lost."""
        enc = self.settings.encoding
        if self.settings.format == "json":
            raw = orjson.dumps(doc)
            if enc == "utf-8":
                return raw
            return raw.decode("utf-8").encode(enc, _JSON_ESCAPE)
        body = ET.tostring(_to_xml(root, doc), encoding="unicode")
        text = f'<?xml version="1.0" encoding="{_XML_DECLARED[enc]}"?>\n{body}\n'
        return text.encode(enc, "xmlcharrefreplace")

    # -- outbound: calls ------------------------------------------------------------------------

    async def submit(self, case: CanonicalCase, ctx: AdapterContext) -> Outcome:
        return await self._send("submit", case, ctx)

    async def supplement(
        self, case: CanonicalCase, material: Mapping[str, Any], ctx: AdapterContext
    ) -> Outcome:
        return await self._send("supplement", case, ctx, material=material)

    async def withdraw(self, case: CanonicalCase, reason: str, ctx: AdapterContext) -> Outcome:
        return await self._send("withdraw", case, ctx, reason=reason)

    async def _send(
        self,
        kind: RequestKind,
        case: CanonicalCase,
        ctx: AdapterContext,
        *,
        material: Mapping[str, Any] | None = None,
        reason: str = "",
    ) -> Outcome:
        try:
            name = self.request_name(kind, case, material)
            doc, files = self.render(
                kind, case, now=ctx.clock.now(), material=material, reason=reason
            )
            data = self.serialize(doc)
        except _BadMaterial as exc:
            return Permanent(str(exc))
        try:
            await asyncio.to_thread(self._write_request, name, data, files)
        except _FolderMissing as exc:
            return Retryable(f"{exc.role} folder does not exist")
        except OSError as exc:
            return Retryable(f"cannot write to the outbox folder ({_errno_name(exc)})")
        ctx.logger.info(
            "case %s: %s request written (%d attachment file(s))", case.case_id, kind, len(files)
        )
        return Accepted()

    def _folder(self, role: str, path: Path, *, create: bool) -> Path:
        if not path.is_dir():
            if not create:
                raise _FolderMissing(role)
            path.mkdir(parents=True, exist_ok=True)
        return path

    def _write_request(self, name: str, data: bytes, files: list[tuple[str, bytes]]) -> None:
        """Attachments first, the request last: a visible request has all its attachments."""
        s = self.settings
        outbox = self._folder("outbox", s.outbox, create=s.create_dirs)
        for file_name, content in files:
            try:
                if os.path.getsize(outbox / file_name) == len(content):
                    continue  # content-addressed: the same name holds the same bytes
            except OSError:
                pass
            atomic_write(outbox, file_name, content, fsync=s.fsync)
        atomic_write(outbox, name, data, fsync=s.fsync)

    # -- inbound: documents -----------------------------------------------------------------

    def decode(self, data: bytes) -> str:
        enc = self.settings.encoding
        try:
            return data.decode("utf-8-sig" if enc == "utf-8" else enc)
        except UnicodeDecodeError:
            if enc == "gbk":
                try:
                    return data.decode("gb18030")
                except UnicodeDecodeError:
                    pass
        raise ValueError(f"not valid {enc} text")

    def parse_result(self, data: bytes) -> list[StatusUpdate]:
        """A result document as updates, all or nothing; ValueError names the problem, never the
        content."""
        text = self.decode(data)
        key = self.settings.reports_key
        reports = self._json_reports(text) if self.settings.format == "json" else self._xml(text)
        updates = []
        for i, report in enumerate(reports):
            if not isinstance(report, dict):
                raise ValueError(f"{key}[{i}] is not an object")
            try:
                updates.append(self._update(report))
            except ValueError as exc:
                raise ValueError(f"{key}[{i}].{exc}") from None
        return updates

    def _json_reports(self, text: str) -> list[Any]:
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON (line {exc.lineno}, column {exc.colno})") from None
        if isinstance(doc, list):
            return doc
        if isinstance(doc, dict):
            reports = doc.get(self.settings.reports_key)
            if isinstance(reports, list):
                return reports
            if self.settings.report_fields.status in doc:
                return [doc]
        raise ValueError(f"expected an object with a {self.settings.reports_key!r} list")

    def _xml(self, text: str) -> list[Any]:
        if re.search(r"<!DOCTYPE|<!ENTITY", text, re.IGNORECASE):
            raise ValueError("XML with a DOCTYPE or entities is not accepted")
        # Parsed from text: the declared encoding is ignored (expat refuses multi-byte ones).
        try:
            root = ET.fromstring(text)
        except ET.ParseError as exc:
            line, column = exc.position
            raise ValueError(f"not well-formed XML (line {line}, column {column})") from None
        key = self.settings.reports_key
        if _local(root.tag) == key:
            return [_from_xml(root)]
        return [_from_xml(el) for el in root if _local(el.tag) == key]

    def _update(self, report: Mapping[str, Any]) -> StatusUpdate:
        """One native report as a canonical update; ValueError names the bad field."""
        f, s = self.settings.report_fields, self.settings
        status = s.status_codes.get(str(report.get(f.status)))
        if status is None:
            raise ValueError(f"{f.status} is not a known status code")
        outcome = None
        if status == "completed":
            given = str(report.get(f.outcome, ""))
            if given in s.approved_values:
                outcome = "approved"
            elif given in s.denied_values:
                outcome = "denied"
            else:
                raise ValueError(f"{f.outcome} is neither an approved nor a denied value")
        case_id = report.get(f.case_id) or None
        if case_id is not None and not isinstance(case_id, str):
            raise ValueError(f"{f.case_id} is not a string")
        ref = report.get(f.ref)
        if ref is not None and not isinstance(ref, str | int):
            raise ValueError(f"{f.ref} is not a string")
        ref = str(ref) if ref not in (None, "") else None
        if case_id is None and ref is None:
            raise ValueError(f"{f.case_id}: needs {f.case_id} or {f.ref}")
        raw = report.get(f.result)
        data = self._result(raw) if isinstance(raw, dict) else ({"value": raw} if raw else {})
        message = report.get(f.message)
        if status in ("rejected", "supplement_required") and message:
            data = {**data, "message": str(message)}
        event_id = report.get(f.event_id)
        return StatusUpdate(
            status=status,
            case_id=case_id,
            partner_ref=ref,
            outcome=outcome,
            data=data,
            partner_event_id=str(event_id) if event_id else None,
        )

    def _result(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Result fields renamed to ours, dates in the partner's format made RFC 3339 UTC."""
        s = self.settings
        data = {s.result_map.get(k, k): v for k, v in raw.items()}
        for name in s.result_date_fields:
            value = data.get(name)
            if isinstance(value, str | int) and not isinstance(value, bool):
                try:
                    parsed = datetime.strptime(str(value), s.date_format).replace(tzinfo=s.tz)
                except ValueError:
                    continue  # left as the partner wrote it: one odd date must not block a case
                data[name] = iso(parsed.timestamp())
        return data

    def parse_inbound(self, body: bytes, headers: Mapping[str, str]) -> list[StatusUpdate]:
        """A result document pushed inline; an empty body is a bare "batch ready" notice."""
        if not body.strip():
            return []
        return self.parse_result(body)

    # -- inbound: the result folder -----------------------------------------------------------

    async def poll(
        self, open_cases: Sequence[CanonicalCase], ctx: AdapterContext
    ) -> list[StatusUpdate]:
        """Archive what the last poll handed over, then read the inbox. ``open_cases`` is not
        needed: the partner's files say which cases they concern."""
        result = await asyncio.to_thread(self._poll_files, list(self._handed), ctx.logger)
        # Only a poll whose updates reach the gateway may mark files for archiving: if this
        # call was cancelled (the poller's timeout), the files stay and are read again.
        self._handed = result.handed
        return result.updates

    def _poll_files(self, handed: list[_Seen], log: logging.Logger) -> _PollResult:
        with self._poll_lock:
            s = self.settings
            pending = self._archive(handed, log)
            try:
                inbox = self._folder("inbox", s.inbox, create=s.create_dirs)
                entries = self._scan(inbox)
            except _FolderMissing:
                self._warn_once("inbox", log, "inbox folder does not exist")
                return _PollResult([], pending)
            except OSError as exc:
                self._warn_once("inbox", log, f"cannot list the inbox ({_errno_name(exc)})")
                return _PollResult([], pending)
            self._recovered("inbox", log)
            waiting = {p.name: p.fingerprint for p in pending}
            updates: list[StatusUpdate] = []
            taken = 0
            for name, st in entries:
                if taken >= s.max_files_per_poll:
                    break
                if waiting.get(name) == _fingerprint(st):
                    continue  # handed over already; only its archiving failed
                got = self._take(inbox / name, log)
                if got is None:
                    continue
                taken += 1
                seen, found = got
                if seen is not None:
                    pending.append(seen)
                    updates.extend(found)
            return _PollResult(updates, pending)

    def _scan(self, inbox: Path) -> list[tuple[str, os.stat_result]]:
        """Complete result files, oldest first: (name, stat)."""
        glob = (self.settings.result_glob or f"*.{self.settings.ext}").lower()
        cutoff = time.time() - self.settings.min_age_seconds
        found = []
        with os.scandir(inbox) as it:
            for e in it:
                lowered = e.name.lower()
                if e.name.startswith(IGNORED_PREFIXES) or lowered.endswith(IGNORED_SUFFIXES):
                    continue
                if not fnmatch.fnmatchcase(lowered, glob) or not e.is_file(follow_symlinks=False):
                    continue
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue  # gone meanwhile
                if self.settings.min_age_seconds and st.st_mtime > cutoff:
                    continue  # may still be being written in place
                found.append((e.name, st))
        found.sort(key=lambda t: (t[1].st_mtime_ns, t[0]))
        return found

    def _take(
        self, path: Path, log: logging.Logger
    ) -> tuple[_Seen | None, list[StatusUpdate]] | None:
        """Read one result file: (its record, its updates); (None, []) if it was quarantined or
        archived as a duplicate; None if it could not be read at all (left for the next poll)."""
        s = self.settings
        shown = _shown(path.name)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot open result file %s (%s)", shown, _errno_name(exc))
            return None
        try:
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read(s.max_file_bytes + 1)
        except OSError as exc:
            log.warning("cannot read result file %s (%s)", shown, _errno_name(exc))
            return None
        problem: str | None = None
        if len(data) > s.max_file_bytes:
            problem = f"larger than max_file_bytes ({s.max_file_bytes})"
        updates: list[StatusUpdate] = []
        if problem is None:
            try:
                updates = self.parse_result(data)
            except ValueError as exc:
                problem = str(exc)
        if problem is not None:
            self._quarantine(path, problem, log)
            return None, []
        if self._already_archived(path.name, data):
            try:
                dest = move_atomically(path, self._own(s.archive), fsync=s.fsync)
                log.warning(
                    "result file %s repeats an archived file; archived as %s, not applied again",
                    shown,
                    _shown(dest.name),
                )
                return None, []
            except OSError as exc:
                log.warning("cannot archive result file %s (%s)", shown, _errno_name(exc))
                return None
        log.info("result file %s: %d report(s)", shown, len(updates))
        return _Seen(path.name, _fingerprint(st)), updates

    def _already_archived(self, name: str, data: bytes) -> bool:
        earlier = self.settings.archive / name
        try:
            if os.path.getsize(earlier) != len(data):
                return False
            return earlier.read_bytes() == data
        except OSError:
            return False

    def _own(self, folder: Path) -> Path:
        """The gateway's own folders (archive, quarantine) are made when first needed."""
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _quarantine(self, path: Path, problem: str, log: logging.Logger) -> None:
        s = self.settings
        try:
            dest = move_atomically(path, self._own(s.quarantine_folder), fsync=s.fsync)
        except OSError as exc:
            log.error(
                "result file %s is malformed (%s) and cannot be quarantined (%s)",
                _shown(path.name),
                problem,
                _errno_name(exc),
            )
            return
        note = f"{problem}\n".encode()
        with contextlib.suppress(OSError):  # the log line below still says why
            atomic_write(dest.parent, dest.name + ERROR_SUFFIX, note, fsync=s.fsync)
        log.warning(
            "result file %s is malformed (%s); moved to %s, nothing of it applied",
            _shown(path.name),
            problem,
            s.quarantine_folder,
        )

    def _archive(self, handed: list[_Seen], log: logging.Logger) -> list[_Seen]:
        """Archive the files whose updates the gateway has stored; return those still waiting."""
        s = self.settings
        still: list[_Seen] = []
        for seen in handed:
            path = s.inbox / seen.name
            try:
                if _fingerprint(os.lstat(path)) != seen.fingerprint:
                    continue  # replaced by the partner since: a new file, read afresh
                move_atomically(path, self._own(s.archive), fsync=s.fsync)
            except FileNotFoundError:
                continue  # moved away by someone else: nothing to do
            except OSError as exc:
                log.warning("cannot archive result file %s (%s)", _shown(seen.name),
                            _errno_name(exc))  # fmt: skip
                still.append(seen)
        return still

    def _warn_once(self, key: str, log: logging.Logger, message: str) -> None:
        with self._state_lock:
            if key in self._missing:
                return
            self._missing.add(key)
        log.warning("%s", message)

    def _recovered(self, key: str, log: logging.Logger) -> None:
        with self._state_lock:
            if key not in self._missing:
                return
            self._missing.discard(key)
        log.info("%s folder is readable again", key)
