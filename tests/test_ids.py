"""Case and event ids: ULID layout in Crockford base32, sorting by creation time."""

from __future__ import annotations

import pytest

from gateway import ids

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def reference(ms: int, rand: int) -> str:
    value, out = (ms << 80) | rand, []
    for _ in range(26):
        value, digit = divmod(value, 32)
        out.append(CROCKFORD[digit])
    return "".join(reversed(out))


@pytest.mark.parametrize("now", [0.0, 1.5, 1_800_000_000.123, (2**48 - 1) / 1000])
@pytest.mark.parametrize("rand", [b"\0" * 10, b"\xff" * 10, bytes(range(10))])
def test_encoding_matches_the_ulid_layout(
    now: float, rand: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ids.os, "urandom", lambda n: rand)
    ms = int(now * 1000) & ((1 << 48) - 1)
    assert ids.new_id(now, "C") == "C" + reference(ms, int.from_bytes(rand, "big"))


def test_ids_sort_by_time_and_are_distinct() -> None:
    made = [ids.new_id(1_800_000_000 + i / 1000) for i in range(2000)]
    assert made == sorted(made)
    assert len(set(made)) == len(made)
