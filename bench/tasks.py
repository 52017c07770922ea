"""Plain django-q2 tasks for the baseline of `bench/engine.py` (figure e).

The qcluster imports them by name ("bench.tasks.noop_chain"): manage.py runs from the project
root, so the `bench` package is importable there.
"""

import subprocess
import time

from django_q.tasks import async_task


def noop_chain(path: str, remaining: int) -> None:
    """Runs `true`, appends the time to `path`, then enqueues itself until `remaining` is 0."""
    subprocess.run(["true"], check=True)
    with open(path, "a") as out:
        out.write(f"{time.time():.6f}\n")
    if remaining > 0:
        async_task("bench.tasks.noop_chain", path, remaining - 1)
