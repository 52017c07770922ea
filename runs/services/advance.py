"""Moving runs forward: planning what is ready, locking, enqueueing, finishing, cancelling."""

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from config.errors import Conflict, InvalidTransition
from config.prepared import PreparedQuery
from runbooks.durations import duration_delta
from runbooks.services import version_definition, version_steps
from runs import engine, secrets, templating
from runs.models import LogLevel, Run, RunEvent, Step
from runs.services.events import _events_batched, _flush_events, run_transition, step_transition
from runs.services.logs import log_system
from runs.state import (
    RUN_ACTIVE,
    STEP_ACTIVE,
    RunStatus,
    StepStatus,
)

# Every plan reads all of a run's steps: prepared (config/prepared.py), so that Django does
# not compile the query again for each step.
RUN_STEPS = PreparedQuery(lambda pk: Step.objects.filter(run_id=pk))


def _nodes(run: Run) -> tuple[list[engine.Node], dict[int, Step]]:
    steps = {}
    for step in RUN_STEPS(run.pk):
        step.run = run  # as `run.steps.all()` would: no query for it later
        steps[step.pk] = step
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
    sealed = secrets.unseal_all(run.sealed_secrets)
    typed = secrets.step_secrets(sealed)  # what approvers typed into `secret` fields
    sealed.pop(secrets.STEP_SECRETS, None)
    return {
        "params": {**run.params, **sealed},
        "steps": {
            key: {"status": status, "outputs": {**outputs, **typed.get(key, {})}}
            for key, status, outputs in steps
        },
        "run": {
            "number": run.number,
            "id": str(run.uuid),
            "created_by": run.created_by.get_username() if run.created_by_id else None,
        },
    }


def run_masker(run: Run) -> secrets.Masker:
    """Replaces the run's secret values with the mask in what the run's steps produce."""
    try:
        return secrets.Masker(secrets.secret_values(secrets.unseal_all(run.sealed_secrets)))
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


# What can change on a run once it exists: run_transition's fields, the title that
# run_create sets, and the sealed secrets, to which an approval adds what its approvers typed
# into `secret` fields. Everything else (version, params, deadline, creator) is fixed.
RUN_MUTABLE = (
    "status",
    "started_at",
    "finished_at",
    "outputs",
    "error",
    "cancel_reason",
    "title",
    "sealed_secrets",
)
# `_relock`'s read, which every step's finish makes: prepared like RUN_STEPS.
RUN_MUTABLE_FIELDS = PreparedQuery(
    lambda pk: Run.objects.select_for_update().filter(pk=pk).values(*RUN_MUTABLE),
)


def _relock(run: Run) -> Run:
    """Locks the run's row and refreshes, on `run` itself, the fields that can change.

    For a worker's own copy of the run (loaded at the claim, with its version and creator):
    a lighter query than `_lock`, which a step's finish pays for on every step.
    """
    rows = RUN_MUTABLE_FIELDS(run.pk)
    if not rows:
        raise Run.DoesNotExist(f"Run #{run.pk} does not exist.")
    for name, value in rows[0].items():
        setattr(run, name, value)
    return run


def _render_run_outputs(run: Run, steps: Iterable[Step]) -> dict[str, Any]:
    definition = version_definition(run.version)
    context = template_context(run, [(s.key, s.status, s.outputs) for s in steps])
    masker = run_masker(run)
    try:
        return {
            name: masker.text(templating.render(template, context))
            for name, template in definition.outputs.items()
        }
    except templating.RenderError as error:
        raise _masked(error, masker) from None


def _masked(error: templating.RenderError, masker: secrets.Masker) -> templating.RenderError:
    """The error with secret values masked: Jinja names a missing key by its value, so
    `steps[params.token]` puts the token in the message."""
    return templating.RenderError(masker.text(str(error)))


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
    _time_out_groups(run, top, steps)
    _skip_unstarted_after_failure(top, steps)

    context: dict[str, Any] | None = None

    def condition_holds(node: engine.Node) -> bool:
        nonlocal context
        if context is None:
            context = template_context(run, [(s.key, s.status, s.outputs) for s in steps.values()])
        # Statuses decided earlier in this same plan are visible to later conditions.
        for pk, step in steps.items():
            context["steps"][step.key]["status"] = nodes_by_pk[pk].status
        try:
            return bool(templating.evaluate(node.condition or "", context))
        except templating.RenderError as error:
            raise _masked(error, run_masker(run)) from None

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
            fields = {"started_at": now, **_group_deadline(run, step, steps, now)}
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
    masker = run_masker(run)
    specs = version_steps(run.version)
    requester = run.created_by.get_username() if run.created_by_id else None
    for step in gates:
        spec = specs[step.key].approval
        try:
            message = masker.text(templating.render(spec.message, context))
            reason = ""
        except templating.RenderError as error:
            reason = f"template error in the approval message: {_masked(error, masker)}"
        if not reason and (problem := spec.never_approved(requester)):
            # It would wait for ever (or until its timeout) for approvals no one can give.
            reason = f"no one can approve: {problem}"
        if reason:
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


def _group_deadline(run: Run, group: Step, steps: dict[int, Step], now: Any) -> dict[str, Any]:
    """A group with a `timeout` starting now: its deadline, which every step inside it
    inherits (a worker stops a step at the earliest deadline it has; see runs.runner)."""
    timeout = getattr(version_steps(run.version)[group.key], "timeout", None)
    if not timeout:
        return {}
    deadline = now + duration_delta(timeout)
    if group.deadline and group.deadline < deadline:
        deadline = group.deadline  # an enclosing group's ends first
    inside, parents = [], {group.pk}
    for step in sorted(steps.values(), key=lambda step: step.position):
        if step.parent_id in parents:  # outline order: a parent comes before its children
            parents.add(step.pk)
            if step.deadline is None or step.deadline > deadline:
                step.deadline = deadline
                inside.append(step.pk)
    Step.objects.filter(pk__in=inside).update(deadline=deadline)
    return {"deadline": deadline}


def _time_out_groups(run: Run, top: list[engine.Node], steps: dict[int, Step]) -> None:
    """Stops the running groups whose `timeout` has passed: what has not started inside is
    cancelled, open approvals are closed and, once no step inside runs any more (workers
    stop those at the deadline), the group ends `timed_out`."""
    now = timezone.now()
    overdue = {
        pk
        for pk, step in steps.items()
        if step.is_group and step.status == StepStatus.RUNNING and step.deadline
        if step.deadline <= now
    }
    if not overdue:
        return
    nodes: list[engine.Node] = list(top)  # outermost first: it ends what is inside too
    for node in nodes:
        nodes.extend(node.children)
        if node.pk not in overdue or node.status != StepStatus.RUNNING:
            continue
        group = steps[node.pk]
        timeout = getattr(version_steps(run.version)[group.key], "timeout", None)
        reason = f"group {group.key} timed out" + (f" after {timeout:g}s" if timeout else "")
        cancelled = engine.cancel_plan(node.children)
        gates = [steps[d.pk] for d in cancelled if steps[d.pk].kind == "approval"]
        if gates:
            from approvals.services import approvals_cancel_for_run  # approvals builds on runs

            approvals_cancel_for_run(run=run, steps=gates)
        for decision in cancelled:
            step_transition(
                step=steps[decision.pk],
                to=StepStatus.CANCELLED,
                reason=f"not run: {reason}",
                error=f"not run: {reason}",
                finished_at=now,
            )
        if _still_running(node):
            continue
        for decision in engine.close_groups(node.children, StepStatus.CANCELLED, reason):
            step_transition(
                step=steps[decision.pk], to=decision.status, reason=reason, finished_at=now
            )
        step_transition(
            step=group, to=StepStatus.TIMED_OUT, reason=reason, error=reason, finished_at=now
        )
        node.status = StepStatus.TIMED_OUT
        log_system(run_id=run.pk, step=group, message=reason, level=LogLevel.ERROR)


def _skip_unstarted_after_failure(top: list[engine.Node], steps: dict[int, Step]) -> None:
    """A parallel group stopped by a failed child lets its running children finish (DESIGN.md
    section 3); the children still queued for a worker that never took them are skipped here,
    before the plan, not run. A worker that claims one meanwhile wins its compare-and-swap
    (the claim does not take the run lock): that child counts as running and finishes."""
    now = timezone.now()
    nodes = list(top)
    for node in nodes:
        nodes.extend(node.children)
        if not node.parallel or node.status != StepStatus.RUNNING:
            continue
        failed = next((child for child in node.children if child.blocks), None)
        if failed is None:
            continue
        reason = f"not run: step {failed.key} {failed.status.replace('_', ' ')}"
        for child in node.children:
            step = steps[child.pk]
            if child.status != StepStatus.QUEUED or step.attempt:  # started, or retrying
                continue
            skipped = step_transition(
                step=step,
                to=StepStatus.SKIPPED,
                reason=reason,
                guard=Q(attempt=0),
                error=reason,
                finished_at=now,
                enqueued_at=None,
            )
            if not skipped:
                step.refresh_from_db(fields=["status", "attempt"])
            child.status = step.status


def _still_running(node: engine.Node) -> bool:
    return any(
        (not child.is_group and child.status in STEP_ACTIVE) or _still_running(child)
        for child in node.children
    )


def _enqueue(run_pk: int, step_pks: list[int]) -> None:
    """Wakes a worker for each step, once the transaction that queued them has committed."""
    if not step_pks:
        return
    from runs import tasks  # the task module imports services

    def send() -> None:
        for pk in step_pks:
            tasks.wake(run_pk, pk)

    transaction.on_commit(send)


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
