"""What a worker does: claim a step, execute it, record the result, go on with the next one.

`work()` is the body of the django-q2 task; the queue message only says which run to look
at. Everything else comes from the database, re-read at each claim, so a duplicated message
finds nothing to claim and a lost one is re-sent by the reaper.
"""

import contextlib
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone

from runbooks.services import version_steps
from runs import services, templating
from runs.executors import http, shell, sleep
from runs.executors.process import ProcessResult
from runs.models import LogEntry, LogLevel, Step
from runs.secrets import Masker, SecretsUnreadable, secret_values, unseal_all
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
# How long a step's process runs before its pid is written on its own. The reaper needs the
# pid to end the processes of a worker that died; until then, they would outlive it.
PID_DELAY = 0.05


def _siblings() -> int:
    """How many parallel siblings a worker claims along with a step (STEPWISE_STEP_BATCH)."""
    return max(0, settings.STEPWISE_STEP_BATCH - 1)


def worker_id() -> str:
    # Recomputed after a fork: django-q2 forks its workers from one parent.
    global _WORKER_ID
    if f":{os.getpid()}:" not in _WORKER_ID:
        _WORKER_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    return _WORKER_ID


class LogWriter:
    """Buffers a step's log lines and writes them in batches, masked, at least every 100 ms."""

    def __init__(
        self, step: Step, masker: Masker, before_flush: Callable[[], None] | None = None
    ) -> None:
        self.step = step
        self.masker = masker
        self.buffer: list[LogEntry] = []
        self.last_flush = time.monotonic()
        self.before_flush = before_flush
        self.room = int(settings.STEPWISE_MAX_LOG_MB * 1_000_000)  # characters of output left

    def line(self, stream: str, text: str) -> None:
        if self.room < 0:
            return
        self.room -= len(text) + 1
        if self.room < 0:
            self.system(
                f"log truncated: this attempt printed over {settings.STEPWISE_MAX_LOG_MB:g}"
                " million characters (STEPWISE_MAX_LOG_MB); the rest of its output is not kept",
                level=LogLevel.WARN,
            )
            return
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
            if self.before_flush is not None:
                self.before_flush()
            services.logs_append(self.buffer)
            self.buffer = []
        self.last_flush = time.monotonic()

    def take(self) -> list[LogEntry]:
        """The buffered lines, for the caller to write in its own transaction."""
        entries, self.buffer = self.buffer, []
        return entries


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
    pid: int | None = None  # the step's process group, once its process runs
    pid_saved: bool = False
    _pid_due: float = 0.0

    def process_started(self, pid: int) -> None:
        """Notes the process group. It is written once the process has run PID_DELAY (or
        with the step's result), so a step that lasts a few milliseconds costs no extra
        commit for it."""
        self.pid, self.pid_saved = pid, False
        self._pid_due = time.monotonic() + PID_DELAY

    def save_pid(self) -> None:
        if self.pid is not None and not self.pid_saved:
            services.attempt_started(step=self.step, pid=self.pid)
            self.pid_saved = True

    def unsaved_pid(self) -> int | None:
        return None if self.pid_saved else self.pid

    def should_stop(self) -> str | None:
        """Polled by executors; returns "cancelled" or "lost" once the step must stop."""
        now = time.monotonic()
        if self.pid is not None and not self.pid_saved and now >= self._pid_due:
            self.save_pid()
        self.log.tick()
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
    """The earliest of the step's timeout, its groups' and the run's deadlines and the longest
    step we allow."""
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
    if step.deadline:  # the timeout of a group the step is in
        left = (step.deadline - timezone.now()).total_seconds()
        candidates.append((now + max(0.0, left), "its group timed out"))
    when, reason = min(candidates)
    return when, reason


def execute(step: Step, worker: str, upcoming: list[Step] | None = None) -> services.Finish | None:
    """Runs one claimed attempt of a leaf step and records its result. `upcoming` is what
    the finish that handed us the step said follows it (`services.Finish.upcoming`)."""
    run = step.run
    spec = version_steps(run.version)[step.key]
    try:
        masker = Masker(secret_values(unseal_all(run.sealed_secrets)))
    except SecretsUnreadable as error:
        log = LogWriter(step, Masker([]))
        log.system(str(error), level=LogLevel.ERROR)
        result = services.StepResult(status=StepStatus.FAILED, error=str(error), retryable=False)
        return services.step_finish(
            step=step, worker=worker, result=result, logs=log.take(), siblings=_siblings()
        )
    log = LogWriter(step, masker)
    deadline, deadline_reason = _deadline(step, spec)
    supervisor = Supervisor(step, worker, deadline, deadline_reason, log)
    log.before_flush = supervisor.save_pid  # the pid is in before the lines that show it
    attempt = f" (attempt {step.attempt} of {step.max_attempts})" if step.max_attempts > 1 else ""
    log.system(f"step {step.number} {step.key} started{attempt}")
    try:
        context = services.template_context(run, None if reads_steps(spec) else ())
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
    return services.step_finish(
        step=step,
        worker=worker,
        result=result,
        logs=log.take(),
        pid=supervisor.unsaved_pid(),
        siblings=_siblings(),
        upcoming=upcoming,
    )


def reads_steps(spec: Any) -> bool:
    """Whether any template of the step can refer to other steps' outputs or statuses."""
    # A template reaches other steps only through the name `steps`: a step whose definition
    # never spells it needs no read of the run's steps before it runs (about 10 µs to check).
    return "steps" in spec.model_dump_json(exclude={"id", "steps"})


class _Member:
    """One step of a batch run side by side (`execute_many`).

    Its process runs in a pool thread, whose callbacks only touch this object: lines go to
    a deque, the stop reason and the pid are plain attributes. Everything that reads or
    writes the database happens in the worker's own thread.
    """

    def __init__(self, step: Step, worker: str) -> None:
        self.step = step
        self.spec = version_steps(step.run.version)[step.key]
        self.result: services.StepResult | None = None
        self.prepared: shell.Prepared | None = None
        self.future: Future[ProcessResult] | None = None
        self.lines: deque[tuple[str, str]] = deque()
        self.stop_reason: str | None = None
        self.deadline, self.deadline_reason = _deadline(step, self.spec)
        self.pid: int | None = None
        self.pid_saved = False
        self.recorded = False  # its result is written (`_record`)
        self.started = time.monotonic()
        try:
            masker = Masker(secret_values(unseal_all(step.run.sealed_secrets)))
        except SecretsUnreadable as error:
            self.log = LogWriter(step, Masker([]))
            self.log.system(str(error), level=LogLevel.ERROR)
            self.result = services.StepResult(
                status=StepStatus.FAILED, error=str(error), retryable=False
            )
            return
        self.log = LogWriter(step, masker, before_flush=self.save_pid)
        attempt = (
            f" (attempt {step.attempt} of {step.max_attempts})" if step.max_attempts > 1 else ""
        )
        self.log.system(f"step {step.number} {step.key} started{attempt}")

    # Called from the pool thread.
    def should_stop(self) -> str | None:
        return self.stop_reason

    def on_output(self, stream: str, text: str) -> None:
        self.lines.append((stream, text))

    def on_start(self, pid: int) -> None:
        self.pid = pid

    # Called from the worker's thread.
    def drain(self) -> None:
        while self.lines:
            self.log.line(*self.lines.popleft())

    def save_pid(self) -> None:
        if self.pid is not None and not self.pid_saved:
            services.attempt_started(step=self.step, pid=self.pid)
            self.pid_saved = True

    def prepare(self) -> None:
        try:
            context = services.template_context(
                self.step.run, None if reads_steps(self.spec) else ()
            )
            prepared = shell.prepare(step=self.step, spec=self.spec, context=context)
        except templating.RenderError as error:
            prepared = services.StepResult(
                status=StepStatus.FAILED, error=f"template error: {error}", retryable=False
            )
        except Exception as error:
            logger.exception("step %s of run %s crashed", self.step.key, self.step.run_id)
            prepared = services.StepResult(
                status=StepStatus.FAILED, error=f"internal error: {type(error).__name__}: {error}"
            )
        if isinstance(prepared, services.StepResult):
            self.result = prepared
        else:
            self.prepared = prepared

    def conclude(self) -> None:
        assert self.future is not None and self.prepared is not None
        try:
            process = self.future.result()
            self.drain()
            self.result = shell.conclude(
                step=self.step,
                prepared=self.prepared,
                result=process,
                deadline_reason=self.deadline_reason,
                log=self.log,
            )
        except Exception as error:
            logger.exception("step %s of run %s crashed", self.step.key, self.step.run_id)
            self.result = services.StepResult(
                status=StepStatus.FAILED, error=f"internal error: {type(error).__name__}: {error}"
            )


_pool: tuple[tuple[int, int], ThreadPoolExecutor] | None = None


def _threads() -> ThreadPoolExecutor:
    # One pool per process: django-q2 forks its workers, and threads do not survive a fork.
    # As many threads as a batch has steps, or they would not all run at once.
    global _pool
    key = (os.getpid(), max(1, settings.STEPWISE_STEP_BATCH))
    if _pool is None or _pool[0] != key:
        _pool = (key, ThreadPoolExecutor(key[1], thread_name_prefix="stepwise-step"))
    return _pool[1]


def execute_many(steps: list[Step], worker: str) -> services.Finish | None:
    """Runs claimed shell steps of one parallel group side by side. Each keeps its own
    timeout, log and outputs; heartbeats and the cancel check cover them all at once. Steps
    that end together are recorded in one transaction; one that ends while others still run
    is recorded then (`_supervise`), not when the last one ends."""
    members = [_Member(step, worker) for step in steps]
    for member in members:
        if member.result is None:
            member.prepare()
    running = [m for m in members if m.prepared is not None]
    try:
        for member in running:
            member.future = _threads().submit(
                shell.start,
                member.prepared,  # type: ignore[arg-type]
                member,
                on_output=member.on_output,
                on_start=member.on_start,
            )
        early = _supervise(running, worker)
        for member in running:
            if not member.recorded:
                member.conclude()
    finally:
        for member in members:
            if member.result is None:
                # Something went wrong here, in our thread: the processes must not outlive it.
                member.stop_reason = member.stop_reason or "stopped"
        for member in running:
            if member.future is not None:
                with contextlib.suppress(Exception):
                    member.future.result()
        for member in members:
            shell.cleanup(member.step)
    finish = _record([m for m in members if not m.recorded], worker, siblings=_siblings())
    if finish is None:
        return None
    # Retries of steps recorded early are owed too (runner.work waits them out).
    owed = (*early, *(finish.retries_at or ((finish.retry_at,) if finish.retry_at else ())))
    if not owed:
        return finish
    return dataclasses.replace(finish, retry_at=min(owed), retries_at=owed)


def _record(members: list[_Member], worker: str, *, siblings: int) -> services.Finish | None:
    """Records the results of concluded members in one transaction."""
    ended = []
    logs: list[LogEntry] = []
    for member in members:
        assert member.result is not None
        member.recorded = True
        if member.stop_reason == "lost":
            member.log.system(
                "lease lost: another worker took this step over; stopping", level=LogLevel.ERROR
            )
        else:
            result, step = member.result, member.step
            how = result.status.replace("_", " ") + (f": {result.error}" if result.error else "")
            level = LogLevel.SYSTEM if result.status == StepStatus.SUCCEEDED else LogLevel.ERROR
            member.log.system(f"step {step.number} {step.key} {how}", level=level)
            ended.append(
                services.Ended(
                    step=member.step,
                    result=result,
                    pid=None if member.pid_saved else member.pid,
                )
            )
        logs += member.log.take()
    if not ended:
        services.logs_append(logs)
        return None
    return services.step_finish_many(ended=ended, worker=worker, logs=logs, siblings=siblings)


def _supervise(members: list[_Member], worker: str) -> list[datetime]:
    """While the processes run: flush their logs, record pids, renew leases, notice cancels,
    and record the steps that end before the others. Returns when their retries are due."""
    owed: list[datetime] = []
    now = time.monotonic()
    next_check = now + 0.5  # the claim has just taken fresh leases
    next_heartbeat = now + settings.STEPWISE_LEASE_SECONDS / 3
    next_flush = now + FLUSH_INTERVAL
    pending = {m.future for m in members if m.future is not None}
    while pending:
        done, pending = wait(pending, timeout=0.05, return_when=FIRST_COMPLETED)
        if done and pending:
            # Ended while siblings run on: recorded now, so its status, end time and retry
            # do not wait for the slowest of the batch.
            ended = [m for m in members if m.future in done and not m.recorded]
            for member in ended:
                member.conclude()
            finish = _record(ended, worker, siblings=0)
            if finish is not None:
                owed += finish.retries_at
            members = [m for m in members if not m.recorded]
        now = time.monotonic()
        for member in members:
            member.drain()
            if member.pid is not None and now - member.started >= PID_DELAY:
                member.save_pid()
        if now >= next_flush:
            # One INSERT for the whole batch; each member's pid is in before its lines.
            entries = [entry for member in members for entry in member.log.take()]
            if entries:
                services.logs_append(entries)
            next_flush = now + FLUSH_INTERVAL
        if now >= next_check:
            next_check = now + 0.5
            live = [m for m in members if m.stop_reason is None]
            if not live:
                continue
            if now >= next_heartbeat:
                next_heartbeat = now + settings.STEPWISE_LEASE_SECONDS / 3
                held, reason = services.step_heartbeat_many(
                    steps=[m.step for m in live], worker=worker
                )
            else:
                held = {m.step.pk for m in live}
                reason = services.step_should_stop(step=live[0].step)
            for member in live:
                member.stop_reason = reason if member.step.pk in held else "lost"
    return owed


def _wait_until(when: datetime, run_pk: int) -> None:
    """Waits out a short retry delay, returning early once the run has no queued step left:
    a cancel or a timeout ended it (the run may already be over, not just cancelling)."""
    while (left := (when - timezone.now()).total_seconds()) > 0:
        if not services.steps_queued(run_pk=run_pk):
            return
        time.sleep(min(left, 0.5))


def work(run_pk: int, step_pk: int | None = None) -> int:
    """Claims and runs ready steps of a run until there are none; returns how many ran."""
    worker = worker_id()
    started = time.monotonic()
    done = 0
    siblings = _siblings()
    steps = services.step_claim(run_pk=run_pk, worker=worker, prefer=step_pk, siblings=siblings)
    upcoming = None
    # Retries this worker scheduled to wait out itself (short delays): no message wakes
    # them, and the reaper only once they are overdue, so it must not return before them.
    owed: list[datetime] = []
    while steps:
        if len(steps) == 1:
            finish = execute(steps[0], worker, upcoming)
        else:
            finish = execute_many(steps, worker)
        done += len(steps)
        if finish is None:
            break
        if time.monotonic() - started > settings.STEPWISE_MAX_STEP_SECONDS:
            # The queue kills a task at twice this; hand the rest of the chain to a new one.
            for held in finish.claimed:
                services.step_hand_over(run_pk=run_pk, held=held)
            break
        if finish.claimed:
            steps, upcoming = finish.claimed, finish.upcoming
            continue
        if finish.run_ended:
            break  # a claim would find nothing, and on SQLite it takes the write lock
        upcoming = None
        if finish.retry_at is not None:
            due = finish.retries_at or (finish.retry_at,)
            owed += due
        steps = services.step_claim(run_pk=run_pk, worker=worker, siblings=siblings)
        while not steps and owed:
            owed.sort()
            # A cancel during the wait cancels the queued step, so the claim finds nothing.
            _wait_until(owed.pop(0), run_pk)
            steps = services.step_claim(run_pk=run_pk, worker=worker, siblings=siblings)
    return done
