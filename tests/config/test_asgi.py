"""config/asgi.py: sync views on a fixed thread pool that keeps its connections, async
views (the live log streams) on Django's ASGI handler."""

import asyncio
import gc
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from django.core.files.base import ContentFile
from django.core.signals import request_started
from django.db.backends.signals import connection_created
from django.utils import timezone
from rest_framework.test import APIClient

import config.asgi
from config.asgi import build_application
from config.services import token_create
from runs.models import Artifact, LogEntry
from runs.services import logs_append
from tests.conftest import make_user


@contextmanager
def connections_opened() -> Iterator[list]:
    """The database connections other threads open meanwhile (the test's own thread may
    reopen its connection on PostgreSQL, which says nothing about the pool)."""
    opened: list = []
    here = threading.get_ident()

    def note(sender, connection, **kwargs) -> None:
        if threading.get_ident() != here:
            opened.append((threading.get_ident(), connection))

    connection_created.connect(note)
    try:
        yield opened
    finally:
        connection_created.disconnect(note)


def get_many(app, paths: list[str], headers: dict[str, str] | None = None) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", headers=headers
        ) as client:
            return [await client.get(path) for path in paths]

    return asyncio.run(go())


def shut_down(app) -> list[dict]:
    """Sends the ASGI lifespan startup and shutdown, as uvicorn does; returns the replies."""

    async def go() -> list[dict]:
        inbox: asyncio.Queue = asyncio.Queue()
        for kind in ("lifespan.startup", "lifespan.shutdown"):
            inbox.put_nowait({"type": kind})
        replies: list[dict] = []

        async def send(message: dict) -> None:
            replies.append(message)

        await app({"type": "lifespan"}, inbox.get, send)
        return replies

    return asyncio.run(go())


@pytest.fixture(autouse=True)
def unfreeze() -> Iterator[None]:
    """The lifespan startup freezes the heap (config.asgi.settle): not the test process's."""
    yield
    gc.unfreeze()


def test_startup_freezes_the_loaded_heap_for_the_collector(db):
    gc.unfreeze()
    replies = shut_down(build_application(threads=1))
    assert replies[0]["type"] == "lifespan.startup.complete"
    # Every module, class and URL pattern is in it: tens of thousands of objects.
    assert gc.get_freeze_count() > 10_000


def test_api_requests_reuse_their_threads_connections_and_shutdown_closes_them(
    transactional_db,
):
    user = make_user("otto", "operator")
    secret = token_create(user=user, name="asgi")[1]
    app = build_application(threads=2)
    with connections_opened() as opened:
        responses = get_many(app, ["/api/v1/runs"] * 20, {"Authorization": f"Bearer {secret}"})
    assert [response.status_code for response in responses] == [200] * 20
    # At most one connection per pool thread, not one per request.
    threads = [thread for thread, _ in opened]
    assert 1 <= len(threads) <= 2
    assert len(set(threads)) == len(threads)
    assert all(connection.connection is not None for _, connection in opened)

    replies = shut_down(app)
    assert [reply["type"] for reply in replies] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert all(connection.connection is None for _, connection in opened)


def test_sync_views_go_to_the_wsgi_handler_and_log_streams_to_the_asgi_one(transactional_db):
    handlers: list[str] = []

    def note(sender, **kwargs) -> None:
        handlers.append(sender.__name__)

    request_started.connect(note)
    try:
        app = build_application(threads=1)
        responses = get_many(app, ["/healthz", "/runs/1/log/stream", "/no/such/page"])
        shut_down(app)
    finally:
        request_started.disconnect(note)
    assert [response.status_code for response in responses] == [200, 401, 404]
    assert handlers == ["WSGIHandler", "ASGIHandler", "WSGIHandler"]


def call(app, method: str, path: str, headers: dict[str, str]) -> list[dict]:
    """One request straight to the ASGI app; returns every message it sent."""

    async def go() -> list[dict]:
        sent: list[dict] = []
        requested = False
        finished = asyncio.Event()

        async def receive() -> dict:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await finished.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                finished.set()

        scope = {
            "type": "http",
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 1234),
            "server": ("testserver", 80),
        }
        await app(scope, receive, send)
        return sent

    return asyncio.run(go())


def body_of(messages: list[dict]) -> bytes:
    return b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")


def test_streamed_downloads_arrive_whole_in_chunks_and_close_their_connections(
    transactional_db, make_runbook, start_run
):
    user = make_user("otto", "operator")
    headers = {"Authorization": f"Bearer {token_create(user=user, name='asgi')[1]}"}
    run = start_run(make_runbook("slug: one\nname: One\nsteps: [{id: a, shell: 'true'}]"))
    data = os.urandom(300_000)  # many of FileResponse's 4 kB blocks
    artifact = Artifact.objects.create(
        run=run,
        step=run.steps.get(),
        attempt=1,
        name="big.bin",
        file=ContentFile(data, name="big.bin"),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    now = timezone.now()
    logs_append([LogEntry(run=run, timestamp=now, message=f"line {i}") for i in range(3000)])
    app = build_application(threads=1)
    client = APIClient()
    client.force_login(user)
    session = {"Cookie": f"sessionid={client.cookies['sessionid'].value}"}
    opened: list = []

    def note(sender, connection, **kwargs) -> None:
        opened.append((threading.current_thread().name, connection))

    connection_created.connect(note)
    try:
        download = call(app, "GET", f"/api/v1/artifacts/{artifact.pk}/download", headers)
        log = call(app, "GET", f"/runs/{run.number}/log.txt", session)
        head = call(app, "HEAD", f"/api/v1/artifacts/{artifact.pk}/download", headers)
    finally:
        connection_created.disconnect(note)
    shut_down(app)

    assert download[0]["status"] == 200 and body_of(download) == data
    assert len(download) > 10  # sent as it was read, not gathered first
    assert log[0]["status"] == 200
    lines = body_of(log).decode().splitlines()
    assert len(lines) == 3000 and lines[0].endswith("line 0") and lines[-1].endswith("line 2999")
    assert head[0]["status"] == 200 and body_of(head) == b""
    # The log was read on a thread of its own, which closed its connection at the end.
    streams = [connection for name, connection in opened if name == "stream"]
    assert streams and all(connection.connection is None for connection in streams)


def test_a_post_body_reaches_its_view(transactional_db):
    user = make_user("otto", "operator")
    secret = token_create(user=user, name="asgi")[1]
    app = build_application(threads=1)

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {secret}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", headers=headers
        ) as client:
            return await client.post("/api/v1/tokens", json={"name": "made over ASGI"})

    created = asyncio.run(go())
    shut_down(app)
    assert created.status_code == 201
    assert created.json()["name"] == "made over ASGI"


def test_a_body_over_the_limit_is_refused_before_django_sees_it(db, monkeypatch):
    monkeypatch.setattr(config.asgi, "MAX_BODY", 1000)
    started: list = []

    def note(sender, **kwargs) -> None:
        started.append(sender)

    request_started.connect(note)
    try:
        app = build_application(threads=1)

        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return await client.post("/api/v1/tokens", content=b"x" * 1001)

        response = asyncio.run(go())
    finally:
        request_started.disconnect(note)
    assert response.status_code == 413
    assert response.json() == {
        "error": "bad-request",
        "message": "The request body is over 1,000 bytes.",
        "details": {},
    }
    assert started == []


@pytest.mark.parametrize("digits", [19, 5000])
def test_a_content_length_of_absurd_size_is_refused_as_too_large(db, digits):
    app = build_application(threads=1)
    sent = call(app, "POST", "/api/v1/tokens", {"Content-Length": "9" * digits})
    shut_down(app)
    assert sent[0]["status"] == 413


def test_bodies_held_at_once_are_bounded_and_released_when_answered(db, monkeypatch):
    """A process refuses (503) a body that would take what it holds of request bodies over
    MAX_BUFFERED, so slow senders cannot fill its memory; what an answered request held is
    free again, as is what a client that went away had sent."""
    monkeypatch.setattr(config.asgi, "MAX_BUFFERED", 1000)
    app = build_application(threads=1)
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/tokens",
        "raw_path": b"/api/v1/tokens",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }

    async def post(
        chunks: list[bytes], *, hold: asyncio.Event | None = None, then_leave: bool = False
    ) -> list[dict]:
        """Sends `chunks`, the last only once `hold` is set, or goes away after them if
        `then_leave`; returns what the app answered."""
        sent: list[dict] = []
        pending = list(chunks)

        async def receive() -> dict:
            if pending:
                if len(pending) == 1 and hold is not None:
                    holding.set()
                    await hold.wait()
                chunk = pending.pop(0)
                more = bool(pending) or then_leave
                return {"type": "http.request", "body": chunk, "more_body": more}
            if then_leave:
                return {"type": "http.disconnect"}
            await asyncio.sleep(3600)  # the client waits for its answer

        async def send(message: dict) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return sent

    holding = asyncio.Event()

    async def go() -> tuple[list[dict], list[dict], list[dict]]:
        # A slow sender holds 400 bytes and has 400 to go; 700 more would be over 1,000.
        hold = asyncio.Event()
        slow = asyncio.create_task(post([b"{" + b" " * 399, b" " * 399 + b"}"], hold=hold))
        await holding.wait()
        refused = await post([b"{" + b" " * 698 + b"}"])
        hold.set()
        answered = await slow
        # One that sends 900 bytes and goes away holds nothing afterwards.
        await post([b" " * 900], then_leave=True)
        accepted = await post([b"{" + b" " * 698 + b"}"])
        return refused, answered, accepted

    refused, answered, accepted = asyncio.run(go())
    shut_down(app)
    assert refused[0]["status"] == 503
    assert (b"retry-after", b"1") in refused[0]["headers"]
    assert json.loads(body_of(refused))["error"] == "unavailable"
    assert answered[0]["status"] == 401  # it reached Django: no token
    assert accepted[0]["status"] == 401
