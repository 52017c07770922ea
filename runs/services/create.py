"""Starting runs: validating params, copying the step tree, retrying a run."""

from collections.abc import Mapping
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from config.errors import Conflict, ValidationFailed
from runbooks.durations import duration_delta
from runbooks.models import Runbook, RunbookVersion
from runbooks.params import ParamsError, coerce_params, secret_names
from runbooks.services import version_definition
from runs import secrets
from runs.models import LogEntry, LogLevel, Run, Step
from runs.services.advance import run_advance
from runs.services.events import _events_batched, _record_event, step_transition
from runs.services.logs import logs_append
from runs.state import (
    RunStatus,
    StepStatus,
)


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
    """The params as shown (secrets as the mask) and the values to seal.

    A secret's value given inside another param too (a URL carrying a token) is masked there
    as in logs, and that param's real value is sealed with the secrets: steps still get it,
    but no page or response shows it."""
    names = secret_names(version_definition(version).params)
    hidden = {k: v for k, v in params.items() if k in names and v is not None}
    masker = secrets.Masker(hidden.values())
    shown = {}
    for name, value in params.items():
        if name in hidden:
            shown[name] = secrets.MASK
            continue
        shown[name] = masker.data(value)
        if shown[name] != value:
            hidden[name] = value
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


MAX_LABELS = 50
MAX_LABEL_KEY = 100
MAX_LABEL_VALUE = 500


def _check_labels(labels: object) -> None:
    """Labels are a few short strings that filters can find (`label=key:value`): a key has no
    ":" or "=", which end it in a filter. Every run of a list page carries its labels, so
    their size is bounded."""
    if labels is None:
        return
    if not (
        isinstance(labels, Mapping)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
    ):
        raise ValidationFailed(
            "labels must map strings to strings.",
            details={"labels": ["must be an object of strings"]},
        )
    details: dict[str, list[str]] = {}
    if len(labels) > MAX_LABELS:
        details["labels"] = [f"at most {MAX_LABELS} labels"]
    for key, value in labels.items():
        problems = []
        if not 1 <= len(key) <= MAX_LABEL_KEY or ":" in key or "=" in key:
            problems.append(f"a key is 1 to {MAX_LABEL_KEY} characters, without ':' or '='")
        if len(value) > MAX_LABEL_VALUE:
            problems.append(f"a value is at most {MAX_LABEL_VALUE} characters")
        if problems:
            details[f"labels.{key}"] = problems
    if details:
        raise ValidationFailed("Some labels are not valid.", details=details)


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
    """Validates params and starts a run of the runbook's latest version (or `version`).

    Everything that only reads and checks is done before the write transaction begins: on
    SQLite that transaction holds the database's one write lock, which every run's steps
    also need."""
    if runbook.is_archived:  # retries too: an archived runbook is retired from use
        raise Conflict(f"Runbook {runbook.slug!r} is archived; it cannot be run.")
    if version is None:
        version = runbook.latest_version
        if version is None:
            raise Conflict(f"Runbook {runbook.slug!r} has no version to run.")
    _check_labels(labels)
    values = params_validate(version=version, params=params)
    shown, hidden = _split_secrets(version, values)
    definition = version_definition(version)
    now = timezone.now()
    run = Run(
        runbook=runbook,
        version=version,
        title=title,
        params=shown,
        sealed_secrets=secrets.seal(_sealed(hidden, reuse_from)),
        labels=dict(labels or {}),
        created_by=user,
        origin=origin,
        retried_from=retried_from,
        deadline=now + duration_delta(definition.timeout) if definition.timeout else None,
    )
    _run_insert(run, definition, reuse_from)
    return run


def _sealed(hidden: dict[str, Any], reuse_from: Run | None) -> dict[str, Any]:
    """The secret params, and what approvers typed into `secret` fields of the gates that a
    retry from failed reuses: their outputs come along, so their secrets must too."""
    if reuse_from is None:
        return hidden
    typed = secrets.step_secrets(secrets.unseal_all(reuse_from.sealed_secrets))
    reused = set(
        reuse_from.steps.filter(key__in=typed, status=StepStatus.SUCCEEDED).values_list(
            "key", flat=True
        )
    )
    kept = {key: fields for key, fields in typed.items() if key in reused}
    return {**hidden, secrets.STEP_SECRETS: kept} if kept else hidden


@transaction.atomic
@_events_batched
def _run_insert(run: Run, definition: Any, reuse_from: Run | None) -> None:
    run.save(force_insert=True)
    if not run.title:
        run.title = f"{run.runbook.name} #{run.number}"
        Run.objects.filter(pk=run.pk).update(title=run.title)
    retried_from = run.retried_from
    started = f"retry of #{retried_from.number}" if retried_from else f"started from {run.origin}"
    _record_event(run=run, to_status=RunStatus.QUEUED, actor=run.created_by, message=started)
    _create_steps(run, definition)
    if reuse_from is not None:
        _reuse_succeeded_steps(run, reuse_from)
    # Inserted by this transaction: nobody else can see the row, let alone hold it, and
    # `run` is exactly what was written. No need to lock and read it again.
    run_advance(run=run, locked=True)


def _reuse_succeeded_steps(run: Run, source: Run) -> None:
    """Retry from failed: leaf steps that succeeded before keep their outputs and don't rerun."""
    done = {
        key: (outputs, started, finished, exit_code, attempt)
        for key, outputs, started, finished, exit_code, attempt in source.steps.leaves()
        .filter(status=StepStatus.SUCCEEDED)
        .values_list("key", "outputs", "started_at", "finished_at", "exit_code", "attempt")
    }
    lines = []
    for step in run.steps.leaves().filter(key__in=done).order_by("position"):
        outputs, started, finished, exit_code, attempt = done[step.key]
        step_transition(
            step=step,
            to=StepStatus.SUCCEEDED,
            reason=f"reused the result from run #{source.number}",
            outputs=outputs,
            started_at=started,
            finished_at=finished,
            exit_code=exit_code,
        )
        # The step makes no attempt here (its attempt stays 0): its log says whose result it
        # shows, or it would be a success with no trace of where it came from.
        of = f" (attempt {attempt})" if attempt else ""
        lines.append(
            LogEntry(
                run_id=run.pk,
                step=step,
                attempt=0,
                timestamp=timezone.now(),
                level=LogLevel.SYSTEM,
                stream="system",
                message=f"step {step.number} {step.key} not run again: reused the result of"
                f" run #{source.number}{of}",
            )
        )
    logs_append(lines)


def _check_secrets_reused(
    run: Run, user: AbstractBaseUser | None, own: Mapping[str, Any], given: Mapping[str, Any]
) -> None:
    """Someone else's secrets go only into the very run they were given for.

    Retrying a run as it was is what retry is for, whoever does it. But with other params
    changed (a URL, a host), the person who started the run never chose where its secrets
    would go: anyone who may retry could send them to a server of their own. So a retry by
    another user that changes params must give the run's secrets again.
    """
    if not own or (user is not None and user.pk == run.created_by_id):
        return
    changed = [
        name for name, value in given.items() if name not in own and run.params.get(name) != value
    ]
    kept = sorted(name for name in own if name not in given)
    if changed and kept:
        raise ValidationFailed(
            "Give the secret params again to retry someone else's run with other params.",
            details={
                f"params.{name}": [
                    "give it again: other params changed and you did not start this run"
                ]
                for name in kept
            },
        )


def run_retry(
    *,
    run: Run,
    user: AbstractBaseUser | None,
    origin: str,
    params: Mapping[str, Any] | None = None,
    mode: str = "start",
) -> Run:
    """Starts a new run of the same version with the run's params, secrets included, changed
    by `params` where given; `mode="failed"` reuses steps that succeeded."""
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
    own_secrets = secrets.unseal(run.sealed_secrets)
    given = {
        # A sealed param sent back as responses show it (the mask, or a value with a secret
        # masked inside) keeps its value, so a client can retry with the params it read, one
        # of them changed.
        name: value
        for name, value in (params or {}).items()
        if not (name in own_secrets and value == run.params.get(name))
    }
    _check_secrets_reused(run, user, own_secrets, given)
    return run_create(
        runbook=run.runbook,
        version=run.version,
        params={**run.params, **own_secrets, **given},
        user=user,
        origin=origin,
        labels=run.labels,
        retried_from=run,
        reuse_from=run if mode == "failed" else None,
    )
