"""Taking back a step whose worker died: its processes are ended before anything else."""

import os
import signal
import socket
import subprocess
from datetime import timedelta

from django.utils import timezone

from runs.models import LogEntry, Step, StepAttempt
from runs.services import step_reclaim_lost
from runs.state import StepStatus


def lose_worker(step: Step, pid: int | None) -> None:
    """Puts `step` where a worker killed during its first attempt leaves it."""
    worker = f"{socket.gethostname()}:999999:dead"
    now = timezone.now()
    Step.objects.filter(pk=step.pk).update(
        status=StepStatus.RUNNING,
        attempt=1,
        lease_owner=worker,
        lease_expires_at=now - timedelta(seconds=1),
    )
    StepAttempt.objects.create(
        step=step, number=1, worker=worker, pid=pid, status=StepStatus.RUNNING, started_at=now
    )


def orphan(run, step: Step) -> subprocess.Popen:
    """A step process the dead worker left behind, with the environment the executor gives."""
    environment = {
        "PATH": os.environ["PATH"],
        "STEPWISE_RUN_ID": str(run.uuid),
        "STEPWISE_STEP_ID": step.key,
        "STEPWISE_ATTEMPT": "1",
    }
    return subprocess.Popen(["sleep", "300"], env=environment, start_new_session=True)


def test_a_lost_attempt_without_a_pid_still_has_its_processes_killed(make_runbook, start_run):
    runbook = make_runbook(
        "slug: no-pid\nname: No pid\nsteps: [{id: work, retries: 1, shell: 'sleep 300'}]"
    )
    run = start_run(runbook)
    step = run.steps.get(key="work")
    lose_worker(step, pid=None)  # killed before the pid was written
    left_behind = orphan(run, step)
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        assert step_reclaim_lost(step=step)
        assert left_behind.wait(timeout=10) == -signal.SIGKILL
        assert bystander.poll() is None
    finally:
        for process in (left_behind, bystander):
            process.kill()
            process.wait()
    step.refresh_from_db()
    assert (step.status, step.error) == (StepStatus.QUEUED, "worker lost")
    assert LogEntry.objects.filter(
        run=run, step=step, message="killed the processes attempt 1 left behind"
    ).exists()


def test_a_process_of_another_attempt_is_left_alone(make_runbook, start_run):
    runbook = make_runbook(
        "slug: other-attempt\nname: Other attempt\nsteps: [{id: work, shell: 'sleep 300'}]"
    )
    run = start_run(runbook)
    step = run.steps.get(key="work")
    lose_worker(step, pid=None)
    other_run = start_run(runbook)
    unrelated = orphan(other_run, other_run.steps.get(key="work"))
    try:
        assert step_reclaim_lost(step=step)
        assert unrelated.poll() is None
    finally:
        unrelated.kill()
        unrelated.wait()
    step.refresh_from_db()
    assert (step.status, step.error) == (StepStatus.FAILED, "worker lost")
    assert not LogEntry.objects.filter(run=run, message__startswith="killed the processes")
