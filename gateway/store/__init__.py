"""Durable storage: the interface in :mod:`gateway.store.base`, one module per backend."""

from __future__ import annotations

from gateway.store.base import Store


async def open_store(url: str, *, synchronous: str = "FULL", pool_size: int = 10) -> Store:
    """Open the store a URL names: ``sqlite:///relative.db``, ``sqlite:////abs.db``, or
    ``postgresql://user@host/db`` (``postgres://`` too; ``pool_size`` connections at most)."""
    store: Store
    if url.startswith("sqlite://"):
        from gateway.store.sqlite import SqliteStore

        store = SqliteStore(sqlite_path(url), synchronous=synchronous)
    elif url.startswith(("postgresql://", "postgres://")):
        from gateway.store.postgres import PostgresStore

        store = PostgresStore(url, pool_size=pool_size)
    else:
        raise ValueError(f"gateway.store: unsupported store URL scheme in {url.split(':', 1)[0]!r}")
    await store.open()
    return store
    raise ValueError(f"gateway.store: unsupported store URL scheme in {url.split(':', 1)[0]!r}")


def sqlite_path(url: str) -> str:
    """``sqlite:///var/x.db`` → ``var/x.db``; ``sqlite:////abs/x.db`` → ``/abs/x.db``."""
    rest = url[len("sqlite://") :]
    if not rest.startswith("/") or rest == "/":
        raise ValueError(
            "gateway.store: a SQLite URL is sqlite:///relative.db or sqlite:////abs.db"
        )
    return rest[1:]
