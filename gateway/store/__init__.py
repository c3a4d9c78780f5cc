"""Durable storage: the interface in :mod:`gateway.store.base`, one module per backend."""

from __future__ import annotations

import sqlite3
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from gateway.store.base import Store

Role = Literal["all", "api", "workers"]  # which parts of the gateway one process runs


class StoreUnavailable(Exception):
    """The store could not be opened; the message names it, without any password."""


async def open_store(
    url: str, *, synchronous: str = "FULL", pool_size: int = 10, role: Role = "all"
) -> Store:
    """Open the store a URL names: ``sqlite:///relative.db``, ``sqlite:////abs.db``, or
    ``postgresql://user@host/db`` (``postgres://`` too; ``pool_size`` connections at most).
    ``role``: the parts of the gateway this process runs (on SQLite, one process per part)."""
    store: Store
    if url.startswith("sqlite://"):
        from gateway.store.sqlite import BOTH_PARTS, SqliteStore

        parts = BOTH_PARTS if role == "all" else frozenset({role})
        store = SqliteStore(sqlite_path(url), synchronous=synchronous, parts=parts)
    elif url.startswith(("postgresql://", "postgres://")):
        from gateway.store.postgres import PostgresStore

        store = PostgresStore(url, pool_size=pool_size)
    else:
        raise ValueError(f"gateway.store: unsupported store URL scheme in {url.split(':', 1)[0]!r}")
    try:
        await store.open()
    except (OSError, sqlite3.Error, RuntimeError) as exc:
        raise StoreUnavailable(f"cannot open the store {redacted(url)}: {_reason(exc)}") from None
    except Exception as exc:  # the driver's own errors (asyncpg's: authentication, no database…)
        if type(exc).__module__.split(".")[0] != "asyncpg":
            raise
        raise StoreUnavailable(f"cannot open the store {redacted(url)}: {_reason(exc)}") from None
    return store


def redacted(url: str) -> str:
    """The URL with its password, if any, replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def sqlite_path(url: str) -> str:
    """``sqlite:///var/x.db`` → ``var/x.db``; ``sqlite:////abs/x.db`` → ``/abs/x.db``."""
    rest = url[len("sqlite://") :]
    if not rest.startswith("/") or rest == "/":
        raise ValueError(
            "gateway.store: a SQLite URL is sqlite:///relative.db or sqlite:////abs.db"
        )
    return rest[1:]
