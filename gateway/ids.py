"""Time-ordered identifiers for cases and events (ULID layout, Crockford base32)."""

from __future__ import annotations

import base64
import os

# RFC 4648 base32 to Crockford's alphabet (no I, L, O, U), which sorts like the numbers it encodes.
_TO_CROCKFORD = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
)


def new_id(now: float, prefix: str = "") -> str:
    """26 characters: 48 bits of milliseconds then 80 random bits; sorts by creation time.

    The 128 bits are read as a 130-bit number (two leading zero bits): 26 base32 digits, placed at
    the top of 17 bytes so that the encoder's first 26 digits are exactly they.
    """
    ms = int(now * 1000) & ((1 << 48) - 1)
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    digits = base64.b32encode((value << 6).to_bytes(17, "big"))[:26].translate(_TO_CROCKFORD)
    return prefix + digits.decode()
