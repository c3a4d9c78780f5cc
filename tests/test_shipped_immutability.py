"""The shipped contract list changes only by new versions and status changes.

``tests/data/published_versions.json`` holds the content of every version the shipped list has
published. A store that loaded an earlier shipped list refuses a list that alters one of them,
so the shipped folder must never edit a published version in place: a change is a new version.

After adding versions, record them (and only then) with::

    python -m tests.test_shipped_immutability
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway import revisions
from gateway.contracts import ContractList
from tests.support import CONTRACTS

SNAPSHOT = Path(__file__).parent / "data" / "published_versions.json"


def snapshot(lst: ContractList) -> dict[str, Any]:
    contents = revisions.published_contents(lst)
    return {f"{code} v{n}": content for (code, n), content in sorted(contents.items())}


def recorded() -> dict[tuple[str, int], dict[str, Any]]:
    raw = json.loads(SNAPSHOT.read_text("utf-8"))
    out = {}
    for key, content in raw.items():
        code, _, number = key.rpartition(" v")
        out[(code, int(number))] = content
    return out


def test_no_published_version_was_edited_in_place() -> None:
    shipped = ContractList.load(CONTRACTS)
    problems = revisions.immutability_errors(recorded(), shipped)
    assert problems == [], "a published version changed: publish a new version instead"


def test_every_published_version_is_recorded() -> None:
    shipped = ContractList.load(CONTRACTS)
    missing = set(revisions.published_contents(shipped)) - set(recorded())
    assert not missing, (
        f"record the new versions: python -m tests.test_shipped_immutability ({missing})"
    )


if __name__ == "__main__":
    text = json.dumps(snapshot(ContractList.load(CONTRACTS)), ensure_ascii=False, indent=1,
                      sort_keys=True)  # fmt: skip
    SNAPSHOT.write_text(text + "\n", "utf-8")
