"""config/asgi.py: sync views on a fixed thread pool that keeps its connections, async
views (the live log streams) on Django's ASGI handler."""

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from django.core.signals import request_started
from django.db.backends.signals import connection_created

from config.asgi import build_application
from config.services import token_create
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
