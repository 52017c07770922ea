"""Live logs as Server-Sent Events: every line once, resumable, ending with the run."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from runs.services import run_create
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
        LogEntry.objects.create(
            run=run, timestamp=timezone.now(), level=50, stream="system", message=message
        )

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
def test_hub_wakes_a_waiting_stream_when_its_run_gets_a_line(make_runbook):
    from django.utils import timezone

    from runs.models import LogEntry
    from runs.streams import _LogHub

    run = run_create(runbook=make_runbook(RUNBOOK), params={}, user=None, origin="cli")
    hub = _LogHub()

    async def scenario() -> bool:
        waiting = asyncio.create_task(hub.wait(run.pk, timeout=60))
        while run.pk not in hub.waiters or hub.last is None:
            await asyncio.sleep(0.01)
        await sync_to_async(LogEntry.objects.create)(
            run=run, timestamp=timezone.now(), level=20, stream="stdout", message="hello"
        )
        # Woken by the hub, not by the 60 s timeout.
        await asyncio.wait_for(waiting, timeout=20)
        return run.pk not in hub.waiters

    assert asyncio.run(scenario()) is True
