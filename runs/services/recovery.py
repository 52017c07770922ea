"""What the reaper calls: taking back steps whose worker died, re-sending lost wake-ups."""

import socket
from datetime import timedelta

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from runs.executors.process import kill_orphaned_group, kill_orphans_by_environment
from runs.models import LogLevel, Run, Step, StepAttempt
from runs.services.advance import _enqueue, _lock, run_advance
from runs.services.events import _events_batched, step_transition
from runs.services.logs import log_system
from runs.state import RUN_ACTIVE, RunStatus, StepStatus


def _kill_lost_attempt(run: Run, step: Step) -> None:
    attempt = StepAttempt.objects.filter(step=step, number=step.attempt).first()
    if attempt is None or (attempt.pid is None and step.kind != "shell"):
        return
    host = attempt.worker.split(":", 1)[0]
    if host != socket.gethostname():
        log_system(
            run_id=run.pk,
            step=step,
            message=f"attempt {attempt.number} ran on {host}; its processes could not be checked",
            level=LogLevel.WARN,
        )
        return
    expected = {
        "STEPWISE_RUN_ID": str(run.uuid),
        "STEPWISE_STEP_ID": step.key,
        "STEPWISE_ATTEMPT": str(attempt.number),
    }
    if attempt.pid is None:  # the worker died before writing it
        killed = kill_orphans_by_environment(expected)
    else:
        killed = kill_orphaned_group(attempt.pid, expected)
    if killed:
        log_system(
            run_id=run.pk,
            step=step,
            message=f"killed the processes attempt {attempt.number} left behind",
            level=LogLevel.WARN,
        )


@transaction.atomic
@_events_batched
def step_reclaim_lost(*, step: Step) -> bool:
    """A step's lease expired: its worker died. Retry it if attempts remain, else fail it."""
    run = _lock(step.run)
    step.refresh_from_db()
    now = timezone.now()
    if (
        step.status != StepStatus.RUNNING
        or not step.lease_expires_at
        or step.lease_expires_at > now
    ):
        return False
    message = f"worker lost ({step.lease_owner or 'unknown worker'} stopped renewing its lease)"
    _kill_lost_attempt(run, step)
    StepAttempt.objects.filter(step=step, number=step.attempt).update(
        status=StepStatus.FAILED, finished_at=now, error="worker lost"
    )
    guard = Q(lease_owner=step.lease_owner, attempt=step.attempt)
    overdue = run.deadline is not None and now >= run.deadline
    if step.attempt < step.max_attempts and run.status in RUN_ACTIVE and not overdue:
        moved = step_transition(
            step=step,
            to=StepStatus.QUEUED,
            reason=message,
            guard=guard,
            lease_owner="",
            lease_expires_at=None,
            enqueued_at=now,
            error="worker lost",
        )
        if moved:
            log_system(
                run_id=run.pk, step=step, message=f"{message}; retrying", level=LogLevel.WARN
            )
            _enqueue(run.pk, [step.pk])
        return moved
    final = StepStatus.CANCELLED if run.status == RunStatus.CANCELLING else StepStatus.FAILED
    moved = step_transition(
        step=step,
        to=final,
        reason=message,
        guard=guard,
        lease_owner="",
        lease_expires_at=None,
        finished_at=now,
        error="worker lost",
    )
    if moved:
        log_system(run_id=run.pk, step=step, message=message, level=LogLevel.ERROR)
        run_advance(run=run)
    return moved


# A worker waiting out a retry it scheduled claims it within half a second of its time.
OWNER_GRACE = 2.0


def step_wake_due() -> int:
    """Sends queue messages for steps whose retry is due and that no worker will claim: long
    retry delays, never sent to the queue, and short ones the worker that scheduled them
    (`enqueued_at` = `not_before`: it waits them out itself) has not claimed OWNER_GRACE
    after they were due, as it died or is still running the rest of its batch."""
    now = timezone.now()
    overdue = now - timedelta(seconds=OWNER_GRACE)
    rows = list(
        Step.objects.filter(status=StepStatus.QUEUED, not_before__lte=now)
        .filter(
            Q(enqueued_at__isnull=True) | Q(enqueued_at=F("not_before"), not_before__lte=overdue)
        )
        .values_list("pk", "run_id", "enqueued_at")[:500]
    )
    for pk, run_pk, enqueued_at in rows:
        if Step.objects.filter(pk=pk, status=StepStatus.QUEUED, enqueued_at=enqueued_at).update(
            enqueued_at=now
        ):
            with transaction.atomic():
                _enqueue(run_pk, [pk])
    return len(rows)


def step_requeue_stalled(*, older_than: float) -> int:
    """Wakes workers again for queued steps whose message may have been lost."""
    now = timezone.now()
    stale = now - timedelta(seconds=older_than)
    rows = list(
        Step.objects.filter(status=StepStatus.QUEUED, enqueued_at__lte=stale)
        .filter(Q(not_before__isnull=True) | Q(not_before__lte=now))
        .values_list("pk", "run_id")[:500]
    )
    for pk, run_pk in rows:
        if Step.objects.filter(pk=pk, status=StepStatus.QUEUED).update(enqueued_at=now):
            with transaction.atomic():
                _enqueue(run_pk, [pk])
    return len(rows)
