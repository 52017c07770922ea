"""Live logs as Server-Sent Events: every line once, resumable, ending with the run."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from runs.services import logs_append, run_create
from tests.conftest import drain, make_user

RUNBOOK = """
slug: talk
name: Talk
steps:
  - id: one
    shell: |
      echo "first line"
      echo "second line"
  - id: two
    shell: echo "third line"
"""


def events_of(body: str) -> list[dict[str, str]]:
    events = []
    for block in body.split("\n\n"):
        fields: dict[str, str] = {}
        for raw in block.splitlines():
            if raw.startswith(":") or ":" not in raw:
                continue
            name, _, value = raw.partition(":")
            fields[name] = value.removeprefix(" ")
        if "event" in fields:
            events.append(fields)
    return events


async def read_stream(client: AsyncClient, url: str, **extra) -> tuple[int, str]:
    response = await client.get(url, **extra)
    if not hasattr(response, "streaming_content"):
        return response.status_code, response.content.decode()
    chunks = [chunk async for chunk in response.streaming_content]
    return response.status_code, b"".join(
        c if isinstance(c, bytes) else c.encode() for c in chunks
    ).decode()


@pytest.fixture
def finished_run(make_runbook, db):
    runbook = make_runbook(RUNBOOK)
    return drain(run_create(runbook=runbook, params={}, user=None, origin="cli"))


@pytest.mark.django_db(transaction=True)
def test_stream_sends_each_line_with_its_seq_then_ends(finished_run):
    viewer = make_user("vic", "viewer")
    status, body = asyncio.run(_as(viewer, f"/runs/{finished_run.number}/log/stream"))
    assert status == 200
    events = events_of(body)
    lines = [e for e in events if e["event"] == "line"]
    assert [e["event"] for e in events][-1] == "end"
    messages = [e["data"] for e in lines]
    assert sum("first line" in m for m in messages) == 1
    assert any("third line" in m for m in messages)
    seqs = [int(e["id"]) for e in lines]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))


@pytest.mark.django_db(transaction=True)
def test_stream_resumes_after_last_event_id_without_repeating(finished_run):
    viewer = make_user("vic", "viewer")
    _, body = asyncio.run(_as(viewer, f"/runs/{finished_run.number}/log/stream"))
    seqs = [int(e["id"]) for e in events_of(body) if e["event"] == "line"]
    middle = seqs[len(seqs) // 2]
    _, again = asyncio.run(
        _as(
            viewer,
            f"/runs/{finished_run.number}/log/stream",
            headers={"Last-Event-ID": str(middle)},
        )
    )
    resumed = [int(e["id"]) for e in events_of(again) if e["event"] == "line"]
    assert resumed == [seq for seq in seqs if seq > middle]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "resume",
    [
        {"headers": {"Last-Event-ID": "\u00b2"}},  # superscript 2: isdigit() but not int()
        {"data": {"after": "\u00b2"}},
        {"data": {"after": "\uff11"}},  # fullwidth 1, which int() reads
    ],
)
def test_stream_starts_from_the_first_line_when_the_seq_is_not_ascii_digits(finished_run, resume):
    viewer = make_user("vic", "viewer")
    url = f"/runs/{finished_run.number}/log/stream"
    _, body = asyncio.run(_as(viewer, url))
    _, again = asyncio.run(_as(viewer, url, **resume))
    assert [e["id"] for e in events_of(again) if e["event"] == "line"] == [
        e["id"] for e in events_of(body) if e["event"] == "line"
    ]


@pytest.mark.django_db(transaction=True)
def test_stream_filters_by_step_and_level(finished_run):
    viewer = make_user("vic", "viewer")
    _, body = asyncio.run(
        _as(viewer, f"/runs/{finished_run.number}/log/stream?step=two&level=info")
    )
    data = [e["data"] for e in events_of(body) if e["event"] == "line"]
    assert any("third line" in d for d in data)
    assert all('<span class="l-step">2</span>' in d for d in data)
    _, body = asyncio.run(_as(viewer, f"/runs/{finished_run.number}/log/stream?level=system"))
    data = [e["data"] for e in events_of(body) if e["event"] == "line"]
    assert data and not any("first line" in d for d in data)


@pytest.mark.django_db(transaction=True)
def test_stream_checks_login_and_role(finished_run):
    url = f"/runs/{finished_run.number}/log/stream"
    assert asyncio.run(_as(None, url))[0] == 401
    assert asyncio.run(_as(make_user("olga"), url))[0] == 403
    assert asyncio.run(_as(make_user("vic", "viewer"), "/runs/999999/log/stream"))[0] == 404


async def _as(user, url: str, **extra) -> tuple[int, str]:
    client = AsyncClient()
    if user is not None:
        await client.aforce_login(user)
    return await read_stream(client, url, **extra)


@pytest.mark.django_db(transaction=True)
def test_stream_delivers_lines_written_while_it_is_open_then_ends_with_the_run(make_runbook):
    from django.utils import timezone

    from runs.models import LogEntry, Run

    viewer = make_user("vic", "viewer")
    runbook = make_runbook(RUNBOOK)
    run = run_create(runbook=runbook, params={}, user=None, origin="cli")  # not executed

    def write(message: str) -> None:
        logs_append([LogEntry(run=run, timestamp=timezone.now(), level=50, message=message)])

    async def follow() -> list[str]:
        client = AsyncClient()
        await client.aforce_login(viewer)
        response = await client.get(f"/runs/{run.number}/log/stream")
        seen: list[str] = []
        written = False
        async for chunk in response.streaming_content:
            text = chunk.decode() if isinstance(chunk, bytes) else chunk
            for event in events_of(text):
                seen.append(event["event"] + ":" + event.get("data", ""))
                if event["event"] == "line" and "written later" in event["data"]:
                    await sync_to_async(Run.objects.filter(pk=run.pk).update)(status="cancelled")
                if event["event"] == "end":
                    return seen
            if not written:
                written = True  # the stream is open and has sent what there was
                await sync_to_async(write)("written later")
        return seen

    seen = asyncio.run(asyncio.wait_for(follow(), timeout=30))
    assert any("written later" in s for s in seen)
    assert seen[-1] == "end:"


@pytest.mark.django_db(transaction=True)
def test_hub_hands_each_new_line_rendered_once_to_every_watcher_of_its_run(make_runbook):
    from django.utils import timezone

    from runs.models import LogEntry
    from runs.streams import _LogHub

    runbook = make_runbook(RUNBOOK)
    run = run_create(runbook=runbook, params={}, user=None, origin="cli")
    other = run_create(runbook=runbook, params={}, user=None, origin="cli")
    hub = _LogHub()

    async def scenario() -> tuple[list, list, list]:
        watchers = [hub.join(run.pk), hub.join(run.pk), hub.join(other.pk)]
        for watcher in watchers:
            await asyncio.wait_for(watcher.wake.wait(), timeout=20)
            assert watcher.start == 0
            watcher.take()
        await sync_to_async(logs_append)(
            [LogEntry(run=run, timestamp=timezone.now(), level=20, message="hello")]
        )
        await asyncio.wait_for(watchers[0].wake.wait(), timeout=20)
        await asyncio.wait_for(watchers[1].wake.wait(), timeout=20)
        got = [watcher.take()[0] for watcher in watchers]
        for watcher, pk in zip(watchers, (run.pk, run.pk, other.pk), strict=True):
            hub.leave(pk, watcher)
        return got

    first, second, third = asyncio.run(scenario())
    assert [line.seq for line in first] == [1]
    assert first[0] is second[0]  # rendered once, handed to both
    assert "hello" in first[0].event and first[0].event.startswith("id: 1\n")
    assert third == []
    assert hub.feeds == {}


@pytest.mark.django_db(transaction=True)
def test_stream_makes_no_queries_of_its_own_once_started(make_runbook, monkeypatch):
    """After it has caught up, a stream only reads what the hub hands it."""
    import threading

    from django.db.backends.utils import CursorWrapper
    from django.utils import timezone

    from runs.models import LogEntry

    viewer = make_user("vic", "viewer")
    run = run_create(runbook=make_runbook(RUNBOOK), params={}, user=None, origin="cli")
    logs_append([LogEntry(run=run, timestamp=timezone.now(), level=20, message="before")])
    queries: list[tuple[str, str]] = []
    execute = CursorWrapper._execute_with_wrappers

    def record(self, sql, *args, **kwargs):
        queries.append((threading.current_thread().name, sql))
        return execute(self, sql, *args, **kwargs)

    monkeypatch.setattr(CursorWrapper, "_execute_with_wrappers", record)

    def append(message: str) -> None:
        logs_append([LogEntry(run=run, timestamp=timezone.now(), level=20, message=message)])

    async def follow() -> list[str]:
        client = AsyncClient()
        await client.aforce_login(viewer)
        response = await client.get(f"/runs/{run.number}/log/stream?after=0")
        chunks = aiter(response.streaming_content)
        seen: list[str] = []
        while not any("before" in s for s in seen):
            seen.append(_text(await anext(chunks)))
        queries.clear()
        for message in ("one", "two"):
            await sync_to_async(append, thread_sensitive=False)(message)
            while not any(message in s for s in seen):
                seen.append(_text(await anext(chunks)))
        await chunks.aclose()
        return seen

    seen = asyncio.run(asyncio.wait_for(follow(), timeout=30))
    assert sum("one" in s for s in seen) == 1 and sum("two" in s for s in seen) == 1
    others = [sql for thread, sql in queries if not thread.startswith("log-hub")]
    # Only the test's own appends: the reservation, the insert and their transactions.
    assert all(
        "log_seq = log_seq" in sql
        or "INSERT" in sql
        or "SAVEPOINT" in sql
        or "BEGIN" in sql
        or "COMMIT" in sql
        for sql in others
    ), others
    assert any("log_seq" in sql for thread, sql in queries if thread.startswith("log-hub"))


def _text(chunk: bytes | str) -> str:
    return chunk.decode() if isinstance(chunk, bytes) else chunk


@pytest.mark.django_db(transaction=True)
def test_streams_in_event_loops_of_their_own_each_get_every_line(make_runbook):
    """A WSGI server runs each async view in a loop of its own thread: hubs must not mix."""
    import threading

    from django.utils import timezone

    from runs.models import LogEntry, Run

    viewer = make_user("vic", "viewer")
    run = run_create(runbook=make_runbook(RUNBOOK), params={}, user=None, origin="cli")
    opened = threading.Barrier(3, timeout=30)
    results: list[list[str]] = []

    async def follow() -> list[str]:
        client = AsyncClient()
        await client.aforce_login(viewer)
        response = await client.get(f"/runs/{run.number}/log/stream")
        seen: list[str] = []
        chunks = aiter(response.streaming_content)
        seen.append(_text(await anext(chunks)))  # "retry:", sent once the stream is open
        await asyncio.to_thread(opened.wait)
        async for chunk in chunks:
            seen += [e["event"] + ":" + e.get("data", "") for e in events_of(_text(chunk))]
        return seen

    def in_thread() -> None:
        try:
            results.append(asyncio.run(asyncio.wait_for(follow(), timeout=30)))
        finally:
            from django.db import connection

            connection.close()

    threads = [threading.Thread(target=in_thread) for _ in range(2)]
    for thread in threads:
        thread.start()
    opened.wait()
    logs_append([LogEntry(run=run, timestamp=timezone.now(), level=50, message="for both")])
    Run.objects.filter(pk=run.pk).update(status="cancelled")
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 2
    for seen in results:
        assert sum("for both" in s for s in seen) == 1
        assert seen[-1] == "end:"


@pytest.mark.django_db(transaction=True)
def test_a_stream_that_falls_behind_reads_the_dropped_lines_itself(make_runbook, monkeypatch):
    from django.utils import timezone

    from runs import streams
    from runs.models import LogEntry, Run

    monkeypatch.setattr(streams, "PENDING", 2)
    read_itself: list[tuple[int, int]] = []
    catch_up = streams._catch_up

    def record(run_pk, where, after, upto):
        read_itself.append((after, upto))
        return catch_up(run_pk, where, after, upto)

    monkeypatch.setattr(streams, "_catch_up", record)
    viewer = make_user("vic", "viewer")
    run = run_create(runbook=make_runbook(RUNBOOK), params={}, user=None, origin="cli")

    def append(first: int) -> None:
        logs_append(
            [
                LogEntry(run=run, timestamp=timezone.now(), level=50, message=f"line {n}")
                for n in range(first, first + 3)
            ]
        )

    async def follow() -> list[str]:
        client = AsyncClient()
        await client.aforce_login(viewer)
        response = await client.get(f"/runs/{run.number}/log/stream")
        chunks = aiter(response.streaming_content)
        await anext(chunks)  # "retry:"
        pending = asyncio.ensure_future(anext(chunks))  # joins the hub, then waits
        hub = streams._HUBS[asyncio.get_running_loop()]
        while run.pk not in hub.feeds or hub.feeds[run.pk].seq is None:
            await asyncio.sleep(0.01)
        await sync_to_async(append)(1)
        seen = [_text(await pending)]
        for first in (4, 7):  # not read meanwhile: more than PENDING lines pile up
            await sync_to_async(append)(first)
            while hub.feeds[run.pk].seq < first + 2:
                await asyncio.sleep(0.01)
        await sync_to_async(Run.objects.filter(pk=run.pk).update)(status="cancelled")
        async for chunk in chunks:
            seen.append(_text(chunk))
        return [e["event"] + ":" + e.get("data", "") for e in events_of("".join(seen))]

    seen = asyncio.run(asyncio.wait_for(follow(), timeout=30))
    lines = [s for s in seen if s.startswith("line:")]
    assert [int(s.split("line ")[-1].split("<")[0]) for s in lines] == list(range(1, 10))
    assert seen[-1] == "end:"
    assert read_itself == [(0, 3), (3, 9)]  # each batch of 3 was more than PENDING: dropped
