"""`python -m config.web --workers N`: the web server `manage.py serve` runs.

N uvicorn processes serving config.asgi, each listening on a socket of its own bound with
SO_REUSEPORT, so that the kernel spreads new connections evenly between them; a process
that dies is started again.

Why not `uvicorn --workers N`: its processes share one listening socket, and whichever
process is idle when connections arrive accepts all of them. Keep-alive clients then stay
where they landed: with bench/api.py's 50 clients one process held 35 to 43 connections
while the other idled, which halved throughput and doubled latency from one run to the
next. Each process serves sync views on one thread (config/asgi.py), so an even spread is
what uses the cores. SO_REUSEPORT spreads connections this way on Linux, which `make run`
needs anyway.
"""

import argparse
import signal
import socket
import subprocess
import sys
import time

import uvicorn

# A process that exits with an error sooner than this (seconds) did not start, and neither
# will others (a bad setting, an import error); one killed by a signal is started again.
STARTUP = 10.0


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def serve_one(host: str, port: int) -> None:
    config = uvicorn.Config("config.asgi:application", log_level="warning", lifespan="on")
    uvicorn.Server(config).run(sockets=[bind(host, port)])


def supervise(host: str, port: int, workers: int) -> int:
    """Runs `workers` processes until SIGTERM or SIGINT, then stops them."""
    try:
        # Holds the port from here on (a bound socket that never listens gets no
        # connections), and fails now, not in each process, if something else has it.
        held = bind(host, port)
    except OSError as error:
        print(f"cannot listen on {host}:{port}: {error.strerror}", file=sys.stderr)
        return 1
    command = [sys.executable, "-m", "config.web", "--host", host, "--port", str(port)]
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    def start() -> tuple[subprocess.Popen, float]:
        return subprocess.Popen([*command, "--workers", "0"]), time.monotonic()

    children = [start() for _ in range(workers)]
    code = 0
    while not stopping:
        for i, (child, started) in enumerate(children):
            if child.poll() is None or stopping:
                continue
            if child.returncode > 0 and time.monotonic() - started < STARTUP:
                print(f"a web process could not start ({child.returncode})", file=sys.stderr)
                stopping, code = True, 1
                break
            print(f"web process {child.pid} exited ({child.returncode}); starting another")
            children[i] = start()
        time.sleep(0.2)  # a poll of the children: nothing to wait on across all of them
    for child, _ in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for child, _ in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
    held.close()
    return code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=2, help="processes; 0: serve in this one")
    args = parser.parse_args()
    if args.workers == 0:
        serve_one(args.host, args.port)
    else:
        sys.exit(supervise(args.host, args.port, args.workers))


if __name__ == "__main__":
    main()
