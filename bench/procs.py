"""Subprocesses of a benchmark run: started with a log file each, always terminated at the end."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A free loopback port (bound then released; the race with other programs is negligible)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (all its threads), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (a SQLite gateway's writer process, say)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def family_cpu_seconds(pid: int) -> float:
    """CPU time of a live process and of its live children: a gateway and its writer."""
    return cpu_seconds(pid) + sum(cpu_seconds(c) for c in children(pid))


def status_kb(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/PID/status`` (VmHWM: peak resident set; VmRSS: current)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """A plain GET on loopback: (status, body); status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())
    except (OSError, urllib.error.URLError):
        return 0, b""


def get_json(url: str, timeout: float = 5.0) -> Any:
    status, body = get(url, timeout)
    if status != 200:
        raise RuntimeError(f"GET {url} answered {status or 'nothing'}")
    return orjson.loads(body)


class Proc:
    """One started subprocess and its log."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.popen = subprocess.Popen(
            argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``grace`` seconds."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()

    def wait_ready(self, url: str, timeout: float = 30.0) -> None:
        """Poll ``url`` until it answers 200; fail early if the process dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            if get(url, timeout=1.0)[0] == 200:
                return
            time.sleep(0.05)
        raise RuntimeError(
            f"{self.name} not ready at {url} after {timeout:.0f} s:\n{self.log_tail()}"
        )

    def wait_log(self, text: str, timeout: float = 30.0) -> None:
        """Poll this process's own log (its stdout and stderr) until it contains ``text``; fail
        early if the process dies. Unlike :meth:`wait_ready`, this says that *this* process got
        there, also when several processes share one port and any of them may answer a URL."""
        needle = text.encode()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if needle in self.log_path.read_bytes():
                    return
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            time.sleep(0.05)
        raise RuntimeError(
            f"{self.name} did not log {text!r} within {timeout:.0f} s:\n{self.log_tail()}"
        )


class Processes:
    """Every subprocess of a run; leaving the ``with`` block terminates all still running."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list[str]) -> Proc:
        proc = Proc(name, argv, self.log_dir / f"{name}.log")
        self.procs.append(proc)
        return proc

    def stop(self, *procs: Proc) -> None:
        for proc in procs:
            proc.stop()

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop(grace=10.0)
