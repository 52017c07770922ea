"""config/web.py: web processes on SO_REUSEPORT sockets, replaced when they die."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

from config.web import STOP_TIMEOUT

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def web(tmp_path: Path, port: int, **env: str) -> Iterator[subprocess.Popen]:
    """`python -m config.web` with 2 processes, on a database of its own (/healthz only
    runs `SELECT 1`)."""
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "STEPWISE_VAR_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'web.sqlite3'}",
        **env,
    }
    log = (tmp_path / "web.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "config.web", "--port", str(port), "--workers", "2"],
        cwd=ROOT,
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=40)
        log.close()


def serving(process: subprocess.Popen, port: int, count: int, timeout: float = 60) -> list[int]:
    """Waits until `count` child processes listen on the port; returns their pids."""
    deadline = time.monotonic() + timeout
    while True:
        pids = sorted(
            child.pid
            for child in psutil.Process(process.pid).children()
            if any(
                c.status == psutil.CONN_LISTEN and c.laddr.port == port
                for c in child.net_connections("tcp")
            )
        )
        if len(pids) == count:
            return pids
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{len(pids)} of {count} web processes listen on {port}")
        time.sleep(0.1)  # the processes are importing Django: nothing to wait on but a port


def test_connections_are_spread_over_the_processes(tmp_path):
    port = free_port()
    with web(tmp_path, port) as process:
        pids = serving(process, port, 2)
        clients = [httpx.Client(base_url=f"http://127.0.0.1:{port}") for _ in range(20)]
        try:
            assert {client.get("/healthz").status_code for client in clients} == {200}
            held = {
                pid: sum(
                    c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
                    for c in psutil.Process(pid).net_connections("tcp")
                )
                for pid in pids
            }
        finally:
            for client in clients:
                client.close()
    # Each keep-alive connection stays with the process that accepted it; the kernel
    # spreads them (all 20 on one process has odds of one in half a million).
    assert sum(held.values()) == 20
    assert all(count > 0 for count in held.values()), held


def test_a_process_that_dies_is_replaced_and_sigterm_stops_them_all(tmp_path):
    port = free_port()
    with web(tmp_path, port) as process:
        first, second = serving(process, port, 2)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while first in (pids := serving(process, port, 2)) or len(pids) != 2:
            assert time.monotonic() < deadline, "the killed process was not replaced"
            time.sleep(0.2)  # the new process is starting: nothing to wait on but its port
        assert second in pids
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        children = psutil.Process(process.pid).children()
        process.send_signal(signal.SIGTERM)
        # Sooner than STOP_TIMEOUT, after which the processes would be killed instead.
        assert process.wait(timeout=STOP_TIMEOUT - 5) == 0
    assert not any(child.is_running() and child.status() != "zombie" for child in children)


def test_a_port_another_program_listens_on_fails_at_once(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with web(tmp_path, port) as process:
            assert process.wait(timeout=30) == 1
    assert "cannot listen on 127.0.0.1:" in (tmp_path / "web.log").read_text()


def test_a_second_server_on_the_same_port_fails_at_once(tmp_path):
    port = free_port()
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    with web(tmp_path / "first", port) as first:
        serving(first, port, 2)
        with web(tmp_path / "second", port) as second:
            assert second.wait(timeout=30) == 1
        assert first.poll() is None
    assert "cannot listen on" in (tmp_path / "second" / "web.log").read_text()


def test_processes_that_cannot_start_stop_the_server(tmp_path):
    port = free_port()
    with web(tmp_path, port, DJANGO_SETTINGS_MODULE="no.such.settings") as process:
        assert process.wait(timeout=60) == 1
    assert "a web process could not start" in (tmp_path / "web.log").read_text()


def test_serve_points_links_at_the_address_it_serves_unless_told_otherwise(monkeypatch):
    from runs.management.commands.serve import child_environment

    monkeypatch.delenv("STEPWISE_BASE_URL", raising=False)
    served = child_environment("http://127.0.0.1:9000")
    assert served["STEPWISE_BASE_URL"] == "http://127.0.0.1:9000"
    assert served["PATH"] == os.environ["PATH"]  # the rest of the environment goes along
    monkeypatch.setenv("STEPWISE_BASE_URL", "https://stepwise.example.com")
    told = child_environment("http://127.0.0.1:9000")
    assert told["STEPWISE_BASE_URL"] == "https://stepwise.example.com"
