"""``GET /docs``: the API as a page to read, checked in a real browser (headless Chromium).

Chromium comes with ``make test`` (Debian's package); without it the browser test is skipped
with the reason, except under ``CI=true``, where a missing browser is a failure.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.http.app import ROUTES
from tests.support import world


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        reason = "no Chromium to render the page (make test installs Debian's chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: the browser test must run, not skip)")
        pytest.skip(reason)
    return found


def _rendered(browser: str, url: str, profile: Path) -> str:
    """The page's DOM after the browser loaded and laid it out."""
    argv = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={profile}", "--dump-dom", url]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, timeout=90, check=True)
    return done.stdout.decode("utf-8")


async def test_every_operation_and_every_schema_it_links_to_is_on_the_page(
    tmp_path: Path,
) -> None:
    browser = _chromium()
    async with world(tmp_path) as w:
        url = w.origin.base + "/docs"
        async with w.session.get(url) as r:
            assert r.status == 200 and r.content_type == "text/html" and r.charset == "utf-8"
        dom = await asyncio.to_thread(_rendered, browser, url, tmp_path / "profile")
    assert "<title>Tongban cross-province gateway — API</title>" in dom
    for route in ROUTES:
        assert f'id="op-{route.name}"' in dom, route.path
    for target in set(re.findall(r'href="#(schema-[A-Za-z0-9_]+)"', dom)):
        assert f'id="{target}"' in dom, f"a link to #{target} leads nowhere"
    submission = dom[dom.index('id="schema-CaseSubmission"') :]
    assert "<code>request_id</code>" in submission.split("</section>")[0]
    assert 'href="/openapi.json"' in dom
