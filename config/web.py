"""`python -m config.web --workers N`: the web server `manage.py serve` runs.

N uvicorn processes serving config.asgi, each on a listening socket of its own bound with
SO_REUSEPORT, so that the kernel spreads new connections evenly between them; a process
that dies is started again on the same socket.

Why not `uvicorn --workers N`: its processes share one listening socket, and whichever
process is idle when connections arrive accepts all of them. Keep-alive clients then stay
where they landed: with bench/api.py's 50 clients one process held 35 to 43 connections
while the other idled, which halved throughput and doubled latency from one run to the
next. Each process serves sync views on one thread (config/asgi.py), so an even spread is
what uses the cores. SO_REUSEPORT spreads connections this way on Linux, which `make run`
needs anyway.

The sockets are made here and passed down, so the port is listening from the start and
through restarts (a restarted process finds the connections that queued meanwhile), and
nothing else can take it: Linux lets a socket join a listening port only with
SO_REUSEPORT and the same user.
"""

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import uvicorn

# A process that exits with an error sooner than this (seconds) did not start, and neither
# will the others (a bad setting, an import error): the server stops. One killed by a
# signal that soon is started again after RESTART_PAUSE, so a crash loop does not spin.
STARTUP = 10.0
RESTART_PAUSE = 1.0
STOP_TIMEOUT = 25  # seconds; `manage.py serve` gives its children 30
GRACEFUL = 20  # seconds a process waits for open requests (live log streams) on SIGTERM
PR_SET_PDEATHSIG = 1


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` sockets listening on host:port. Refused (OSError) if anything else listens
    there, even another server of ours, which SO_REUSEPORT alone would let in."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
        probe.bind((host, port))
    sockets = []
    for _ in range(count):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.set_inheritable(True)
        sockets.append(sock)
    return sockets


def serve_one(fd: int, supervisor: int) -> None:
    """Serves on the listening socket `fd` until SIGTERM, or until the supervisor dies."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before prctl: nobody would stop us
        return
    config = uvicorn.Config(
        "config.asgi:application",
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL,
    )
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=fd)])


def supervise(host: str, port: int, workers: int) -> int:
    """Runs `workers` processes until SIGTERM or SIGINT, then stops them."""
    try:
        sockets = listening_sockets(host, port, workers)
    except OSError as error:
        print(f"cannot listen on {host}:{port}: {error.strerror}", file=sys.stderr)
        return 1
    stop = stop_on_signals()

    def start(sock: socket.socket) -> tuple[subprocess.Popen, float]:
        fd = sock.fileno()
        command = [
            sys.executable,
            "-m",
            "config.web",
            "--fd",
            str(fd),
            "--parent",
            str(os.getpid()),
        ]
        return subprocess.Popen(command, pass_fds=[fd]), time.monotonic()

    children: list[tuple[subprocess.Popen, float] | None] = []
    restart_at: dict[int, float] = {}
    code = 0
    try:
        children = [start(sock) for sock in sockets]
        while not stop.is_set():
            for i, entry in enumerate(children):
                if entry is None:
                    if time.monotonic() >= restart_at[i]:
                        children[i] = start(sockets[i])
                    continue
                child, started = entry
                if child.poll() is None:
                    continue
                young = time.monotonic() - started < STARTUP
                if young and child.returncode > 0:
                    print(f"a web process could not start ({child.returncode})", file=sys.stderr)
                    stop.set()
                    code = 1
                    break
                print(f"web process {child.pid} exited ({child.returncode}); starting another")
                children[i] = None
                restart_at[i] = time.monotonic() + (RESTART_PAUSE if young else 0)
            time.sleep(0.2)  # a poll of the children: nothing to wait on across all of them
    finally:
        stop_all([entry[0] for entry in children if entry is not None], STOP_TIMEOUT)
        for sock in sockets:
            sock.close()
    return code


def stop_on_signals() -> threading.Event:
    """An event that SIGINT (Ctrl-C) or SIGTERM sets."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: stop.set())
    return stop


def stop_all(children: list[subprocess.Popen], timeout: float) -> None:
    """SIGTERM to each child still running; those not gone within `timeout` are killed."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=2, help="processes to run")
    parser.add_argument("--fd", type=int, help=argparse.SUPPRESS)  # a process, on this socket
    parser.add_argument("--parent", type=int, help=argparse.SUPPRESS)  # of that process
    args = parser.parse_args()
    if args.fd is not None:
        serve_one(args.fd, args.parent)
    else:
        sys.exit(supervise(args.host, args.port, max(1, args.workers)))


if __name__ == "__main__":
    main()
