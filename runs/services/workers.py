"""What the workers call: claiming steps, heartbeats, recording results, handing steps over."""

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Case, DateTimeField, F, Q, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from config.errors import InvalidTransition
from config.prepared import PreparedQuery
from runbooks.durations import duration_delta
from runbooks.services import version_last_steps, version_steps
from runs.models import LogEntry, LogLevel, Run, Step, StepAttempt
from runs.services.advance import VERSION_HEAVY, _enqueue, _relock, run_advance, run_masker
from runs.services.events import (
    _events_batched,
    _record_event,
    run_transition,
    step_transition,
    steps_transition,
)
from runs.services.logs import log_system, logs_append
from runs.state import (
    RUN_ACTIVE,
    STEP_FAILED,
    RunStatus,
    StepStatus,
)


def _lease_until() -> Any:
    return timezone.now() + timedelta(seconds=settings.STEPWISE_LEASE_SECONDS)


def _claim(
    step: Step, worker: str, *, pending: bool = False, ended: StepAttempt | None = None
) -> bool:
    """Takes a queued step for `worker` (with `pending`, a pending one, queued and taken in
    one UPDATE) and opens its attempt; `ended` is the previous step's attempt, written in
    the same statement if the claim succeeds."""
    now = timezone.now()
    claimed = step_transition(
        step=step,
        to=StepStatus.RUNNING,
        via=StepStatus.QUEUED if pending else None,
        guard=Q(attempt=step.attempt),
        **({"enqueued_at": now} if pending else {}),
        attempt=step.attempt + 1,
        lease_owner=worker,
        lease_expires_at=_lease_until(),
        started_at=step.started_at or now,
        finished_at=None,
        not_before=None,
    )
    if not claimed:
        return False
    opened = StepAttempt(
        step=step, number=step.attempt, worker=worker, status=StepStatus.RUNNING, started_at=now
    )
    if ended is None:
        opened.save(force_insert=True)
    else:
        _attempt_write(ended, opened)
    run = step.run
    if run.status in (RunStatus.QUEUED, RunStatus.WAITING):
        _mark_running(run, now)
    return True


def _mark_running(run: Run, now: Any) -> None:
    """Moves the run the claimed step belongs to to running. Workers claiming two of its
    steps at once (a parallel group's first ones) both read it queued; the one whose update
    comes second finds it running already, which is what it wanted: its claim stands."""
    try:
        run_transition(run=run, to=RunStatus.RUNNING, started_at=run.started_at or now)
    except InvalidTransition:
        status = Run.objects.filter(pk=run.pk).values_list("status", flat=True).get()
        if status != RunStatus.RUNNING:
            raise
        run.status = status


def _ready_steps(run_pk: int) -> Any:
    # Rows another worker's claim transaction holds are skipped: on PostgreSQL two workers
    # draining one fan-out would otherwise read the same first rows, and one of them would
    # wait for the other's commit only to find them taken. (SQLite runs claims one at a time.)
    return (
        Step.objects.filter(run_id=run_pk, status=StepStatus.QUEUED)
        .filter(Q(not_before__isnull=True) | Q(not_before__lte=timezone.now()))
        .select_for_update(skip_locked=True, of=("self",))
        .select_related("run__created_by", "run__version")
        .defer(*(f"run__version__{name}" for name in VERSION_HEAVY))
        .order_by("position")
    )


# The step a queue message names, if still queued: what every task reads first. Prepared
# (config/prepared.py): Django would otherwise spend about 1 ms compiling its joins for each
# message, more than the rest of the claim. The run and time checks are made in Python.
QUEUED_STEP = PreparedQuery(
    lambda pk: (
        Step.objects.filter(pk=pk, status=StepStatus.QUEUED)
        .select_for_update(skip_locked=True, of=("self",))
        .select_related("run__created_by", "run__version")
        .defer(*(f"run__version__{name}" for name in VERSION_HEAVY))
    ),
)


def _preferred(run_pk: int, step_pk: int) -> Step | None:
    """The queued step `step_pk` of the run, if it is ready (its retry delay is over)."""
    now = timezone.now()
    for step in QUEUED_STEP(step_pk):
        if step.run_id == run_pk and (step.not_before is None or step.not_before <= now):
            return step
    return None


@transaction.atomic
@_events_batched
def step_claim(
    *, run_pk: int, worker: str, prefer: int | None = None, siblings: int = 0
) -> list[Step]:
    """Claims a ready step of the run for `worker`: the step `prefer` if it is still queued,
    else the first ready one. With `siblings`, also up to that many ready shell siblings of
    a parallel group (`_claim_siblings`). Returns [] when there is nothing to do."""
    if prefer:
        # Usually the step the message was sent for is still there: one read, not nine.
        step = _preferred(run_pk, prefer)
        if step is not None and _claim(step, worker):
            return [step, *_claim_siblings(step, worker, siblings)]
    ready = _ready_steps(run_pk)
    for step in ready.exclude(pk=prefer)[:8] if prefer else ready[:8]:
        if _claim(step, worker):
            return [step, *_claim_siblings(step, worker, siblings)]
    return []


def _claim_siblings(step: Step, worker: str, limit: int) -> list[Step]:
    """Claims up to `limit` more ready shell steps of the parallel group `step` (just claimed
    by `worker`) belongs to, so the worker runs them side by side and finishes them together.
    Call inside the claim's transaction.

    Compare-and-swap like every claim: one UPDATE per attempt number among them, guarded by
    status and attempt; rows another worker took in between are left out.
    """
    if limit <= 0 or step.kind != "shell" or step.parent_id is None:
        return []
    rows = list(
        _ready_steps(step.run_id)
        .filter(parent_id=step.parent_id, parent__parallel=True, kind="shell")
        .exclude(pk=step.pk)[:limit]
    )
    now = timezone.now()
    lease = _lease_until()
    by_attempt: dict[int, list[Step]] = {}
    for row in rows:
        by_attempt.setdefault(row.attempt, []).append(row)
    claimed: list[Step] = []
    for attempt, group in by_attempt.items():
        pks = [row.pk for row in group]
        updated = Step.objects.filter(pk__in=pks, status=StepStatus.QUEUED, attempt=attempt).update(
            status=StepStatus.RUNNING,
            attempt=attempt + 1,
            lease_owner=worker,
            lease_expires_at=lease,
            started_at=Coalesce(F("started_at"), Value(now, output_field=DateTimeField())),
            finished_at=None,
            not_before=None,
        )
        if updated != len(group):
            # Another worker got some of them first: keep the ones this update took.
            ours = set(
                Step.objects.filter(
                    pk__in=pks, status=StepStatus.RUNNING, lease_owner=worker, attempt=attempt + 1
                ).values_list("pk", flat=True)
            )
            group = [row for row in group if row.pk in ours]
        for row in group:
            _record_event(
                run_id=row.run_id, step=row, from_status=row.status, to_status=StepStatus.RUNNING
            )
            row.status = StepStatus.RUNNING
            row.attempt = attempt + 1
            row.lease_owner, row.lease_expires_at = worker, lease
            row.started_at = row.started_at or now
            row.finished_at = row.not_before = None
        claimed += group
    StepAttempt.objects.bulk_create(
        StepAttempt(
            step=row, number=row.attempt, worker=worker, status=StepStatus.RUNNING, started_at=now
        )
        for row in claimed
    )
    claimed.sort(key=lambda row: row.position)
    return claimed


def step_heartbeat_many(*, steps: list[Step], worker: str) -> tuple[set[int], str | None]:
    """`step_heartbeat` for a batch: renews every lease in one UPDATE. Returns the steps
    still held and why all must stop (a cancel), or None."""
    held = {step.pk for step in steps}
    query = Q()
    for step in steps:
        query |= Q(pk=step.pk, attempt=step.attempt)
    rows = Step.objects.filter(query, status=StepStatus.RUNNING, lease_owner=worker)
    if rows.update(lease_expires_at=_lease_until()) != len(steps):
        held = set(rows.values_list("pk", flat=True))
    status = Run.objects.values_list("status", flat=True).get(pk=steps[0].run_id)
    return held, ("cancelled" if status == RunStatus.CANCELLING else None)


def step_heartbeat(*, step: Step, worker: str) -> str | None:
    """Renews the lease. Returns why the step must stop (cancel, lost lease) or None."""
    held = Step.objects.filter(
        pk=step.pk, status=StepStatus.RUNNING, lease_owner=worker, attempt=step.attempt
    ).update(lease_expires_at=_lease_until())
    if not held:
        return "lost"
    status = Run.objects.values_list("status", flat=True).get(pk=step.run_id)
    if status == RunStatus.CANCELLING:
        return "cancelled"
    return None


def steps_queued(*, run_pk: int) -> bool:
    """Whether the run has a queued step: one a worker waiting out a retry delay waits for."""
    return Step.objects.filter(run_id=run_pk, status=StepStatus.QUEUED).exists()


def step_should_stop(*, step: Step) -> str | None:
    """A cheap check between heartbeats: has the run been cancelled?"""
    status = Run.objects.values_list("status", flat=True).get(pk=step.run_id)
    return "cancelled" if status == RunStatus.CANCELLING else None


STOPPED_BY_CANCEL = "stopped: the run was cancelled"


@dataclass(frozen=True)
class StepResult:
    status: str  # succeeded | failed | timed_out | cancelled
    exit_code: int | None = None
    outputs: Mapping[str, Any] | None = None
    error: str = ""
    retryable: bool = True  # False when another attempt would fail the same way

    @classmethod
    def stopped(cls) -> "StepResult":
        """The step was stopped because its run is being cancelled. The error says so, where
        repeating the status made the log read "cancelled: cancelled"."""
        return cls(status=StepStatus.CANCELLED, error=STOPPED_BY_CANCEL)


@dataclass(frozen=True)
class Finish:
    next_step: Step | None = None  # the next ready step, already claimed for this worker
    retry_at: Any = None  # when this step is retried, if the worker should wait for it
    # With a batch (`step_finish_many`), when each of its steps retried inline is due; the
    # worker owes them all, not only the first.
    retries_at: tuple[Any, ...] = ()
    # Ready siblings of `next_step` in a parallel group, claimed with it (`_claim_siblings`).
    siblings: list[Step] = field(default_factory=list)
    # The steps after `next_step` in its sequential group, for its own step_finish.
    upcoming: list[Step] | None = None
    run_ended: bool = False  # the run is over: nothing of it is left to claim

    @property
    def claimed(self) -> list[Step]:
        return [self.next_step, *self.siblings] if self.next_step is not None else []


def _siblings_still_running(step: Step) -> bool:
    """Whether a parallel sibling of `step` is queued or running: then it will plan the
    group's next move when it finishes. An open approval or a running subgroup among the
    siblings does not count: the run may have to become `waiting` now, which a plan says."""
    if step.parent_id is None:
        return False
    return (
        Step.objects.filter(
            parent_id=step.parent_id,
            parent__parallel=True,
            status__in=(StepStatus.QUEUED, StepStatus.RUNNING),
        )
        .exclude(kind="group")
        .exclude(pk=step.pk)
        .exists()
    )


def _stops_its_group(step: Step) -> bool:
    """Whether `step` just ended in a way that stops its group (`engine.Node.blocks`)."""
    return step.status in STEP_FAILED and not step.continue_on_error


def _attempt_finished(
    step: Step, result: StepResult, error: str, now: Any, pid: int | None = None
) -> None:
    fields: dict[str, Any] = {"pid": pid} if pid is not None else {}
    StepAttempt.objects.filter(step=step, number=step.attempt).update(
        status=result.status, finished_at=now, exit_code=result.exit_code, error=error, **fields
    )


@dataclass(frozen=True)
class _Recorded:
    ended: bool  # False: the step was queued for another attempt
    retry_at: Any = None  # when that attempt is due, if the worker should wait for it
    # With `defer_attempt`: the ended attempt, for the caller to write (`_attempt_write`).
    attempt: StepAttempt | None = None


def _will_retry(run: Run, step: Step, result: StepResult, now: Any) -> bool:
    retryable = result.retryable and result.status in (StepStatus.FAILED, StepStatus.TIMED_OUT)
    return (
        retryable
        and step.attempt < step.max_attempts
        and run.status in RUN_ACTIVE
        and not (run.deadline and now >= run.deadline)
        and not (step.deadline and now >= step.deadline)
    )


def _record_results_alike(run: Run, ended: list["Ended"], worker: str, now: Any) -> list[bool]:
    """Ends steps that will not be retried, grouping those that ended alike (same attempt
    number, status, exit code, error and outputs: in a fan-out, nearly all) into one UPDATE
    of their steps and one of their attempts. Returns, per step, whether the worker still
    held it (a step whose lease was taken back is left alone, as `step_finish` does)."""
    masker = run_masker(run)
    held = set(
        Step.objects.filter(
            pk__in=[e.step.pk for e in ended], status=StepStatus.RUNNING, lease_owner=worker
        ).values_list("pk", "attempt")
    )
    groups: dict[tuple[Any, ...], list[Ended]] = {}
    for e in ended:
        if (e.step.pk, e.step.attempt) not in held:
            continue
        outputs = masker.data(dict(e.result.outputs or {}))
        key = (
            e.step.attempt,
            e.result.status,
            e.result.exit_code,
            masker.text(e.result.error),
            json.dumps(outputs, sort_keys=True),
        )
        groups.setdefault(key, []).append(e)
    for (attempt, status, exit_code, error, outputs), group in groups.items():
        steps = [e.step for e in group]
        steps_transition(
            steps=steps,
            to=status,
            reason=error,
            guard=Q(lease_owner=worker, attempt=attempt),
            finished_at=now,
            lease_owner="",
            lease_expires_at=None,
            exit_code=exit_code,
            outputs=json.loads(outputs),
            error=error,
        )
        pids = [When(step_id=e.step.pk, then=Value(e.pid)) for e in group if e.pid is not None]
        StepAttempt.objects.filter(step__in=steps, number=attempt).update(
            status=status,
            finished_at=now,
            exit_code=exit_code,
            error=error,
            **({"pid": Case(*pids, default=F("pid"))} if pids else {}),
        )
    return [(e.step.pk, e.step.attempt) in held for e in ended]


def _record_result(
    run: Run,
    step: Step,
    worker: str,
    result: StepResult,
    now: Any,
    pid: int | None,
    *,
    defer_attempt: bool = False,
) -> _Recorded | None:
    """Ends the attempt: the step is queued for a retry or ends. None if it was taken back.

    With `defer_attempt`, an ended step's StepAttempt row is left to the caller, who may
    write it together with the next step's (`_claim`'s `ended`)."""
    masker = run_masker(run)
    error = masker.text(result.error)
    guard = Q(lease_owner=worker, attempt=step.attempt)
    if _will_retry(run, step, result, now):
        retries = version_steps(run.version)[step.key].retries
        delay = retries.delay_before(step.attempt + 1) if retries else 0
        retry_at = now + duration_delta(delay)
        # A worker waits out a short delay itself (runs.runner); a long one is left to the
        # reaper, which wakes steps that are due and were never sent to the queue.
        inline = delay <= settings.STEPWISE_INLINE_RETRY_WAIT
        moved = step_transition(
            step=step,
            to=StepStatus.QUEUED,
            reason=f"attempt {step.attempt} {result.status}; retrying",
            guard=guard,
            not_before=retry_at,
            enqueued_at=retry_at if inline else None,
            lease_owner="",
            lease_expires_at=None,
            exit_code=result.exit_code,
            error=error,
        )
        if not moved:
            return None
        _attempt_finished(step, result, error, now, pid)
        log_system(
            run_id=run.pk,
            step=step,
            message=f"retrying in {delay:g}s (attempt {step.attempt + 1} of {step.max_attempts})",
            level=LogLevel.WARN,
        )
        return _Recorded(ended=False, retry_at=retry_at if inline else None)
    moved = step_transition(
        step=step,
        to=result.status,
        reason=error,
        guard=guard,
        finished_at=now,
        lease_owner="",
        lease_expires_at=None,
        exit_code=result.exit_code,
        outputs=masker.data(dict(result.outputs or {})),
        error=error,
    )
    if not moved:
        return None
    if not defer_attempt:
        _attempt_finished(step, result, error, now, pid)
        return _Recorded(ended=True)
    attempt = StepAttempt(
        step=step,
        number=step.attempt,
        # Never inserted: the step's compare-and-swap above proves the attempt's row exists
        # (only a hand-over deletes one, and it moves the step back to queued).
        worker=worker,
        started_at=step.started_at,
        status=result.status,
        finished_at=now,
        exit_code=result.exit_code,
        error=error,
        pid=pid,
    )
    return _Recorded(ended=True, attempt=attempt)


def _attempt_write(attempt: StepAttempt, opened: StepAttempt | None = None) -> None:
    """Writes an ended attempt, with `opened` (the next step's new attempt) in one statement."""
    fields = ["status", "finished_at", "exit_code", "error"]
    if attempt.pid is not None:
        fields.append("pid")
    if opened is None:
        StepAttempt.objects.filter(step_id=attempt.step_id, number=attempt.number).update(
            **{name: getattr(attempt, name) for name in fields}
        )
        return
    # INSERT ... ON CONFLICT (step, number) DO UPDATE: the ended attempt's row exists and is
    # updated, the new one is inserted. A round trip less per step of a chain.
    StepAttempt.objects.bulk_create(
        [attempt, opened],
        update_conflicts=True,
        unique_fields=["step", "number"],
        update_fields=fields,
    )


@transaction.atomic
@_events_batched
def step_finish(
    *,
    step: Step,
    worker: str,
    result: StepResult,
    logs: list[LogEntry] | None = None,
    pid: int | None = None,
    siblings: int = 0,
    upcoming: list[Step] | None = None,
) -> Finish | None:
    """Records an attempt's result, schedules a retry or ends the step, then advances the run.

    `logs` are the attempt's last buffered lines, written in this same transaction (one
    commit per step instead of two); `pid` is its process group, if not recorded yet. The
    next step it claims comes with up to `siblings` ready siblings (`_claim_siblings`).
    `upcoming` is `Finish.upcoming` from the finish that handed this worker `step`.
    Returns None if the worker no longer holds the step (its lease was taken back).
    """
    run = _relock(step.run)
    if logs:
        logs_append(logs)
    recorded = _record_result(run, step, worker, result, timezone.now(), pid, defer_attempt=True)
    if recorded is None:
        return None
    if not recorded.ended:
        return Finish(retry_at=recorded.retry_at)
    assert recorded.attempt is not None
    # While a parallel sibling is active nothing can start or end: the last sibling to
    # finish plans the group's next move. Saves planning a wide fan-out once per step. A
    # failure plans at once: siblings no worker has taken yet are skipped, not run.
    busy = not _stops_its_group(step) and _siblings_still_running(step)
    if not busy and _plain_success(run, step):
        if upcoming is None:
            upcoming = _following_siblings(run, step)
        if upcoming and _starts_next(upcoming[0]):
            following = upcoming[0]
            following.run = run
            if _claim(following, worker, pending=True, ended=recorded.attempt):
                return Finish(next_step=following, upcoming=upcoming[1:])
    _attempt_write(recorded.attempt)
    return Finish() if busy else _advance_and_hold(run, worker, siblings)


# A step that succeeds in a sequential group starts its next sibling without a plan. Planning
# reads and walks every step of the run; this reads the following siblings once per chain
# and then nothing. It holds because only the finished step changed since the last plan
# (the run is locked), and in a sequential group that can only start the next child. When
# that child is a pending leaf without an `if`, starting it is all the plan would do.
# Anything else (a failure, the end of a group, a condition, an approval, a parallel group,
# a run that is not plainly running, a run or group past its deadline) goes through the whole
# plan.
# The list may be carried from one step to the next: what it is trusted for (kind,
# condition, parent) never changes, and the claim's compare-and-swap checks the status.


def _plain_success(run: Run, step: Step) -> bool:
    now = timezone.now()
    return (
        step.status == StepStatus.SUCCEEDED
        and run.status == RunStatus.RUNNING
        and not (run.deadline and now >= run.deadline)
        and not (step.deadline and now >= step.deadline)  # its group's time is up
    )


def _following_siblings(run: Run, step: Step) -> list[Step]:
    """The siblings after `step`, in order, while a plan would start them one by one."""
    if step.key in version_last_steps(run.version):
        return []  # the definition says no sibling follows: no need to look
    rows = (
        Step.objects.filter(run_id=run.pk, parent_id=step.parent_id, position__gt=step.position)
        .select_related("parent")
        .order_by("position")
    )
    following = []
    for row in rows:
        if not _starts_next(row):
            break
        following.append(row)
    return following


def _starts_next(step: Step) -> bool:
    return (
        step.status == StepStatus.PENDING
        and not step.condition
        and step.kind not in ("group", "approval")
        and (step.parent is None or not step.parent.parallel)
    )


@dataclass(frozen=True)
class Ended:
    """One attempt of a batch (`step_finish_many`) and how it went."""

    step: Step
    result: StepResult
    pid: int | None = None


@transaction.atomic
@_events_batched
def step_finish_many(
    *, ended: list[Ended], worker: str, logs: list[LogEntry] | None = None, siblings: int = 0
) -> Finish | None:
    """`step_finish` for sibling steps of a parallel group that one worker ran side by side
    (`step_claim_siblings`): one transaction, one run lock and one plan for all of them.

    Each step is recorded exactly as `step_finish` records it. Returns None if the worker
    held none of them any more; `retries_at` are the retries it should wait for.
    """
    run = _relock(ended[0].step.run)
    for item in ended:
        item.step.run = run  # one copy, the locked one, for the whole batch
    if logs:
        logs_append(logs)
    now = timezone.now()
    again = [e for e in ended if _will_retry(run, e.step, e.result, now)]
    alike = [e for e in ended if not _will_retry(run, e.step, e.result, now)]
    recorded = [_record_result(run, e.step, worker, e.result, now, e.pid) for e in again]
    held = _record_results_alike(run, alike, worker, now) if alike else []
    if all(r is None for r in recorded) and not any(held):
        return None
    retries = [r for r in recorded if r is not None and not r.ended]
    if retries:
        # A sibling goes again, so the group is still active: nothing to plan yet.
        due = [r.retry_at for r in retries if r.retry_at is not None]
        return Finish(retry_at=min(due) if due else None, retries_at=tuple(due))
    stopped = any(_stops_its_group(e.step) for e, kept in zip(alike, held, strict=True) if kept)
    if not stopped and _siblings_still_running(ended[0].step):
        return Finish()
    return _advance_and_hold(run, worker, siblings)


def _advance_and_hold(run: Run, worker: str, siblings: int = 0) -> Finish:
    """Plans the run (locked by the caller) and claims its first ready step for `worker`."""
    advance = run_advance(run=run, hold_first=True, locked=True)
    if run.is_terminal:
        return Finish(run_ended=True)
    if advance.queued:
        # Queued by this very plan under the run lock: the row is as `steps` says.
        held = advance.steps[advance.queued[0]]
        held.run = run
        if _claim(held, worker):
            parent = advance.steps.get(held.parent_id) if held.parent_id else None
            if parent is None or not parent.parallel:
                return Finish(next_step=held)
            return Finish(next_step=held, siblings=_claim_siblings(held, worker, siblings))
        _enqueue(run.pk, advance.queued[:1])
    return Finish()


def attempt_started(*, step: Step, pid: int) -> None:
    """Records the process group of a shell attempt, so the reaper can end it if we die."""
    StepAttempt.objects.filter(step=step, number=step.attempt).update(pid=pid)


@transaction.atomic
@_events_batched
def step_hand_over(*, run_pk: int, held: Step | None) -> None:
    """Gives a step this worker claimed but will not run back to the queue."""
    if held is None:
        return
    claimed_attempt = held.attempt
    if step_transition(
        step=held,
        to=StepStatus.QUEUED,
        reason="handed over to another worker",
        guard=Q(attempt=claimed_attempt),
        attempt=claimed_attempt - 1,  # the claim is undone: that attempt never started
        lease_owner="",
        lease_expires_at=None,
        enqueued_at=timezone.now(),
    ):
        StepAttempt.objects.filter(step=held, number=claimed_attempt).delete()
        _enqueue(run_pk, [held.pk])
