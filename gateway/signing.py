"""Request signing (SPEC §5): the signed string, HMAC-SHA256 / HMAC-SM3, and the checks.

Pure functions plus one small stateful piece, :class:`NonceCache`, which remembers the nonces seen
inside the timestamp window so a captured request cannot be replayed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

KEY_HEADER = "X-Tongban-Key"
TIMESTAMP_HEADER = "X-Tongban-Timestamp"
NONCE_HEADER = "X-Tongban-Nonce"
SIGNATURE_HEADER = "X-Tongban-Signature"

WINDOW_SECONDS = 300
NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
SIGNATURE_RE = re.compile(r"(hmac-sha256|hmac-sm3)=([0-9a-f]{64})")
TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")
# Digest names as hashlib knows them, per signature scheme.
_DIGESTS = {"hmac-sha256": "sha256", "hmac-sm3": "sm3"}


class SignatureError(Exception):
    """A request's signature headers are missing, malformed, stale, replayed or wrong.

    The message is safe to show the caller: it never contains the secret or the body.
    """


def body_digest(body: bytes, scheme: str = "hmac-sha256") -> str:
    """Lowercase hex digest of the raw body (SHA-256 or SM3, by scheme)."""
    return hashlib.new(_DIGESTS[scheme], body).hexdigest()


def string_to_sign(
    method: str, path_qs: str, timestamp: str, nonce: str, body: bytes, scheme: str
) -> bytes:
    """The five lines of SPEC §5, joined by ``\\n``."""
    lines = (method.upper(), path_qs, timestamp, nonce, body_digest(body, scheme))
    return "\n".join(lines).encode()


def signature(secret: str, message: bytes, scheme: str = "hmac-sha256") -> str:
    """``scheme=<hex>`` over ``message`` with the shared secret as UTF-8 bytes."""
    mac = hmac.new(secret.encode(), message, _DIGESTS[scheme]).hexdigest()
    return f"{scheme}={mac}"


def sign_headers(
    key_id: str,
    secret: str,
    method: str,
    path_qs: str,
    body: bytes = b"",
    *,
    scheme: str = "hmac-sha256",
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The four headers that sign one request; used by callers, simulators and callbacks."""
    ts = str(int(time.time() if now is None else now))
    nonce = nonce or secrets.token_urlsafe(18)
    message = string_to_sign(method, path_qs, ts, nonce, body, scheme)
    return {
        KEY_HEADER: key_id,
        TIMESTAMP_HEADER: ts,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: signature(secret, message, scheme),
    }


@dataclass(frozen=True)
class SignedRequest:
    """The parts of a request that the signature covers."""

    method: str
    path_qs: str
    headers: Mapping[str, str]
    body: bytes


class SharedNonces(Protocol):
    """Nonces remembered where every gateway process sees them (a shared store)."""

    async def remember_nonce(self, key_id: str, nonce: str, now: float) -> bool:
        """True if the nonce is new to every process (and remember it); False for a replay."""
        ...


class NonceCache:
    """Nonces seen within the window, per key id; bounded so a flood cannot exhaust memory.

    When full, the oldest entries go first; an entry older than the window is useless anyway,
    since its timestamp would be refused.
    """

    def __init__(self, window: int = WINDOW_SECONDS, max_entries: int = 1_000_000) -> None:
        self._window = window
        self._max = max_entries
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    def check_and_remember(self, key_id: str, nonce: str, now: float) -> bool:
        """True if the nonce is new (and remember it); False if seen inside the window."""
        self._expire(now)
        token = (key_id, nonce)
        if token in self._seen:
            return False
        self._seen[token] = now
        if len(self._seen) > self._max:
            self._seen.popitem(last=False)
        return True

    def _expire(self, now: float) -> None:
        horizon = now - 2 * self._window
        while self._seen:
            token, seen_at = next(iter(self._seen.items()))
            if seen_at >= horizon:
                break
            del self._seen[token]


def verify(
    request: SignedRequest,
    keys: Mapping[str, str],
    nonces: NonceCache,
    now: float,
    window: int = WINDOW_SECONDS,
) -> str:
    """Check a request's signature; return its key id or raise :class:`SignatureError`.

    ``keys`` maps key id to shared secret. The nonce is remembered only once the signature
    is proven, so nobody can burn another caller's nonces with forged requests.
    """
    h = request.headers
    key_id = h.get(KEY_HEADER)
    ts = h.get(TIMESTAMP_HEADER)
    nonce = h.get(NONCE_HEADER)
    sig = h.get(SIGNATURE_HEADER)
    missing = [
        name
        for name, v in (
            (KEY_HEADER, key_id),
            (TIMESTAMP_HEADER, ts),
            (NONCE_HEADER, nonce),
            (SIGNATURE_HEADER, sig),
        )
        if not v
    ]
    if missing:
        raise SignatureError(f"missing header(s): {', '.join(missing)}")
    assert key_id and ts and nonce and sig
    secret = keys.get(key_id)
    if secret is None:
        raise SignatureError(f"unknown key id in {KEY_HEADER}")
    if not TIMESTAMP_RE.fullmatch(ts) or abs(int(ts) - now) > window:
        raise SignatureError(f"{TIMESTAMP_HEADER} is outside ±{window} s of the gateway clock")
    if not NONCE_RE.fullmatch(nonce):
        raise SignatureError(f"{NONCE_HEADER} must be 16-64 characters of [A-Za-z0-9_-]")
    m = SIGNATURE_RE.fullmatch(sig)
    if not m:
        raise SignatureError(f"{SIGNATURE_HEADER} must be hmac-sha256=<hex> or hmac-sm3=<hex>")
    scheme = m.group(1)
    expected = signature(
        secret,
        string_to_sign(request.method, request.path_qs, ts, nonce, request.body, scheme),
        scheme,
    )
    if not hmac.compare_digest(expected.encode(), sig.encode()):
        raise SignatureError("signature does not match")
    if not nonces.check_and_remember(key_id, nonce, now):
        raise SignatureError(f"{NONCE_HEADER} was already used")
    return key_id
