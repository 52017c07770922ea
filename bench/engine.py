"""Measures Stepwise's run engine on this machine against real `manage.py qcluster` workers.

    .venv/bin/python bench/engine.py                       # SQLite + django-q2 ORM broker
    .venv/bin/python bench/engine.py \\
        --database-url postgres://postgres@127.0.0.1:5432/stepwise_bench \\
        --broker redis://127.0.0.1:6379/0                   # PostgreSQL + Redis
    .venv/bin/python bench/engine.py --quick                # fewer samples, 5 s idle window

It sets up a throwaway database (a SQLite file in a temporary directory, or the PostgreSQL
database named in --database-url, which it creates and drops), migrates it, saves runbooks
with `runbooks.services`, starts runs with `runs.services.run_create` and lets a real qcluster
(STEPWISE_WORKERS=2, started with this process's environment) execute them. Every figure comes
from the timestamps the engine itself writes (Step, StepAttempt, Run), except the baseline (e),
whose tasks write their own. See NOTES below (also printed) for how each figure is computed.

Progress goes to stderr; stdout gets one table, the notes, and a last line of JSON with every
figure. The exit status is 0 when the benchmark completed (whether or not targets were met).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WORKERS = 2
SET_BY_US = {
    "STEPWISE_BROKER",
    "STEPWISE_WORKERS",
    "STEPWISE_VAR_DIR",
    "STEPWISE_WORK_DIR",
    "STEPWISE_MEDIA_DIR",
}
BASH = shutil.which("bash") or "/bin/bash"
# The argv the shell executor runs for a step whose script is `true` (runs/executors/shell.py).
BASH_ARGV = [BASH, "-e", "-o", "pipefail", "-c", "true"]

NOTES = """\
How the figures are computed (all times are wall-clock timestamps written by the processes
involved, on this one machine):
(a) A 50-step sequential runbook of `shell: "true"` steps, run {a_runs} times. For step i>1
    of a run, with A(i) its StepAttempt row:
      overhead(i) = [A(i).started_at - A(i-1).finished_at]          (gap between steps)
                  + [A(i).finished_at - A(i).started_at - bash]     (in-step engine time)
    where bash = the median wall time of `bash -e -o pipefail -c true` (the executor's argv,
    new session, piped stdout/stderr, small env) over 50 runs timed with time.perf_counter in
    this process. Step 1 is left out (its start is figure b). p50/p95 over {a_runs} x 49.
(b) A 1-step runbook, started {b_runs} times with the cluster idle and warm, 0.25-0.5 s
    apart (random, so the broker's poll phase is sampled evenly). latency = Step.started_at
    (the claim) - the time run_create returned (its transaction, and with it the queue
    message, committed).
(c) One run of a parallel group of 200 `shell: "true"` children, 2 workers.
    steps/s = 200 / (max child finished_at - min child started_at); wall = Run.finished_at
    - the time run_create was called (run_create itself, which writes 201 steps and 200
    queue messages, is shown apart).
(d) After every run ended and the queue drained (+3 s), user+system CPU seconds of the
    whole qcluster process tree (psutil, children included) over an idle window, divided by
    the window: percent of one core.
(e) Baseline without Stepwise: bench.tasks.noop_chain, a plain django-q2 task that runs
    `true` (subprocess.run), appends time.time() to a file, and async_task()s the next one;
    chains of 50. per hop = difference of consecutive timestamps (includes one `true`).
(f) Diagnostic, not a target, measured in this process before the cluster starts (no queue
    involved): after one warm-up run, runs.runner.work() executes a queued run inside
    CaptureQueriesContext. ms/step = wall / steps - bash; queries/step = queries / steps.
"""


class BenchError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values_ms: list[float]) -> dict[str, float]:
    return {
        "n": len(values_ms),
        "p50_ms": round(percentile(values_ms, 50), 3),
        "p95_ms": round(percentile(values_ms, 95), 3),
        "mean_ms": round(statistics.fmean(values_ms), 3) if values_ms else float("nan"),
        "max_ms": round(max(values_ms), 3) if values_ms else float("nan"),
    }


def ts(value: datetime) -> float:
    return value.timestamp()


# --- Environment, database, broker -----------------------------------------------------------


def backend_names(database_url: str, broker: str) -> tuple[str, str]:
    db = "postgresql" if database_url.startswith(("postgres", "pgsql")) else "sqlite"
    return db, ("redis" if broker.startswith(("redis", "rediss", "unix")) else "orm")


def configure_environment(args: argparse.Namespace, tmp: Path) -> str:
    """Sets what config/settings.py reads; the clusters inherit the same environment."""
    database_url = args.database_url or f"sqlite:///{tmp / 'bench.sqlite3'}"
    # An experiment may point DJANGO_SETTINGS_MODULE at a module that imports config.settings
    # and changes one thing (keep it on PYTHONPATH so the cluster finds it too).
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.update(
        DATABASE_URL=database_url,
        STEPWISE_BROKER=args.broker or "",
        STEPWISE_WORKERS=str(WORKERS),
        STEPWISE_VAR_DIR=str(tmp / "var"),
        STEPWISE_WORK_DIR=str(tmp / "work"),
        STEPWISE_MEDIA_DIR=str(tmp / "media"),
        DEBUG="false",
        LOG_LEVEL=os.environ.get("LOG_LEVEL", "WARNING"),
        Q_LOG_LEVEL=os.environ.get("Q_LOG_LEVEL", "WARNING"),
    )
    return database_url


def _pg_admin_url(database_url: str) -> tuple[str, str]:
    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    if not name:
        raise BenchError("--database-url must name a database, e.g. .../stepwise_bench")
    scheme = "postgresql" if parts.scheme in ("postgres", "postgresql", "pgsql") else parts.scheme
    admin = urlunsplit((scheme, parts.netloc, "/postgres", parts.query, ""))
    return admin, name


def pg_recreate(database_url: str, *, drop_only: bool = False) -> None:
    import psycopg
    from psycopg import sql

    admin, name = _pg_admin_url(database_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(drop.format(sql.Identifier(name)))
        if not drop_only:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def versions(db: str, broker: str) -> dict[str, str]:
    import django
    import django_q
    from django.db import connection

    found = {
        "python": platform.python_version(),
        "django": django.get_version(),
        "django_q2": ".".join(map(str, getattr(django_q, "VERSION", ()))) or "?",
    }
    with connection.cursor() as cursor:
        if db == "sqlite":
            cursor.execute("select sqlite_version()")
            found["sqlite"] = cursor.fetchone()[0]
        else:
            cursor.execute("show server_version")
            found["postgresql"] = cursor.fetchone()[0]
    if broker == "redis":
        from django_q.brokers import get_broker

        found["redis"] = get_broker().info()
    return found


def machine() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


# --- The cluster -----------------------------------------------------------------------------


class Cluster:
    """A real `manage.py qcluster` in its own process group, with this process's environment."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "manage.py"), "qcluster"],
                cwd=ROOT,
                env=dict(os.environ),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def check(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(f"qcluster exited with {self.process.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def processes(self) -> list[Any]:
        import psutil

        root = psutil.Process(self.process.pid)
        return [root, *root.children(recursive=True)]

    def stop(self) -> None:
        """SIGTERM to the qcluster itself, then SIGKILL to whatever is left of its group.

        SIGTERM goes to the leader only: django-q2 then stops its sentinel, workers, monitor
        and pusher in order (about 2 s). Sent to the whole group at once it can leave the
        leader blocked in multiprocessing's Event.set() for good (seen with django-q2 1.11).
        """
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                log("qcluster did not stop on SIGTERM within 15 s; SIGKILL")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=10)


# --- Runbooks and runs -----------------------------------------------------------------------


def save_runbook(slug: str, steps: list[dict[str, Any]]) -> Any:
    from runbooks.services import definition_parse, runbook_save

    text = json.dumps({"slug": slug, "name": slug, "steps": steps}, indent=1)  # JSON is YAML
    definition = definition_parse(text=text)
    return runbook_save(definition=definition, source=text, user=None).runbook


def noop(step_id: str) -> dict[str, str]:
    return {"id": step_id, "shell": "true"}


def start_run(runbook: Any) -> tuple[Any, float, float]:
    """Starts a run; returns it with the times just before the call and just after it."""
    from runs.services import run_create

    called = time.time()
    run = run_create(runbook=runbook, params={}, user=None, origin="api")
    return run, called, time.time()


def wait_terminal(run: Any, cluster: Cluster | None, timeout: float, interval: float = 0.05) -> Any:
    from runs.models import Run
    from runs.state import RUN_TERMINAL

    deadline = time.monotonic() + timeout
    while True:
        status = Run.objects.values_list("status", flat=True).get(pk=run.pk)
        if status in RUN_TERMINAL:
            run.refresh_from_db()
            return run
        if cluster is not None:
            cluster.check()
        if time.monotonic() > deadline:
            tail = cluster.tail() if cluster else ""
            raise BenchError(f"run #{run.pk} still {status} after {timeout:g}s\n{tail}")
        time.sleep(interval)


def expect_succeeded(run: Any) -> None:
    if run.status != "succeeded":
        raise BenchError(f"run #{run.pk} ended {run.status}: {run.error}")


def leaf_attempts(run: Any) -> list[tuple[Any, Any]]:
    """(step, its single attempt) for every leaf step of the run, in outline order."""
    from runs.models import Step, StepAttempt

    steps = list(Step.objects.filter(run=run).exclude(kind="group").order_by("position"))
    attempts: dict[int, Any] = {}
    for attempt in StepAttempt.objects.filter(step__run=run).order_by("step_id", "number"):
        if attempt.step_id in attempts:
            raise BenchError(f"step {attempt.step_id} of run #{run.pk} ran more than once")
        attempts[attempt.step_id] = attempt
    return [(step, attempts[step.pk]) for step in steps]


# --- Measurements ----------------------------------------------------------------------------


def time_command(argv: list[str], count: int, **kwargs: Any) -> list[float]:
    """Wall times (ms) of running argv `count` times, after a short warm-up."""
    times = []
    for index in range(count + 5):
        started = time.perf_counter()
        subprocess.run(argv, check=True, **kwargs)
        if index >= 5:
            times.append((time.perf_counter() - started) * 1000)
    return times


def measure_bash() -> dict[str, float]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    bash = time_command(
        BASH_ARGV,
        50,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        start_new_session=True,
    )
    true = time_command(["true"], 50)
    return {
        "bash_median_ms": round(statistics.median(bash), 3),
        "true_median_ms": round(statistics.median(true), 3),
    }


def measure_in_process(seq: Any, par: Any, bash_ms: float) -> dict[str, Any]:
    """(f) runner.work() in this process, counting queries; before any cluster runs."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django_q.brokers import get_broker

    from runs import runner

    result: dict[str, Any] = {}
    for name, runbook, steps in (("sequential_50", seq, 50), ("parallel_200", par, 200)):
        run, _, _ = start_run(runbook)
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            done = runner.work(run.pk)
            elapsed = time.perf_counter() - started
        run.refresh_from_db()
        expect_succeeded(run)
        if done != steps:
            raise BenchError(f"in-process {name}: work() ran {done} steps, not {steps}")
        kinds: dict[str, int] = {}
        for query in captured.captured_queries:
            word = query["sql"].lstrip().split(None, 1)[0].upper()
            kinds[word] = kinds.get(word, 0) + 1
        result[name] = {
            "ms_per_step": round(elapsed * 1000 / steps - bash_ms, 3),
            "queries_per_step": round(len(captured.captured_queries) / steps, 1),
            "queries_by_kind_per_step": {k: round(v / steps, 1) for k, v in sorted(kinds.items())},
        }
    # The runs above were done here; their wake-up messages must not reach the cluster.
    get_broker().purge_queue()
    return result


def measure_sequential(cluster: Cluster, runbook: Any, runs: int, bash_ms: float) -> dict[str, Any]:
    """(a) Engine overhead per step of a sequential chain."""
    overheads: list[float] = []
    gaps: list[float] = []
    inside: list[float] = []
    workers_used: list[int] = []
    for index in range(runs):
        run, _, _ = start_run(runbook)
        run = wait_terminal(run, cluster, timeout=60, interval=0.1)
        expect_succeeded(run)
        pairs = leaf_attempts(run)
        workers_used.append(len({attempt.worker for _, attempt in pairs}))
        for (_, before), (_, attempt) in itertools.pairwise(pairs):
            gap = (ts(attempt.started_at) - ts(before.finished_at)) * 1000
            held = (ts(attempt.finished_at) - ts(attempt.started_at)) * 1000 - bash_ms
            gaps.append(gap)
            inside.append(held)
            overheads.append(gap + held)
        log(f"(a) run {index + 1}/{runs}: {len(pairs)} steps, {run.duration_ms} ms")
    return {
        "runs": runs,
        "overhead": summary(overheads),
        "gap_between_steps": summary(gaps),
        "in_step_minus_bash": summary(inside),
        "distinct_workers_per_run": workers_used,
    }


def measure_start_latency(cluster: Cluster, runbook: Any, samples: int) -> dict[str, Any]:
    """(b) run_create returned -> first step claimed (running)."""
    from runs.models import Step

    latencies: list[float] = []
    for _ in range(samples):
        time.sleep(random.uniform(0.25, 0.5))  # spreads the samples
        run, _, returned = start_run(runbook)
        run = wait_terminal(run, cluster, timeout=30, interval=0.02)
        expect_succeeded(run)
        started = Step.objects.filter(run=run).values_list("started_at", flat=True).get()
        latencies.append((ts(started) - returned) * 1000)
    return summary(latencies)


def measure_parallel(cluster: Cluster, runbook: Any, children: int) -> dict[str, Any]:
    """(c) Throughput of one wide parallel group."""
    run, called, returned = start_run(runbook)
    run = wait_terminal(run, cluster, timeout=120, interval=0.05)
    expect_succeeded(run)
    pairs = leaf_attempts(run)
    if len(pairs) != children:
        raise BenchError(f"parallel run #{run.pk} has {len(pairs)} leaves, not {children}")
    first = min(ts(attempt.started_at) for _, attempt in pairs)
    last = max(ts(attempt.finished_at) for _, attempt in pairs)
    by_worker: dict[str, int] = {}
    for _, attempt in pairs:
        by_worker[attempt.worker] = by_worker.get(attempt.worker, 0) + 1
    return {
        "steps": children,
        "steps_per_s": round(children / (last - first), 1),
        "span_s": round(last - first, 3),
        "run_create_s": round(returned - called, 3),
        "wall_s": round(ts(run.finished_at) - called, 3),
        "first_step_after_create_ms": round((first - returned) * 1000, 1),
        "steps_per_worker": sorted(by_worker.values(), reverse=True),
    }


def measure_baseline(cluster: Cluster, tmp: Path, chains: int, length: int) -> dict[str, Any]:
    """(e) The same chain as plain django-q2 tasks, each enqueuing the next."""
    from django_q.tasks import async_task

    hops: list[float] = []
    for index in range(chains):
        path = tmp / f"chain-{index}.txt"
        path.touch()
        async_task("bench.tasks.noop_chain", str(path), length - 1)
        deadline = time.monotonic() + 60
        while True:
            stamps = [float(x) for x in path.read_text().split()]
            if len(stamps) >= length:
                break
            cluster.check()
            if time.monotonic() > deadline:
                raise BenchError(f"baseline chain stalled at {len(stamps)}/{length}")
            time.sleep(0.1)
        hops += [(b - a) * 1000 for a, b in itertools.pairwise(stamps)]
    return {"chains": chains, "length": length, "per_hop": summary(hops)}


def settle(cluster: Cluster, timeout: float = 60) -> None:
    """Waits until no run is active and the broker holds no message, then 3 s more."""
    from django_q.brokers import get_broker

    from runs.models import Run

    broker = get_broker()
    deadline = time.monotonic() + timeout
    while True:
        pending = broker.queue_size() or 0
        with contextlib.suppress(NotImplementedError, AttributeError):
            pending += broker.lock_size() or 0  # ORM broker: messages being worked on
        active = Run.objects.active().count()
        if not pending and not active:
            break
        cluster.check()
        if time.monotonic() > deadline:
            raise BenchError(f"cluster not idle after {timeout:g}s ({pending} msgs, {active} runs)")
        time.sleep(0.1)
    time.sleep(3)


def measure_idle_cpu(cluster: Cluster, seconds: float) -> dict[str, Any]:
    """(d) CPU of the idle cluster's whole process tree over `seconds`."""
    import psutil

    def cpu(process: Any) -> float:
        t = process.cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    def roles(processes: list[Any]) -> dict[int, str]:
        # No setproctitle: tell them apart by position. manage.py qcluster -> sentinel ->
        # workers (spawned first), then the monitor, then the pusher.
        named = {processes[0].pid: "main"}
        sentinels = processes[0].children()
        for sentinel in sentinels:
            named[sentinel.pid] = "sentinel"
            kids = sorted(sentinel.children(), key=lambda p: p.create_time())
            for index, kid in enumerate(kids):
                if index < WORKERS:
                    named[kid.pid] = f"worker{index + 1}"
                elif index == WORKERS:
                    named[kid.pid] = "monitor"
                elif index == WORKERS + 1:
                    named[kid.pid] = "pusher"
        return named

    before_procs = cluster.processes()
    names = roles(before_procs)
    before = {p.pid: (p, cpu(p)) for p in before_procs}
    started = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - started
    used: dict[str, float] = {}
    vanished = 0
    after = {p.pid: p for p in cluster.processes()}
    for pid, (process, then) in before.items():
        try:
            delta = cpu(process) - then
        except psutil.NoSuchProcess:
            vanished += 1
            continue
        used[names.get(pid, f"pid{pid}")] = delta
    for pid, process in after.items():
        if pid not in before:
            with contextlib.suppress(psutil.NoSuchProcess):
                used[f"new-pid{pid}"] = cpu(process)
    total = sum(used.values())
    return {
        "seconds": round(wall, 2),
        "cpu_s": round(total, 4),
        "percent_of_one_core": round(100 * total / wall, 3),
        "by_process_percent": {k: round(100 * v / wall, 3) for k, v in sorted(used.items())},
        "processes_vanished": vanished,
    }


# --- Report ----------------------------------------------------------------------------------


def targets_for(db: str, broker: str) -> dict[str, tuple[str, float]]:
    """(figure key -> (comparison, bound)). The scale-out pair has a tighter (a) p50."""
    a_p50 = 8.0 if (db, broker) == ("postgresql", "redis") else 20.0
    return {
        "a_p50_ms": ("<=", a_p50),
        "a_p95_ms": ("<=", 50.0),
        "c_steps_per_s": (">=", 250.0),
        "d_idle_cpu_percent": ("<=", 2.0),
    }


def verdicts(figures: dict[str, Any], targets: dict[str, tuple[str, float]]) -> dict[str, str]:
    values = {
        "a_p50_ms": figures["a"]["overhead"]["p50_ms"],
        "a_p95_ms": figures["a"]["overhead"]["p95_ms"],
        "c_steps_per_s": figures["c"]["steps_per_s"],
        "d_idle_cpu_percent": figures["d"]["percent_of_one_core"],
    }
    out = {}
    for key, (op, bound) in targets.items():
        ok = values[key] <= bound if op == "<=" else values[key] >= bound
        out[key] = "PASS" if ok else "MISS"
    return out


def render_table(report: dict[str, Any]) -> str:
    f, t, v, m = report["figures"], report["targets"], report["verdicts"], report["machine"]
    a, b, c, d, e = f["a"], f["b"], f["c"], f["d"], f["e"]
    rows: list[tuple[str, str, str, str]] = []

    def row(label: str, measured: str, key: str = "", unit: str = "") -> None:
        if not key:
            rows.append((label, measured, "", ""))
            return
        op, bound = t[key]
        rows.append((label, measured, f"{'≤' if op == '<=' else '≥'} {bound:g} {unit}", v[key]))

    def pair(values: dict[str, float], digits: int = 2) -> str:
        return f"{values['p50_ms']:.{digits}f} / {values['p95_ms']:.{digits}f} ms"

    row("(a) overhead per sequential step, p50", f"{a['overhead']['p50_ms']:.2f} ms",
        "a_p50_ms", "ms")  # fmt: skip
    row("(a) overhead per sequential step, p95", f"{a['overhead']['p95_ms']:.2f} ms",
        "a_p95_ms", "ms")  # fmt: skip
    row("    of which gap between steps, p50/p95", pair(a["gap_between_steps"]))
    row("    of which in-step minus bash, p50/p95", pair(a["in_step_minus_bash"]))
    row("    bash -e -o pipefail -c true (subtracted)", f"{f['bash']['bash_median_ms']:.2f} ms")
    row("(b) run_create -> first step running, p50/p95", pair(b, 1))
    row("(c) 200-step parallel group throughput", f"{c['steps_per_s']:.1f} steps/s",
        "c_steps_per_s", "steps/s")  # fmt: skip
    row("    wall run_create -> run terminal",
        f"{c['wall_s']:.2f} s (create {c['run_create_s']:.2f} s)")  # fmt: skip
    row(f"(d) idle cluster CPU over {d['seconds']:.0f} s",
        f"{d['percent_of_one_core']:.2f} % of a core", "d_idle_cpu_percent", "%")  # fmt: skip
    row("(e) plain django-q2 chain, per hop, p50/p95", pair(e["per_hop"], 1))
    for name, label in (("sequential_50", "sequential"), ("parallel_200", "parallel-200")):
        x = f["f"][name]
        row(f"(f) in-process {label}: time, queries per step",
            f"{x['ms_per_step']:.2f} ms, {x['queries_per_step']:.1f} queries")  # fmt: skip

    header = ("figure", "measured", "target", "result")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    bk = report["backend"]
    lines = [
        f"Stepwise engine benchmark: {bk['database']} + {bk['broker']} broker, "
        f"{WORKERS} workers; {m['nproc']} CPUs ({m['cpu_model']}), {m['ram_gib']} GiB RAM",
        ", ".join(f"{k} {val}" for k, val in report["versions"].items()),
        f"load average (1 min) at start: {report['loadavg_1m_at_start']}"
        + "".join(f"; {k}={val}" for k, val in report["overrides"].items()),
        "",
    ]
    for cells in [header, tuple("-" * w for w in widths), *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True)))
    return "\n".join(line.rstrip() for line in lines)


# --- Main ------------------------------------------------------------------------------------


@contextlib.contextmanager
def terminate_as_exit() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the clean-up below still runs."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_benchmark(args: argparse.Namespace, tmp: Path, cleanups: list[Callable[[], None]]) -> int:
    database_url = configure_environment(args, tmp)
    db, broker_kind = backend_names(database_url, args.broker or "")
    if db == "postgresql":
        pg_recreate(database_url)
        cleanups.append(lambda: pg_recreate(database_url, drop_only=True))
    quick = args.quick
    a_runs, b_runs, e_chains = (2, 10, 1) if quick else (3, 20, 3)
    idle_seconds = 5.0 if quick else 20.0

    load_at_start = round(os.getloadavg()[0], 2)
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connections
    from django_q.brokers import get_broker

    cleanups.append(connections.close_all)
    log(f"database {db}, broker {broker_kind}; migrating {tmp}")
    call_command("migrate", verbosity=0, interactive=False)
    get_broker().purge_queue()  # a Redis broker may hold messages of other runs

    one = save_runbook("bench-one", [noop("only")])
    seq = save_runbook("bench-seq-50", [noop(f"s{i:02d}") for i in range(1, 51)])
    par = save_runbook(
        "bench-par-200",
        [{"id": "fan", "parallel": True, "steps": [noop(f"p{i:03d}") for i in range(1, 201)]}],
    )
    warm = save_runbook(
        "bench-warm",
        [{"id": "fan", "parallel": True, "steps": [noop(f"w{i:02d}") for i in range(1, 21)]}],
    )

    from runs import runner

    log("warming up in-process, then timing bash -e -o pipefail -c true")
    warm_run, _, _ = start_run(seq)  # fills the definition caches, compiles templates, etc.
    runner.work(warm_run.pk)
    get_broker().purge_queue()
    bash = measure_bash()
    bash_ms = bash["bash_median_ms"]
    log("(f) in-process runner.work() with query capture")
    in_process = measure_in_process(seq, par, bash_ms)

    log(f"starting qcluster ({WORKERS} workers)")
    cluster = Cluster(tmp / "qcluster.log")
    cleanups.append(cluster.stop)
    for runbook in (one, warm, one, seq):
        run, _, _ = start_run(runbook)
        expect_succeeded(wait_terminal(run, cluster, timeout=60))
    settle(cluster)

    log(f"(b) start latency, {b_runs} runs")
    start_latency = measure_start_latency(cluster, one, b_runs)
    log(f"(a) sequential overhead, {a_runs} x 50 steps")
    sequential = measure_sequential(cluster, seq, a_runs, bash_ms)
    log("(c) 200-step parallel group")
    parallel = measure_parallel(cluster, par, 200)
    settle(cluster)
    log(f"(e) plain django-q2 chain baseline, {e_chains} x 50 tasks")
    baseline = measure_baseline(cluster, tmp, e_chains, 50)
    settle(cluster)
    log(f"(d) idle CPU over {idle_seconds:g} s")
    idle = measure_idle_cpu(cluster, idle_seconds)

    figures = {
        "a": sequential,
        "b": start_latency,
        "c": parallel,
        "d": idle,
        "e": baseline,
        "f": in_process,
        "bash": bash,
    }
    targets = targets_for(db, broker_kind)
    overrides = {
        name: os.environ[name]
        for name in sorted(os.environ)
        if (name.startswith("STEPWISE_") and name not in SET_BY_US)
        or (name == "DJANGO_SETTINGS_MODULE" and os.environ[name] != "config.settings")
    }
    report = {
        "backend": {"database": db, "broker": broker_kind, "workers": WORKERS, "quick": quick},
        "overrides": overrides,
        "loadavg_1m_at_start": load_at_start,
        "machine": machine(),
        "versions": versions(db, broker_kind),
        "figures": figures,
        "targets": targets,
        "verdicts": verdicts(figures, targets),
    }
    print(render_table(report))
    print()
    print(NOTES.format(a_runs=a_runs, b_runs=b_runs))
    print(json.dumps({**report, "targets": {k: f"{op} {b:g}" for k, (op, b) in targets.items()}}))
    get_broker().purge_queue()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--database-url",
        default="",
        help="postgres://USER@HOST:PORT/NAME: created and dropped by the benchmark "
        "(default: a SQLite file in a temporary directory)",
    )
    parser.add_argument(
        "--broker", default="", help="redis://HOST:PORT/DB (default: django-q2's ORM broker)"
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples, 5 s idle window")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="stepwise-bench-"))
    cleanups: list[Callable[[], None]] = []
    status = 1
    try:
        with terminate_as_exit():
            status = run_benchmark(args, tmp, cleanups)
    except BenchError as error:
        log(f"failed: {error}")
    finally:
        for cleanup in reversed(cleanups):
            try:
                cleanup()
            except Exception as error:
                log(f"clean-up step failed: {type(error).__name__}: {error}")
        shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
