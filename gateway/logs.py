"""Log records as text lines or as JSON lines, on stderr.

JSON lines suit log collectors (one object per line: ``time`` in UTC ISO 8601, ``level``,
``logger``, ``message``, and ``exception`` when a record carries one). What a record says is the
same in both forms; the rules of what may be logged (no ID number, name, phone, payload or secret)
hold for the message, whatever the form.
"""

from __future__ import annotations

import logging
import sys
import traceback
from datetime import UTC, datetime

import orjson

TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure(level: str, form: str = "text") -> None:
    """Send every record at ``level`` or above to stderr, as ``text`` or ``json`` lines (as
    :func:`logging.basicConfig` does: nothing changes where logging is configured already)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if form == "json" else logging.Formatter(TEXT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # aiosqlite logs every statement with its parameters at DEBUG: parameters can be a person's
    # data, which must never reach a log, whatever the log level.
    logging.getLogger("aiosqlite").setLevel(logging.INFO)


def failure(exc: BaseException) -> str:
    """An unexpected exception as its type and where it was raised, never its message: a message
    can quote the data being handled (a driver's error may echo a query argument)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    where = frames[-1]
    return f"{type(exc).__name__} at {where.filename}:{where.lineno}"
