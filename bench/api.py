"""Benchmark the REST API with 50 concurrent clients (issue: REST API for token holders).

    .venv/bin/python bench/api.py                      # SQLite, the server `make run` starts
    .venv/bin/python bench/api.py --database-url postgres://postgres@127.0.0.1:5432/stepwise_apibench

It makes a throwaway database with 100,000 runs (one step each), starts the same ASGI server
`manage.py serve` starts (uvicorn, STEPWISE_WEB_WORKERS processes) and measures, with 50
clients at once: GET /runs/{n} throughput and p99, GET /runs p95 on the first page and on a
deep cursor page, and POST /runs p99 (with a cluster running, so runs really start). It
prints a table and a JSON line; figures go to docs/benchmarks.md.
"""

import argparse
import asyncio
import base64
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import quantiles
from urllib.parse import urlparse

import httpx
import stack  # bench/stack.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
RUNS = 100_000
CLIENTS = 50
PORT = 8799


def percentile(values: list[float], fraction: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return quantiles(values, n=1000, method="inclusive")[int(fraction * 1000) - 1]


def prepare(env: dict[str, str]) -> str:
    """Migrates, loads 100,000 runs and returns an API token (in a child Django process)."""
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
print(json.dumps({{"token": token_create(user=user, name="bench")[1]}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["token"]


async def hammer(
    client: httpx.AsyncClient, requests, clients: int
) -> tuple[list[float], int, float]:
    """Sends `requests` (callables returning a coroutine) with `clients` at once."""
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)

    async def worker() -> None:
        nonlocal errors
        while not queue.empty():
            request = queue.get_nowait()
            started = time.perf_counter()
            response = await request(client)
            latencies.append((time.perf_counter() - started) * 1000)
            if response.status_code >= 400:
                errors += 1
                if errors <= 3:
                    print(f"  error {response.status_code}: {response.text[:200]}", file=sys.stderr)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return latencies, errors, time.perf_counter() - started


def deep_cursor(position: int) -> str:
    # DRF's CursorPagination cursor: base64 of a query string; p is the last number seen.
    return base64.b64encode(f"p={position}".encode()).decode()


async def measure(base: str, token: str, quick: bool) -> dict:
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(
        base_url=base, headers=headers, limits=limits, timeout=60
    ) as client:
        for _ in range(50):  # warm up every server process and connection
            await client.get("/api/v1/runs/1")
        count = 2000 if quick else 6000
        numbers = [random.randint(1, RUNS) for _ in range(count)]
        detail, detail_errors, detail_time = await hammer(
            client, [lambda c, n=n: c.get(f"/api/v1/runs/{n}") for n in numbers], CLIENTS
        )
        lists = 300 if quick else 1000
        first, first_errors, _ = await hammer(
            client, [lambda c: c.get("/api/v1/runs?per_page=25")] * lists, CLIENTS
        )
        cursor = deep_cursor(RUNS // 10)
        deep, deep_errors, _ = await hammer(
            client, [lambda c: c.get(f"/api/v1/runs?per_page=25&cursor={cursor}")] * lists, CLIENTS
        )
        single_first, _, _ = await hammer(
            client, [lambda c: c.get("/api/v1/runs?per_page=25")] * 100, 1
        )
        single_deep, _, _ = await hammer(
            client, [lambda c: c.get(f"/api/v1/runs?per_page=25&cursor={cursor}")] * 100, 1
        )
        creates = 300 if quick else 1000
        body = {"runbook": "bench", "params": {}}
        create, create_errors, create_time = await hammer(
            client, [lambda c: c.post("/api/v1/runs", json=body)] * creates, CLIENTS
        )
    return {
        "detail": {
            "requests": len(detail),
            "req_per_s": round(len(detail) / detail_time, 1),
            "p50_ms": round(percentile(detail, 0.5), 1),
            "p99_ms": round(percentile(detail, 0.99), 1),
            "errors": detail_errors,
        },
        "list_first_page": {
            "p50_ms": round(percentile(first, 0.5), 1),
            "p95_ms": round(percentile(first, 0.95), 1),
            "single_client_p95_ms": round(percentile(single_first, 0.95), 1),
            "errors": first_errors,
        },
        "list_deep_cursor": {
            "p50_ms": round(percentile(deep, 0.5), 1),
            "p95_ms": round(percentile(deep, 0.95), 1),
            "single_client_p95_ms": round(percentile(single_deep, 0.95), 1),
            "errors": deep_errors,
        },
        "create": {
            "requests": len(create),
            "req_per_s": round(len(create) / create_time, 1),
            "p50_ms": round(percentile(create, 0.5), 1),
            "p99_ms": round(percentile(create, 0.99), 1),
            "errors": create_errors,
        },
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
        token = prepare(env)
        processes = stack.start(env, PORT, args.web_workers, work / "server.log")
        base = f"http://127.0.0.1:{PORT}"
        print("measuring ...", file=sys.stderr)
        figures = asyncio.run(measure(base, token, args.quick))
        locked = (work / "server.log").read_text(errors="replace").count("database is locked")
        figures["database_is_locked_errors"] = locked
    finally:
        stack.stop(processes)
        shutil.rmtree(work, ignore_errors=True)
    backend = "postgresql" if args.database_url else "sqlite"
    d, lf, ld, c = (figures[k] for k in ("detail", "list_first_page", "list_deep_cursor", "create"))
    rows = [
        (
            "GET /runs/{n} throughput",
            f"{d['req_per_s']} req/s",
            ">= 500 req/s",
            d["req_per_s"] >= 500,
        ),
        ("GET /runs/{n} p99", f"{d['p99_ms']} ms", "<= 100 ms", d["p99_ms"] <= 100),
        ("GET /runs first page p95", f"{lf['p95_ms']} ms", "<= 50 ms", lf["p95_ms"] <= 50),
        ("GET /runs deep cursor p95", f"{ld['p95_ms']} ms", "<= 50 ms", ld["p95_ms"] <= 50),
        ("POST /runs p99", f"{c['p99_ms']} ms", "<= 200 ms", c["p99_ms"] <= 200),
        ("'database is locked'", str(locked), "0", locked == 0),
    ]
    print(f"Stepwise API benchmark: {backend}, {CLIENTS} clients, {args.web_workers} web workers")
    for name, measured, target, ok in rows:
        print(f"{name:<28} {measured:>14}   target {target:<14} {'PASS' if ok else 'MISS'}")
    print(
        f"single client: first page p95 {lf['single_client_p95_ms']} ms, "
        f"deep cursor p95 {ld['single_client_p95_ms']} ms; create {c['req_per_s']} req/s"
    )
    print(json.dumps({"backend": backend, **figures}))


if __name__ == "__main__":
    main()
