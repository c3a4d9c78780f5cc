"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support import pg_schema


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The gateway store a ``world(...)`` test runs on, once per backend: a SQLite file in
    ``tmp_path``, or a PostgreSQL schema of the test's own (skipped without a server, except
    under ``CI=true``, where it fails)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/gw.db"
        return
    async with pg_schema() as dsn:
        yield dsn
