"""config/asgi.py: sync views on a fixed thread pool that keeps its connections, async
views (the live log streams) on Django's ASGI handler."""

import asyncio
import threading

import httpx
import pytest
from django.core.signals import request_started
from django.db.backends.signals import connection_created

from config.asgi import build_application
from config.services import token_create
from tests.conftest import make_user


@pytest.fixture
def opened_connections():
    opened: list[int] = []

    def note(sender, connection, **kwargs) -> None:
        opened.append(threading.get_ident())

    connection_created.connect(note)
    yield opened
    connection_created.disconnect(note)


def get_many(app, paths: list[str], headers: dict[str, str] | None = None) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", headers=headers
        ) as client:
            return [await client.get(path) for path in paths]

    return asyncio.run(go())


def test_api_requests_reuse_their_threads_database_connections(
    transactional_db, opened_connections
):
    user = make_user("otto", "operator")
    secret = token_create(user=user, name="asgi")[1]
    app = build_application(threads=2)
    responses = get_many(app, ["/api/v1/runs"] * 20, {"Authorization": f"Bearer {secret}"})
    assert [response.status_code for response in responses] == [200] * 20
    # At most one connection per pool thread, not one per request.
    assert 1 <= len(opened_connections) <= 2
    assert len(set(opened_connections)) == len(opened_connections)


def test_sync_views_go_to_the_wsgi_handler_and_log_streams_to_the_asgi_one(transactional_db):
    handlers: list[str] = []

    def note(sender, **kwargs) -> None:
        handlers.append(sender.__name__)

    request_started.connect(note)
    try:
        app = build_application(threads=1)
        responses = get_many(app, ["/healthz", "/runs/1/log/stream", "/no/such/page"])
    finally:
        request_started.disconnect(note)
    assert [response.status_code for response in responses] == [200, 401, 404]
    assert handlers == ["WSGIHandler", "ASGIHandler", "WSGIHandler"]
