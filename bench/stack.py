"""The server side a benchmark talks to: the web server (config/web.py) and a qcluster, on a
throwaway database."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def start(env: dict[str, str], port: int, web_workers: str, log: Path) -> list[subprocess.Popen]:
    """Starts the web server `make run` starts (config/web.py, `web_workers` processes) and a
    qcluster; returns once /healthz answers."""
    out = log.open("wb")
    options = {
        "env": env,
        "cwd": ROOT,
        "stdout": out,
        "stderr": subprocess.STDOUT,
        "start_new_session": True,
    }
    processes = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "config.web", "--port", str(port)),
                *("--workers", web_workers),
            ],
            **options,
        ),
        subprocess.Popen([sys.executable, "manage.py", "qcluster"], **options),
    ]
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return processes
        time.sleep(0.2)  # the server is still starting: nothing to wait on but the port
    stop(processes)
    raise RuntimeError(f"the server did not answer on {base}/healthz; see {log}")


def stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM to each leader (a qcluster hangs if its whole group gets it), then SIGKILL."""
    for process in processes:
        try:
            os.kill(process.pid, signal.SIGTERM)
            process.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
