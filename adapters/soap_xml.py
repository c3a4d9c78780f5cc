"""``soap_xml``: a partner behind a SOAP 1.1 web service, typically Java JAX-WS.

Native protocol (the shape legacy provincial platforms share; every name is configurable):

- Each call is a ``POST`` to ``endpoint`` with ``Content-Type: text/xml; charset=<encoding>``, a
  ``SOAPAction`` header and a document/literal wrapped body: the operation element (in
  ``namespace``) holds one string parameter (``arg0``), and that string is an XML document of its
  own, escaped (or in a CDATA section): the "XML document as a string parameter" pattern.
- Operations: ``SubmitCase``, ``SupplementCase``, ``WithdrawCase`` and, when the partner has one,
  ``QueryStatus`` (polled for open cases). The answer is ``<{op}Response><return>`` holding the
  partner's answer document, with a business code (``Code``): ``ok_codes`` accept, ``busy_codes``
  mean "later", any other code is a refusal, even under HTTP 200.
- The partner reports progress with its own call, ``ReportStatus``, posted to the gateway's
  ``/v1/partners/{region}/inbound`` as a SOAP request; its document holds one or more reports.

The inner documents are built from a data dictionary, :attr:`SoapXmlSettings.elements`: our
canonical names (``case_id``, ``applicant.id_number``, ``payload.start_date``, ``code``, ``status``
…) → their element paths (``WBBH``, ``SQR/ZJHM`` …). Values pass through ``code_tables`` (ours →
theirs) and ``date_formats`` (ISO 8601 → ``yyyyMMddHHmmss`` and the like) on the way out; result
fields and dates come back the same way.

Encodings: requests are encoded in ``encoding`` (UTF-8, GBK, GB18030, GB2312); a character the
encoding cannot carry is sent as an XML character reference, so nothing turns into ``?``. Answers
are decoded by the charset the HTTP header declares, then the XML declaration, then ``encoding``;
the GBK family is decoded as GB18030 (its superset) so rare characters in names survive. Python's
expat refuses multi-byte encodings declared in the prolog, so documents are decoded here and the
declaration is dropped before parsing.

Parsing is defensive: a document type declaration (and with it every entity definition: billion
laughs, external entities) is refused before and during parsing, never expanded; depth is bounded;
answers are read up to ``max_answer_bytes``. Failure reasons carry HTTP statuses and partner codes
that look like codes, never a partner's free text (which may quote the applicant).
"""

from __future__ import annotations

import asyncio
import codecs
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, ClassVar, Literal, NoReturn
from xml.parsers import expat
from xml.sax.saxutils import escape

import aiohttp
from pydantic import Field, field_validator, model_validator

from adapters.sdk import (
    Accepted,
    AdapterContext,
    AdapterSettings,
    CanonicalCase,
    Outcome,
    Permanent,
    Retryable,
    StatusUpdate,
    printable_code,
)

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
MAX_DEPTH = 64

# One platform's table (1 已接件, 3 已受理, 4 不受理, 6 补正, 8 开始办理, 11 办结), as rest_json's.
DEFAULT_STATUS_CODES = {
    "1": "dispatched",
    "3": "accepted",
    "4": "rejected",
    "6": "supplement_required",
    "8": "in_progress",
    "11": "completed",
}
# What a partner may report; withdrawn and failed belong to the origin and the gateway.
REPORTABLE = frozenset(
    {"dispatched", "accepted", "in_progress", "supplement_required", "completed", "rejected"}
)

# Our canonical names → their element paths. Paths are relative to the document's root, or to
# the element of a list item (``attachments.*``). A name with no entry is placed under the element
# of its nearest mapped parent (``payload.x`` → ``Form/x``); an empty path leaves it out.
DEFAULT_ELEMENTS: dict[str, str] = {
    # requests
    "case_id": "CaseId",
    "request_id": "RequestId",
    "item_code": "ItemCode",
    "contract_version": "ItemVersion",
    "origin_region": "OriginRegion",
    "handling_region": "HandlingRegion",
    "sent_at": "SendTime",
    "partner_ref": "PartnerRef",
    "applicant": "Applicant",
    "applicant.kind": "Applicant/Kind",
    "applicant.id_type": "Applicant/IdType",
    "applicant.id_number": "Applicant/IdNumber",
    "applicant.name": "Applicant/Name",
    "applicant.phone": "Applicant/Phone",
    "applicant.credit_code": "Applicant/CreditCode",
    "applicant.representative": "Applicant/Representative",
    "applicant.representative.id_type": "Applicant/Representative/IdType",
    "applicant.representative.id_number": "Applicant/Representative/IdNumber",
    "applicant.representative.name": "Applicant/Representative/Name",
    "applicant.representative.phone": "Applicant/Representative/Phone",
    "payload": "Form",
    "attachments": "Attachments/Attachment",
    "attachments.name": "Name",
    "attachments.media_type": "MediaType",
    "attachments.sha256": "Sha256",
    "attachments.content_base64": "Content",
    "note": "Note",
    "reason": "Reason",
    # answers and reports
    "code": "Code",
    "message": "Message",
    "status": "StatusCode",
    "outcome": "Outcome",
    "result": "Result",
    "event_id": "EventId",
    "report": "Report",
}

_NAME = re.compile(r"[^\W\d][\w.-]*")
_PATH = re.compile(r"[^\W\d][\w.-]*(?:/[^\W\d][\w.-]*)*")
_CANONICAL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_INVALID_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_SECONDS = re.compile(r"[0-9]{1,9}")
_CHARSET = re.compile(r";\s*charset\s*=\s*[\"']?([A-Za-z0-9._:-]{1,40})", re.IGNORECASE)
_DECL_BYTES = re.compile(rb"\s*<\?xml\s[^>]*?\bencoding\s*=\s*[\"']([A-Za-z0-9._:-]{1,40})[\"']")
_DECL_TEXT = re.compile(r"\A\ufeff?\s*<\?xml\s[^>]*\?>")
_FORBIDDEN = re.compile(r"<!\s*(?:DOCTYPE|ENTITY)", re.IGNORECASE)
_DATE_TOKEN = re.compile(r"yyyy|MM|dd|HH|mm|ss|SSS|'[^']*'|[^A-Za-z']")
_GB_FAMILY = frozenset(
    {"gbk", "gb2312", "gb_2312", "gb_2312-80", "cp936", "ms936", "windows-936", "x-gbk", "euc-cn"}
)
_ENCODE_CODECS = {"UTF-8": "utf-8", "GBK": "gbk", "GB18030": "gb18030", "GB2312": "gb2312"}

Encoding = Literal["UTF-8", "GBK", "GB18030", "GB2312"]


# ---- XML utilities (pure; the SOAP simulator uses them too) ----------------------------------


class XmlError(ValueError):
    """Not well-formed, not the expected shape, or refused. Never quotes the document."""


class UnsafeXml(XmlError):
    """A document type declaration or entity definition: refused, never expanded."""


def charset_of(content_type: str | None) -> str | None:
    """The ``charset`` parameter of a Content-Type header, if any."""
    match = _CHARSET.search(content_type or "")
    return match.group(1) if match else None


def decode_codec(name: str) -> str | None:
    """The Python codec to *decode* a charset name with; GBK and GB2312 decode as GB18030."""
    key = name.strip().strip("\"'").lower()
    if key in _GB_FAMILY:
        return "gb18030"
    try:
        return codecs.lookup(key).name
    except LookupError:
        return None


def decode_xml(raw: bytes, charset: str | None, fallback: str) -> str:
    """Bytes → text: a BOM, else the header's charset, the declaration's, then ``fallback``.

    The first of those that decodes the bytes strictly wins (legacy servers often send a header
    that contradicts the body). XmlError if none does.
    """
    if raw.startswith(codecs.BOM_UTF8):
        candidates: list[str | None] = ["utf-8"]
        raw = raw[len(codecs.BOM_UTF8) :]
    elif raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        candidates = ["utf-16"]
    else:
        declared = _DECL_BYTES.match(raw)
        candidates = [charset, declared.group(1).decode("ascii") if declared else None, fallback]
    tried: list[str] = []
    for name in candidates:
        codec = decode_codec(name) if name else None
        if codec is None or codec in tried:
            continue
        tried.append(codec)
        try:
            return raw.decode(codec)
        except UnicodeDecodeError:
            continue
    raise XmlError(f"the document cannot be decoded as {' or '.join(tried) or 'a known charset'}")


def parse_xml(text: str) -> ET.Element:
    """Parse a decoded document safely: no DTD, no entities, bounded depth.

    The XML declaration is dropped first (expat cannot take GBK in the prolog, and the text is
    already decoded). A ``<!DOCTYPE`` or ``<!ENTITY`` anywhere is refused before parsing; the
    parser refuses them again if one slips through. Namespaced tags come out as ``{uri}local``.
    """
    text = _DECL_TEXT.sub("", text, count=1)
    if _FORBIDDEN.search(text):
        raise UnsafeXml("document type declarations are not accepted")
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate("UTF-8", "}")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    depth = 0

    def start(name: str, attrs: dict[str, str]) -> None:
        nonlocal depth
        depth += 1
        if depth > MAX_DEPTH:
            raise XmlError(f"the document nests deeper than {MAX_DEPTH} elements")
        builder.start(_qname(name), {_qname(k): v for k, v in attrs.items()})

    def end(name: str) -> None:
        nonlocal depth
        depth -= 1
        builder.end(_qname(name))

    def refuse(*_args: Any) -> NoReturn:
        raise UnsafeXml("document type declarations are not accepted")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.NotationDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    try:
        parser.Parse(text.encode("utf-8", "surrogatepass"), True)
    except expat.ExpatError as exc:
        reason = expat.ErrorString(exc.code) if exc.code is not None else "syntax error"
        raise XmlError(f"not well-formed XML ({reason}, line {exc.lineno})") from None
    except UnicodeEncodeError:
        raise XmlError("not well-formed XML (invalid characters)") from None
    root: ET.Element = builder.close()
    return root


def _qname(name: str) -> str:
    return "{" + name if "}" in name else name


def local(tag: str) -> str:
    """A tag without its ``{namespace}``."""
    return tag.rsplit("}", 1)[-1]


def strip_namespaces(root: ET.Element) -> ET.Element:
    """Inner documents are data: their namespaces only get in the way of element paths."""
    for element in root.iter():
        element.tag = local(element.tag)
    return root


def find_local(parent: ET.Element, name: str) -> ET.Element | None:
    """The first child whose local name is ``name``, in whatever namespace."""
    return next((c for c in parent if local(c.tag) == name), None)


def encodable(text: str, codec: str) -> str:
    """``text`` with each character ``codec`` cannot carry replaced by a character reference."""
    return text.encode(codec, "xmlcharrefreplace").decode(codec)


def encode_codec(encoding: str) -> str:
    """The Python codec that writes a charset name (``GBK`` → ``gbk``)."""
    return _ENCODE_CODECS.get(encoding.upper(), encoding)


def xml_bytes(markup: str, encoding: str) -> bytes:
    """A complete document in ``encoding``, with its XML declaration."""
    codec = encode_codec(encoding)
    head = f'<?xml version="1.0" encoding="{encoding}"?>'
    return (head + markup).encode(codec, "xmlcharrefreplace")


def soap_envelope(body: str) -> str:
    return f'<soap:Envelope xmlns:soap="{SOAP_ENV}"><soap:Body>{body}</soap:Body></soap:Envelope>'


def soap_call(
    namespace: str, operation: str, part: str, document: str, *, cdata: bool = False
) -> str:
    """``<tns:{operation}><{part}>document</{part}></tns:{operation}>`` in an envelope.

    Used for requests (part ``arg0``) and answers (operation ``…Response``, part ``return``).
    """
    if cdata:
        inner = "<![CDATA[" + document.replace("]]>", "]]]]><![CDATA[>") + "]]>"
    else:
        inner = escape(document)
    ns = escape(namespace, {'"': "&quot;"})
    return soap_envelope(
        f'<tns:{operation} xmlns:tns="{ns}"><{part}>{inner}</{part}></tns:{operation}>'
    )


def soap_fault(code: str, message: str) -> str:
    """A SOAP 1.1 fault; ``code`` is ``Server`` or ``Client`` (optionally dotted)."""
    return soap_envelope(
        f"<soap:Fault><faultcode>soap:{escape(code)}</faultcode>"
        f"<faultstring>{escape(message)}</faultstring></soap:Fault>"
    )


@dataclass(frozen=True)
class SoapFault:
    code: str  # the faultcode's local part: "Server", "Client", "Client.Authentication" …
    message: str  # the partner's free text: never put it in a reason or a log line


@dataclass(frozen=True)
class SoapMessage:
    operation: str  # local name of the Body's first element
    namespace: str | None
    element: ET.Element
    fault: SoapFault | None


def read_envelope(text: str) -> SoapMessage:
    """A SOAP 1.1 envelope's body; XmlError if it is not one."""
    root = parse_xml(text)
    if root.tag != f"{{{SOAP_ENV}}}Envelope":
        raise XmlError("not a SOAP 1.1 envelope")
    body = root.find(f"{{{SOAP_ENV}}}Body")
    if body is None or len(body) == 0:
        raise XmlError("the SOAP envelope has an empty body")
    first = body[0]
    namespace = first.tag[1:].split("}", 1)[0] if first.tag.startswith("{") else None
    fault = None
    if first.tag == f"{{{SOAP_ENV}}}Fault":
        code_el, text_el = find_local(first, "faultcode"), find_local(first, "faultstring")
        code = (code_el.text or "").strip() if code_el is not None else ""
        fault = SoapFault(
            code=code.rsplit(":", 1)[-1],
            message=(text_el.text or "").strip() if text_el is not None else "",
        )
    return SoapMessage(local(first.tag), namespace, first, fault)


def part_document(element: ET.Element, part: str) -> ET.Element | None:
    """The document an operation element carries in its string part (``arg0``, ``return``).

    The part's text is parsed as XML; a part that holds markup instead (document style) gives
    its first child. None when there is no document (a void answer). Namespaces are dropped.
    """
    holder = find_local(element, part)
    if holder is None:
        children = list(element)
        if len(children) != 1:
            return None
        holder = children[0]
    if len(holder):
        return strip_namespaces(holder[0])
    text = (holder.text or "").strip()
    return strip_namespaces(parse_xml(text)) if text else None


# ---- dates ----------------------------------------------------------------------------------


def _date_tokens(pattern: str) -> list[str]:
    tokens: list[str] = _DATE_TOKEN.findall(pattern)
    if not tokens or "".join(tokens) != pattern:
        raise ValueError(
            f"unsupported date pattern {pattern!r}: use yyyy MM dd HH mm ss SSS, "
            "punctuation and 'quoted' text"
        )
    return tokens


def format_date(value: datetime, pattern: str) -> str:
    """Format with a Java-style pattern (``yyyyMMddHHmmss``, ``yyyy-MM-dd HH:mm:ss`` …)."""
    fields = {
        "yyyy": f"{value.year:04d}",
        "MM": f"{value.month:02d}",
        "dd": f"{value.day:02d}",
        "HH": f"{value.hour:02d}",
        "mm": f"{value.minute:02d}",
        "ss": f"{value.second:02d}",
        "SSS": f"{value.microsecond // 1000:03d}",
    }
    out = []
    for token in _date_tokens(pattern):
        if token in fields:
            out.append(fields[token])
        elif token.startswith("'"):
            out.append(token[1:-1] or "'")
        else:
            out.append(token)
    return "".join(out)


def iso_to_local(value: str, tz: timezone) -> datetime:
    """An ISO 8601 date or date-time as a naive local time of the partner.

    A date-time with an offset (``Z``, ``+08:00``) is converted to the partner's zone; one
    without is taken as already local. ValueError if it is neither.
    """
    if len(value) == 10:
        d = date.fromisoformat(value)
        return datetime(d.year, d.month, d.day)
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(tz).replace(tzinfo=None)
    return parsed


def parse_date(text: str, pattern: str, tz: timezone) -> str | None:
    """A partner's date in ``pattern`` as ISO 8601 (with the partner's offset if it has a time).

    None if it does not match.
    """
    groups = {"yyyy": "y", "MM": "M", "dd": "d", "HH": "H", "mm": "m", "ss": "s", "SSS": "S"}
    regex = []
    for token in _date_tokens(pattern):
        if token in groups:
            regex.append(f"(?P<{groups[token]}>[0-9]{{{len(token)}}})")
        elif token.startswith("'"):
            regex.append(re.escape(token[1:-1] or "'"))
        else:
            regex.append(re.escape(token))
    match = re.fullmatch("".join(regex), text.strip())
    if match is None:
        return None
    g = {k: int(v) for k, v in match.groupdict().items()}
    try:
        if not {"H", "m", "s", "S"} & g.keys():
            return date(g.get("y", 1970), g.get("M", 1), g.get("d", 1)).isoformat()
        moment = datetime(
            g.get("y", 1970), g.get("M", 1), g.get("d", 1), g.get("H", 0), g.get("m", 0),
            g.get("s", 0), g.get("S", 0) * 1000, tzinfo=tz,
        )  # fmt: skip
    except ValueError:
        return None
    return moment.isoformat()


# ---- settings ---------------------------------------------------------------------------------


class SoapXmlSettings(AdapterSettings):
    kind: Literal["soap_xml"] = "soap_xml"
    endpoint: str = Field(pattern=r"^https?://")
    namespace: str = Field("http://service.tongban.gov.cn/", min_length=1)
    encoding: Encoding = "UTF-8"
    soap_action: str = Field("", description="template: {operation}, {namespace}")
    submit_operation: str = "SubmitCase"
    supplement_operation: str = "SupplementCase"
    withdraw_operation: str = "WithdrawCase"
    query_operation: str | None = Field("QueryStatus", description="None: do not poll")
    inbound_operations: list[str] = Field(default_factory=lambda: ["ReportStatus"], min_length=1)
    arg_name: str = "arg0"
    return_name: str = "return"
    wrap: Literal["escape", "cdata"] = "escape"
    inner_declaration: bool = True
    request_root: str = "Request"
    elements: dict[str, str] = Field(
        default_factory=dict, description="our name → their element path, over DEFAULT_ELEMENTS"
    )
    code_tables: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="our name → {our code: theirs}; '*' for the rest"
    )
    date_formats: dict[str, str] = Field(default_factory=dict, description="our name → pattern")
    timestamp_format: str = "yyyyMMddHHmmss"
    utc_offset_hours: float = Field(8.0, ge=-12, le=14)
    status_codes: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_STATUS_CODES))
    approved_values: list[str] = Field(default_factory=lambda: ["approved", "1", "准予"])
    denied_values: list[str] = Field(default_factory=lambda: ["denied", "0", "2", "不予"])
    ok_codes: list[str] = Field(default_factory=lambda: ["0", "00", "0000", "200"])
    busy_codes: list[str] = Field(default_factory=lambda: ["BUSY", "429", "503"])
    auth_header: str | None = None
    auth_token: str | None = None
    timeout: float = Field(10.0, gt=0)
    max_answer_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    poll_interval: float = Field(60.0, gt=0)
    poll_concurrency: int = Field(4, ge=1, le=64)
    poll_repeat_after: float = Field(600.0, ge=0)

    @field_validator("encoding", mode="before")
    @classmethod
    def _encoding_name(cls, value: Any) -> Any:
        if isinstance(value, str):
            upper = value.strip().upper().replace("_", "")
            return {"UTF8": "UTF-8", "CP936": "GBK"}.get(upper, upper)
        return value

    @field_validator(
        "submit_operation", "supplement_operation", "withdraw_operation", "query_operation",
        "arg_name", "return_name", "request_root",
    )  # fmt: skip
    @classmethod
    def _xml_name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not an XML element name")
        return value

    @field_validator("query_operation", mode="before")
    @classmethod
    def _no_query(cls, value: Any) -> Any:
        return None if value == "" else value  # TOML has no null: "" switches polling off

    @field_validator("inbound_operations")
    @classmethod
    def _xml_names(cls, value: list[str]) -> list[str]:
        for name in value:
            cls._xml_name(name)
        return value

    @field_validator("elements")
    @classmethod
    def _element_paths(cls, value: dict[str, str]) -> dict[str, str]:
        for key, path in value.items():
            if not _CANONICAL.fullmatch(key):
                raise ValueError(f"{key!r} is not a canonical name like applicant.id_number")
            if path and not _PATH.fullmatch(path):
                raise ValueError(f"{key}: {path!r} is not an element path like SQR/ZJHM")
        return value

    @field_validator("date_formats")
    @classmethod
    def _date_patterns(cls, value: dict[str, str]) -> dict[str, str]:
        for pattern in value.values():
            _date_tokens(pattern)
        return value

    @field_validator("timestamp_format")
    @classmethod
    def _timestamp_pattern(cls, value: str) -> str:
        _date_tokens(value)
        return value

    @field_validator("status_codes")
    @classmethod
    def _statuses(cls, value: dict[str, str]) -> dict[str, str]:
        for code, status in value.items():
            if status not in REPORTABLE:
                raise ValueError(
                    f"{code}: {status!r} is not a status a partner may report "
                    f"({', '.join(sorted(REPORTABLE))})"
                )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SoapXmlSettings:
        try:
            self.soap_action.format(operation="Op", namespace="ns")
        except (KeyError, IndexError, ValueError):
            raise ValueError("soap_action: only {operation} and {namespace} may be used") from None
        effective = self.effective_elements()
        for key in ("case_id", "status"):
            if not effective.get(key):
                raise ValueError(f"elements.{key} cannot be left out")
        codec = _ENCODE_CODECS[self.encoding]
        names = [self.request_root, self.arg_name, *effective.values()]
        for name in names:
            try:
                name.encode(codec)
            except UnicodeEncodeError:
                raise ValueError(
                    f"element name {name!r} cannot be written in {self.encoding}"
                ) from None
        if set(self.ok_codes) & set(self.busy_codes):
            raise ValueError("ok_codes and busy_codes overlap")
        return self

    def effective_elements(self) -> dict[str, str]:
        """The data dictionary in use: the defaults with this partner's names over them."""
        return {**DEFAULT_ELEMENTS, **self.elements}


# ---- the adapter ------------------------------------------------------------------------------


class RenderError(ValueError):
    """A case that cannot be put in the partner's form; names the field, never its value."""


Answer = ET.Element | None | Retryable | Permanent


class SoapXmlAdapter:
    kind: ClassVar[str] = "soap_xml"
    Settings: ClassVar[type[AdapterSettings]] = SoapXmlSettings
    # Set only when the partner has a status query, so the gateway polls only such partners.
    poll_interval: float

    def __init__(self, settings: AdapterSettings) -> None:
        assert isinstance(settings, SoapXmlSettings)
        self.settings = settings
        self._elements = settings.effective_elements()
        self._codec = _ENCODE_CODECS[settings.encoding]
        self._tz = timezone(timedelta(hours=settings.utc_offset_hours))
        self._result_elements = {
            key.removeprefix("result."): path
            for key, path in self._elements.items()
            if key.startswith("result.") and path
        }
        self._polled: dict[str, tuple[str, str | None, float]] = {}
        self._poll_cursor = 0
        if settings.query_operation:
            self.poll_interval = settings.poll_interval

    # -- rendering (pure) -----------------------------------------------------------------------

    def render(self, case: CanonicalCase, now: float | None = None) -> ET.Element:
        """The inner document of a submit: pure, so tests can inspect it."""
        return self._document(
            {
                "case_id": case.case_id,
                "request_id": case.request_id,
                "item_code": case.item_code,
                "contract_version": case.contract_version,
                "origin_region": case.origin_region,
                "handling_region": case.handling_region,
                "sent_at": self._timestamp(now),
                "partner_ref": case.partner_ref,
                "applicant": dict(case.applicant),
                "payload": dict(case.payload),
                "attachments": [dict(a) for a in case.attachments],
            }
        )

    def render_supplement(
        self, case: CanonicalCase, material: Mapping[str, Any], now: float | None = None
    ) -> ET.Element:
        return self._document(
            {
                "case_id": case.case_id,
                "partner_ref": case.partner_ref,
                "sent_at": self._timestamp(now),
                **{k: v for k, v in material.items() if k in ("note", "payload", "attachments")},
            }
        )

    def render_withdraw(
        self, case: CanonicalCase, reason: str, now: float | None = None
    ) -> ET.Element:
        return self._document(
            {
                "case_id": case.case_id,
                "partner_ref": case.partner_ref,
                "sent_at": self._timestamp(now),
                "reason": reason,
            }
        )

    def render_query(self, case: CanonicalCase, now: float | None = None) -> ET.Element:
        return self._document(
            {
                "case_id": case.case_id,
                "partner_ref": case.partner_ref,
                "sent_at": self._timestamp(now),
            }
        )

    def envelope(self, operation: str, document: ET.Element) -> bytes:
        """The HTTP body of one call: the document as a string part of a SOAP 1.1 request."""
        text = ET.tostring(document, encoding="unicode")
        if self.settings.inner_declaration:
            text = f'<?xml version="1.0" encoding="{self.settings.encoding}"?>{text}'
        text = encodable(text, self._codec)  # so that a CDATA section never needs a reference
        markup = soap_call(
            self.settings.namespace,
            operation,
            self.settings.arg_name,
            text,
            cdata=self.settings.wrap == "cdata",
        )
        return xml_bytes(markup, self.settings.encoding)

    def headers(self, operation: str) -> dict[str, str]:
        action = self.settings.soap_action.format(
            operation=operation, namespace=self.settings.namespace
        )
        headers = {
            "Content-Type": f"text/xml; charset={self.settings.encoding}",
            "SOAPAction": f'"{action}"',
            "Accept": "text/xml",
        }
        if self.settings.auth_header and self.settings.auth_token:
            headers[self.settings.auth_header] = self.settings.auth_token
        return headers

    def _timestamp(self, now: float | None) -> str | None:
        if now is None:
            return None
        moment = datetime.fromtimestamp(now, self._tz).replace(tzinfo=None)
        return format_date(moment, self.settings.timestamp_format)

    def _document(self, values: Mapping[str, Any]) -> ET.Element:
        root = ET.Element(self.settings.request_root)
        for key, value in values.items():
            self._emit(root, key, value, None)
        return root

    def _emit(self, parent: ET.Element, path: str, value: Any, inherited: str | None) -> None:
        """Place one canonical value (and whatever it holds) under ``parent``.

        ``path`` is its canonical name; ``inherited`` the element path it gets when it has no
        entry of its own (its mapped parent's path plus its own name).
        """
        mapped = self._elements.get(path)
        where = mapped if mapped is not None else inherited
        if where == "" or value is None:
            return
        if isinstance(value, Mapping):
            for key, item in value.items():
                child = f"{where}/{key}" if where is not None else None
                self._emit(parent, f"{path}.{key}", item, child)
            return
        if where is None:
            return  # neither it nor a parent is in the data dictionary: not sent
        if isinstance(value, list | tuple):
            for item in value:
                if isinstance(item, Mapping):
                    node = self._put(parent, where, path)
                    for key, sub in item.items():
                        self._emit(node, f"{path}.{key}", sub, str(key))
                elif isinstance(item, list | tuple):
                    raise RenderError(f"{path}: lists of lists are not supported")
                elif item is not None:
                    self._put(parent, where, path).text = self._text(path, item)
            return
        self._put(parent, where, path).text = self._text(path, value)

    def _put(self, parent: ET.Element, where: str, path: str) -> ET.Element:
        """A new element at ``where`` (``A/B/C``), reusing the last ``A`` and ``B`` present."""
        *containers, last = where.split("/")
        node = parent
        for name in (*containers, last):
            if not _NAME.fullmatch(name):
                raise RenderError(f"{path}: not a valid XML element name")
            try:
                name.encode(self._codec)
            except UnicodeEncodeError:
                raise RenderError(
                    f"{path}: element name cannot be written in {self.settings.encoding}"
                ) from None
        for name in containers:
            existing = [c for c in node if c.tag == name]
            node = existing[-1] if existing else ET.SubElement(node, name)
        return ET.SubElement(node, last)

    def _text(self, path: str, value: Any) -> str:
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float | str):
            text = str(value)
        else:
            raise RenderError(f"{path}: unsupported value type {type(value).__name__}")
        table = self.settings.code_tables.get(path)
        if table is not None:
            if text in table:
                text = table[text]
            elif "*" in table:
                text = table["*"]
            else:
                raise RenderError(f"{path}: the value has no entry in its code table")
        pattern = self.settings.date_formats.get(path)
        if pattern is not None:
            try:
                text = format_date(iso_to_local(text, self._tz), pattern)
            except ValueError:
                raise RenderError(f"{path}: not an ISO 8601 date or date-time") from None
        if _INVALID_CHARS.search(text):
            raise RenderError(f"{path}: holds characters XML 1.0 cannot carry")
        return text

    # -- calls ----------------------------------------------------------------------------------

    async def submit(self, case: CanonicalCase, ctx: AdapterContext) -> Outcome:
        try:
            document = self.render(case, ctx.clock.now())
        except RenderError as exc:
            return Permanent(f"cannot render the case: {exc}")
        answer = await self._call(self.settings.submit_operation, document, ctx)
        if isinstance(answer, Retryable | Permanent):
            return answer
        accepted = self._accepted(answer, case.case_id)
        ctx.logger.debug("case %s taken as %s", case.case_id, accepted.partner_ref)
        return accepted

    async def supplement(
        self, case: CanonicalCase, material: Mapping[str, Any], ctx: AdapterContext
    ) -> Outcome:
        try:
            document = self.render_supplement(case, material, ctx.clock.now())
        except RenderError as exc:
            return Permanent(f"cannot render the supplement: {exc}")
        answer = await self._call(self.settings.supplement_operation, document, ctx)
        if isinstance(answer, Retryable | Permanent):
            return answer
        return self._accepted(answer, case.case_id)

    async def withdraw(self, case: CanonicalCase, reason: str, ctx: AdapterContext) -> Outcome:
        try:
            document = self.render_withdraw(case, reason, ctx.clock.now())
        except RenderError as exc:
            return Permanent(f"cannot render the withdrawal: {exc}")
        answer = await self._call(self.settings.withdraw_operation, document, ctx)
        if isinstance(answer, Retryable | Permanent):
            return answer
        return self._accepted(answer, case.case_id)

    async def _call(self, operation: str, document: ET.Element, ctx: AdapterContext) -> Answer:
        """POST one operation; its answer document, or a classified failure. Never raises."""
        s = self.settings
        timeout = aiohttp.ClientTimeout(total=min(s.timeout, ctx.timeout))
        try:
            async with ctx.session.post(
                s.endpoint,
                data=self.envelope(operation, document),
                headers=self.headers(operation),
                timeout=timeout,
                allow_redirects=False,
            ) as resp:
                raw = await _read_limited(resp, s.max_answer_bytes)
                if raw is None:
                    return Retryable(f"partner answered more than {s.max_answer_bytes} bytes")
                return self.answer(
                    resp.status,
                    raw,
                    resp.headers.get("Content-Type"),
                    resp.headers.get("Retry-After"),
                )
        except TimeoutError:
            return Retryable("timeout")
        except aiohttp.ClientError as exc:
            return Retryable(f"connection error: {type(exc).__name__}")

    def answer(
        self, status: int, raw: bytes, content_type: str | None, retry_after: str | None
    ) -> Answer:
        """HTTP status and body → the partner's answer document (None when it has none), or a
        classified failure. Pure; reasons carry statuses and codes, never the partner's text."""
        delay = float(retry_after) if retry_after and _SECONDS.fullmatch(retry_after) else None
        if status in (408, 429, 502, 503, 504):
            return Retryable(f"partner answered HTTP {status}", delay)
        if status in (202, 204) and not raw.strip():
            return None  # SOAP 1.1's HTTP binding: taken, nothing to say
        try:
            message = read_envelope(
                decode_xml(raw, charset_of(content_type), self.settings.encoding)
            )
        except UnsafeXml:
            return Retryable(f"partner answered HTTP {status} with a DTD (refused, not parsed)")
        except XmlError:
            if status >= 500:
                return Retryable(f"partner answered HTTP {status}", delay)
            if status >= 300:
                return Permanent(f"partner answered HTTP {status}")
            return Retryable(f"partner answered HTTP {status} with no readable SOAP envelope")
        if message.fault is not None:
            return self._fault(message.fault, delay)
        if status >= 500:
            return Retryable(f"partner answered HTTP {status}", delay)
        if status >= 300 or status < 200:
            return Permanent(f"partner answered HTTP {status}")
        try:
            document = part_document(message.element, self.settings.return_name)
        except UnsafeXml:
            return Retryable("the answer document has a DTD (refused, not parsed)")
        except XmlError:
            return Retryable("the answer document is not well-formed XML")
        if document is None:
            return None
        code = self._value(document, "code")
        if code is None:
            return document  # no business code: the call went through
        if code in self.settings.busy_codes:
            return Retryable(f"partner busy (code {printable_code(code)})", delay)
        if code not in self.settings.ok_codes:
            return Permanent(f"partner refused the request (code {printable_code(code)})")
        return document

    def classify(
        self,
        status: int,
        raw: bytes,
        content_type: str | None,
        retry_after: str | None,
        case_id: str,
    ) -> Outcome:
        """The outcome of a submit answer: :meth:`answer`, then the partner's ref and status."""
        answer = self.answer(status, raw, content_type, retry_after)
        if isinstance(answer, Retryable | Permanent):
            return answer
        return self._accepted(answer, case_id)

    def _fault(self, fault: SoapFault, delay: float | None) -> Retryable | Permanent:
        shown = printable_code(fault.code)
        kind = fault.code.split(".", 1)[0]
        if kind == "Server":
            return Retryable(f"partner answered a SOAP fault ({shown})", delay)
        if kind == "Client":
            return Permanent(f"partner refused the request with a SOAP fault ({shown})")
        # VersionMismatch, MustUnderstand, and codes of the partner's own: a person must look.
        return Permanent(f"partner answered a SOAP fault ({shown})")

    def _accepted(self, document: ET.Element | None, case_id: str) -> Accepted:
        if document is None:
            return Accepted()
        ref = self._value(document, "partner_ref")
        updates: tuple[StatusUpdate, ...] = ()
        if self._value(document, "status") is not None:
            try:
                updates = (self._update(document, case_id),)
            except ValueError:
                updates = ()  # an unreadable status in the answer; later reports will tell
        return Accepted(partner_ref=ref, updates=updates)

    # -- polling --------------------------------------------------------------------------------

    async def poll(
        self, open_cases: Sequence[CanonicalCase], ctx: AdapterContext
    ) -> list[StatusUpdate]:
        """Ask ``QueryStatus`` for each open case, a few at a time, within one time budget.

        Only changes are returned: a status already reported for a case is repeated only after
        ``poll_repeat_after`` seconds (in case the gateway lost it). Cases not reached within the
        budget come first next time.
        """
        if not self.settings.query_operation or not open_cases:
            return []
        open_ids = {c.case_id for c in open_cases}
        self._polled = {k: v for k, v in self._polled.items() if k in open_ids}
        start = self._poll_cursor % len(open_cases)
        ordered = [*open_cases[start:], *open_cases[:start]]
        gate = asyncio.Semaphore(self.settings.poll_concurrency)
        found: list[StatusUpdate] = []

        async def one(case: CanonicalCase) -> None:
            async with gate:
                update = await self._query(case, ctx)
            if update is not None and self._is_news(update, ctx.clock.now()):
                found.append(update)

        tasks = [asyncio.create_task(one(c)) for c in ordered]
        budget = max(ctx.timeout * 1.5, 0.1)
        try:
            done, _ = await asyncio.wait(tasks, timeout=budget)
        finally:  # past the budget, or the poll itself cancelled: no query outlives it
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            if task.cancelled():
                continue
            if (exc := task.exception()) is not None:
                ctx.logger.error("status query raised %s", type(exc).__name__)
        self._poll_cursor = start + len(done)
        return found

    async def _query(self, case: CanonicalCase, ctx: AdapterContext) -> StatusUpdate | None:
        assert self.settings.query_operation
        try:
            document = self.render_query(case, ctx.clock.now())
        except RenderError:
            return None
        answer = await self._call(self.settings.query_operation, document, ctx)
        if isinstance(answer, Retryable | Permanent):
            ctx.logger.debug("status query for case %s: %s", case.case_id, answer.reason)
            return None
        if answer is None:
            return None
        for report in self._report_elements(answer):
            given = self._value(report, "case_id")
            if given is not None and given != case.case_id:
                continue  # not about this case
            try:
                update = self._update(report, case.case_id)
            except ValueError as exc:
                ctx.logger.warning("status of case %s unreadable: %s", case.case_id, exc)
                return None
            return StatusUpdate(
                status=update.status,
                case_id=case.case_id,
                partner_ref=update.partner_ref or case.partner_ref,
                outcome=update.outcome,
                data=update.data,
                partner_event_id=update.partner_event_id,
            )
        return None

    def _is_news(self, update: StatusUpdate, now: float) -> bool:
        assert update.case_id is not None
        last = self._polled.get(update.case_id)
        same = last is not None and last[:2] == (update.status, update.outcome)
        if same and last is not None and now - last[2] < self.settings.poll_repeat_after:
            return False
        self._polled[update.case_id] = (update.status, update.outcome, now)
        return True

    # -- inbound --------------------------------------------------------------------------------

    def parse_inbound(self, body: bytes, headers: Mapping[str, str]) -> list[StatusUpdate]:
        content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
        if not body.strip():
            raise ValueError("the body is empty")
        try:
            message = read_envelope(
                decode_xml(body, charset_of(content_type), self.settings.encoding)
            )
        except UnsafeXml:
            raise ValueError("document type declarations are not accepted") from None
        except XmlError as exc:
            raise ValueError(f"not a SOAP 1.1 message: {exc}") from None
        if message.fault is not None:
            raise ValueError("the message is a SOAP fault, not a status report")
        if message.operation not in self.settings.inbound_operations:
            raise ValueError(
                f"unexpected operation {printable_code(message.operation)}; expected "
                + " or ".join(self.settings.inbound_operations)
            )
        try:
            document = part_document(message.element, self.settings.arg_name)
        except UnsafeXml:
            raise ValueError("document type declarations are not accepted") from None
        except XmlError as exc:
            raise ValueError(f"{self.settings.arg_name}: {exc}") from None
        if document is None:
            raise ValueError(f"{message.operation} carries no {self.settings.arg_name} document")
        reports = self._report_elements(document)
        if not reports:
            raise ValueError(
                f"no {self._elements.get('report') or 'report'} element and no "
                f"{self._elements['status']} element in the document"
            )
        name = self._elements.get("report") or local(document.tag)
        updates = []
        for i, report in enumerate(reports):
            try:
                updates.append(self._update(report, None))
            except ValueError as exc:
                raise ValueError(f"{name}[{i}].{exc}") from None
        return updates

    def _report_elements(self, document: ET.Element) -> list[ET.Element]:
        path = self._elements.get("report")
        reports = document.findall(path) if path else []
        if not reports and document.find(self._elements["status"]) is not None:
            reports = [document]  # a document that is itself one report
        return reports

    def _update(self, report: ET.Element, case_id: str | None) -> StatusUpdate:
        """One report element as a canonical update; ValueError names the element."""
        e = self._elements
        code = self._value(report, "status")
        status = self.settings.status_codes.get(code) if code is not None else None
        if status is None:
            raise ValueError(f"{e['status']}: not a known status code")
        outcome = None
        if status == "completed":
            given = self._value(report, "outcome") or ""
            if given in self.settings.approved_values:
                outcome = "approved"
            elif given in self.settings.denied_values:
                outcome = "denied"
            else:
                raise ValueError(
                    f"{e.get('outcome') or 'outcome'}: neither an approved nor a denied value"
                )
        data = self._result(report)
        message = self._value(report, "message")
        if status in ("rejected", "supplement_required") and message:
            data = {**data, "message": message}
        given_case = self._value(report, "case_id")
        ref = self._value(report, "partner_ref")
        if not (case_id or given_case or ref):
            raise ValueError(
                f"{e['case_id']}: missing, and no {e.get('partner_ref') or 'partner ref'} either"
            )
        return StatusUpdate(
            status=status,
            case_id=case_id or given_case,
            partner_ref=ref,
            outcome=outcome,
            data=data,
            partner_event_id=self._value(report, "event_id"),
        )

    def _result(self, report: ET.Element) -> dict[str, Any]:
        """The result element as data: mapped names and dates back in our words, the rest as
        the partner named it."""
        path = self._elements.get("result")
        element = report.find(path) if path else None
        if element is None:
            return {}
        whole = _to_value(element)
        if not isinstance(whole, dict):
            return {"value": whole} if whole else {}
        data: dict[str, Any] = {}
        taken = set()
        for name, their in self._result_elements.items():
            found = element.find(their)
            if found is None:
                continue
            taken.add(their.split("/", 1)[0])
            value = _to_value(found)
            pattern = self.settings.date_formats.get(f"result.{name}")
            if pattern and isinstance(value, str):
                value = parse_date(value, pattern, self._tz) or value
            data[name] = value
        for key, value in whole.items():
            if key not in taken:
                data.setdefault(key, value)
        return data

    def _value(self, element: ET.Element, key: str) -> str | None:
        """The stripped text at the element our ``key`` maps to; None if absent or empty."""
        path = self._elements.get(key)
        if not path:
            return None
        found = element.find(path)
        text = (found.text or "").strip() if found is not None else ""
        return text or None


def _to_value(element: ET.Element) -> Any:
    """An element as data: its text, or a dict of its children (repeated names → lists)."""
    if len(element) == 0:
        return (element.text or "").strip()
    out: dict[str, Any] = {}
    for child in element:
        value = _to_value(child)
        if child.tag in out:
            previous = out[child.tag]
            out[child.tag] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            out[child.tag] = value
    return out


async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, or None if it is larger than ``limit`` bytes (not read further)."""
    if resp.content_length is not None and resp.content_length > limit:
        return None
    chunks, size = [], 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
