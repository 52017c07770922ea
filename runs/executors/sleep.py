"""Sleep steps: wait, while keeping the lease and listening for a cancel."""

import time
from typing import Any

from runs.models import Step
from runs.services import StepResult
from runs.state import StepStatus


def execute(*, step: Step, spec: Any, context: dict[str, Any], supervisor: Any) -> StepResult:
    until = time.monotonic() + spec.sleep
    while (left := until - time.monotonic()) > 0:
        if supervisor.should_stop():
            return StepResult.stopped()
        if supervisor.deadline is not None and time.monotonic() >= supervisor.deadline:
            return StepResult(status=StepStatus.TIMED_OUT, error=supervisor.deadline_reason)
        time.sleep(min(left, 0.2))
    return StepResult(status=StepStatus.SUCCEEDED)
