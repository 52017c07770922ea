"""Benchmark the browser UI (issue: HTMX dashboard).

    .venv/bin/python bench/ui.py [--quick]

On a throwaway SQLite database it measures:
(a) a log line written by a step -> visible in the browser: a runbook echoes its own clock
    every 200 ms; headless Chromium (Debian's) shows the run page, and a MutationObserver
    notes when each line appears; latency = page clock - the step's clock (same machine);
(b) server time of /runs/ and /runs/<n>/ with 100,000 runs in history (Django test client,
    in process, p95 over repeated requests);
(c) server time of a run page whose log is 10 MB (100,000 lines): it renders the last 1,000;
(d) CPU of the web server while 100 run pages of active runs stay open (100 log streams),
    in two windows: the first 10 s (the streams starting) and a steady state after it
    (10 s with --quick, else 30 s). The target applies to the steady state.
"""

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import quantiles
from typing import Any

import stack  # bench/stack.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
PORT = 8798
RUNS = 100_000
LOG_LINES = 100_000
START_WINDOW = 10.0  # seconds: the streams starting


def pct(values: list[float], fraction: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return quantiles(values, n=100, method="inclusive")[int(fraction * 100) - 1]


SETUP = """
import django, json, time
django.setup()
from django.contrib.auth.models import User
from django.core.management import call_command
from django.utils import timezone
from django.test import Client
from runbooks.services import definition_parse, runbook_save
from runs.models import LogEntry, Run, Step
from runs.services import logs_append
call_command("migrate", verbosity=0)
admin = User.objects.create_superuser("bench", "b@example.com", "bench-password-123")
def save(text):
    return runbook_save(definition=definition_parse(text=text), source=text, user=admin)
saved = save("slug: bulk\\nname: Bulk\\nsteps: [{id: noop, shell: 'true'}]")
now = timezone.now()
for start in range(0, RUNS, 5000):
    runs = Run.objects.bulk_create([
        Run(runbook=saved.runbook, version=saved.version, title=f"Bulk #{i}", status="succeeded",
            params={}, created_by=admin, origin="api", started_at=now, finished_at=now)
        for i in range(start, start + 5000)])
    Step.objects.bulk_create([
        Step(run=r, position=0, number="1", key="noop", name="noop", kind="shell",
             status="succeeded", attempt=1) for r in runs])
big = runs[-1]
step = big.steps.get()
line = "x" * 90
for start in range(0, LOG_LINES, 10000):
    logs_append([
        LogEntry(run=big, step=step, attempt=1, timestamp=now, level=20, stream="stdout",
                 message=f"{i:08d} {line}") for i in range(start, start + 10000)])
client = Client()
client.force_login(admin)
def timed(url, n):
    client.get(url)
    out = []
    for _ in range(n):
        t = time.perf_counter(); r = client.get(url); out.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, (url, r.status_code)
    return out
print(json.dumps({
    "runs_list": timed("/runs/", N),
    "run_detail": timed(f"/runs/{runs[0].number}/", N),
    "big_log": timed(f"/runs/{big.number}/", N),
}))
"""

TICKER = """slug: ticker
name: Ticker
steps:
  - id: tick
    shell: |
      for i in $(seq 1 COUNT); do echo "tick $i $(date +%s.%N)"; sleep 0.2; done
"""


def browser_latency(base: str, env: dict[str, str], count: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    code = (
        "import django; django.setup()\n"
        "from django.contrib.auth.models import User\n"
        "from runbooks.services import definition_parse, runbook_save\n"
        "from runs.services import run_create\n"
        f"text = {TICKER.replace('COUNT', str(count))!r}\n"
        "saved = runbook_save(definition=definition_parse(text=text), source=text, user=None)\n"
        "run = run_create(runbook=saved.runbook, params={}, origin='cli',"
        " user=User.objects.get(username='bench'))\n"
        "print(run.number)\n"
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page()
        page.goto(f"{base}/accounts/login/")
        page.fill("#id_username", "bench")
        page.fill("#id_password", "bench-password-123")
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/")
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        number = int(out.stdout.strip().splitlines()[-1])
        page.goto(f"{base}/runs/{number}/")
        page.evaluate(
            """() => { window.__seen = {};
            new MutationObserver(() => {
              document.querySelectorAll('.log-line .l-msg').forEach(el => {
                const m = el.textContent.match(/^tick (\\d+) ([0-9.]+)$/);
                if (m && !(m[1] in window.__seen)) window.__seen[m[1]] = [Date.now() / 1000, +m[2]];
              });
            }).observe(document.body, {childList: true, subtree: true}); }"""
        )
        page.wait_for_function(
            f"() => Object.keys(window.__seen).length >= {count}", timeout=120_000
        )
        seen = page.evaluate("() => window.__seen")
        browser.close()
    # The first few ticks may already be in the page when it loads; they are not latencies.
    return [(shown - written) * 1000 for key, (shown, written) in seen.items() if int(key) > 5]


async def open_streams(
    base: str, cookie: str, numbers: list[int], windows: list[float], cpu: Any
) -> tuple[list[float], int, int]:
    """Opens a stream per run, then samples `cpu()` at the end of each window (seconds from
    the moment the streams were opened). Returns the samples (the first taken before the
    streams open), the lines received and the streams still open at the end."""
    import httpx

    received = 0
    open_now = 0

    async def one(client: httpx.AsyncClient, number: int) -> None:
        nonlocal received, open_now
        open_now += 1
        try:
            async with client.stream("GET", f"/runs/{number}/log/stream?after=0") as response:
                async for chunk in response.aiter_bytes():
                    received += chunk.count(b"event: line")
        except httpx.HTTPError:
            pass
        finally:
            open_now -= 1

    limits = httpx.Limits(max_connections=len(numbers) + 5)
    samples = [cpu()]
    async with httpx.AsyncClient(
        base_url=base, cookies={"sessionid": cookie}, limits=limits, timeout=None
    ) as client:
        tasks = [asyncio.create_task(one(client, n)) for n in numbers]
        for seconds in windows:
            await asyncio.sleep(seconds)
            samples.append(cpu())
        still_open = open_now
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return samples, received, still_open


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    import psutil

    load_at_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="stepwise-uibench-"))
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "STEPWISE_VAR_DIR": str(work),
        "DATABASE_URL": f"sqlite:///{work / 'ui.sqlite3'}",
        "STEPWISE_BROKER": "",
        "STEPWISE_WORKERS": "2",
    }
    n = 20 if args.quick else 60
    processes: list = []
    try:
        print(f"loading {RUNS:,} runs and a {LOG_LINES:,}-line log ...", file=sys.stderr)
        setup = SETUP.replace("RUNS", str(RUNS)).replace("LOG_LINES", str(LOG_LINES))
        setup = setup.replace("N)", f"{n})")
        out = subprocess.run(
            [sys.executable, "-c", setup],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        pages = json.loads(out.stdout.strip().splitlines()[-1])
        processes = stack.start(env, PORT, "1", work / "server.log")
        base = f"http://127.0.0.1:{PORT}"
        print("measuring log latency in the browser ...", file=sys.stderr)
        latency = browser_latency(base, env, 30 if args.quick else 60)
        print("opening 100 log streams ...", file=sys.stderr)
        code = (
            "import django; django.setup()\n"
            "from django.contrib.auth.models import User\n"
            "from django.test import Client\n"
            "from runs.models import Run\n"
            "from runs.services import run_create\n"
            "from runbooks.models import Runbook\n"
            "rb = Runbook.objects.get(slug='ticker')\n"
            "user = User.objects.get(username='bench')\n"
            "numbers = [run_create(runbook=rb, params={}, user=user, origin='cli').number"
            " for _ in range(100)]\n"
            "client = Client(); client.force_login(user)\n"
            "print(client.cookies['sessionid'].value, *numbers)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        cookie, *numbers = out.stdout.strip().splitlines()[-1].split()
        server = psutil.Process(processes[0].pid)

        def cpu() -> float:
            tree = [server, *server.children(recursive=True)]
            return sum(sum(p.cpu_times()[:2]) for p in tree)

        # The first window holds the streams starting (login, role, first reads); the
        # second is the steady state, where the hub alone reads the database.
        windows = [START_WINDOW, 10.0 if args.quick else 30.0]
        load = os.getloadavg()
        samples, received, still_open = asyncio.run(
            open_streams(base, cookie, [int(x) for x in numbers], windows, cpu)
        )
        cpu_windows = [
            (samples[i + 1] - samples[i]) / windows[i] * 100 for i in range(len(windows))
        ]
    finally:
        stack.stop(processes)
        shutil.rmtree(work, ignore_errors=True)
    figures = {
        "log_to_browser_ms": {
            "n": len(latency),
            "p50": round(pct(latency, 0.5), 1),
            "p95": round(pct(latency, 0.95), 1),
        },
        "runs_list_ms": {
            "p50": round(pct(pages["runs_list"], 0.5), 1),
            "p95": round(pct(pages["runs_list"], 0.95), 1),
        },
        "run_detail_ms": {
            "p50": round(pct(pages["run_detail"], 0.5), 1),
            "p95": round(pct(pages["run_detail"], 0.95), 1),
        },
        "big_log_page_ms": {
            "p50": round(pct(pages["big_log"], 0.5), 1),
            "p95": round(pct(pages["big_log"], 0.95), 1),
        },
        "open_pages_cpu_percent": {
            "first_10s": round(cpu_windows[0], 1),
            "steady": round(cpu_windows[1], 1),
            "steady_window_s": windows[1],
        },
        "stream_lines_received": received,
        "streams_open_at_end": still_open,
        "load_at_start": [round(x, 2) for x in load_at_start],
        "load_before_streams": [round(x, 2) for x in load],
    }
    rows = [
        ("log line -> browser p50", figures["log_to_browser_ms"]["p50"], "<= 150 ms", 150),
        ("log line -> browser p95", figures["log_to_browser_ms"]["p95"], "<= 400 ms", 400),
        ("/runs/ p95 (100k runs)", figures["runs_list_ms"]["p95"], "<= 50 ms", 50),
        ("/runs/<n>/ p95 (100k runs)", figures["run_detail_ms"]["p95"], "<= 50 ms", 50),
        ("10 MB log, last 1000 lines", figures["big_log_page_ms"]["p95"], "<= 300 ms", 300),
        ("CPU, 100 pages, first 10 s", figures["open_pages_cpu_percent"]["first_10s"], "", None),
        ("CPU, 100 pages, steady", figures["open_pages_cpu_percent"]["steady"], "<= 10 %", 10),
    ]
    print("Stepwise UI benchmark (SQLite, 1 web worker)")
    print(f"load average at start {load_at_start[0]:.2f}, before the streams {load[0]:.2f}")
    for name, value, target, limit in rows:
        verdict = "" if limit is None else ("PASS" if value <= limit else "MISS")
        print(f"{name:<30} {value:>9}   {'target ' + target if target else '':<17} {verdict}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
