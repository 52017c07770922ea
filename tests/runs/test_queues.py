"""runs.queues: the cluster's queue locks are released when their holder is killed."""

import os
import signal
import time
from pathlib import Path

from runs.queues import DeathSafeLock, DeathSafeQueue
from tests.conftest import wait_for


def hold_in_child(lock: DeathSafeLock) -> int:
    """Forks a child that takes `lock` and sleeps; returns its pid once it holds the lock."""
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        lock.acquire()
        os.write(ready_write, b"x")
        time.sleep(60)
        os._exit(0)
    os.read(ready_read, 1)
    os.close(ready_read)
    os.close(ready_write)
    return pid


def test_another_process_waits_while_the_lock_is_held_and_gets_it_once_its_holder_is_killed():
    lock = DeathSafeLock()
    holder = hold_in_child(lock)
    assert lock.acquire(timeout=0.2) is False
    assert lock.acquire(block=False) is False
    os.kill(holder, signal.SIGKILL)
    os.waitpid(holder, 0)
    assert lock.acquire(timeout=5) is True
    lock.release()


def test_threads_of_one_process_exclude_each_other():
    lock = DeathSafeLock()
    with lock:
        assert lock.acquire(block=False) is False
    assert lock.acquire(block=False) is True
    lock.release()


def test_a_reader_killed_waiting_for_a_task_does_not_block_the_next_reader():
    queue = DeathSafeQueue()
    reader = os.fork()
    if reader == 0:
        queue.get()  # takes the read lock and waits for a task that never comes
        os._exit(0)
    # Blocked reading the pipe, which `get` does holding the read lock.
    wait_for(lambda: "pipe_read" in Path(f"/proc/{reader}/wchan").read_text())
    os.kill(reader, signal.SIGKILL)
    os.waitpid(reader, 0)
    queue.put("task")
    assert queue.get(timeout=5) == "task"
