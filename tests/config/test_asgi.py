"""config/asgi.py: sync views on a fixed thread pool that keeps its connections, async
views (the live log streams) on Django's ASGI handler."""

import asyncio
import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from django.core.files.base import ContentFile
from django.core.signals import request_started
from django.db.backends.signals import connection_created

import config.asgi
from config.asgi import build_application
from config.services import token_create
from runs.models import Artifact
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


def test_a_streamed_download_arrives_whole_and_a_post_body_reaches_its_view(
    transactional_db, make_runbook, start_run
):
    user = make_user("otto", "operator")
    secret = token_create(user=user, name="asgi")[1]
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
    app = build_application(threads=1)

    async def go() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {secret}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", headers=headers
        ) as client:
            download = await client.get(f"/api/v1/artifacts/{artifact.pk}/download")
            created = await client.post("/api/v1/tokens", json={"name": "made over ASGI"})
            return download, created

    download, created = asyncio.run(go())
    shut_down(app)
    assert download.status_code == 200
    assert download.content == data
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
