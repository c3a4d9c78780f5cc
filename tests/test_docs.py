"""The committed API document is the one the code generates: docs cannot drift from the API."""

from __future__ import annotations

import json

from gateway import __version__
from gateway.http.openapi import build
from tests.support import ROOT


def test_committed_openapi_matches_the_code() -> None:
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text(encoding="utf-8"))
    assert committed == json.loads(json.dumps(build(__version__))), (
        "docs/openapi.json is stale: regenerate it with `tongban openapi > docs/openapi.json`"
    )


def test_readme_names_the_two_setup_commands_and_every_doc_exists() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make run" in readme and "make test" in readme
    for doc in ("docs/operator-guide.md", "docs/adapter-guide.md", "docs/openapi.json"):
        assert doc in readme
        assert (ROOT / doc).exists(), doc
