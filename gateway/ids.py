"""Time-ordered identifiers for cases and events (ULID layout, Crockford base32)."""

from __future__ import annotations

import os

# Crockford's alphabet (no I, L, O, U), which sorts like the numbers it encodes; every pair of
# its digits, so that ten bits at a time are one lookup (``base64.b32encode`` is pure Python in
# the versions we support and cost most of an id).
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = tuple(a + b for a in _ALPHABET for b in _ALPHABET)
_SHIFTS = tuple(range(120, -1, -10))  # 13 pairs of digits, from the top
_MS = (1 << 48) - 1


def new_id(now: float, prefix: str = "") -> str:
    """26 characters: 48 bits of milliseconds then 80 random bits; sorts by creation time.

    The 128 bits are read as a 130-bit number (two leading zero bits): 26 base32 digits.
    """
    value = ((int(now * 1000) & _MS) << 80) | int.from_bytes(os.urandom(10), "big")
    return prefix + "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])
