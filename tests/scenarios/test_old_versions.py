"""Versions saved before the definition's bounds existed: they still start runs and run them,
with their numbers clamped to the bounds (runs.services, runs.runner)."""

import hashlib
import json
from datetime import timedelta
from typing import Any

from django.utils import timezone

from runbooks.durations import MAX_DURATION_SECONDS
from runbooks.models import Runbook, RunbookVersion
from runs.models import LogEntry, Run, StepAttempt
from runs.services import run_create
from tests.conftest import drain


def saved_before_the_bounds(runbook: Runbook, definition: dict[str, Any]) -> Runbook:
    """Adds a version as an older Stepwise wrote it: the row, without today's validation."""
    checksum = hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()
    version = RunbookVersion.objects.create(
        runbook=runbook, number=2, definition=definition, checksum=checksum
    )
    Runbook.objects.filter(pk=runbook.pk).update(latest_version=version)
    runbook.refresh_from_db()
    return runbook


def start(runbook: Runbook) -> Run:
    return run_create(runbook=runbook, params={}, user=None, origin="cli")


def test_huge_timeout_and_retries_of_an_old_version_start_a_run_at_the_bounds(make_runbook):
    runbook = make_runbook("{slug: old, name: Old, steps: [{id: a, shell: 'true'}]}")
    saved_before_the_bounds(
        runbook,
        {
            "slug": "old",
            "name": "Old",
            "timeout": 1e20,
            "steps": [{"id": "a", "shell": "true", "retries": {"max": 99999999999999999999}}],
        },
    )

    run = start(runbook)

    limit = timezone.now() + timedelta(seconds=MAX_DURATION_SECONDS)
    assert abs(run.deadline - limit) < timedelta(minutes=1)
    assert run.steps.get(key="a").max_attempts == 101


def test_huge_backoff_of_an_old_version_still_makes_every_attempt(make_runbook):
    runbook = make_runbook("{slug: old, name: Old, steps: [{id: a, shell: 'true'}]}")
    saved_before_the_bounds(
        runbook,
        {
            "slug": "old",
            "name": "Old",
            "steps": [
                {
                    "id": "a",
                    "shell": "exit 1",
                    "retries": {"max": 2, "delay": 0.01, "backoff": 1e300},
                }
            ],
        },
    )

    run = drain(start(runbook))

    assert run.status == "failed"
    step = run.steps.get(key="a")
    assert list(StepAttempt.objects.filter(step=step).values_list("number", flat=True)) == [
        1,
        2,
        3,
    ]
    messages = LogEntry.objects.filter(step=step).values_list("message", flat=True)
    assert "retrying in 0.1s (attempt 3 of 3)" in messages


def test_huge_required_approvals_of_an_old_version_open_the_gate(make_runbook):
    runbook = make_runbook("{slug: old, name: Old, steps: [{id: a, shell: 'true'}]}")
    gate = {
        "message": "Go?",
        # A group may hold 100 people; 100 approvals from `ann` alone could never come.
        "approvers": {"users": ["ann"], "groups": ["sre"]},
        "required": 99999999999999999999,
    }
    saved_before_the_bounds(
        runbook, {"slug": "old", "name": "Old", "steps": [{"id": "gate", "approval": gate}]}
    )

    run = start(runbook)

    assert run.status == "waiting"
    assert run.approvals.get().required == 100
