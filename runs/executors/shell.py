"""Shell steps: `bash -e -o pipefail -c <script>` with a scrubbed environment."""

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from runs import templating
from runs.executors.outputs import OutputsError, collect_files, parse_outputs
from runs.executors.process import ProcessResult, run_process
from runs.models import LogLevel, Step
from runs.services import StepResult, artifacts_store
from runs.state import StepStatus

BASH = shutil.which("bash") or "/bin/bash"
# What a step inherits from the worker's environment; everything else is left behind so
# credentials in the worker's environment never reach runbook scripts.
INHERITED = ("HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "LOGNAME")
MAX_OUTPUTS = 1024 * 1024  # bytes of $STEPWISE_OUTPUT, as GitHub Actions allows a job


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


@dataclass(frozen=True)
class Prepared:
    """A shell attempt ready to start: its argv, environment and directories."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    base: Path  # the attempt's directory, removed by `cleanup`
    output: Path
    artifacts: Path


def prepare(*, step: Step, spec: Any, context: dict[str, Any]) -> Prepared | StepResult:
    """Renders the script and sets up the attempt's directories; a StepResult if it can't run.

    Call `cleanup` afterwards whatever happens.
    """
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
    argv = [BASH, "-e", "-o", "pipefail", "-c", script]
    return Prepared(argv, env, workdir, base, output, artifacts)


def start(prepared: Prepared, supervisor: Any, **callbacks: Any) -> ProcessResult:
    """Runs the prepared process to its end (the part that may run in a thread)."""
    return run_process(
        prepared.argv,
        env=prepared.env,
        cwd=prepared.cwd,
        should_stop=supervisor.should_stop,
        deadline=supervisor.deadline,
        kill_grace=settings.STEPWISE_KILL_GRACE,
        poll_interval=0.05,  # bounds how stale a buffered log line gets (LogWriter)
        **callbacks,
    )


def conclude(
    *, step: Step, prepared: Prepared, result: ProcessResult, deadline_reason: str, log: Any
) -> StepResult:
    """Keeps the artifacts and reads the outputs of a finished process. `log` is the
    attempt's `runs.runner.LogWriter`."""
    artifacts_store(step=step, files=_within_budget(collect_files(prepared.artifacts), log))
    if result.outcome == "timed_out":
        return StepResult(status=StepStatus.TIMED_OUT, error=deadline_reason)
    if result.outcome == "stopped":
        return StepResult.stopped()
    if result.exit_code != 0:
        return StepResult(
            status=StepStatus.FAILED,
            exit_code=result.exit_code,
            error=_exit_description(result.exit_code),
        )
    # Read whole into the worker's memory, then stored on the step and shown on its page.
    with prepared.output.open("rb") as file:
        data = file.read(MAX_OUTPUTS + 1)
    if len(data) > MAX_OUTPUTS:
        return StepResult(
            status=StepStatus.FAILED,
            exit_code=0,
            error=f"$STEPWISE_OUTPUT is over {MAX_OUTPUTS:,} bytes; put big data in artifacts",
        )
    try:
        outputs = parse_outputs(data.decode(errors="replace"))
    except OutputsError as error:
        return StepResult(status=StepStatus.FAILED, exit_code=0, error=f"$STEPWISE_OUTPUT: {error}")
    return StepResult(status=StepStatus.SUCCEEDED, exit_code=0, outputs=outputs)


def _within_budget(files: list[tuple[str, Path]], log: Any) -> list[tuple[str, Path]]:
    """The artifacts that fit in STEPWISE_MAX_ARTIFACTS_MB, in name order; each file left
    out gets a warn line in the log, so nobody wonders where it went."""
    room = int(settings.STEPWISE_MAX_ARTIFACTS_MB * 1_000_000)
    kept = []
    for name, path in files:
        try:
            size = path.lstat().st_size
        except OSError:
            continue
        if size > room:
            log.system(
                f"artifact {name} not kept: its {size:,} bytes would take this attempt's"
                f" artifacts over {settings.STEPWISE_MAX_ARTIFACTS_MB:g} MB"
                " (STEPWISE_MAX_ARTIFACTS_MB)",
                level=LogLevel.WARN,
            )
            continue
        room -= size
        kept.append((name, path))
    return kept


def cleanup(step: Step) -> None:
    base = attempt_dir(step)
    try:
        # Usually the step left what prepare made, empty: four system calls, not a tree walk.
        # None of them follows a symlink; anything else left behind goes to rmtree.
        (base / "output").unlink()
        for name in ("work", "artifacts", ""):
            (base / name).rmdir()
    except OSError:
        shutil.rmtree(base, ignore_errors=True)
    with contextlib.suppress(OSError):
        base.parent.rmdir()  # the run's folder, once its last step is cleaned up


def execute(*, step: Step, spec: Any, context: dict[str, Any], supervisor: Any) -> StepResult:
    try:
        prepared = prepare(step=step, spec=spec, context=context)
        if isinstance(prepared, StepResult):
            return prepared
        result = start(
            prepared,
            supervisor,
            on_output=supervisor.log.line,
            on_tick=supervisor.log.tick,
            on_start=supervisor.process_started,
        )
        return conclude(
            step=step,
            prepared=prepared,
            result=result,
            deadline_reason=supervisor.deadline_reason,
            log=supervisor.log,
        )
    finally:
        cleanup(step)


def _exit_description(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by signal {-code}"
    return f"exit code {code}"
