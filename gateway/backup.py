"""``tongban backup``: a consistent copy of the SQLite store, taken while the gateway runs.

SQLite's online backup copies the database under one read transaction: the gateway goes on
writing meanwhile (in WAL mode a reader never blocks the writer), and the copy holds one
consistent state with every write committed before it began, including those still in the
``-wal`` file, which a plain ``cp`` of ``tongban.db`` would miss. The copy is written beside its
destination, checked (``PRAGMA integrity_check``), made a single self-contained file, and only
then renamed into place, so a destination that exists is always a whole, checked backup.
Nothing beyond Python's own ``sqlite3`` is needed. A PostgreSQL store is backed up with
``pg_dump``.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path


class BackupError(Exception):
    """Why no backup was written (the message names paths, never data)."""


@dataclass(frozen=True)
class Backup:
    path: Path
    size: int
    schema_version: int
    cases: int


def backup(source: Path, dest: Path) -> Backup:
    """Copy the store at ``source`` to ``dest``, which must not exist yet."""
    if not source.is_file():
        raise BackupError(f"no store at {source}")
    if dest.exists():
        raise BackupError(f"{dest} exists already; give a new file name")
    partial = dest.with_name(dest.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        found = _copy(source, partial)
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)
    _sync_folder(dest.parent)
    return Backup(dest, dest.stat().st_size, *found)


def _copy(source: Path, partial: Path) -> tuple[int, int]:
    src = sqlite3.connect(source, isolation_level=None)
    out = sqlite3.connect(partial, isolation_level=None)
    try:
        src.execute("PRAGMA busy_timeout=10000")
        src.backup(out)
        check = out.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            raise BackupError(f"the copy failed its integrity check: {check}")
        version = out.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        cases = out.execute("SELECT count(*) FROM cases").fetchone()[0]
        out.execute("PRAGMA journal_mode=DELETE")  # one file: no -wal to carry along
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{source} could not be copied: {exc}") from None
    finally:
        out.close()
        src.close()
    return int(version or 0), int(cases)


def _sync_folder(folder: Path) -> None:
    """The rename is durable only once the folder's entry is on disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
