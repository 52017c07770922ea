"""Whole runs executed by a real `manage.py qcluster` process, including workers dying."""

import os
import signal
from pathlib import Path

import psutil
import pytest

from runs.models import LogEntry, Run
from runs.services import run_cancel, run_create
from tests.conftest import wait_for, wait_for_run

pytestmark = pytest.mark.worker


def start(runbook, **params):
    return run_create(runbook=runbook, params=params, user=None, origin="cli")


def step_pid(run: Run, key: str) -> int:
    line = wait_for(
        lambda: LogEntry.objects.filter(run=run, step__key=key, message__startswith="pid=").first()
    )
    return int(line.message.split("=")[1])


def worker_running(pid: int) -> int:
    """The django-q2 worker process whose child is the step's bash."""
    return psutil.Process(pid).ppid()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_cluster_runs_a_whole_runbook(cluster, make_runbook):
    cluster()
    runbook = make_runbook(
        """
        slug: whole
        name: Whole
        steps:
          - {id: one, shell: 'echo "n=1" >> "$STEPWISE_OUTPUT"'}
          - id: fan
            parallel: true
            steps:
              - {id: a, shell: 'echo a {{ steps.one.outputs.n }}'}
              - {id: b, retries: {max: 1, delay: 100ms}, shell: '[ "$STEPWISE_ATTEMPT" = 2 ]'}
          - {id: nap, sleep: 100ms}
        """
    )
    run = wait_for_run(start(runbook))
    assert run.status == "succeeded", run.error
    assert {s.key: s.status for s in run.steps.all()} == dict.fromkeys(
        ["one", "fan", "a", "b", "nap"], "succeeded"
    )
    assert LogEntry.objects.filter(run=run, step__key="a", message="a 1").exists()


def test_killed_worker_step_is_retried_when_attempts_remain(cluster, make_runbook):
    qcluster = cluster()
    runbook = make_runbook(
        """
        slug: survive
        name: Survive
        steps:
          - id: work
            retries: 1
            shell: |
              echo "pid=$$"
              if [ "$STEPWISE_ATTEMPT" = 1 ]; then sleep 300; fi
              echo finished
        """
    )
    run = start(runbook)
    pid = step_pid(run, "work")
    os.kill(worker_running(pid), signal.SIGKILL)
    run = wait_for_run(run, timeout=60)
    work = run.steps.get(key="work")
    assert run.status == "succeeded", qcluster.output()
    assert work.attempt == 2
    assert LogEntry.objects.filter(run=run, step=work, message__contains="worker lost").exists()
    assert LogEntry.objects.filter(run=run, step=work, message="finished").exists()
    # The first attempt's processes, orphaned by the dead worker, were ended before the retry.
    assert LogEntry.objects.filter(run=run, step=work, message__startswith="killed the processes")
    assert wait_for(lambda: gone(pid), timeout=10)


def test_killed_worker_fails_the_step_as_worker_lost_without_retries(cluster, make_runbook):
    qcluster = cluster()
    runbook = make_runbook(
        """
        slug: lost
        name: Lost
        steps:
          - id: work
            shell: |
              echo "pid=$$"
              sleep 300
          - {id: after, shell: echo never}
        """
    )
    run = start(runbook)
    pid = step_pid(run, "work")
    os.kill(worker_running(pid), signal.SIGKILL)
    run = wait_for_run(run, timeout=60)
    assert run.status == "failed", qcluster.output()
    assert run.error == {"message": "Step 1 (work) failed: worker lost", "step": "1"}
    assert run.steps.get(key="after").status == "skipped"
    assert wait_for(lambda: gone(pid), timeout=10)


def test_cancel_reaches_a_step_running_in_the_cluster(cluster, make_runbook):
    cluster()
    runbook = make_runbook(
        """
        slug: stop-me
        name: Stop me
        steps:
          - id: work
            shell: |
              echo "pid=$$"
              sleep 300
        """
    )
    run = start(runbook)
    pid = step_pid(run, "work")
    run_cancel(run=run, user=None, reason="not needed")
    run = wait_for_run(run, timeout=30)
    assert run.status == "cancelled"
    assert wait_for(lambda: gone(pid), timeout=10)


def test_message_lost_before_any_worker_saw_it_is_sent_again(cluster, make_runbook):
    from django_q.brokers import get_broker

    runbook = make_runbook("slug: lost-msg\nname: Lost message\nsteps: [{id: a, shell: 'true'}]")
    run = start(runbook)
    get_broker().purge_queue()  # the wake-up message vanishes
    cluster(STEPWISE_REQUEUE_AFTER="1")
    run = wait_for_run(run, timeout=30)
    assert run.status == "succeeded"


def reaper_holder(lock: Path) -> int | None:
    """The pid holding the flock on `lock`, read from /proc/locks (waiters are marked ->)."""
    if not lock.exists():
        return None
    inode = lock.stat().st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if fields[1] == "FLOCK" and int(fields[5].rsplit(":", 1)[1]) == inode:
            return int(fields[4])
    return None


def test_one_worker_reaps_and_another_takes_over_when_it_dies(cluster, make_runbook, settings):
    # One step per worker, so that the reaper's worker dies running a step (a worker killed
    # while idle may take django-q2's task queue lock with it).
    qcluster = cluster(STEPWISE_STEP_BATCH="1")
    runbook = make_runbook(
        """
        slug: reaped
        name: Reaped
        steps:
          - id: both
            parallel: true
            steps:
              - id: a
                retries: 1
                shell: |
                  echo "pid=$$"
                  if [ "$STEPWISE_ATTEMPT" = 1 ]; then sleep 300; fi
              - id: b
                retries: 1
                shell: |
                  echo "pid=$$"
                  if [ "$STEPWISE_ATTEMPT" = 1 ]; then sleep 300; fi
        """
    )
    run = start(runbook)
    workers = {worker_running(step_pid(run, key)): key for key in ("a", "b")}
    lock = settings.VAR_DIR / "reaper.lock"
    holder = wait_for(lambda: reaper_holder(lock))
    assert holder in workers, "the reaper runs in one of the cluster's workers"

    os.kill(holder, signal.SIGKILL)
    successor = wait_for(lambda: (pid := reaper_holder(lock)) != holder and pid)
    assert successor in qcluster.worker_pids()
    # The new holder reaps: the dead worker's step is taken back and retried.
    lost = run.steps.get(key=workers[holder])
    wait_for(lambda: lost.refresh_from_db() or lost.status == "succeeded", timeout=60)
    assert lost.attempt == 2, qcluster.output()
    assert LogEntry.objects.filter(run=run, step=lost, message__contains="worker lost").exists()
    run_cancel(run=run, user=None, reason="the other step sleeps on")


def test_runs_still_start_after_the_worker_next_in_line_is_killed(cluster, make_runbook):
    qcluster = cluster()
    runbook = make_runbook(
        "slug: idle-kill\nname: Idle kill\nsteps: [{id: a, shell: 'echo pid=$$; sleep 1'}]"
    )
    run = start(runbook)
    busy = worker_running(step_pid(run, "a"))
    assert wait_for_run(run, timeout=30).status == "succeeded"
    # While `busy` ran the step, the other worker took the task queue's read lock to wait
    # for the next task (workers are the sentinel's first children). Killing it there used
    # to leave the lock taken for good: no worker, old or new, ever got a task again.
    sentinel = psutil.Process(busy).parent()
    workers = sorted(sentinel.children(), key=lambda p: p.create_time())[:2]
    next_in_line = next(p.pid for p in workers if p.pid != busy)
    os.kill(next_in_line, signal.SIGKILL)
    wait_for(lambda: gone(next_in_line))
    for _ in range(3):
        run = wait_for_run(start(runbook), timeout=30)
        assert run.status == "succeeded", qcluster.output()


def test_results_are_still_collected_after_the_monitor_is_killed(cluster, make_runbook):
    from django_q.brokers import get_broker
    from django_q.models import OrmQ

    # With the ORM broker, the monitor acknowledges each task it gets the result of: the
    # broker's table empties. (Redis takes its messages off the queue as it hands them out.)
    acknowledged = (
        (lambda: not OrmQ.objects.exists())
        if get_broker().__class__.__name__ == "WakeableORM"
        else (lambda: True)
    )
    qcluster = cluster()
    runbook = make_runbook(
        "slug: after-monitor\nname: After monitor\nsteps: [{id: a, shell: 'echo pid=$$; sleep 1'}]"
    )
    run = start(runbook)
    sentinel = psutil.Process(worker_running(step_pid(run, "a"))).parent()
    assert wait_for_run(run, timeout=30).status == "succeeded"
    wait_for(acknowledged)  # the monitor is idle again: waiting, holding the result queue's lock
    # The sentinel's children in order: the workers, the monitor, the pusher.
    monitor = sorted(sentinel.children(), key=lambda p: p.create_time())[2].pid
    os.kill(monitor, signal.SIGKILL)
    wait_for(lambda: gone(monitor))
    runs = [start(runbook) for _ in range(3)]
    for run in runs:
        assert wait_for_run(run, timeout=30).status == "succeeded", qcluster.output()
    wait_for(acknowledged)  # by the monitor django-q2 started in its place
