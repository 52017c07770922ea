"""The ASGI application `make run` serves: async views on Django's ASGI handler, the rest on
its WSGI handler in a fixed pool of threads (`SyncViews`).

Why not Django's ASGI handler for everything: it runs each request's sync code on a thread
of its own, so a persistent database connection never serves a second request (Django
ticket #33497). Every API call and page then opened a new connection, which on SQLite also
means a cold page cache, and on PostgreSQL a new login. Sync views here run on a fixed pool,
where each thread keeps its connection (CONN_MAX_AGE). Only views written as coroutines (the
live log streams) need the event loop, and they get it.

On shutdown (the ASGI lifespan event uvicorn sends) each pool thread closes its database
connections, so PostgreSQL sees clean logouts rather than dropped sockets.
"""

import asyncio
import gc
import io
import json
import os
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from inspect import iscoroutinefunction

from a2wsgi.wsgi import build_environ
from django.conf import settings
from django.core.asgi import get_asgi_application
from django.core.wsgi import get_wsgi_application
from django.db import connections
from django.urls import Resolver404, get_resolver, resolve

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]
# The largest request body read, as Django's own limit on a body it reads (2.5 MB): no
# endpoint takes more (runbook YAML, run params), and a larger one is refused before it is
# read into memory, so many large requests at once cannot exhaust it.
MAX_BODY = settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 2_621_440
# What a process holds of request bodies at once, from their first byte read to the end of
# their response: without a bound, many clients sending large bodies slowly (before anything
# authenticates them) could fill its memory. Over it, a request is refused with 503.
MAX_BUFFERED = 25 * MAX_BODY


class SyncViews:
    """Django's WSGI handler on `threads` threads, with one hand-off per response.

    Written instead of a2wsgi's WSGIMiddleware, which we used first: it blocks the view's
    thread until the event loop has sent each part of the response, three round trips a
    request. With more than one thread per process those threads and the event loop queue
    for the GIL, and measured under a steady 500 requests a second (bench/api.py) a process
    sat at 60 % CPU with 100 ms latencies. Here the view's thread builds the whole response
    and hands it over once.

    Streamed responses (artifact and log downloads) are read on a thread of their own, one
    per response, so a slow client never holds a view thread and a stream that reads the
    database keeps one connection from start to end; that thread closes its connections
    when the stream ends. A HEAD request's stream is not read, and a stream stops when its
    client goes away.
    """

    def __init__(self, threads: int) -> None:
        self.handler = get_wsgi_application()
        self.threads = threads
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="django")
        self.buffered = BodyBudget()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        try:
            body = await _read_body(scope, receive, self.buffered)
        except BodyTooLarge:
            await _send_error(
                send, 413, "bad-request", f"The request body is over {MAX_BODY:,} bytes."
            )
            return
        except ServerBusy:
            await _send_error(send, 503, "unavailable", BUSY_MESSAGE, retry_after=1)
            return
        if body is None:  # the client went away
            return
        try:
            await self._serve(scope, receive, send, body)
        finally:
            self.buffered.release(len(body))

    async def _serve(self, scope: dict, receive: Callable, send: Callable, body: bytes) -> None:
        environ = build_environ(scope, io.BytesIO(body))
        environ["CONTENT_LENGTH"] = str(len(body))  # also for a chunked body
        loop = asyncio.get_running_loop()
        responding = loop.run_in_executor(self.executor, self.respond, environ)
        try:
            status, headers, content, stream = await asyncio.shield(responding)
        except asyncio.CancelledError:
            responding.add_done_callback(_close_unsent)
            raise
        if stream is None:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": content})
            return
        gone = threading.Event()
        if scope["method"] == "HEAD":
            gone.set()  # headers only: the stream is closed unread
        watcher = asyncio.create_task(_watch_disconnect(receive, gone))
        pumping = False
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            pumping = True
            await _run_in_thread(_pump, stream, send, loop, gone)
        finally:
            watcher.cancel()
            if not pumping:
                threading.Thread(target=_close, args=(stream,), name="stream").start()

    def respond(self, environ: dict) -> tuple[int, list, bytes, object | None]:
        """Runs the view; returns the status, headers, and the body or the stream to send."""
        started: list = []

        def start_response(status: str, headers: list, exc_info: object = None) -> Callable:
            started[:] = [int(status.split(" ", 1)[0]), _encode(headers)]
            return _no_write

        response = self.handler(environ, start_response)
        if getattr(response, "streaming", False):
            return *started, b"", response
        try:
            content = b"".join(response)
        finally:
            response.close()  # sends request_finished, as a WSGI server would
        return *started, content, None

    def close_connections(self) -> None:
        """Closes the database connections of every view thread. A pool has no way to run a
        task on each of its threads, so each task waits at a barrier until `threads` of them
        run at once, which puts one on every thread."""
        barrier = threading.Barrier(self.threads)

        def close() -> None:
            barrier.wait(timeout=30)
            connections.close_all()

        for task in [self.executor.submit(close) for _ in range(self.threads)]:
            task.result()


def _pump(stream, send: Callable, loop: asyncio.AbstractEventLoop, gone: threading.Event):
    """Sends a streamed response chunk by chunk, waiting for each to be sent (so a slow
    client slows the reading, not the memory), then closes it and this thread's database
    connections."""
    try:
        chunks = iter(stream)
        while not gone.is_set() and (chunk := next(chunks, None)) is not None:
            message = {"type": "http.response.body", "body": chunk, "more_body": True}
            asyncio.run_coroutine_threadsafe(send(message), loop).result()
        end = {"type": "http.response.body", "body": b""}
        asyncio.run_coroutine_threadsafe(send(end), loop).result()
    finally:
        _close(stream)


def _close(stream) -> None:
    """Closes a streamed response (which sends request_finished) and the database
    connections of the thread that read it."""
    try:
        stream.close()
    finally:
        connections.close_all()


def _close_unsent(responding: asyncio.Future) -> None:
    """Closes the stream of a response whose request was cancelled while its view ran."""
    if responding.cancelled() or responding.exception() is not None:
        return
    stream = responding.result()[3]
    if stream is not None:
        threading.Thread(target=_close, args=(stream,), name="stream").start()


async def _run_in_thread(function: Callable, *args) -> None:
    """Runs `function` on a new thread and waits for it; it finishes even if this is
    cancelled (it closes what it opened)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def run() -> None:
        try:
            function(*args)
        except BaseException as error:  # reported to the awaiting task below
            loop.call_soon_threadsafe(_settle, done, error)
        else:
            loop.call_soon_threadsafe(_settle, done, None)

    threading.Thread(target=run, name="stream", daemon=True).start()
    await asyncio.shield(done)


def _settle(done: asyncio.Future, error: BaseException | None) -> None:
    if done.cancelled():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


async def _watch_disconnect(receive: Callable, gone: threading.Event) -> None:
    """Sets `gone` when the client disconnects (uvicorn's send() then does nothing)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()


class BodyTooLarge(Exception):
    pass


class ServerBusy(Exception):
    pass


BUSY_MESSAGE = "The server is holding too many request bodies; try again in a moment."


class BodyBudget:
    """Bytes of request bodies a process holds, against MAX_BUFFERED. Only the event loop's
    thread uses it, so it needs no lock."""

    def __init__(self) -> None:
        self.held = 0

    def fits(self, size: int) -> bool:
        return self.held + size <= MAX_BUFFERED

    def take(self, size: int) -> None:
        if not self.fits(size):
            raise ServerBusy
        self.held += size

    def release(self, size: int) -> None:
        self.held -= size


async def _read_body(scope: dict, receive: Callable, budget: BodyBudget) -> bytes | None:
    """The request body, or None if the client went away. A body over MAX_BODY (as its
    Content-Length says, or as it arrives) is refused before it is read into memory, and
    so is one that would take the process over MAX_BUFFERED (ServerBusy). What is returned
    stays taken from `budget` until the caller releases it."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length" and value.isdigit():
            # More than 18 digits is more than any body; int() would refuse over 4,300.
            declared = int(value) if len(value) <= 18 else MAX_BODY + 1
            if declared > MAX_BODY:
                raise BodyTooLarge
            if not budget.fits(declared):
                raise ServerBusy
    parts, size = [], 0
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                budget.release(size)
                return None
            chunk = message.get("body", b"")
            if size + len(chunk) > MAX_BODY:
                raise BodyTooLarge
            budget.take(len(chunk))
            parts.append(chunk)
            size += len(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)
    except BaseException:  # refused, or the task was cancelled: nothing is held any more
        budget.release(size)
        raise


async def _send_error(
    send: Callable, status: int, code: str, message: str, *, retry_after: int | None = None
) -> None:
    """The API's error body, sent before Django sees the request."""
    body = {"error": code, "message": message, "details": {}}
    headers = [(b"content-type", b"application/json")]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def _encode(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin1"), value.encode("latin1")) for name, value in headers]


def _no_write(data: bytes) -> None:
    raise RuntimeError("the WSGI write() callable is not supported; return the body instead")


def build_application(threads: int) -> ASGIApp:
    django_asgi = get_asgi_application()  # sets Django up; the WSGI handler needs it too
    sync_views = SyncViews(threads)

    @lru_cache(maxsize=4096)
    def is_async(path: str) -> bool:
        try:
            return iscoroutinefunction(resolve(path).func)
        except Resolver404:
            return False

    async def application(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send, sync_views)
        elif scope["type"] == "http" and not is_async(scope["path"]):
            await sync_views(scope, receive, send)
        else:
            await django_asgi(scope, receive, send)

    return application


def settle() -> None:
    """Imports every view, then moves what the process holds by now (modules, classes, URL
    patterns: about 150,000 objects) out of the garbage collector's sight with gc.freeze().

    Python's oldest-generation collection walks every tracked object: with all of that in it,
    each one stopped the process for 50-75 ms, which a request that arrived meanwhile waited
    out. Frozen, it walks only what requests have left behind (a few ms). Nothing frozen is
    garbage: it lives as long as the process."""
    get_resolver().url_patterns  # noqa: B018 - the property imports every URLconf and view
    gc.collect()
    gc.freeze()


async def lifespan(receive: Callable, send: Callable, sync_views: SyncViews) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            settle()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await asyncio.to_thread(sync_views.close_connections)
            await send({"type": "lifespan.shutdown.complete"})
            return


# One thread per process: with more, the threads and the event loop contend for the GIL and
# latency grows while the CPU idles (docs/benchmarks.md); concurrency comes from processes.
application = build_application(int(os.environ.get("STEPWISE_WEB_THREADS", "1")))
