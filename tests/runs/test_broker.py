"""runs.broker: the ORM broker's idle pusher is woken by enqueue instead of polling."""

import socket
import threading

import pytest
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import OrmQ

from runs.broker import WakeableORM, wake_pushers


@pytest.fixture
def var_dir(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    return tmp_path


@pytest.fixture
def slow_poll(monkeypatch):
    # A fallback poll far longer than the test may take: only a wake-up can end the wait.
    monkeypatch.setattr(Conf, "POLL", 600)


def test_an_enqueued_task_wakes_the_idle_pusher_at_once(transactional_db, var_dir, slow_poll):
    pusher = WakeableORM(list_key="wake-test")
    pusher._listen()  # bound before the task is queued, as a running pusher's is
    got: list = []

    def pull() -> None:
        while not got:
            got.extend(pusher.dequeue() or [])

    thread = threading.Thread(target=pull)
    thread.start()
    task_id = WakeableORM(list_key="wake-test").enqueue("payload")
    thread.join(timeout=60)
    assert not thread.is_alive(), "the pusher slept on instead of waking"
    assert got == [(task_id, "payload")]
    assert OrmQ.objects.get(pk=task_id).lock > timezone.now()  # taken, until acknowledged
    assert not pusher._any_ready()  # so the pusher does not see it again


def test_a_wake_up_without_a_task_makes_the_pusher_look_once_and_wait_again(
    transactional_db, var_dir, slow_poll
):
    pusher = WakeableORM(list_key="wake-test")
    pusher._listen()
    wake_pushers()
    wake_pushers()
    assert pusher.dequeue() is None  # both wake-ups are read by one wait
    with pytest.raises(BlockingIOError):
        pusher._socket.recv(64)


def test_sockets_left_by_dead_pushers_are_removed(db, var_dir):
    wake = var_dir / "wake"
    wake.mkdir()
    dead = wake / "999999.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(dead))
    sock.close()  # the file stays, nobody listens: as after a SIGKILL
    alive = WakeableORM(list_key="wake-test")
    listening = alive._listen()
    wake_pushers()
    assert not dead.exists()
    assert listening.recv(64) == b"!"


def test_a_pusher_that_cannot_bind_its_socket_polls(db, settings, tmp_path, monkeypatch):
    settings.VAR_DIR = tmp_path / ("x" * 120)  # longer than a socket path may be
    monkeypatch.setattr(Conf, "POLL", 0.01)
    pusher = WakeableORM(list_key="wake-test")
    assert pusher._listen() is None
    pusher._wait(0.01)  # sleeps instead of failing
