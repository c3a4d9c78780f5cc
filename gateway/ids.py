"""Time-ordered identifiers for cases and events (ULID layout, Crockford base32)."""

from __future__ import annotations

import os

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _b32(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        out.append(_ALPHABET[rem])
    return "".join(reversed(out))


def new_id(now: float, prefix: str = "") -> str:
    """26 characters: 48 bits of milliseconds then 80 random bits; sorts by creation time."""
    ms = int(now * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    return prefix + _b32(ms, 10) + _b32(rand, 16)
