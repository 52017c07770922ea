"""Statuses of runs and steps and the transitions allowed between them.

Pure Python on purpose: the table is the single statement of the state machines, read by the
services that write statuses (`runs.services.run_transition` / `step_transition`) and by tests.
"""

from django.db import models


class RunStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


class StepStatus(models.TextChoices):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


RUN_TERMINAL = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.CANCELLED}
)
RUN_ACTIVE = frozenset({RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING})

STEP_TERMINAL = frozenset(
    {
        StepStatus.SUCCEEDED,
        StepStatus.FAILED,
        StepStatus.TIMED_OUT,
        StepStatus.SKIPPED,
        StepStatus.CANCELLED,
    }
)
# Steps a worker (or an approval) holds right now; a run with none of these is idle.
STEP_ACTIVE = frozenset({StepStatus.QUEUED, StepStatus.RUNNING, StepStatus.WAITING})
# Outcomes that stop a group unless the step has continue_on_error.
STEP_FAILED = frozenset({StepStatus.FAILED, StepStatus.TIMED_OUT})

RUN_TRANSITIONS: dict[str, frozenset[str]] = {
    RunStatus.QUEUED: frozenset(
        {
            RunStatus.RUNNING,
            RunStatus.WAITING,  # the first step is an approval
            RunStatus.CANCELLING,
            RunStatus.CANCELLED,
            RunStatus.FAILED,
            RunStatus.TIMED_OUT,
            RunStatus.SUCCEEDED,  # every step skipped by its `if`
        }
    ),
    RunStatus.RUNNING: frozenset(
        {
            RunStatus.WAITING,
            RunStatus.CANCELLING,
            RunStatus.SUCCEEDED,
            RunStatus.FAILED,
            RunStatus.TIMED_OUT,
        }
    ),
    RunStatus.WAITING: frozenset(
        {
            RunStatus.RUNNING,
            RunStatus.CANCELLING,
            RunStatus.SUCCEEDED,
            RunStatus.FAILED,
            RunStatus.TIMED_OUT,
        }
    ),
    RunStatus.CANCELLING: frozenset({RunStatus.CANCELLED}),
    RunStatus.SUCCEEDED: frozenset(),
    RunStatus.FAILED: frozenset(),
    RunStatus.TIMED_OUT: frozenset(),
    RunStatus.CANCELLED: frozenset(),
}

STEP_TRANSITIONS: dict[str, frozenset[str]] = {
    # Groups go straight from pending to running; leaves pass through queued.
    StepStatus.PENDING: frozenset(
        {
            StepStatus.QUEUED,
            StepStatus.RUNNING,
            StepStatus.SKIPPED,
            StepStatus.CANCELLED,
            StepStatus.FAILED,  # an `if` expression that fails to evaluate
            StepStatus.SUCCEEDED,  # retry from failed reuses an earlier run's result
        }
    ),
    StepStatus.QUEUED: frozenset(
        {
            StepStatus.RUNNING,
            StepStatus.WAITING,  # an approval step opens its gate
            StepStatus.FAILED,  # an approval message that fails to render
            StepStatus.CANCELLED,
            StepStatus.SKIPPED,
            StepStatus.TIMED_OUT,
        }
    ),
    StepStatus.RUNNING: frozenset(
        {
            StepStatus.QUEUED,  # a failed attempt with retries left
            StepStatus.WAITING,
            StepStatus.SUCCEEDED,
            StepStatus.FAILED,
            StepStatus.TIMED_OUT,
            StepStatus.CANCELLED,
        }
    ),
    StepStatus.WAITING: frozenset(
        {
            StepStatus.SUCCEEDED,
            StepStatus.FAILED,
            StepStatus.TIMED_OUT,
            StepStatus.CANCELLED,
        }
    ),
    StepStatus.SUCCEEDED: frozenset(),
    StepStatus.FAILED: frozenset(),
    StepStatus.TIMED_OUT: frozenset(),
    StepStatus.SKIPPED: frozenset(),
    StepStatus.CANCELLED: frozenset(),
}


def run_can_transition(current: str, target: str) -> bool:
    return target in RUN_TRANSITIONS[current]


def step_can_transition(current: str, target: str) -> bool:
    return target in STEP_TRANSITIONS[current]
