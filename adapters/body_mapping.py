"""Declarative reshaping of the common JSON submit body, and of result fields on the way back.

``rest_json`` and ``async_ticket`` send the same submit body, ``{"caseId", "requestId",
"itemCode", "itemVersion", "originRegion", "applicant", "form", "attachments"}``. The platforms
behind them take that body but want their own codes (sex ``M``/``F``, ID document types
``1``/``2``/``A``), their own date forms (``yyyyMMddHHmmss``), their own field names and a few
fixed values, and they send their results back in those codes and forms. So that an operator can
connect such a platform with a settings table instead of code, and so that both adapters mean
exactly the same by the same key, the mapping lives here once: :class:`BodyMappingSettings` (the
settings both adapters' settings extend) compiled into a :class:`BodyMapping` (pure functions on
JSON objects, no I/O).

Our paths are dotted and start with a name of the body or its canonical name (``payload.x`` is
``form.x``, ``case_id`` is ``caseId``). On the way out, in this order:

- ``code_tables`` (our path → {our code: theirs}, ``"*"`` for the rest) and ``date_formats`` (our
  path → a Java-style pattern) rewrite values in place;
- then the ``encrypted_fields`` (our paths) are SM4-encrypted with the ``encryption`` settings;
- then ``field_map`` (our path → their dotted path) moves fields; the rest stay where they are;
- then ``constants`` (their path → value) are put in every request.

On the way in, ``result.<name>`` entries of ``encrypted_fields`` (decrypted first), then of
``code_tables`` (in reverse) and ``date_formats`` (their format → ISO 8601) bring the fields of a
partner's ``result`` back in our words.

A value that cannot be put in the partner's form is a :class:`RenderError`, which names the
field and never its value: the adapters turn it into a ``Permanent`` outcome.

Field encryption (国密 SM4, GB/T 32907-2016) is what Java platforms call ``SM4/ECB/PKCS5Padding``
or ``SM4/CBC/PKCS5Padding`` with a shared IV: a value's text (a string as it is, ``true`` /
``false``, a number as the JSON body would carry it) as UTF-8, PKCS#7-padded, encrypted, then
written as lowercase hex or base64. The cipher is the optional ``cryptography`` package
(``tongban-gateway[gm]``), imported when a settings table asks for it.
"""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from adapters.sdk import AdapterSettings, CanonicalCase
from adapters.soap_xml import format_date, iso_to_local, parse_date

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

# The submit body's top-level names, and the canonical names that may stand for them in paths.
BODY_NAMES = (
    "caseId", "requestId", "itemCode", "itemVersion", "originRegion", "applicant", "form",
    "attachments",
)  # fmt: skip
CANONICAL_NAMES = {
    "case_id": "caseId",
    "request_id": "requestId",
    "item_code": "itemCode",
    "contract_version": "itemVersion",
    "origin_region": "originRegion",
    "payload": "form",
}


class RenderError(ValueError):
    """A case that cannot be put in the partner's form; names the field, never its value."""


def submit_body(case: CanonicalCase, attachments: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The common submit body before any mapping, with ``attachments`` as the adapter sends them.

    The applicant and the form are deep copies: mapping rewrites the body in place, never the
    case it came from.
    """
    return {
        "caseId": case.case_id,
        "requestId": case.request_id,
        "itemCode": case.item_code,
        "itemVersion": case.contract_version,
        "originRegion": case.origin_region,
        "applicant": copy.deepcopy(dict(case.applicant)),
        "form": copy.deepcopy(dict(case.payload)),
        "attachments": list(attachments),
    }


NO_CRYPTOGRAPHY = (
    "SM4 encryption needs the optional dependency cryptography, which is not installed: "
    "pip install 'tongban-gateway[gm]'"
)
_HEX_BLOCK = re.compile(r"[0-9A-Fa-f]{32}")


class EncryptionSettings(BaseModel):
    """The SM4 cipher of ``encrypted_fields``. The key and the IV are secrets: no error, log or
    ``repr`` shows them (write them as ``{ env = "NAME" }`` to keep them out of the file)."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    mode: Literal["ecb", "cbc"] = "ecb"
    key: SecretStr = Field(description="the 16-byte SM4 key as 32 hex digits")
    iv: SecretStr | None = Field(None, description="cbc only: the shared IV as 32 hex digits")
    output: Literal["hex", "base64"] = "hex"

    @field_validator("key", "iv")
    @classmethod
    def _sixteen_bytes(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _HEX_BLOCK.fullmatch(value.get_secret_value()):
            raise ValueError("must be 32 hex digits (16 bytes)")
        return value

    @model_validator(mode="after")
    def _usable(self) -> Self:
        if self.mode == "cbc" and self.iv is None:
            raise ValueError("iv: required with mode = 'cbc'")
        if self.mode == "ecb" and self.iv is not None:
            raise ValueError("iv: not used with mode = 'ecb' (remove it, or use mode = 'cbc')")
        FieldCipher(self)  # ValueError when cryptography, or its OpenSSL's SM4, is missing
        return self


_Paths = TypeVar("_Paths", bound=Collection[str])


class BodyMappingSettings(AdapterSettings):
    """The mapping's settings; an adapter's settings extend this to offer them."""

    field_map: dict[str, str] = Field(
        default_factory=dict, description="our dotted path → their dotted path"
    )
    constants: dict[str, Any] = Field(
        default_factory=dict, description="their dotted path → a value put in every request"
    )
    code_tables: dict[str, dict[str, str | int]] = Field(
        default_factory=dict, description="our dotted path → {our code: theirs}; '*' for the rest"
    )
    date_formats: dict[str, str] = Field(
        default_factory=dict, description="our dotted path → Java-style pattern"
    )
    utc_offset_hours: float = Field(8.0, ge=-12, le=14)
    encrypted_fields: list[str] = Field(
        default_factory=list,
        description="our dotted paths whose values go SM4-encrypted; result.<name>: decrypted",
    )
    encryption: EncryptionSettings | None = Field(
        None, description="the SM4 cipher of encrypted_fields: mode, key, iv, output"
    )

    @field_validator("field_map")
    @classmethod
    def _moves(cls, value: dict[str, str]) -> dict[str, str]:
        ours: set[tuple[str, ...]] = set()
        for source, target in value.items():
            if not _moved(source):
                continue  # a top-level name the body does not have: ignored, as it always was
            normal = our_path(source, inbound=False)
            if normal in ours:
                raise ValueError(f"{source!r} names a field already mapped")
            ours.add(normal)
            _their_path(target)
        targets = list(value.values())
        if len(set(targets)) != len(targets):
            raise ValueError("two fields are mapped to the same place")
        return value

    @field_validator("constants")
    @classmethod
    def _constant_paths(cls, value: dict[str, Any]) -> dict[str, Any]:
        for target in value:
            _their_path(target)
        return value

    @field_validator("code_tables", "encrypted_fields")
    @classmethod
    def _our_paths(cls, value: _Paths) -> _Paths:
        for path in value:
            our_path(path, inbound=True)
        return value

    @field_validator("date_formats")
    @classmethod
    def _date_patterns(cls, value: dict[str, str]) -> dict[str, str]:
        for path, pattern in value.items():
            our_path(path, inbound=True)
            format_date(datetime(2000, 1, 1), pattern)  # ValueError names a bad pattern
        return value

    @model_validator(mode="after")
    def _normalised_once(self) -> Self:
        for name in ("code_tables", "date_formats", "encrypted_fields"):
            paths = [our_path(p, inbound=True) for p in getattr(self, name)]
            if len(set(paths)) != len(paths):
                raise ValueError(f"{name}: one field is named twice (e.g. payload.x and form.x)")
        return self

    @model_validator(mode="after")
    def _encryption_paired(self) -> Self:
        if self.encrypted_fields and self.encryption is None:
            raise ValueError("encrypted_fields: needs an encryption table (mode, key, output)")
        if self.encryption is not None and not self.encrypted_fields:
            raise ValueError("encryption: no field is listed in encrypted_fields")
        return self


def our_path(path: str, *, inbound: bool) -> tuple[str, ...]:
    """Our dotted path as the submit body's keys (``payload.x`` → ``("form", "x")``).

    With ``inbound``, ``result.<name>`` (a field of an inbound report's result) is allowed too.
    ValueError if it does not start with a name of the body.
    """
    parts = _their_path(path)
    head = CANONICAL_NAMES.get(parts[0], parts[0])
    if head not in BODY_NAMES and not (inbound and head == "result" and len(parts) > 1):
        known = ", ".join([*BODY_NAMES, *CANONICAL_NAMES, *(["result.<name>"] if inbound else [])])
        raise ValueError(f"{path!r} does not start with a field of the request ({known})")
    return (head, *parts[1:])


def _their_path(path: str) -> tuple[str, ...]:
    parts = tuple(path.split("."))
    if not all(parts):
        raise ValueError(f"{path!r} is not a dotted path like sqr.zjhm")
    return parts


def _moved(source: str) -> bool:
    """Whether a ``field_map`` key moves anything: a nested path, or a name the body has."""
    return "." in source or source in BODY_NAMES or source in CANONICAL_NAMES


class BodyMapping:
    """One adapter's mapping settings, compiled once; every method is pure."""

    def __init__(self, settings: BodyMappingSettings) -> None:
        self.tz = timezone(timedelta(hours=settings.utc_offset_hours))
        # (path in the body, the name as configured for reasons, table or pattern)
        self._tables = [(our_path(k, inbound=True), k, v) for k, v in settings.code_tables.items()]
        self._dates = [(our_path(k, inbound=True), k, v) for k, v in settings.date_formats.items()]
        # Their code → ours for result fields; the first of our codes wins, "*" is not reversed.
        self._reverse = {
            path[1:]: {str(theirs): ours for ours, theirs in reversed(table.items()) if ours != "*"}
            for path, _, table in self._tables
            if path[0] == "result"
        }
        self._result_dates = [(path[1:], p) for path, _, p in self._dates if path[0] == "result"]
        moves = [
            (our_path(k, inbound=False), _their_path(v))
            for k, v in settings.field_map.items()
            if _moved(k)
        ]
        # Top-level renames keep their place in the body (as before nested paths were allowed);
        # other moves take the field out (deepest first) and put it in (shallowest first).
        self._renames = {s[0]: t[0] for s, t in moves if len(s) == len(t) == 1}
        self._moves = sorted(
            [(s, t) for s, t in moves if not len(s) == len(t) == 1], key=lambda m: -len(m[0])
        )
        self._constants = [(_their_path(k), v) for k, v in settings.constants.items()]
        # Encrypted on the way out: (path, the name as configured, cipher); decrypted on the way
        # in: (path within the result, cipher). The settings give a cipher whenever fields are set.
        cipher = FieldCipher(settings.encryption) if settings.encryption is not None else None
        sealed = [(our_path(p, inbound=True), p) for p in settings.encrypted_fields]
        self._sealed = [(path, p, cipher) for path, p in sealed if cipher and path[0] != "result"]
        self._opened = [(path[1:], cipher) for path, _ in sealed if cipher and path[0] == "result"]

    # -- outbound ---------------------------------------------------------------------------

    def render(self, body: dict[str, Any]) -> dict[str, Any]:
        """The submit body (as :func:`submit_body` makes it) in the partner's form.

        Rewrites ``body`` in place and returns the result. RenderError (naming the field, never
        its value) when a value has no entry in its code table, is not an ISO date, is an object
        or a list to encrypt, or a mapped field has no place to go.
        """
        for path, name, table in self._tables:
            _rewrite(body, path, partial(_coded, table=table, name=name))
        for path, name, pattern in self._dates:
            _rewrite(body, path, partial(self._dated, pattern=pattern, name=name))
        for path, name, cipher in self._sealed:
            _rewrite(body, path, partial(_encrypted, cipher=cipher, name=name))
        taken = [(target, _pop(body, source)) for source, target in self._moves]
        body = {self._renames.get(k, k): v for k, v in body.items()}
        for target, value in sorted(taken, key=lambda m: len(m[0])):
            if value is not _ABSENT:
                _put(body, target, value, replace=False)
        return self._with_constants(body)

    def supplement(self, case_id: str, material: Mapping[str, Any]) -> dict[str, Any]:
        """The supplement body, ``{"caseId", "note", "payload", "attachments"}``: the material
        as the origin sent it (a copy), with the ``constants``; RenderError as for a submit.

        Form fields listed in ``encrypted_fields`` are encrypted in the material's ``payload``
        too: a partner that wants them sealed in the submit never gets them in clear later.
        """
        body = {"caseId": case_id, **copy.deepcopy(dict(material))}
        for path, name, cipher in self._sealed:
            if path[0] == "form":  # the submit's form is the material's payload
                sealed = partial(_encrypted, cipher=cipher, name=name)
                _rewrite(body, ("payload", *path[1:]), sealed)
        return self._with_constants(body)

    def withdrawal(self, case_id: str, reason: str) -> dict[str, Any]:
        """The withdrawal body, ``{"caseId", "reason"}``, with the ``constants``."""
        return self._with_constants({"caseId": case_id, "reason": reason})

    def _with_constants(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with the ``constants`` put in (each a copy); RenderError if one has no place.
        Rewrites ``body`` in place."""
        for target, value in self._constants:
            _put(body, target, copy.deepcopy(value), replace=True)
        return body

    def _dated(self, value: Any, pattern: str, name: str) -> str:
        try:
            if not isinstance(value, str):
                raise ValueError(value)
            return format_date(iso_to_local(value, self.tz), pattern)
        except ValueError:
            raise RenderError(f"{name}: not an ISO 8601 date or date-time") from None

    # -- inbound ----------------------------------------------------------------------------

    def result(self, data: dict[str, Any]) -> dict[str, Any]:
        """Result fields back in our words: ``encrypted_fields`` decrypted, then codes through
        their tables in reverse, dates in ``date_formats`` as ISO 8601. A value that does not
        decrypt, has no entry, or is not in the pattern is kept as it came. ``data`` itself is
        left as it was."""
        if not self._reverse and not self._result_dates and not self._opened:
            return data
        data = copy.deepcopy(data)
        for path, cipher in self._opened:
            _rewrite(data, path, partial(_decrypted, cipher=cipher))
        for path, reverse in self._reverse.items():
            _rewrite(data, path, partial(_uncoded, reverse=reverse))
        for path, pattern in self._result_dates:
            _rewrite(data, path, partial(self._undated, pattern=pattern))
        return data

    def _undated(self, value: Any, pattern: str) -> Any:
        if isinstance(value, str):
            return parse_date(value, pattern, self.tz) or value
        if isinstance(value, int) and not isinstance(value, bool):  # 20261201 sent as a number
            return parse_date(str(value), pattern, self.tz) or value
        return value


# ---- paths in JSON objects --------------------------------------------------------------------

_ABSENT = object()


def _rewrite(obj: dict[str, Any], path: tuple[str, ...], change: Callable[[Any], Any]) -> None:
    """Replace the value at ``path`` by ``change(value)``; nothing if it is absent or null."""
    *parents, last = path
    for name in parents:
        obj = obj.get(name)  # type: ignore[assignment]
        if not isinstance(obj, dict):
            return
    if obj.get(last) is not None:
        obj[last] = change(obj[last])


def _pop(obj: dict[str, Any], path: tuple[str, ...]) -> Any:
    """Take the value at ``path`` out of ``obj``; ``_ABSENT`` if there is none."""
    *parents, last = path
    for name in parents:
        obj = obj.get(name)  # type: ignore[assignment]
        if not isinstance(obj, dict):
            return _ABSENT
    return obj.pop(last, _ABSENT)


def _put(obj: dict[str, Any], path: tuple[str, ...], value: Any, *, replace: bool) -> None:
    """Put ``value`` at ``path``, making the objects on the way; RenderError when the place is
    taken by a value that is not an object (or, without ``replace``, by any value)."""
    *parents, last = path
    for i, name in enumerate(parents):
        inner = obj.setdefault(name, {})
        if not isinstance(inner, dict):
            raise RenderError(f"{'.'.join(path[: i + 1])}: holds a value, not an object")
        obj = inner
    if not replace and last in obj:
        raise RenderError(f"{'.'.join(path)}: a field is mapped onto another field")
    obj[last] = value


def _coded(value: Any, table: Mapping[str, str | int], name: str) -> str | int:
    """Our code as theirs; RenderError names the field, never the value."""
    if isinstance(value, bool):
        key = "true" if value else "false"
    elif isinstance(value, str | int):
        key = str(value)
    else:
        raise RenderError(f"{name}: holds a {type(value).__name__}, not a code")
    if key in table:
        return table[key]
    if "*" in table:
        return table["*"]
    raise RenderError(f"{name}: the value has no entry in its code table")


def _uncoded(value: Any, reverse: Mapping[str, str]) -> Any:
    if isinstance(value, str | int) and not isinstance(value, bool):
        return reverse.get(str(value), value)
    return value


# ---- SM4 field encryption ---------------------------------------------------------------------


class FieldCipher:
    """SM4 over a field's text with PKCS#7 padding, the ciphertext as hex or base64. Pure.

    ValueError (naming the extra, never the key) when ``cryptography`` is not installed or its
    OpenSSL has no SM4.
    """

    def __init__(self, settings: EncryptionSettings) -> None:
        self._cipher = _sm4(settings)
        from cryptography.hazmat.primitives.padding import PKCS7

        self._padding = PKCS7(128)  # SM4's block: 128 bits
        self._hex = settings.output == "hex"

    def seal(self, data: bytes) -> bytes:
        """``data`` PKCS#7-padded and encrypted."""
        padder = self._padding.padder()
        encryptor = self._cipher.encryptor()
        padded = padder.update(data) + padder.finalize()
        return encryptor.update(padded) + encryptor.finalize()

    def unseal(self, raw: bytes) -> bytes:
        """``raw`` decrypted and unpadded; ValueError if not whole blocks or badly padded."""
        decryptor = self._cipher.decryptor()
        unpadder = self._padding.unpadder()
        padded = decryptor.update(raw) + decryptor.finalize()
        return unpadder.update(padded) + unpadder.finalize()

    def encrypt(self, text: str) -> str:
        """``text`` as UTF-8, sealed, written as lowercase hex or base64."""
        raw = self.seal(text.encode("utf-8"))
        return raw.hex() if self._hex else base64.b64encode(raw).decode("ascii")

    def decrypt(self, token: str) -> str:
        """The text ``token`` holds; ValueError, saying nothing of either, if it holds none."""
        try:
            raw = bytes.fromhex(token) if self._hex else base64.b64decode(token, validate=True)
            return self.unseal(raw).decode("utf-8")
        except ValueError:  # not hex/base64, not whole blocks, bad padding, not UTF-8
            raise ValueError("does not decrypt") from None


def _sm4(settings: EncryptionSettings) -> Cipher[modes.ECB | modes.CBC]:
    """The SM4 cipher of ``settings``, checked to work; ValueError names what is missing."""
    try:
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    except ImportError:
        raise ValueError(NO_CRYPTOGRAPHY) from None
    key = bytes.fromhex(settings.key.get_secret_value())
    iv = settings.iv
    mode = modes.CBC(bytes.fromhex(iv.get_secret_value())) if iv else modes.ECB()
    cipher: Cipher[modes.ECB | modes.CBC] = Cipher(algorithms.SM4(key), mode)
    try:
        cipher.encryptor()
    except UnsupportedAlgorithm:
        raise ValueError(
            "the OpenSSL that cryptography was built with has no SM4: install cryptography's "
            "own wheel (pip install --force-reinstall --only-binary :all: 'cryptography>=42')"
        ) from None
    return cipher


def _encrypted(value: Any, cipher: FieldCipher, name: str) -> str:
    """A JSON scalar's text, encrypted: a string as it is, ``true``/``false``, a number as the
    JSON body would carry it. RenderError names the field of an object or a list."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        text = orjson.dumps(value).decode("ascii")
    else:
        raise RenderError(f"{name}: holds a {type(value).__name__}, not a value to encrypt")
    return cipher.encrypt(text)


def _decrypted(value: Any, cipher: FieldCipher) -> Any:
    """A result field's text, decrypted; kept as it came when it is not a string or does not
    decrypt with this key."""
    if not isinstance(value, str):
        return value
    try:
        return cipher.decrypt(value)
    except ValueError:
        return value
