"""Plumbing shared by the partner simulators, so each module keeps only its partner's dialect.

Every simulator needs the same few things and must get them right the same way: background
tasks that are never garbage-collected mid-flight nor left running after ``stop()``; a loop that a
crash restarts instead of leaving silently dead; an aiohttp server on a loopback port that tests
can start, address and stop; a report sender that batches, keeps order and retries with
backoff until the gateway acknowledges (nothing is ever dropped); and, for the JSON platforms,
the reading of a request that may come as an upload of materials (``multipart/form-data``: the
JSON body in one part, one file part per attachment) and the check that every uploaded file is one
the body's material list gives. Log records are written to the logger each simulator passes in,
so they keep their module's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp import BodyPartReader, hdrs, web

from gateway.signing import sign_headers

T = TypeVar("T")

INBOUND_PATH = "/v1/partners/{region}/inbound"


class BackgroundTasks:
    """The set of tasks a simulator owns: spawned, supervised, and cancelled and awaited together.

    The event loop keeps only weak references to tasks, so one nobody holds can vanish mid-flight;
    holding them here also lets ``cancel_all`` end every case timer and loop on stop, so a test
    never leaks a task into the next one. A task that dies of an exception is logged, not lost.
    """

    def __init__(self, log: logging.Logger, label: str, prefix: str = "") -> None:
        """``label`` names the simulator in log lines; ``prefix`` goes before every task name."""
        self._log = log
        self._label = label
        self._prefix = prefix
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Start ``coro`` as a task named ``prefix + name`` and keep it until it is done."""
        task = asyncio.get_running_loop().create_task(coro, name=self._prefix + name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._log.error("%s task %s failed", self._label, task.get_name(), exc_info=exc)

    async def supervised(
        self, loop_fn: Callable[[], Awaitable[None]], *, on_crash: Callable[[], None], what: str
    ) -> None:
        """Run ``loop_fn``, restarting it after a pause whenever it crashes, so it is never
        silently dead; ``on_crash`` counts the restart, ``what`` names the loop in the log."""
        while True:
            try:
                await loop_fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                on_crash()
                self._log.exception("%s crashed; restarting", what)
                await asyncio.sleep(0.1)

    async def cancel_all(self) -> None:
        """Cancel every task and wait until each has finished (exceptions are swallowed)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()


class LoopbackServer:
    """Serves :meth:`app` through an ``AppRunner`` on ``host:port``, with ``start`` / ``stop`` /
    ``url``, for the simulators that speak HTTP.

    A mixin rather than a member: the runner and the address stay attributes of the simulator
    (``_runner``, ``_url``), so code that sets ``_url`` on a simulator that is not running, to
    derive its adapter table, keeps working. Subclasses implement :meth:`app` and
    :meth:`_listening` (which logs under their own module's name).
    """

    _runner: web.AppRunner | None = None
    _url: str | None = None
    _session: aiohttp.ClientSession | None = None
    _tasks: BackgroundTasks

    def _with_loop(
        self,
        loop_fn: Callable[[], Awaitable[None]],
        *,
        name: str,
        what: str,
        on_crash: Callable[[], None],
    ) -> Callable[[web.Application], AsyncIterator[None]]:
        """An app cleanup context: a client session and ``loop_fn`` (supervised) start with the
        app; on teardown every background task is cancelled and awaited, then the session closed."""

        async def context(_app: web.Application) -> AsyncIterator[None]:
            self._session = aiohttp.ClientSession()
            self._tasks.spawn(self._tasks.supervised(loop_fn, on_crash=on_crash, what=what), name)
            try:
                yield
            finally:
                await self._tasks.cancel_all()
                await self._session.close()
                self._session = None

        return context

    def app(self) -> web.Application:
        """The aiohttp application to serve; its cleanup context owns the background work."""
        raise NotImplementedError

    def _listening(self) -> None:
        """Called once the server listens at :attr:`url`."""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve on ``host:port`` (0 picks a free port) and return the bound port."""
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()  # never leave a half-started runner behind
            raise
        self._runner = runner
        bound = int(runner.addresses[0][1])
        self._url = f"http://{host}:{bound}"
        self._listening()
        return bound

    async def stop(self) -> None:
        """Stop serving, cancel every background task and wait for them to finish."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()  # runs the app's cleanup context: the background teardown
        self._url = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("simulator is not started")
        return self._url


def set_up(event: asyncio.Event, up: bool) -> None:
    """Open or close the gate that every outgoing send waits on (how ``set_down`` holds them)."""
    if up:
        event.set()
    else:
        event.clear()


async def next_batch(queue: asyncio.Queue[T], window: float, limit: int) -> list[T]:
    """The first waiting item plus whatever else arrives within ``window`` seconds, up to
    ``limit``: fewer, larger messages under load, without delaying a lone item by more."""
    batch = [await queue.get()]
    deadline = asyncio.get_running_loop().time() + window
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout_at(deadline):
            while len(batch) < limit:
                batch.append(await queue.get())
    return batch


class SenderSettings(Protocol):
    """What the report sender reads from a simulator's settings (read live, as they may change)."""

    @property
    def region(self) -> str: ...
    @property
    def gateway_url(self) -> str | None: ...
    @property
    def key_id(self) -> str: ...
    @property
    def secret(self) -> str: ...
    @property
    def request_timeout(self) -> float: ...
    @property
    def retry_backoff(self) -> float: ...
    @property
    def retry_backoff_max(self) -> float: ...


async def send_until_acknowledged(
    post: Callable[[], Awaitable[bool]],
    settings: SenderSettings,
    *,
    up: asyncio.Event,
    rng: random.Random,
    counters: dict[str, int],
    items: int,
    noun: str = "reports",
) -> None:
    """Call ``post`` (one message of ``items`` reports or notices) until it succeeds, with
    jittered exponential backoff between tries.

    Nothing is dropped: a partner's report must reach the gateway however long that takes, and
    while the partner is down (``up`` cleared) it sends nothing at all. Failures are counted in
    ``counters["send_failures"]``; the message, once through, in ``counters["messages_sent"]``
    and its items in ``counters[f"{noun}_sent"]``.
    """
    delay = settings.retry_backoff
    while True:
        await up.wait()  # a platform that is down sends nothing
        if await post():
            counters["messages_sent"] += 1
            counters[f"{noun}_sent"] += items
            return
        counters["send_failures"] += 1
        await asyncio.sleep(delay * (0.5 + rng.random() / 2))
        delay = min(delay * 2, settings.retry_backoff_max)


async def post_signed(
    session: aiohttp.ClientSession,
    settings: SenderSettings,
    body: bytes,
    headers: Mapping[str, str],
    *,
    log: logging.Logger,
    label: str,
    count: int,
    noun: str,
) -> bool:
    """POST ``body`` to the gateway's inbound endpoint, signed as SPEC §5 says; True on a 2xx.

    Every failure (an HTTP error, a timeout, no connection) is logged without the body, which may
    name an applicant, and answered False so the caller backs off and tries again.
    """
    s = settings
    base = urlsplit(s.gateway_url or "")
    path = base.path.rstrip("/") + INBOUND_PATH.format(region=s.region)
    url = f"{base.scheme}://{base.netloc}{path}"
    signed = sign_headers(s.key_id, s.secret, "POST", path, body)
    signed.update(headers)
    timeout = aiohttp.ClientTimeout(total=s.request_timeout)
    try:
        async with session.post(url, data=body, headers=signed, timeout=timeout) as resp:
            await resp.read()
            if 200 <= resp.status < 300:
                return True
            log.warning("%s %s: gateway answered HTTP %d to %d %s",
                        label, s.region, resp.status, count, noun)  # fmt: skip
    except TimeoutError:
        log.warning("%s %s: gateway timed out", label, s.region)
    except aiohttp.ClientError as exc:
        log.warning("%s %s: gateway unreachable (%s)", label, s.region, type(exc).__name__)
    return False


# ---- uploads of materials (申请材料) ------------------------------------------------------------

MULTIPART = "multipart/form-data"


class UploadFields(Protocol):
    """The form fields of an upload, from a simulator's settings: the part holding the JSON
    body, and the name of every file part."""

    @property
    def multipart_body_field(self) -> str: ...
    @property
    def multipart_file_field(self) -> str: ...


class BadRequest(Exception):
    """A request that cannot be read: the HTTP status and the message to answer in the
    simulator's own dialect."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_request(
    request: web.Request, fields: UploadFields, max_bytes: int, *, parse_json: bool = True
) -> tuple[Any, list[dict[str, Any]]]:
    """The JSON body of a request and what is kept of the files uploaded with it
    (``{"name", "media_type", "sha256", "size"}``, never the content).

    A ``multipart/form-data`` request (told apart by its Content-Type) is read part by part; any
    other is JSON, with no files, and is read but not parsed (body None) unless ``parse_json``.
    BadRequest: 400 for a body that is not JSON or a malformed upload, 413 for one over
    ``max_bytes``.
    """
    if request.content_type != MULTIPART:
        raw = await request.read()
        if not parse_json:
            return None, []
        try:
            return orjson.loads(raw), []
        except orjson.JSONDecodeError:
            raise BadRequest(400, "请求体不是合法的 JSON") from None
    body_field, file_field = fields.multipart_body_field, fields.multipart_file_field
    body: Any = None
    files: list[dict[str, Any]] = []
    left = max_bytes
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise BadRequest(400, "表单部分不能嵌套 multipart")
            data = bytearray()
            while chunk := await part.read_chunk():
                data += chunk
                left -= len(chunk)
                if left < 0:
                    raise BadRequest(413, "请求体过大")
            if part.name == body_field and body is None:
                try:
                    body = orjson.loads(data)
                except orjson.JSONDecodeError:
                    raise BadRequest(400, f"{body_field} 部分不是合法的 JSON") from None
            elif part.name == file_field and part.filename:
                files.append({
                    "name": part.filename, "media_type": part.headers.get(hdrs.CONTENT_TYPE),
                    "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                })  # fmt: skip
            else:
                raise BadRequest(400, f"表单只应有一个 {body_field} 部分和 {file_field} 文件")
    except ValueError:
        raise BadRequest(400, "multipart 请求体格式错误") from None
    if body is None:
        raise BadRequest(400, f"缺少 {body_field} 部分")
    return body, files


def files_listed(body: Any, files: list[dict[str, Any]], counters: dict[str, int]) -> bool:
    """Whether every uploaded file's SHA-256 is one the body's material list gives; counted in
    ``counters``: ``attachments_verified`` (the files) or ``attachment_problems`` (the uploads)."""
    listed = body.get("attachments") if isinstance(body, dict) else None
    digests = {a.get("sha256") for a in listed or () if isinstance(a, dict)}
    ok = isinstance(listed, list) and all(f["sha256"] in digests for f in files)
    name = "attachments_verified" if ok else "attachment_problems"
    counters[name] = counters.get(name, 0) + (len(files) if ok else 1)
    return ok
