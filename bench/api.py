"""Benchmark the REST API with 50 concurrent clients (issue: REST API for token holders).

    .venv/bin/python bench/api.py                      # SQLite, the server `make run` starts
    .venv/bin/python bench/api.py --database-url postgres://postgres@127.0.0.1:5432/stepwise_apibench

It makes a throwaway database with 100,000 runs (one step each), starts the same ASGI server
`manage.py serve` starts (python -m config.web, --web-workers processes) and measures, with 50
clients at once: GET /runs/{n} throughput and p99, GET /runs p95 on the first page and on a
deep cursor page, and POST /runs p99 (with a cluster running, so runs really start). Each
is measured twice: with the clients going as fast as they can (a closed loop, which
measures saturation), and at a steady load (PACED requests a second, evenly spaced), which
is the latency users see at that load. It prints a table and a JSON line; figures go to
docs/benchmarks.md.

The clients are wrk (Debian's `wrk` package: `apt-get install wrk`), driven by bench/wrk.lua,
so that the load generator does not take the CPU the server is being measured on.
"""

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import stack  # bench/stack.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
RUNS = 100_000
CLIENTS = 50
PORT = 8799


def prepare(env: dict[str, str]) -> list[str]:
    """Migrates, loads 100,000 runs and makes one operator with an API token per client;
    returns the tokens (in a child Django process)."""
    code = f"""
import django, json
django.setup()
from datetime import timedelta
from django.contrib.auth.models import User
from django.core.management import call_command
from django.utils import timezone
from config.services import token_create
from runbooks.services import definition_parse, runbook_save
from runs.models import Run, Step
call_command("migrate", verbosity=0)
user = User.objects.create_superuser("bench", "bench@example.com", "bench-password-123")
text = "slug: bench\\nname: Bench\\nsteps: [{{id: noop, shell: 'true'}}]"
saved = runbook_save(definition=definition_parse(text=text), source=text, user=user)
now = timezone.now()
for start in range(0, {RUNS}, 5000):
    runs = Run.objects.bulk_create([
        Run(runbook=saved.runbook, version=saved.version, title=f"Bench #{{i}}", status="succeeded",
            params={{}}, created_by=user, origin="api", started_at=now, finished_at=now)
        for i in range(start, start + 5000)
    ])
    Step.objects.bulk_create([
        Step(run=run, position=0, number="1", key="noop", name="noop", kind="shell",
             status="succeeded", attempt=1)
        for run in runs
    ])
from django.contrib.auth.models import Group
operators = Group.objects.get(name="operator")
tokens = []
for i in range({CLIENTS}):
    client = User.objects.create_user(f"client{{i:02d}}", password="client-password-123")
    client.groups.add(operators)
    tokens.append(token_create(user=client, name="bench")[1])
print(json.dumps({{"tokens": tokens}}))
"""
    if env["DATABASE_URL"].startswith("postgres"):
        # As autovacuum would soon after a bulk load: fresh statistics and a visibility map
        # (without it, every COUNT(*) a list page makes reads the whole table).
        code += "\nfrom django.db import connection\nconnection.cursor().execute('VACUUM ANALYZE')"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["tokens"]


def wrk(
    base: str,
    tokens: list[str],
    clients: int,
    seconds: int,
    *script_args: str,
    body: str = "",
    rate: int | None = None,
) -> dict:
    """Runs wrk (a load generator written in C, so the client costs next to nothing of the
    2 cores the server needs) with bench/wrk.lua; returns its figures in milliseconds.
    Requests take the first `clients` tokens in turn: each client is its own user.

    Without `rate` each client sends its next request the moment the last is answered (a
    closed loop: it measures saturation, and latency is then clients / throughput). With
    `rate` the clients together send that many requests a second, evenly spaced: latency
    at a given load, as users see it."""
    threads = min(clients, 2)
    pacing = {"RATE": str(rate / threads)} if rate else {}
    out = subprocess.run(
        [
            "wrk",
            f"--connections={clients}",
            f"--threads={threads}",
            f"--duration={seconds}s",
            "--timeout=30s",
            f"--script={ROOT / 'bench' / 'wrk.lua'}",
            base,
            "--",
            *script_args,
        ],
        env={**os.environ, "BODY": body, "TOKENS": " ".join(tokens[:clients]), **pacing},
        capture_output=True,
        text=True,
        check=True,
    )
    raw = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "requests": raw["requests"],
        "req_per_s": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        **{f"{k}_ms": round(raw[f"{k}_us"] / 1000, 1) for k in ("p50", "p95", "p99", "max")},
        "errors": raw["non_2xx"] + raw["socket_errors"],
    }


def deep_cursor(position: int) -> str:
    # DRF's CursorPagination cursor: base64 of a query string; p is the last number seen.
    return base64.b64encode(f"p={position}".encode()).decode()


# The steady loads the paced measurements offer, in requests a second from the 50 clients:
# the detail target's own 500, and for lists and creates what 50 busy clients would send
# (a page every half second each; a run a second each).
PACED = {"detail": 500, "list": 100, "create": 50}


def measure(base: str, tokens: list[str], quick: bool) -> dict:
    seconds = 10 if quick else 30
    # Warm every server process up: imports, each thread's prepared queries, the page cache.
    wrk(base, tokens, CLIENTS, 5, "detail", str(RUNS))
    first = "/api/v1/runs?per_page=25"
    deep = f"/api/v1/runs?per_page=25&cursor={deep_cursor(RUNS // 10)}"
    wrk(base, tokens, CLIENTS, 3, "get", first)
    body = json.dumps({"runbook": "bench", "params": {}})
    detail, get, post = ("detail", str(RUNS)), ("get",), ("post", "/api/v1/runs")
    return {
        "detail": wrk(base, tokens, CLIENTS, seconds, *detail),
        "detail_paced": wrk(base, tokens, CLIENTS, seconds, *detail, rate=PACED["detail"]),
        "list_first_page": wrk(base, tokens, CLIENTS, seconds, *get, first),
        "list_first_page_paced": wrk(
            base, tokens, CLIENTS, seconds, *get, first, rate=PACED["list"]
        ),
        "list_deep_cursor": wrk(base, tokens, CLIENTS, seconds, *get, deep),
        "list_deep_cursor_paced": wrk(
            base, tokens, CLIENTS, seconds, *get, deep, rate=PACED["list"]
        ),
        "list_first_page_one_client": wrk(base, tokens, 1, 5, *get, first),
        "list_deep_cursor_one_client": wrk(base, tokens, 1, 5, *get, deep),
        "create_paced": wrk(base, tokens, CLIENTS, seconds, *post, body=body, rate=PACED["create"]),
        "create": wrk(base, tokens, CLIENTS, seconds, *post, body=body),
    }


def pg_database(url: str, action: str) -> None:
    import psycopg

    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    admin = url.replace(parsed.path, "/postgres")
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if action == "create":
            connection.execute(f'CREATE DATABASE "{name}"')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", help="PostgreSQL URL (its database is recreated)")
    parser.add_argument("--broker", default="", help="redis://... for the Redis broker")
    parser.add_argument("--web-workers", default="2")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/api.py needs wrk, the HTTP load generator: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="stepwise-apibench-"))
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "STEPWISE_VAR_DIR": str(work),
        "DATABASE_URL": args.database_url or f"sqlite:///{work / 'bench.sqlite3'}",
        "STEPWISE_BROKER": args.broker,
        "STEPWISE_THROTTLE_USER": "1000000/min",
        "STEPWISE_THROTTLE_ANON": "1000000/min",
        "STEPWISE_WORKERS": "2",
    }
    if args.database_url:
        pg_database(args.database_url, "create")
    processes: list = []
    try:
        print(f"loading {RUNS:,} runs ...", file=sys.stderr)
        tokens = prepare(env)
        processes = stack.start(env, PORT, args.web_workers, work / "server.log")
        base = f"http://127.0.0.1:{PORT}"
        print("measuring ...", file=sys.stderr)
        figures = measure(base, tokens, args.quick)
        locked = (work / "server.log").read_text(errors="replace").count("database is locked")
        figures["database_is_locked_errors"] = locked
    finally:
        stack.stop(processes)
        shutil.rmtree(work, ignore_errors=True)
    backend = "postgresql" if args.database_url else "sqlite"
    print(f"Stepwise API benchmark: {backend}, {CLIENTS} clients, {args.web_workers} web workers")
    for name, measured, target, ok in verdicts(figures):
        print(f"{name:<44} {measured:>12}   target {target:<13} {'PASS' if ok else 'MISS'}")
    lf1, ld1 = figures["list_first_page_one_client"], figures["list_deep_cursor_one_client"]
    print(
        f"one client: first page p95 {lf1['p95_ms']} ms, deep cursor p95 {ld1['p95_ms']} ms; "
        f"errors {sum(f['errors'] for f in figures.values() if isinstance(f, dict))}"
    )
    print(json.dumps({"backend": backend, **figures}))


def verdicts(figures: dict) -> list[tuple[str, str, str, bool]]:
    """Each target, measured both ways: as fast as the clients can go, and at a steady load
    (PACED). A paced run that fell short of its rate says so: the server could not keep up."""
    rows = []
    for key, label in (("", "closed loop"), ("_paced", "at {rate} req/s")):
        d, c = figures[f"detail{key}"], figures[f"create{key}"]
        lf, ld = figures[f"list_first_page{key}"], figures[f"list_deep_cursor{key}"]
        for name, run, figure, limit, kind in (
            ("GET /runs/{n} p99", d, "p99_ms", 100, "detail"),
            ("GET /runs first page p95", lf, "p95_ms", 50, "list"),
            ("GET /runs deep cursor p95", ld, "p95_ms", 50, "list"),
            ("POST /runs p99", c, "p99_ms", 200, "create"),
        ):
            where = label.format(rate=PACED[kind])
            rows.append(
                (f"{name}, {where}", f"{run[figure]} ms", f"<= {limit} ms", run[figure] <= limit)
            )
            if key and run["req_per_s"] < 0.95 * PACED[kind]:
                rows.append(
                    (
                        f"  ... rate reached, {where}",
                        f"{run['req_per_s']} req/s",
                        f"{PACED[kind]} req/s",
                        False,
                    )
                )
        if not key:
            rows.insert(
                0,
                (
                    "GET /runs/{n} throughput, closed loop",
                    f"{d['req_per_s']} req/s",
                    ">= 500 req/s",
                    d["req_per_s"] >= 500,
                ),
            )
    locked = figures["database_is_locked_errors"]
    rows.append(("'database is locked'", str(locked), "0", locked == 0))
    return rows


if __name__ == "__main__":
    main()
