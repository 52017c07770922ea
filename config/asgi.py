"""The ASGI application `make run` serves: async views on Django's ASGI handler, the rest on
its WSGI handler in a fixed pool of threads.

Why not Django's ASGI handler for everything: it runs each request's sync code on a thread
of its own, so a persistent database connection never serves a second request (Django
ticket #33497). Every API call and page then opened a new connection, which on SQLite also
means a cold page cache, and on PostgreSQL a new login. Sync views here run on a2wsgi's
fixed pool instead, where each thread keeps its connection (CONN_MAX_AGE). Only views
written as coroutines (the live log streams) need the event loop, and they get it.

On shutdown (the ASGI lifespan event uvicorn sends) each pool thread closes its database
connections, so PostgreSQL sees clean logouts rather than dropped sockets.
"""

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from inspect import iscoroutinefunction

from a2wsgi import WSGIMiddleware
from django.core.asgi import get_asgi_application
from django.core.wsgi import get_wsgi_application
from django.db import connections
from django.urls import Resolver404, resolve

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]


def build_application(threads: int) -> ASGIApp:
    django_asgi = get_asgi_application()  # sets Django up; the WSGI handler needs it too
    django_wsgi = WSGIMiddleware(get_wsgi_application(), workers=threads)

    @lru_cache(maxsize=4096)
    def is_async(path: str) -> bool:
        try:
            return iscoroutinefunction(resolve(path).func)
        except Resolver404:
            return False

    async def application(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send, django_wsgi.executor, threads)
        elif scope["type"] == "http" and not is_async(scope["path"]):
            await django_wsgi(scope, receive, send)
        else:
            await django_asgi(scope, receive, send)

    return application


async def lifespan(receive: Callable, send: Callable, pool: ThreadPoolExecutor, threads: int):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await asyncio.to_thread(close_connections, pool, threads)
            await send({"type": "lifespan.shutdown.complete"})
            return


def close_connections(pool: ThreadPoolExecutor, threads: int) -> None:
    """Closes the database connections of every thread in the pool. A pool has no way to
    run a task on each of its threads, so each task waits at a barrier until `threads` of
    them run at once, which puts one on every thread."""
    barrier = threading.Barrier(threads)

    def close() -> None:
        barrier.wait(timeout=30)
        connections.close_all()

    for task in [pool.submit(close) for _ in range(threads)]:
        task.result()


application = build_application(int(os.environ.get("STEPWISE_WEB_THREADS", "8")))
