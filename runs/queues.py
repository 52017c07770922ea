"""django-q2's in-cluster queues, with locks that a killed process cannot take with it.

The sentinel hands tasks to its workers through a multiprocessing queue. Every idle worker
waits in `Queue.get`, and the one next in line does so holding the queue's read lock. If that
worker is killed (the OOM killer, an operator's `kill -9`), the lock stays taken forever: the
sentinel starts a new worker, but it waits behind the dead one's lock, and so does every other
worker, so the cluster never runs another task (django-q2 issue #23, open since 2016 as
django-q #200 and #394). The same holds for a queue's write lock and a writer that dies.

Here the two locks are `flock` locks instead, which the kernel releases when their holder's
process exits, however it exits. No library offers a process-death-safe lock that rides along
a forked `multiprocessing.Queue`, hence this module. It needs Linux (each process opens its
own description of the lock file through /proc/self/fd) and django-q2's fork start method;
elsewhere the queues keep multiprocessing's locks.
"""

import fcntl
import os
import sys
import tempfile
import threading
import time

from django_q import cluster
from django_q.queues import Queue


class DeathSafeLock:
    """A lock between the processes forked from its creator, released by its holder's death.

    `flock` locks belong to an open file description, so each process opens its own one of
    the same (unlinked) file, the first time it uses the lock; a thread lock orders the
    threads of one process, which share their description.
    """

    def __init__(self) -> None:
        descriptor, path = tempfile.mkstemp(prefix="stepwise-queue-", suffix=".lock")
        os.unlink(path)  # nothing left behind; forked children inherit the descriptor
        self._inherited = descriptor
        self._pid = 0
        self._descriptor = -1
        self._threads = threading.Lock()

    def _own(self) -> int:
        if self._pid != os.getpid():  # a forked child: a description and a thread lock of its own
            self._descriptor = os.open(f"/proc/self/fd/{self._inherited}", os.O_RDWR | os.O_CLOEXEC)
            self._threads = threading.Lock()
            self._pid = os.getpid()
        return self._descriptor

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        descriptor = self._own()
        deadline = None if timeout is None or not block else time.monotonic() + timeout
        if not self._threads.acquire(block, -1 if deadline is None else timeout):
            return False
        try:
            if block and deadline is None:
                fcntl.flock(descriptor, fcntl.LOCK_EX)
                return True
            while True:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    if deadline is None or time.monotonic() >= deadline:
                        break
                time.sleep(0.01)  # flock has no timeout; only Queue.get(timeout=...) comes here
        except BaseException:
            self._threads.release()
            raise
        self._threads.release()
        return False

    def release(self) -> None:
        fcntl.flock(self._descriptor, fcntl.LOCK_UN)
        self._threads.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def supported() -> bool:
    return sys.platform == "linux" and cluster.get_mp_context().get_start_method() == "fork"


class DeathSafeQueue(Queue):
    """django-q2's queue with `DeathSafeLock`s for reading and writing."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._rlock = DeathSafeLock()
        self._wlock = DeathSafeLock()


def install() -> None:
    """Makes django-q2's sentinel build its task and result queues with `DeathSafeQueue`.

    django-q2 has no setting for the queue class; the sentinel looks `Queue` up in its
    module's globals when it starts, so that is the name replaced."""
    if supported():
        cluster.Queue = DeathSafeQueue
