"""Live logs as Server-Sent Events, from an async view under ASGI.

Each log line is one `line` event whose id is its seq, so a browser that reconnects sends
`Last-Event-ID` and resumes after the last line it has: nothing lost, nothing repeated. The
stream ends with an `end` event once the run is terminal and every line has been sent. The
polling fragment (runs.views.run_log) stays as the fallback for clients without SSE.
"""

import asyncio
from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.template.loader import render_to_string

from config.api.permissions import has_role
from runs.models import LogEntry, Run
from runs.views import PAGE, _level, _log_entries, _selected_step

POLL = 0.1  # seconds between the hub's looks for new lines
BATCH = 500
KEEPALIVE = 15.0  # seconds between comments that keep proxies from closing an idle stream


class _LogHub:
    """One poller per process for every open stream: streams sleep until it sees new lines
    of their run, so a hundred open run pages cost one query per tick, not a hundred."""

    def __init__(self) -> None:
        self.waiters: dict[int, set[asyncio.Event]] = {}
        self.task: asyncio.Task | None = None
        self.last: int | None = None

    async def wait(self, run_pk: int, timeout: float) -> None:
        event = asyncio.Event()
        self.waiters.setdefault(run_pk, set()).add(event)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._poll())
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            self.waiters.get(run_pk, set()).discard(event)
            if not self.waiters.get(run_pk):
                self.waiters.pop(run_pk, None)

    async def _poll(self) -> None:
        if self.last is None:
            self.last = await _max_seq()
        while self.waiters:
            rows = await _new_rows(self.last)
            if rows:
                self.last = max(seq for seq, _ in rows)
                for run_pk in {run_pk for _, run_pk in rows}:
                    for event in self.waiters.get(run_pk, ()):
                        event.set()
            await asyncio.sleep(POLL)


@sync_to_async
def _max_seq() -> int:
    return LogEntry.objects.order_by("-seq").values_list("seq", flat=True).first() or 0


@sync_to_async
def _new_rows(after: int) -> list[tuple[int, int]]:
    return list(LogEntry.objects.filter(seq__gt=after).values_list("seq", "run_id")[:5000])


_hub = _LogHub()
TERMINAL_CHECK = 5.0  # seconds a quiet stream waits before looking at its run again


def _start_after(request: HttpRequest) -> int:
    for value in (request.headers.get("Last-Event-ID", ""), request.GET.get("after", "")):
        if value.isdigit():
            return int(value)
    return 0


def _batch(run_pk: int, step_key: str, level_name: str, after: int) -> tuple[list[str], int, bool]:
    """Rendered new lines after `after`, the last seq, and whether the run is terminal."""
    run = Run.objects.get(pk=run_pk)
    terminal = run.is_terminal  # read first: lines read after a terminal status are the last
    entries = _log_entries(run, _selected_step(run, step_key), _level(level_name))
    lines = list(entries.filter(seq__gt=after).order_by("seq")[:BATCH])
    events = []
    for line in lines:
        html = render_to_string(f"{PAGE}#log-line", {"line": line}).replace("\n", " ")
        events.append(f"id: {line.seq}\nevent: line\ndata: {html}\n\n")
    return events, (lines[-1].seq if lines else after), terminal and len(lines) < BATCH


async def run_log_stream(request: HttpRequest, number: int) -> HttpResponse:
    user = await request.auser()
    if not user.is_authenticated:
        return HttpResponse("Log in first.", status=401, content_type="text/plain")
    if not await sync_to_async(has_role)(user, "viewer"):
        return HttpResponse("This needs the viewer role.", status=403, content_type="text/plain")
    if not await Run.objects.filter(pk=number).aexists():
        return HttpResponse("No such run.", status=404, content_type="text/plain")
    step_key, level_name = request.GET.get("step", ""), request.GET.get("level", "")
    after = _start_after(request)
    fetch = sync_to_async(_batch)

    async def events() -> AsyncIterator[str]:
        nonlocal after
        yield "retry: 1000\n\n"
        quiet = 0.0
        while True:
            lines, after, finished = await fetch(number, step_key, level_name, after)
            for event in lines:
                yield event
            if finished:
                yield "event: end\ndata: \n\n"
                return
            if lines:
                quiet = 0.0
                continue
            started = asyncio.get_running_loop().time()
            await _hub.wait(number, TERMINAL_CHECK)
            quiet += asyncio.get_running_loop().time() - started
            if quiet >= KEEPALIVE:
                quiet = 0.0
                yield ": keep-alive\n\n"

    response = StreamingHttpResponse(events(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass events through as they come
    return response
