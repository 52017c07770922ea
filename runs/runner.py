"""What a worker does: claim a step, execute it, record the result, go on with the next one.

`work()` is the body of the django-q2 task; the queue message only says which run to look
at. Everything else comes from the database, re-read at each claim, so a duplicated message
finds nothing to claim and a lost one is re-sent by the reaper.
"""

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from runbooks.services import version_steps
from runs import services, templating
from runs.executors import http, shell, sleep
from runs.models import LogEntry, LogLevel, Step
from runs.secrets import Masker, SecretsUnreadable, unseal
from runs.state import StepStatus

logger = logging.getLogger(__name__)

_WORKER_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

LEVEL_PREFIXES = {
    "::debug::": LogLevel.DEBUG,
    "::warning::": LogLevel.WARN,
    "::error::": LogLevel.ERROR,
}
FLUSH_INTERVAL = 0.1  # seconds: how stale a buffered log line may get
FLUSH_SIZE = 500


def worker_id() -> str:
    # Recomputed after a fork: django-q2 forks its workers from one parent.
    global _WORKER_ID
    if f":{os.getpid()}:" not in _WORKER_ID:
        _WORKER_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    return _WORKER_ID


class LogWriter:
    """Buffers a step's log lines and writes them in batches, masked, at least every 100 ms."""

    def __init__(self, step: Step, masker: Masker) -> None:
        self.step = step
        self.masker = masker
        self.buffer: list[LogEntry] = []
        self.last_flush = time.monotonic()

    def line(self, stream: str, text: str) -> None:
        level = LogLevel.INFO if stream == "stdout" else LogLevel.WARN
        for prefix, prefixed_level in LEVEL_PREFIXES.items():
            if text.startswith(prefix):
                level, text = prefixed_level, text[len(prefix) :]
                break
        self.add(text, level=level, stream=stream)

    def system(self, text: str, *, level: int = LogLevel.SYSTEM) -> None:
        self.add(text, level=level, stream="system")

    def add(self, text: str, *, level: int, stream: str) -> None:
        self.buffer.append(
            LogEntry(
                run_id=self.step.run_id,
                step_id=self.step.pk,
                attempt=self.step.attempt,
                timestamp=timezone.now(),
                level=level,
                stream=stream,
                message=self.masker.text(text),
            )
        )
        if len(self.buffer) >= FLUSH_SIZE:
            self.flush()

    def tick(self) -> None:
        if self.buffer and time.monotonic() - self.last_flush >= FLUSH_INTERVAL:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            services.logs_append(self.buffer)
            self.buffer = []
        self.last_flush = time.monotonic()


@dataclass
class Supervisor:
    """Keeps a running step's lease alive and notices a cancel, for every executor."""

    step: Step
    worker: str
    deadline: float | None  # time.monotonic() after which the step is timed out
    deadline_reason: str
    log: LogWriter
    stop_reason: str | None = None
    # The claim has just taken a fresh lease, so the first checks can wait.
    _next_check: float = field(default_factory=lambda: time.monotonic() + 0.5)
    _next_heartbeat: float = field(
        default_factory=lambda: time.monotonic() + settings.STEPWISE_LEASE_SECONDS / 3
    )

    def should_stop(self) -> str | None:
        """Polled by executors; returns "cancelled" or "lost" once the step must stop."""
        self.log.tick()
        now = time.monotonic()
        if self.stop_reason is None and now >= self._next_check:
            self._next_check = now + 0.5
            if now >= self._next_heartbeat:
                self._next_heartbeat = now + settings.STEPWISE_LEASE_SECONDS / 3
                self.stop_reason = services.step_heartbeat(step=self.step, worker=self.worker)
            else:
                self.stop_reason = services.step_should_stop(step=self.step)
        return self.stop_reason

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())


def _deadline(step: Step, spec: object) -> tuple[float | None, str]:
    """The earliest of the step's timeout, the run's deadline and the longest step we allow."""
    now = time.monotonic()
    candidates: list[tuple[float, str]] = [
        (now + settings.STEPWISE_MAX_STEP_SECONDS, "the longest a step may run")
    ]
    step_timeout = getattr(spec, "timeout", None)
    if step_timeout:
        candidates.append((now + step_timeout, f"timed out after {step_timeout:g}s"))
    if step.run.deadline:
        left = (step.run.deadline - timezone.now()).total_seconds()
        candidates.append((now + max(0.0, left), "run timed out"))
    when, reason = min(candidates)
    return when, reason


def execute(step: Step, worker: str) -> services.Finish | None:
    """Runs one claimed attempt of a leaf step and records its result."""
    run = step.run
    spec = version_steps(run.version)[step.key]
    try:
        masker = Masker(unseal(run.sealed_secrets).values())
    except SecretsUnreadable as error:
        log = LogWriter(step, Masker([]))
        log.system(str(error), level=LogLevel.ERROR)
        log.flush()
        result = services.StepResult(status=StepStatus.FAILED, error=str(error), retryable=False)
        return services.step_finish(step=step, worker=worker, result=result)
    log = LogWriter(step, masker)
    deadline, deadline_reason = _deadline(step, spec)
    supervisor = Supervisor(step, worker, deadline, deadline_reason, log)
    attempt = f" (attempt {step.attempt} of {step.max_attempts})" if step.max_attempts > 1 else ""
    log.system(f"step {step.number} {step.key} started{attempt}")
    try:
        context = services.template_context(run)
        executor = {"shell": shell.execute, "http": http.execute, "sleep": sleep.execute}[step.kind]
        result = executor(step=step, spec=spec, context=context, supervisor=supervisor)
    except templating.RenderError as error:
        # The same inputs render the same way: retrying cannot help.
        result = services.StepResult(
            status=StepStatus.FAILED, error=f"template error: {error}", retryable=False
        )
    except Exception as error:
        logger.exception("step %s of run %s crashed", step.key, run.pk)
        result = services.StepResult(
            status=StepStatus.FAILED, error=f"internal error: {type(error).__name__}: {error}"
        )
    if supervisor.stop_reason == "lost":
        log.system("lease lost: another worker took this step over; stopping", level=LogLevel.ERROR)
        log.flush()
        return None
    ended = result.status.replace("_", " ") + (f": {result.error}" if result.error else "")
    level = LogLevel.SYSTEM if result.status == StepStatus.SUCCEEDED else LogLevel.ERROR
    log.system(f"step {step.number} {step.key} {ended}", level=level)
    log.flush()
    return services.step_finish(step=step, worker=worker, result=result)


def _wait_until(when: datetime, step: Step) -> None:
    """Waits out a short retry delay, returning early if the run is cancelled."""
    while (left := (when - timezone.now()).total_seconds()) > 0:
        if services.step_should_stop(step=step):
            return
        time.sleep(min(left, 0.5))


def work(run_pk: int, step_pk: int | None = None) -> int:
    """Claims and runs ready steps of a run until there are none; returns how many ran."""
    worker = worker_id()
    started = time.monotonic()
    done = 0
    step = services.step_claim(run_pk=run_pk, worker=worker, prefer=step_pk)
    while step is not None:
        finish = execute(step, worker)
        done += 1
        if finish is None:
            break
        if time.monotonic() - started > settings.STEPWISE_MAX_STEP_SECONDS:
            # The queue kills a task at twice this; hand the rest of the chain to a new one.
            services.step_hand_over(run_pk=run_pk, held=finish.next_step)
            break
        if finish.next_step is not None:
            step = finish.next_step
            continue
        prefer = None
        if finish.retry_at is not None:
            # A cancel during the wait cancels the queued step, so the claim below finds nothing.
            _wait_until(finish.retry_at, step)
            prefer = step.pk
        step = services.step_claim(run_pk=run_pk, worker=worker, prefer=prefer)
    return done
