"""Durable storage: the interface in :mod:`gateway.store.base`, one module per backend."""

from __future__ import annotations

from gateway.store.base import Store


async def open_store(url: str, *, synchronous: str = "FULL") -> Store:
    """Open the store a URL names: ``sqlite:///relative.db``, ``sqlite:////abs.db``."""
    if url.startswith("sqlite://"):
        from gateway.store.sqlite import SqliteStore

        store = SqliteStore(sqlite_path(url), synchronous=synchronous)
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
