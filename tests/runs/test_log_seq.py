"""Log lines are numbered 1, 2, 3 ... per run, and a run's numbers commit in order.

These tests use real threads and real transactions; run them on PostgreSQL too
(DATABASE_URL=postgres://...), where a global sequence let a reader skip a line.
"""

import random
import threading
import time
from collections.abc import Callable

import pytest
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from runs.api.views import log_page
from runs.models import LogEntry, Run
from runs.services import logs_append, run_create

RUNBOOK = "slug: quiet\nname: Quiet\nsteps: [{id: one, shell: 'true'}]\n"


def _line(run: Run, message: str) -> LogEntry:
    return LogEntry(run=run, timestamp=timezone.now(), level=20, stream="stdout", message=message)


def _in_threads(count: int, target: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def body(index: int) -> None:
        try:
            target(index)
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors


def _slow_append(run: Run, lines: list[LogEntry]) -> None:
    # Holding the transaction open after numbering is what let a later number commit
    # first when numbers came from a global sequence.
    with transaction.atomic():
        logs_append(lines)
        time.sleep(random.uniform(0, 0.01))


@pytest.mark.django_db(transaction=True)
def test_concurrent_appenders_to_one_run_get_gapless_ordered_seqs(make_runbook):
    run = run_create(runbook=make_runbook(RUNBOOK), params={}, user=None, origin="cli")
    other = run_create(runbook=make_runbook(RUNBOOK), params={}, user=None, origin="cli")

    def writer(index: int) -> None:
        for batch in range(10):
            lines = [_line(run, f"w{index} b{batch} l{i}") for i in range(3)]
            _slow_append(run, [*lines, _line(other, f"w{index} b{batch}")])

    _in_threads(4, writer)
    seqs = list(LogEntry.objects.filter(run=run).order_by("seq").values_list("seq", "message"))
    assert [seq for seq, _ in seqs] == list(range(1, 4 * 10 * 3 + 1))
    for index in range(4):  # each writer's lines are numbered in the order it wrote them
        mine = [message for _, message in seqs if message.startswith(f"w{index} ")]
        assert mine == [f"w{index} b{b} l{i}" for b in range(10) for i in range(3)]
    assert Run.objects.get(pk=run.pk).log_seq == 120
    assert sorted(LogEntry.objects.filter(run=other).values_list("seq", flat=True)) == list(
        range(1, 41)
    )


@pytest.mark.django_db(transaction=True)
def test_reader_following_after_never_misses_a_line(make_runbook):
    run = run_create(runbook=make_runbook(RUNBOOK), params={}, user=None, origin="cli")
    writers_done = threading.Event()
    seen: list[int] = []
    total = 3 * 40 * 2

    def writer(index: int) -> None:
        for batch in range(40):
            _slow_append(run, [_line(run, f"w{index} b{batch} l{i}") for i in range(2)])

    def reader() -> None:
        after = 0
        try:
            while True:
                done = writers_done.is_set()  # before reading, like every reader
                page, _ = log_page(run, {"after": str(after), "limit": "50"})
                # No gap: the first line after the cursor, then each next one.
                assert [line.seq for line in page] == list(range(after + 1, after + 1 + len(page)))
                seen.extend(line.seq for line in page)
                after = page[-1].seq if page else after
                if done and not page:
                    return
                time.sleep(0.001)
        finally:
            connection.close()

    reading = threading.Thread(target=reader)
    reading.start()
    try:
        _in_threads(3, writer)
    finally:
        writers_done.set()
        reading.join(timeout=120)
    assert seen == list(range(1, total + 1))


@pytest.mark.django_db(transaction=True)
def test_migration_numbers_existing_lines_per_run_in_their_order(make_runbook):
    run = run_create(runbook=make_runbook(RUNBOOK), params={}, user=None, origin="cli")
    other = run_create(runbook=make_runbook(RUNBOOK), params={}, user=None, origin="cli")
    executor = MigrationExecutor(connection)
    executor.migrate([("runs", "0001_initial")])
    try:
        old = MigrationExecutor(connection).loader.project_state(("runs", "0001_initial")).apps
        OldEntry = old.get_model("runs", "LogEntry")
        now = timezone.now()
        for message, run_pk in (("a1", run.pk), ("b1", other.pk), ("a2", run.pk), ("a3", run.pk)):
            OldEntry.objects.create(
                run_id=run_pk, timestamp=now, level=20, stream="stdout", message=message
            )
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())
    rows = LogEntry.objects.order_by("run_id", "seq").values_list("run_id", "seq", "message")
    assert list(rows) == [(run.pk, 1, "a1"), (run.pk, 2, "a2"), (run.pk, 3, "a3"),
                          (other.pk, 1, "b1")]  # fmt: skip
    assert Run.objects.get(pk=run.pk).log_seq == 3
    assert Run.objects.get(pk=other.pk).log_seq == 1
    logs_append([_line(run, "a4")])
    assert LogEntry.objects.get(message="a4").seq == 4


def test_logs_append_refuses_a_run_that_does_not_exist(db):
    with pytest.raises(Run.DoesNotExist):
        logs_append([LogEntry(run_id=987654, timestamp=timezone.now(), level=20, message="x")])
