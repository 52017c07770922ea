"""Live logs as Server-Sent Events, from an async view under ASGI.

Each log line is one `line` event whose id is its seq (per run), so a browser that reconnects
sends `Last-Event-ID` and resumes after the last line it has: nothing lost, nothing repeated.
The stream ends with an `end` event once the run is terminal and every line has been sent. The
polling fragment (runs.views.run_log) stays as the fallback for clients without SSE.

One hub per process (`_LogHub`) reads and renders every new line of every watched run once and
hands it to each stream watching that run. A stream queries only while it starts: to check the
viewer, to resolve its filters and to catch up to where the hub was when it joined.
"""

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.contrib.auth import get_user
from django.db import close_old_connections, connections
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse

from config.api.permissions import has_role
from config.numbers import whole_number
from runs.loglines import line_html
from runs.models import LogEntry, Run
from runs.state import RUN_TERMINAL
from runs.views import _level, _selected_step, _step_family

logger = logging.getLogger(__name__)
T = TypeVar("T")

POLL = 0.1  # seconds between the hub's looks at the watched runs
BATCH = 500  # lines a starting stream reads per query while it catches up
HUB_BATCH = 1000  # lines of one run the hub reads per tick
PENDING = 5000  # lines a stream may have waiting before it must read them itself
KEEPALIVE = 15.0  # seconds between comments that keep proxies from closing an idle stream
# One thread for every hub and the streams' own few queries, so they share one database
# connection (CONN_MAX_AGE) rather than opening one per stream.
_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="log-hub")


@dataclass(frozen=True, slots=True)
class _Line:
    seq: int
    step_id: int | None
    level: int
    event: str  # the whole SSE event, rendered once for every stream


@dataclass(eq=False)
class _Watcher:
    """One stream's mailbox at the hub."""

    start: int | None = None  # the hub's seq for the run when this watcher joined
    lines: list[_Line] = field(default_factory=list)
    # Set when the stream fell too far behind and `lines` was dropped: the stream reads the
    # lines up to this seq itself, then goes on with `lines`.
    behind: int | None = None
    ended: bool = False  # the run is terminal and every line is in `lines`
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def give(self, lines: list[_Line], upto: int) -> None:
        if len(self.lines) + len(lines) > PENDING:  # a slow reader must not grow memory
            self.lines, self.behind = [], upto
        else:
            self.lines.extend(lines)
        self.wake.set()

    def take(self) -> tuple[list[_Line], int | None]:
        lines, behind, self.lines, self.behind = self.lines, self.behind, [], None
        self.wake.clear()
        return lines, behind


@dataclass(eq=False)
class _Feed:
    seq: int | None = None  # the last line the hub has read; None until its first look
    watchers: set[_Watcher] = field(default_factory=set)


class _LogHub:
    """Polls the watched runs' `log_seq` and status in one query per tick; when a run has new
    lines, reads them in one query for all such runs, renders each once and hands it out."""

    def __init__(self) -> None:
        self.feeds: dict[int, _Feed] = {}
        self.task: asyncio.Task | None = None
        self.executor = _EXECUTOR

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """Runs `function` on the hub's thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    def join(self, run_pk: int) -> _Watcher:
        loop = asyncio.get_running_loop()
        feed = self.feeds.setdefault(run_pk, _Feed())
        watcher = _Watcher(start=feed.seq)
        if feed.seq is not None:
            watcher.wake.set()
        feed.watchers.add(watcher)
        if self.task is None or self.task.done():
            self.task = loop.create_task(self._poll())
        return watcher

    def leave(self, run_pk: int, watcher: _Watcher) -> None:
        feed = self.feeds.get(run_pk)
        if feed is not None:
            feed.watchers.discard(watcher)
            if not feed.watchers:
                del self.feeds[run_pk]

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                while self.feeds:
                    try:
                        await self._tick(loop)
                    except Exception:
                        logger.exception("log hub: a look at the watched runs failed")
                    await asyncio.sleep(POLL)
                # Nobody watches: hold no database connection until somebody does.
                await loop.run_in_executor(self.executor, connections.close_all)
                if not self.feeds:  # nobody joined meanwhile
                    return
        finally:
            self.task = None  # a done task would keep its loop, and so this hub, alive
            # Also when the loop stops under it (a server shutting down): not awaited, so it
            # runs on the hub's thread even once the loop is gone.
            self.executor.submit(connections.close_all)

    async def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        watched = list(self.feeds)
        states = await loop.run_in_executor(self.executor, _run_states, watched)
        ranges: dict[int, tuple[int, int]] = {}
        for run_pk in watched:
            feed = self.feeds.get(run_pk)
            if feed is None:
                continue
            log_seq, _ = states.get(run_pk, (feed.seq or 0, True))  # absent: deleted
            if feed.seq is None:
                feed.seq = log_seq
                for watcher in feed.watchers:
                    watcher.start = log_seq
                    watcher.wake.set()
            elif log_seq > feed.seq:
                ranges[run_pk] = (feed.seq, min(log_seq, feed.seq + HUB_BATCH))
        if ranges:
            new = await loop.run_in_executor(self.executor, _read_lines, ranges)
            for run_pk, lines in new.items():
                feed = self.feeds.get(run_pk)
                if feed is None or feed.seq != ranges[run_pk][0]:
                    continue  # every watcher left, and perhaps came back, meanwhile
                feed.seq = lines[-1].seq
                for watcher in feed.watchers:
                    watcher.give(lines, feed.seq)
        for run_pk in watched:
            feed = self.feeds.get(run_pk)
            log_seq, terminal = states.get(run_pk, (0, True))
            # log_seq and the status come from one row in one read, so a terminal run's
            # log_seq counts its last line.
            if feed is not None and terminal and feed.seq is not None and feed.seq >= log_seq:
                for watcher in feed.watchers:
                    watcher.ended = True
                    watcher.wake.set()


def _run_states(run_pks: list[int]) -> dict[int, tuple[int, bool]]:
    close_old_connections()
    rows = Run.objects.filter(pk__in=run_pks).values_list("pk", "log_seq", "status")
    return {pk: (log_seq, status in RUN_TERMINAL) for pk, log_seq, status in rows}


def _read_lines(ranges: dict[int, tuple[int, int]]) -> dict[int, list[_Line]]:
    """The lines (after, upto] of each run, rendered once."""
    where = Q()
    for run_pk, (after, upto) in ranges.items():
        where |= Q(run_id=run_pk, seq__gt=after, seq__lte=upto)
    rows = (
        LogEntry.objects.filter(where)
        .order_by("run_id", "seq")
        .values_list("run_id", "seq", "step_id", "level", "timestamp", "message", "step__number")
    )
    out: dict[int, list[_Line]] = {}
    for run_pk, seq, step_id, level, timestamp, message, step_number in rows:
        out.setdefault(run_pk, []).append(
            _Line(seq, step_id, level, _event(seq, timestamp, step_number, level, message))
        )
    return out


def _event(seq: int, timestamp: Any, step_number: str | None, level: int, message: str) -> str:
    html = line_html(
        seq=seq, timestamp=timestamp, step_number=step_number, level=level, message=message
    )
    # A data field ends at a line break; the markup needs none.
    html = html.replace("\r", " ").replace("\n", " ")
    return f"id: {seq}\nevent: line\ndata: {html}\n\n"


# A hub per event loop: uvicorn runs one loop per process, but a WSGI server (the tests' live
# server) runs each async view in a loop of its own, and asyncio objects must not cross loops.
_HUBS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> _LogHub


def _hub() -> _LogHub:
    loop = asyncio.get_running_loop()
    hub = _HUBS.get(loop)
    if hub is None:
        hub = _HUBS[loop] = _LogHub()
    return hub


@dataclass(frozen=True)
class _Filter:
    steps: frozenset[int] | None  # the selected step and, for a group, its descendants
    level: int | None

    def passes(self, step_id: int | None, level: int) -> bool:
        return (self.steps is None or step_id in self.steps) and (
            self.level is None or level >= self.level
        )


def _start_after(request: HttpRequest) -> int:
    for value in (request.headers.get("Last-Event-ID"), request.GET.get("after")):
        if (seq := whole_number(value)) is not None:
            return seq
    return 0


def _open(request: HttpRequest, run_pk: int) -> int | _Filter:
    """The stream's filter, or the HTTP status that refuses it."""
    user = get_user(request)
    if not user.is_authenticated:
        return 401
    if not has_role(user, "viewer"):
        return 403
    run = Run.objects.filter(pk=run_pk).first()
    if run is None:
        return 404
    step = _selected_step(run, request.GET.get("step", ""))
    level = _level(request.GET.get("level", ""))
    if step is None:
        return _Filter(None, level)
    return _Filter(frozenset(_step_family(run, step)), level)


def _catch_up(run_pk: int, where: _Filter, after: int, upto: int) -> tuple[list[str], int]:
    """Rendered lines in (after, upto] that pass the filter, at most BATCH, and the seq to
    continue after."""
    entries = LogEntry.objects.filter(run_id=run_pk, seq__gt=after, seq__lte=upto)
    if where.steps is not None:
        entries = entries.filter(step_id__in=where.steps)
    if where.level is not None:
        entries = entries.filter(level__gte=where.level)
    rows = list(
        entries.order_by("seq").values_list("seq", "level", "timestamp", "message", "step__number")[
            :BATCH
        ]
    )
    events = [_event(seq, ts, number, level, msg) for seq, level, ts, msg, number in rows]
    return events, (rows[-1][0] if len(rows) == BATCH else upto)


def _deliver(lines: Iterable[_Line], where: _Filter, after: int) -> tuple[list[str], int]:
    events = []
    for line in lines:
        if line.seq <= after:
            continue
        after = line.seq
        if where.passes(line.step_id, line.level):
            events.append(line.event)
    return events, after


REFUSALS = {
    401: "Log in first.",
    403: "This needs the viewer role.",
    404: "No such run.",
}


async def run_log_stream(request: HttpRequest, number: int) -> HttpResponse:
    # The hub's thread does the stream's few queries too, on the connection it keeps,
    # rather than a new thread (and a new database connection) per stream.
    hub = _hub()
    opened = await hub.run(_open, request, number)
    if not isinstance(opened, _Filter):
        return HttpResponse(REFUSALS[opened], status=opened, content_type="text/plain")
    where = opened
    after = _start_after(request)

    async def events() -> AsyncIterator[str]:
        nonlocal after
        yield "retry: 1000\n\n"
        watcher = hub.join(number)
        try:
            await watcher.wake.wait()  # the hub's first look at the run sets `start`
            assert watcher.start is not None
            while after < watcher.start:  # lines from before the hub watched for us
                lines, after = await hub.run(_catch_up, number, where, after, watcher.start)
                for event in lines:
                    yield event
            clock = asyncio.get_running_loop().time
            last_sent = clock()
            while True:
                given, behind = watcher.take()
                while behind is not None and after < behind:  # the lines the hub dropped
                    lines, after = await hub.run(_catch_up, number, where, after, behind)
                    for event in lines:
                        yield event
                lines, after = _deliver(given, where, after)
                for event in lines:
                    yield event
                if watcher.ended and not watcher.lines and watcher.behind is None:
                    yield "event: end\ndata: \n\n"
                    return
                if lines:
                    last_sent = clock()
                quiet = clock() - last_sent
                if quiet >= KEEPALIVE:
                    last_sent = clock()
                    yield ": keep-alive\n\n"
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watcher.wake.wait(), KEEPALIVE - quiet)
        finally:
            hub.leave(number, watcher)

    response = StreamingHttpResponse(events(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass events through as they come
    return response
