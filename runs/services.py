"""Every write to runs and steps.

Statuses change only through `run_transition` and `step_transition`, compare-and-swap updates
that record a RunEvent. Anything that moves a run forward (a step finished, a lease expired, a
cancel) ends by calling `run_advance` with the run row locked, so two workers finishing sibling
steps at the same instant cannot both miss that their group is done.
"""

import contextlib
import hashlib
import itertools
import json
import logging
import os
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files import File
from django.db import transaction
from django.db.models import Case, DateTimeField, F, Q, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from config.errors import Conflict, InvalidTransition, ValidationFailed
from runbooks.models import Runbook, RunbookVersion
from runbooks.params import ParamsError, coerce_params, secret_names
from runbooks.services import version_definition, version_steps
from runs import engine, secrets, templating
from runs.executors.process import kill_orphaned_group
from runs.models import Artifact, LogEntry, LogLevel, Run, RunEvent, Step, StepAttempt
from runs.state import (
    RUN_ACTIVE,
    STEP_ACTIVE,
    RunStatus,
    StepStatus,
    run_can_transition,
    step_can_transition,
)

logger = logging.getLogger(__name__)


# --- Transitions -----------------------------------------------------------------------------

_pending = threading.local()


@contextlib.contextmanager
def _batched_events() -> Iterator[None]:
    """Collects the RunEvents written inside the block and inserts them in one statement.

    A step's claim and finish write three to five events; one INSERT instead of one each is
    a round trip less per event on PostgreSQL. Nested blocks join the outermost one. Events
    keep their order: anything that must insert an event directly calls `_flush_events` first.
    """
    if getattr(_pending, "events", None) is not None:
        yield
        return
    _pending.events = []
    try:
        yield
        _flush_events()
    finally:
        _pending.events = None


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _events_batched(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorates a service (inside its @transaction.atomic) to batch its RunEvents."""

    @wraps(function)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with _batched_events():
            return function(*args, **kwargs)

    return wrapper


def _flush_events() -> None:
    events = getattr(_pending, "events", None)
    if events:
        RunEvent.objects.bulk_create(events)
        events.clear()


def _record_event(**fields: Any) -> None:
    events = getattr(_pending, "events", None)
    if events is None:
        RunEvent.objects.create(**fields)
    else:
        events.append(RunEvent(**fields))


def run_transition(
    *,
    run: Run,
    to: str,
    actor: AbstractBaseUser | None = None,
    reason: str = "",
    **fields: Any,
) -> Run:
    """Moves a run to `to` if it is still where `run` says it is; records the event."""
    current = run.status
    if not run_can_transition(current, to):
        raise InvalidTransition(f"A run cannot go from {current} to {to}.")
    updated = Run.objects.filter(pk=run.pk, status=current).update(status=to, **fields)
    if not updated:
        raise InvalidTransition(f"Run #{run.pk} is no longer {current}.")
    _record_event(run=run, from_status=current, to_status=to, actor=actor, message=reason)
    run.status = to
    for name, value in fields.items():
        if not hasattr(value, "resolve_expression"):
            setattr(run, name, value)
    return run


def step_transition(
    *,
    step: Step,
    to: str,
    actor: AbstractBaseUser | None = None,
    reason: str = "",
    guard: Q | None = None,
    via: str | None = None,
    **fields: Any,
) -> bool:
    """Moves a step to `to` if it is still in its status (and matches `guard`).

    With `via`, the step passes through that status on the way, in the same UPDATE; both
    moves must be allowed and both are recorded. Returns False when the row moved on;
    callers that lost such a race simply stop.
    """
    current = step.status
    path = [current, via, to] if via else [current, to]
    for before, after in itertools.pairwise(path):
        if not step_can_transition(before, after):
            raise InvalidTransition(f"A step cannot go from {before} to {after}.")
    rows = Step.objects.filter(pk=step.pk, status=current)
    if guard is not None:
        rows = rows.filter(guard)
    if not rows.update(status=to, **fields):
        return False
    for before, after in itertools.pairwise(path):
        _record_event(
            run_id=step.run_id,
            step=step,
            from_status=before,
            to_status=after,
            actor=actor,
            message=reason if after == to else "",
        )
    step.status = to
    for name, value in fields.items():
        if not hasattr(value, "resolve_expression"):
            setattr(step, name, value)
    return True


def steps_transition(
    *, steps: list[Step], to: str, reason: str = "", guard: Q | None = None, **fields: Any
) -> None:
    """`step_transition` for several steps in the same status, in one UPDATE.

    All or nothing: for callers that hold the run lock and have checked the rows are theirs,
    so a row that moved anyway is a bug (InvalidTransition, and the transaction rolls back).
    """
    current = steps[0].status
    if not step_can_transition(current, to) or any(step.status != current for step in steps):
        raise InvalidTransition(f"Steps cannot go from {current} to {to} together.")
    rows = Step.objects.filter(pk__in=[step.pk for step in steps], status=current)
    if guard is not None:
        rows = rows.filter(guard)
    if rows.update(status=to, **fields) != len(steps):
        raise InvalidTransition(f"Some of steps {[step.pk for step in steps]} moved.")
    for step in steps:
        _record_event(
            run_id=step.run_id, step=step, from_status=current, to_status=to, message=reason
        )
        step.status = to
        for name, value in fields.items():
            if not hasattr(value, "resolve_expression"):
                setattr(step, name, value)


# --- Logs ------------------------------------------------------------------------------------


def log_system(
    *, run_id: int, message: str, step: Step | None = None, level: int = LogLevel.SYSTEM
) -> None:
    logs_append(
        [
            LogEntry(
                run_id=run_id,
                step=step,
                attempt=step.attempt if step else 0,
                timestamp=timezone.now(),
                level=level,
                stream="system",
                message=message,
            )
        ]
    )


@transaction.atomic(savepoint=False)  # inside step_finish, a savepoint would cost 2 queries
def logs_append(entries: Iterable[LogEntry]) -> None:
    """Writes log lines, numbering each run's lines on from its `log_seq`.

    Reserving the numbers updates the run's row, which stays locked until this transaction
    commits: appenders to one run queue there, so the run's numbers commit in the order they
    were given out, and a reader that has seen line n has seen every line before it.
    """
    entries = list(entries)
    by_run: dict[int, list[LogEntry]] = {}
    for entry in entries:
        by_run.setdefault(entry.run_id, []).append(entry)
    for run_id in sorted(by_run):  # one order for every appender: no deadlock between them
        lines = by_run[run_id]
        last = _log_seq_reserve(run_id, len(lines))
        for seq, entry in enumerate(lines, start=last - len(lines) + 1):
            entry.seq = seq
    LogEntry.objects.bulk_create(entries, batch_size=500)


_RESERVE = "UPDATE runs_run SET log_seq = log_seq + %s WHERE number = %s"
_OLD_SQLITE = sqlite3.sqlite_version_info < (3, 35)  # no UPDATE ... RETURNING


def _log_seq_reserve(run_id: int, count: int) -> int:
    """Adds `count` to the run's log_seq and returns the new value (the last number reserved)."""
    connection = transaction.get_connection()
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite" and _OLD_SQLITE:
            # SQLite has one writer, so nobody moves the counter between these two.
            cursor.execute(_RESERVE, [count, run_id])
            row = Run.objects.filter(pk=run_id).values_list("log_seq").first()
        else:
            cursor.execute(_RESERVE + " RETURNING log_seq", [count, run_id])
            row = cursor.fetchone()
    if row is None:
        raise Run.DoesNotExist(f"Run #{run_id} does not exist.")
    return row[0]


# --- Creating runs ---------------------------------------------------------------------------


def _create_steps(run: Run, definition: Any) -> None:
    """Copies the definition's step tree into Step rows, parents before children."""
    by_number: dict[str, Step] = {}
    levels: dict[int, list[tuple[str | None, Step]]] = {}
    for position, (number, spec, parent_number, depth) in enumerate(definition.iter_steps()):
        step = Step(
            run=run,
            position=position,
            number=number,
            key=spec.id,
            name=spec.display_name,
            kind=spec.kind,
            condition=spec.if_ or "",
            max_attempts=spec.max_attempts if spec.kind != "group" else 1,
            continue_on_error=spec.continue_on_error,
            parallel=getattr(spec, "parallel", False),
        )
        by_number[number] = step
        levels.setdefault(depth, []).append((parent_number, step))
    for depth in sorted(levels):
        rows = []
        for parent_number, step in levels[depth]:
            step.parent = by_number[parent_number] if parent_number else None
            rows.append(step)
        Step.objects.bulk_create(rows)


def _split_secrets(
    version: RunbookVersion, params: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    names = secret_names(version_definition(version).params)
    shown = {k: (secrets.MASK if k in names and v is not None else v) for k, v in params.items()}
    hidden = {k: v for k, v in params.items() if k in names and v is not None}
    return shown, hidden


def params_validate(*, version: RunbookVersion, params: Mapping[str, Any]) -> dict[str, Any]:
    """Validates and coerces params against a version's schema; raises ValidationFailed."""
    if not isinstance(params, Mapping):
        raise ValidationFailed(
            "params must be an object.", details={"params": ["must be an object"]}
        )
    try:
        return coerce_params(version_definition(version).params, params)
    except ParamsError as error:
        details = {f"params.{name}": messages for name, messages in error.errors.items()}
        raise ValidationFailed("Some params are not valid.", details=details) from error


@transaction.atomic
@_events_batched
def run_create(
    *,
    runbook: Runbook,
    params: Mapping[str, Any],
    user: AbstractBaseUser | None,
    origin: str,
    title: str = "",
    labels: Mapping[str, str] | None = None,
    version: RunbookVersion | None = None,
    retried_from: Run | None = None,
    reuse_from: Run | None = None,
) -> Run:
    """Validates params and starts a run of the runbook's latest version (or `version`)."""
    if version is None:
        if runbook.is_archived:
            raise Conflict(f"Runbook {runbook.slug!r} is archived; it cannot be run.")
        version = runbook.latest_version
        if version is None:
            raise Conflict(f"Runbook {runbook.slug!r} has no version to run.")
    if labels is not None and not (
        isinstance(labels, Mapping)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
    ):
        raise ValidationFailed(
            "labels must map strings to strings.",
            details={"labels": ["must be an object of strings"]},
        )
    values = params_validate(version=version, params=params)
    shown, hidden = _split_secrets(version, values)
    definition = version_definition(version)
    now = timezone.now()
    run = Run.objects.create(
        runbook=runbook,
        version=version,
        title=title,
        params=shown,
        sealed_secrets=secrets.seal(hidden),
        labels=dict(labels or {}),
        created_by=user,
        origin=origin,
        retried_from=retried_from,
        deadline=now + timedelta(seconds=definition.timeout) if definition.timeout else None,
    )
    if not title:
        run.title = f"{runbook.name} #{run.number}"
        Run.objects.filter(pk=run.pk).update(title=run.title)
    RunEvent.objects.create(
        run=run,
        to_status=RunStatus.QUEUED,
        actor=user,
        message=f"retry of #{retried_from.number}" if retried_from else f"started from {origin}",
    )
    _create_steps(run, definition)
    if reuse_from is not None:
        _reuse_succeeded_steps(run, reuse_from)
    run_advance(run=run)
    return run


def _reuse_succeeded_steps(run: Run, source: Run) -> None:
    """Retry from failed: leaf steps that succeeded before keep their outputs and don't rerun."""
    done = {
        key: (outputs, started, finished)
        for key, outputs, started, finished in source.steps.leaves()
        .filter(status=StepStatus.SUCCEEDED)
        .values_list("key", "outputs", "started_at", "finished_at")
    }
    for step in run.steps.leaves().filter(key__in=done):
        outputs, started, finished = done[step.key]
        step_transition(
            step=step,
            to=StepStatus.SUCCEEDED,
            reason=f"reused the result from run #{source.number}",
            outputs=outputs,
            started_at=started,
            finished_at=finished,
        )


def run_retry(
    *,
    run: Run,
    user: AbstractBaseUser | None,
    origin: str,
    params: Mapping[str, Any] | None = None,
    mode: str = "start",
) -> Run:
    """Starts a new run of the same version; `mode="failed"` reuses steps that succeeded."""
    if mode not in ("start", "failed"):
        raise ValidationFailed(
            "from must be 'start' or 'failed'.", details={"from": ["must be start or failed"]}
        )
    if not run.is_terminal:
        raise Conflict(
            f"Run #{run.number} is still {run.status}; only finished runs can be retried."
        )
    if mode == "failed" and run.status == RunStatus.SUCCEEDED:
        raise Conflict(f"Run #{run.number} succeeded; there is no failed step to retry from.")
    if params is None:
        params = {**run.params, **secrets.unseal(run.sealed_secrets)}
    return run_create(
        runbook=run.runbook,
        version=run.version,
        params=params,
        user=user,
        origin=origin,
        labels=run.labels,
        retried_from=run,
        reuse_from=run if mode == "failed" else None,
    )


# --- Moving runs forward ---------------------------------------------------------------------


def _nodes(run: Run) -> tuple[list[engine.Node], dict[int, Step]]:
    steps = {step.pk: step for step in run.steps.all()}
    nodes = {
        pk: engine.Node(
            pk=pk,
            key=step.key,
            kind=step.kind,
            status=step.status,
            condition=step.condition or None,
            continue_on_error=step.continue_on_error,
            parallel=step.parallel,
            error=step.error,
        )
        for pk, step in steps.items()
    }
    top: list[engine.Node] = []
    for pk, step in sorted(steps.items(), key=lambda item: item[1].position):
        (nodes[step.parent_id].children if step.parent_id else top).append(nodes[pk])
    return top, steps


def template_context(
    run: Run, steps: Iterable[tuple[str, str, dict]] | None = None
) -> dict[str, Any]:
    """What templates see: params (secrets included), steps' outputs and statuses, the run.

    `steps` are (key, status, outputs) rows; by default they are read from the database.
    """
    if steps is None:
        steps = run.steps.values_list("key", "status", "outputs")
    return {
        "params": {**run.params, **secrets.unseal(run.sealed_secrets)},
        "steps": {key: {"status": status, "outputs": outputs} for key, status, outputs in steps},
        "run": {
            "number": run.number,
            "id": str(run.uuid),
            "created_by": run.created_by.get_username() if run.created_by_id else None,
        },
    }


def _masker(run: Run) -> secrets.Masker:
    try:
        return secrets.Masker(secrets.unseal(run.sealed_secrets).values())
    except secrets.SecretsUnreadable:
        # Nothing can print what nothing can decrypt; the step fails with the reason.
        return secrets.Masker([])


VERSION_HEAVY = ("definition", "source")  # what the engine never reads from a version row


def lock_run(run: Run) -> Run:
    """A fresh copy of the run with its row locked until the transaction ends."""
    return _lock(run)


def _lock(run: Run) -> Run:
    return (
        Run.objects.select_for_update(of=("self",))
        .select_related("created_by", "version")
        .defer(*(f"version__{name}" for name in VERSION_HEAVY))
        .get(pk=run.pk)
    )


# What can change on a run once it exists: run_transition's fields, and the title that
# run_create sets. Everything else (version, params, secrets, deadline, creator) is fixed.
RUN_MUTABLE = ("status", "started_at", "finished_at", "outputs", "error", "cancel_reason", "title")


def _relock(run: Run) -> Run:
    """Locks the run's row and refreshes, on `run` itself, the fields that can change.

    For a worker's own copy of the run (loaded at the claim, with its version and creator):
    a lighter query than `_lock`, which a step's finish pays for on every step.
    """
    fresh = Run.objects.select_for_update().values(*RUN_MUTABLE).get(pk=run.pk)
    for name, value in fresh.items():
        setattr(run, name, value)
    return run


def _render_run_outputs(run: Run, steps: Iterable[Step]) -> dict[str, Any]:
    definition = version_definition(run.version)
    context = template_context(run, [(s.key, s.status, s.outputs) for s in steps])
    masker = _masker(run)
    return {
        name: masker.text(templating.render(template, context))
        for name, template in definition.outputs.items()
    }


def _finish_run(run: Run, steps: dict[int, Step], failed: engine.Node | None) -> None:
    now = timezone.now()
    if failed is None:
        try:
            outputs = _render_run_outputs(run, steps.values())
        except templating.RenderError as error:
            run_transition(
                run=run,
                to=RunStatus.FAILED,
                reason="outputs failed to render",
                finished_at=now,
                error={"message": f"Run outputs failed to render: {error}", "step": None},
            )
            log_system(run_id=run.pk, message=f"run outputs failed: {error}", level=LogLevel.ERROR)
            return
        run_transition(run=run, to=RunStatus.SUCCEEDED, finished_at=now, outputs=outputs)
        return
    step = steps[failed.pk]
    error = {"message": f"Step {step.number} ({step.key}) {_describe(step)}", "step": step.number}
    run_transition(
        run=run, to=RunStatus.FAILED, reason=error["message"], finished_at=now, error=error
    )


def _describe(step: Step) -> str:
    if step.status == StepStatus.TIMED_OUT:
        return f"timed out: {step.error}" if step.error else "timed out"
    return f"failed: {step.error}" if step.error else "failed"


@dataclass(frozen=True)
class Advance:
    queued: list[int]  # steps that became ready, in outline order
    # The run's steps as this plan left them (empty when nothing was planned): the caller
    # holds the run lock, so a step just queued is claimed from here without reading it again.
    steps: dict[int, Step] = field(default_factory=dict)


@_events_batched
def run_advance(*, run: Run, hold_first: bool = False, locked: bool = False) -> Advance:
    """Starts what is ready, ends what is done. Call inside a transaction.

    With `hold_first`, the first ready step is not sent to the queue: the calling worker
    claims it itself, saving a queue round trip per step of a sequential chain. `locked`
    says the caller already holds the run's row lock (and a fresh copy of the run).
    """
    if not locked:
        run = _lock(run)
    if run.is_terminal:
        return Advance(queued=[])
    top, steps = _nodes(run)
    if run.status == RunStatus.CANCELLING:
        _stop_if_idle(run, top, steps, RunStatus.CANCELLED, "run cancelled")
        return Advance(queued=[])
    if run.deadline and timezone.now() >= run.deadline:
        _time_out(run, top, steps)
        return Advance(queued=[])

    context: dict[str, Any] | None = None

    def condition_holds(node: engine.Node) -> bool:
        nonlocal context
        if context is None:
            context = template_context(run, [(s.key, s.status, s.outputs) for s in steps.values()])
        # Statuses decided earlier in this same plan are visible to later conditions.
        for pk, step in steps.items():
            context["steps"][step.key]["status"] = nodes_by_pk[pk].status
        return bool(templating.evaluate(node.condition or "", context))

    nodes_by_pk: dict[int, engine.Node] = {}
    stack = list(top)
    while stack:
        node = stack.pop()
        nodes_by_pk[node.pk] = node
        stack.extend(node.children)

    outcome = engine.plan(top, condition_holds)
    now = timezone.now()
    queued: list[int] = []
    for decision in outcome.decisions:
        step = steps[decision.pk]
        fields: dict[str, Any] = {}
        if decision.status == StepStatus.QUEUED:
            fields = {"enqueued_at": now}
            queued.append(step.pk)
        elif decision.status == StepStatus.RUNNING:
            fields = {"started_at": now}
        else:
            fields = {"finished_at": now, "error": decision.reason}
            if decision.status == StepStatus.SKIPPED:
                fields["started_at"] = None
        if not step_transition(step=step, to=decision.status, reason=decision.reason, **fields):
            raise InvalidTransition(f"Step {step.number} moved while run #{run.pk} was locked.")
        if decision.status == StepStatus.FAILED:
            log_system(run_id=run.pk, step=step, message=decision.reason, level=LogLevel.ERROR)
    if outcome.finished:
        if run.status == RunStatus.QUEUED and outcome.failed_step is None:
            run.started_at = run.started_at or now
            Run.objects.filter(pk=run.pk).update(started_at=run.started_at)
        _finish_run(run, steps, outcome.failed_step)
    gates = [pk for pk in queued if steps[pk].kind == "approval"]
    if gates:
        # Approvals need no worker: their gates open here, and a gate that cannot open (its
        # message failed to render) fails its step, which the next plan reacts to.
        if not _open_gates(run, [steps[pk] for pk in gates]):
            return run_advance(run=run, hold_first=hold_first, locked=True)
        queued = [pk for pk in queued if pk not in gates]
    _sync_waiting(run, steps)
    queued.sort(key=lambda pk: steps[pk].position)
    # Workers that wake for a fan-out keep claiming its ready steps (runner.work), so a few
    # messages serve a group of any width; the reaper re-sends any that get lost.
    wake = queued[1:] if hold_first else queued
    _enqueue(run.pk, wake[: settings.STEPWISE_FANOUT_WAKEUPS])
    return Advance(queued=queued, steps=steps)


def _open_gates(run: Run, gates: list[Step]) -> bool:
    """Opens approval steps; returns False if one failed instead."""
    from approvals.services import approval_open  # approvals builds on runs

    context = template_context(run)
    masker = _masker(run)
    specs = version_steps(run.version)
    for step in gates:
        spec = specs[step.key].approval
        try:
            message = masker.text(templating.render(spec.message, context))
        except templating.RenderError as error:
            reason = f"template error in the approval message: {error}"
            step_transition(
                step=step,
                to=StepStatus.FAILED,
                reason=reason,
                error=reason,
                finished_at=timezone.now(),
            )
            log_system(run_id=run.pk, step=step, message=reason, level=LogLevel.ERROR)
            return False
        step_transition(step=step, to=StepStatus.WAITING, started_at=timezone.now())
        approval_open(run=run, step=step, spec=spec, message=message)
    return True


def _sync_waiting(run: Run, steps: dict[int, Step]) -> None:
    """A run is `waiting` while an approval is open and nothing else is queued or running."""
    if run.is_terminal or run.status == RunStatus.CANCELLING:
        return
    leaves = [step.status for step in steps.values() if not step.is_group]
    busy = any(status in (StepStatus.QUEUED, StepStatus.RUNNING) for status in leaves)
    waiting = StepStatus.WAITING in leaves
    if waiting and not busy and run.status != RunStatus.WAITING:
        run_transition(run=run, to=RunStatus.WAITING, started_at=run.started_at or timezone.now())
    elif busy and run.status == RunStatus.WAITING:
        run_transition(run=run, to=RunStatus.RUNNING)


def _stop_if_idle(
    run: Run, top: list[engine.Node], steps: dict[int, Step], status: str, reason: str
) -> None:
    """Cancels what has not started; ends the run once nothing is running any more."""
    from approvals.services import approvals_cancel_for_run  # approvals builds on runs

    approvals_cancel_for_run(run=run)
    for decision in engine.cancel_plan(top):
        step_transition(
            step=steps[decision.pk],
            to=StepStatus.CANCELLED,
            reason=reason,
            finished_at=timezone.now(),
        )
    # Groups stay running until closed below; only leaves hold processes or approvals.
    if any(step.status in STEP_ACTIVE for step in steps.values() if not step.is_group):
        return
    group_status = StepStatus.CANCELLED if status == RunStatus.CANCELLED else StepStatus.FAILED
    for decision in engine.close_groups(top, group_status, reason):
        step_transition(
            step=steps[decision.pk], to=decision.status, reason=reason, finished_at=timezone.now()
        )
    fields: dict[str, Any] = {"finished_at": timezone.now()}
    if status == RunStatus.TIMED_OUT:
        fields["error"] = {"message": reason, "step": None}
    if run.status == RunStatus.CANCELLING and status != RunStatus.CANCELLED:
        status = RunStatus.CANCELLED
    run_transition(run=run, to=status, reason=reason, **fields)


def _time_out(run: Run, top: list[engine.Node], steps: dict[int, Step]) -> None:
    timeout = version_definition(run.version).timeout
    reason = f"run timed out after {timeout:g}s" if timeout else "run timed out"
    _flush_events()  # an earlier timeout event of this transaction must be visible
    if not run.events.filter(kind="timeout").exists():
        RunEvent.objects.create(run=run, kind="timeout", message=reason)
        log_system(run_id=run.pk, message=reason, level=LogLevel.ERROR)
    _stop_if_idle(run, top, steps, RunStatus.TIMED_OUT, reason)


def _enqueue(run_pk: int, step_pks: list[int]) -> None:
    """Wakes a worker for each step, once the transaction that queued them has committed."""
    if not step_pks:
        return
    from runs import tasks  # the task module imports services

    def send() -> None:
        for pk in step_pks:
            tasks.wake(run_pk, pk)

    transaction.on_commit(send)


# --- Cancelling ------------------------------------------------------------------------------


@transaction.atomic
@_events_batched
def run_cancel(*, run: Run, user: AbstractBaseUser | None, reason: str) -> Run:
    """Stops a run: steps not started are cancelled, running ones are killed by their workers."""
    reason = (reason or "").strip()
    run = _lock(run)
    if run.status not in RUN_ACTIVE:
        raise Conflict(f"Run #{run.number} is {run.status}; only active runs can be cancelled.")
    who = user.get_username() if user else "system"
    run_transition(
        run=run,
        to=RunStatus.CANCELLING,
        actor=user,
        reason=reason,
        cancel_reason=reason,
    )
    log_system(
        run_id=run.pk, message=f"cancel requested by {who}" + (f": {reason}" if reason else "")
    )
    top, steps = _nodes(run)
    _stop_if_idle(run, top, steps, RunStatus.CANCELLED, "run cancelled")
    return run


# --- Workers ---------------------------------------------------------------------------------


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
        run_transition(run=run, to=RunStatus.RUNNING, started_at=run.started_at or now)
    return True


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


@transaction.atomic
@_events_batched
def step_claim(
    *, run_pk: int, worker: str, prefer: int | None = None, siblings: int = 0
) -> list[Step]:
    """Claims a ready step of the run for `worker`: the step `prefer` if it is still queued,
    else the first ready one. With `siblings`, also up to that many ready shell siblings of
    a parallel group (`_claim_siblings`). Returns [] when there is nothing to do."""
    ready = _ready_steps(run_pk)
    if prefer:
        # Usually the step the message was sent for is still there: one read, not nine.
        step = ready.filter(pk=prefer).first()
        if step is not None and _claim(step, worker):
            return [step, *_claim_siblings(step, worker, siblings)]
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


def step_should_stop(*, step: Step) -> str | None:
    """A cheap check between heartbeats: has the run been cancelled?"""
    status = Run.objects.values_list("status", flat=True).get(pk=step.run_id)
    return "cancelled" if status == RunStatus.CANCELLING else None


@dataclass(frozen=True)
class StepResult:
    status: str  # succeeded | failed | timed_out | cancelled
    exit_code: int | None = None
    outputs: Mapping[str, Any] | None = None
    error: str = ""
    retryable: bool = True  # False when another attempt would fail the same way


@dataclass(frozen=True)
class Finish:
    next_step: Step | None = None  # the next ready step, already claimed for this worker
    retry_at: Any = None  # when this step is retried, if the worker should wait for it
    # Ready siblings of `next_step` in a parallel group, claimed with it (`_claim_siblings`).
    siblings: list[Step] = field(default_factory=list)
    # The steps after `next_step` in its sequential group, for its own step_finish.
    upcoming: list[Step] | None = None

    @property
    def claimed(self) -> list[Step]:
        return [self.next_step, *self.siblings] if self.next_step is not None else []


def _siblings_still_running(step: Step) -> bool:
    if step.parent_id is None:
        return False
    return (
        Step.objects.filter(parent_id=step.parent_id, parent__parallel=True, status__in=STEP_ACTIVE)
        .exclude(pk=step.pk)
        .exists()
    )


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
    )


def _record_results_alike(run: Run, ended: list["Ended"], worker: str, now: Any) -> list[bool]:
    """Ends steps that will not be retried, grouping those that ended alike (same attempt
    number, status, exit code, error and outputs: in a fan-out, nearly all) into one UPDATE
    of their steps and one of their attempts. Returns, per step, whether the worker still
    held it (a step whose lease was taken back is left alone, as `step_finish` does)."""
    masker = _masker(run)
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
    masker = _masker(run)
    error = masker.text(result.error)
    guard = Q(lease_owner=worker, attempt=step.attempt)
    if _will_retry(run, step, result, now):
        retries = version_steps(run.version)[step.key].retries
        delay = retries.delay_before(step.attempt + 1) if retries else 0
        retry_at = now + timedelta(seconds=delay)
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
    # finish plans the group's next move. Saves planning a wide fan-out once per step.
    busy = _siblings_still_running(step)
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
# a run that is not plainly running or is past its deadline) goes through the whole plan.
# The list may be carried from one step to the next: what it is trusted for (kind,
# condition, parent) never changes, and the claim's compare-and-swap checks the status.


def _plain_success(run: Run, step: Step) -> bool:
    return (
        step.status == StepStatus.SUCCEEDED
        and run.status == RunStatus.RUNNING
        and not (run.deadline and timezone.now() >= run.deadline)
    )


def _following_siblings(run: Run, step: Step) -> list[Step]:
    """The siblings after `step`, in order, while a plan would start them one by one."""
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
    held none of them any more; `retry_at` is the earliest retry it should wait for.
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
        return Finish(retry_at=min(due) if due else None)
    if _siblings_still_running(ended[0].step):
        return Finish()
    return _advance_and_hold(run, worker, siblings)


def _advance_and_hold(run: Run, worker: str, siblings: int = 0) -> Finish:
    """Plans the run (locked by the caller) and claims its first ready step for `worker`."""
    advance = run_advance(run=run, hold_first=True, locked=True)
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


def _kill_lost_attempt(run: Run, step: Step) -> None:
    attempt = StepAttempt.objects.filter(step=step, number=step.attempt).first()
    if attempt is None or attempt.pid is None:
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
    if kill_orphaned_group(attempt.pid, expected):
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


def step_wake_due() -> int:
    """Sends queue messages for steps that became ready without one (long retry delays)."""
    now = timezone.now()
    rows = list(
        Step.objects.filter(
            status=StepStatus.QUEUED, enqueued_at__isnull=True, not_before__lte=now
        ).values_list("pk", "run_id")[:500]
    )
    for pk, run_pk in rows:
        if Step.objects.filter(pk=pk, status=StepStatus.QUEUED, enqueued_at__isnull=True).update(
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


# --- Artifacts -------------------------------------------------------------------------------


def artifacts_store(*, step: Step, files: list[tuple[str, Path]]) -> list[Artifact]:
    """Copies the files a step left in $STEPWISE_ARTIFACTS into storage."""
    stored = []
    for name, path in files:
        try:
            # Never follow a link: the step's processes could swap a file for one after listing.
            handle = os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")
        except OSError:
            continue
        with handle:
            digest = hashlib.file_digest(handle, "sha256")
            handle.seek(0)
            artifact = Artifact(
                run_id=step.run_id,
                step=step,
                attempt=step.attempt,
                name=name,
                size=path.stat().st_size,
                sha256=digest.hexdigest(),
            )
            artifact.run = step.run
            artifact.file.save(name, File(handle), save=False)
        artifact.save()
        stored.append(artifact)
    return stored
