"""Shell steps: `bash -e -o pipefail -c <script>` with a scrubbed environment."""

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

from django.conf import settings

from runs import templating
from runs.executors.outputs import OutputsError, collect_files, parse_outputs
from runs.executors.process import run_process
from runs.models import Step
from runs.services import StepResult, artifacts_store, attempt_started
from runs.state import StepStatus

BASH = shutil.which("bash") or "/bin/bash"
# What a step inherits from the worker's environment; everything else is left behind so
# credentials in the worker's environment never reach runbook scripts.
INHERITED = ("HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "LOGNAME")


def attempt_dir(step: Step) -> Path:
    return settings.STEPWISE_WORK_DIR / str(step.run.uuid) / f"{step.key}-{step.attempt}"


def step_environment(
    step: Step, spec: Any, context: dict[str, Any], output: Path, artifacts: Path
) -> dict[str, str]:
    env = {name: os.environ[name] for name in INHERITED if name in os.environ}
    env.setdefault("LANG", "C.UTF-8")
    env["PATH"] = settings.STEPWISE_SHELL_PATH
    for name, value in context["params"].items():
        env[f"PARAM_{name.upper()}"] = templating.to_text(value)
    for name, template in spec.env.items():
        env[name] = templating.render(template, context)
    env.update(
        STEPWISE_RUN_ID=str(step.run.uuid),
        STEPWISE_RUN_NUMBER=str(step.run.number),
        STEPWISE_STEP_ID=step.key,
        STEPWISE_ATTEMPT=str(step.attempt),
        STEPWISE_OUTPUT=str(output),
        STEPWISE_ARTIFACTS=str(artifacts),
    )
    return {name: value.replace("\x00", "") for name, value in env.items()}


def execute(*, step: Step, spec: Any, context: dict[str, Any], supervisor: Any) -> StepResult:
    script, values = templating.render_shell(spec.shell, context)
    base = attempt_dir(step)
    output, artifacts = base / "output", base / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    output.touch()
    workdir = Path(templating.render(spec.workdir, context)) if spec.workdir else base / "work"
    if not spec.workdir:
        workdir.mkdir(exist_ok=True)
    elif not workdir.is_dir():
        return StepResult(status=StepStatus.FAILED, error=f"workdir {workdir} does not exist")
    env = {**step_environment(step, spec, context, output, artifacts), **values}
    try:
        result = run_process(
            [BASH, "-e", "-o", "pipefail", "-c", script],
            env=env,
            cwd=workdir,
            on_output=supervisor.log.line,
            should_stop=supervisor.should_stop,
            deadline=supervisor.deadline,
            kill_grace=settings.STEPWISE_KILL_GRACE,
            poll_interval=0.05,  # bounds how stale a buffered log line gets (LogWriter)
            on_tick=supervisor.log.tick,
            on_start=lambda pid: attempt_started(step=step, pid=pid),
        )
        artifacts_store(step=step, files=collect_files(artifacts))
        if result.outcome == "timed_out":
            return StepResult(status=StepStatus.TIMED_OUT, error=supervisor.deadline_reason)
        if result.outcome == "stopped":
            return StepResult(status=StepStatus.CANCELLED, error="cancelled")
        if result.exit_code != 0:
            return StepResult(
                status=StepStatus.FAILED,
                exit_code=result.exit_code,
                error=_exit_description(result.exit_code),
            )
        try:
            outputs = parse_outputs(output.read_text(errors="replace"))
        except OutputsError as error:
            return StepResult(
                status=StepStatus.FAILED, exit_code=0, error=f"$STEPWISE_OUTPUT: {error}"
            )
        return StepResult(status=StepStatus.SUCCEEDED, exit_code=0, outputs=outputs)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        with contextlib.suppress(OSError):
            base.parent.rmdir()  # the run's folder, once its last step is cleaned up


def _exit_description(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by signal {-code}"
    return f"exit code {code}"
