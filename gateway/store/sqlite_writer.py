"""The SQLite writer as a process of its own, and the client the store talks to it through.

Why a process and not a thread: a writer thread shares the GIL with the event loop. Each SQLite
statement gives the GIL up and must win it back from a loop busy with HTTP, so under load a
group commit that takes about 2 ms alone took 11-13 ms, and the accept rate was bound by it.
A process has an interpreter of its own; the loop only pickles each group once and reads one
answer back, on pipes it watches itself (no helper thread in the gateway's process).

The protocol is a pair of pipes (the child's stdin and stdout) carrying length-prefixed pickles:
a request ``(name, args)`` and, in the same order, an answer ``(True, value)`` or ``(False,
exception)``. The child serves one request at a time, in order. It lives exactly as long as its
parent holds the pipe: it ignores SIGINT and SIGTERM (the parent decides when writing stops) and
leaves when its stdin closes, so a parent killed with SIGKILL leaves no writer behind, and a
transaction under way is finished or rolled back by SQLite, never half-written.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import pickle
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from gateway.store.base import StoreWriteFailed

HEADER = 8  # bytes of big-endian length before each pickle
ROOT = str(Path(__file__).resolve().parents[2])  # where the gateway package can be imported
STOP_TIMEOUT = 10.0  # seconds a closing writer may take before it is killed


class WriterProcess:
    """The parent's end: start the writer, call it, stop it.

    If the writer dies, the calls waiting on it fail with :class:`StoreWriteFailed` (whether the
    transaction under way committed is unknown, and every caller treats that as "retry"), and the
    next call starts a new writer."""

    def __init__(self, path: str, synchronous: str, clear_leases: bool) -> None:
        self._open_args = (path, synchronous, clear_leases)
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._starting = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        """The writer process's id while it runs."""
        return self._proc.pid if self._alive() and self._proc is not None else None

    async def start(self) -> list[int]:
        """Start the writer and open the database; the migrations it applied."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (ROOT, env.get("PYTHONPATH"))))
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.store.sqlite_writer",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read_answers(), name="sqlite-writer-answers")
        applied: list[int] = await self._send("open", *self._open_args)
        return applied

    async def call(self, name: str, *args: Any) -> Any:
        """``name(*args)`` in the writer (``transaction`` or ``publish``, see
        :mod:`gateway.store.sqlite_writes`); its value, or its exception."""
        if not self._alive():
            async with self._starting:
                if not self._alive():
                    await self._stop_process()
                    await self.start()
        return await self._send(name, *args)

    async def stop(self) -> None:
        if self._alive():
            with contextlib.suppress(StoreWriteFailed):
                await self._send("close")
        await self._stop_process()

    def _alive(self) -> bool:
        return (
            self._proc is not None
            and self._proc.returncode is None
            and self._reader is not None
            and not self._reader.done()
        )

    async def _send(self, name: str, *args: Any) -> Any:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise StoreWriteFailed("the store's writer is not running")
        frame = _frame((name, args))  # before the answer waits: a failure here changes nothing
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append(answer)
        try:
            proc.stdin.write(frame)
            await proc.stdin.drain()
        except (ConnectionError, RuntimeError):
            pass  # the writer is gone: the answer reader fails what waits
        return await answer

    async def _read_answers(self) -> None:
        """Settle the waiting calls in order; when the writer's output ends, fail the rest."""
        assert self._proc is not None and self._proc.stdout is not None
        out = self._proc.stdout
        try:
            while True:
                size = int.from_bytes(await out.readexactly(HEADER), "big")
                ok, value = pickle.loads(await out.readexactly(size))
                answer = self._waiting.popleft()
                if answer.done():  # its caller was cancelled; the write stands
                    continue
                if ok:
                    answer.set_result(value)
                else:
                    answer.set_exception(value)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            while self._waiting:
                answer = self._waiting.popleft()
                if not answer.done():
                    answer.set_exception(StoreWriteFailed("the store's writer stopped"))

    async def _stop_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None


# ---- the child ---------------------------------------------------------------------------------


def _read(stream: IO[bytes]) -> tuple[str, tuple[Any, ...]] | None:
    head = stream.read(HEADER)
    if len(head) < HEADER:
        return None
    request: tuple[str, tuple[Any, ...]] = pickle.loads(stream.read(int.from_bytes(head, "big")))
    return request


def _frame(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(HEADER, "big") + data


def _answer(stream: IO[bytes], ok: bool, value: Any) -> None:
    try:
        frame = _frame((ok, value))
    except Exception:  # an exception that cannot be pickled goes back as its type alone
        frame = _frame((False, RuntimeError(type(value).__name__)))
    stream.write(frame)
    stream.flush()


def serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """Answer requests until the input ends or ``close`` is asked."""
    from gateway.store import sqlite_writes as w

    calls: dict[str, Callable[..., Any]] = {
        "transaction": w.transaction_compact,
        "publish": w.publish,
    }
    writer: w.Writer | None = None
    while (request := _read(requests)) is not None:
        name, args = request
        try:
            if name == "open":
                path, synchronous, clear_leases = args
                writer = w.Writer(path, synchronous)
                value: Any = writer.in_turn(w.prepare, clear_leases)
            elif writer is None:
                raise StoreWriteFailed("the store's writer is not open")
            elif name == "close":
                writer.close()
                writer, value = None, None
            else:
                value = writer.in_turn(calls[name], *args)
        except Exception as exc:
            _answer(answers, False, exc)
        else:
            _answer(answers, True, value)
    if writer is not None:
        writer.close()


def main() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print goes to stderr, never into the answers
    serve(sys.stdin.buffer, answers)


if __name__ == "__main__":
    main()
