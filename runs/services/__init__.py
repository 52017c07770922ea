"""Every write to runs and steps.

Statuses change only through `run_transition` and `step_transition`, compare-and-swap updates
that record a RunEvent. Anything that moves a run forward (a step finished, a lease expired, a
cancel) ends by calling `run_advance` with the run row locked, so two workers finishing sibling
steps at the same instant cannot both miss that their group is done.

events (transitions), logs, advance (planning, locking, cancelling), create (starting and
retrying runs), workers (claims, heartbeats, results), recovery (what the reaper calls: lost
steps and wake-ups) and artifacts; callers import from `runs.services`, the names below.
"""

from runs.services.advance import (
    RUN_MUTABLE,
    VERSION_HEAVY,
    Advance,
    lock_run,
    run_advance,
    run_cancel,
    run_masker,
    template_context,
)
from runs.services.artifacts import (
    artifacts_store,
)
from runs.services.create import (
    params_validate,
    run_create,
    run_retry,
)
from runs.services.events import (
    run_transition,
    step_transition,
    steps_transition,
)
from runs.services.logs import (
    log_system,
    logs_append,
)
from runs.services.recovery import step_reclaim_lost, step_requeue_stalled, step_wake_due
from runs.services.workers import (
    Ended,
    Finish,
    StepResult,
    attempt_started,
    step_claim,
    step_finish,
    step_finish_many,
    step_hand_over,
    step_heartbeat,
    step_heartbeat_many,
    step_should_stop,
    steps_queued,
)

__all__ = [
    "RUN_MUTABLE",
    "VERSION_HEAVY",
    "Advance",
    "Ended",
    "Finish",
    "StepResult",
    "artifacts_store",
    "attempt_started",
    "lock_run",
    "log_system",
    "logs_append",
    "params_validate",
    "run_advance",
    "run_cancel",
    "run_create",
    "run_masker",
    "run_retry",
    "run_transition",
    "step_claim",
    "step_finish",
    "step_finish_many",
    "step_hand_over",
    "step_heartbeat",
    "step_heartbeat_many",
    "step_reclaim_lost",
    "step_requeue_stalled",
    "step_should_stop",
    "step_transition",
    "step_wake_due",
    "steps_queued",
    "steps_transition",
    "template_context",
]
