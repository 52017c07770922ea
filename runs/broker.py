"""django-q2's ORM broker, woken by a datagram when a task is queued instead of polling.

django-q2's ORM broker looks for tasks every `poll` seconds. A short poll gives fast starts
but costs an idle cluster CPU all day: on a small VM each wake-up of the pusher costs several
milliseconds (its caches have gone cold), so ten polls a second took 6-8 % of a core with no
work at all. No library offers a wake-up for a database queue (PostgreSQL's LISTEN/NOTIFY
would, but the embedded default is SQLite), so this one is ours: each pusher binds a Unix
datagram socket under STEPWISE_VAR_DIR/wake/, `enqueue` sends one byte to every socket there
after inserting the task, and an idle pusher waits on its socket, polling the table only
every `poll` seconds as a fallback (a task queued from another host, or a lost datagram).
A datagram carries no data: the table stays the only record of a task, so a lost or extra
wake-up can delay a task by one poll at most, never lose or duplicate it.
"""

import contextlib
import os
import select
import socket
import time
from pathlib import Path

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.utils import timezone
from django_q.brokers.orm import ORM
from django_q.conf import Conf, logger
from django_q.models import OrmQ


def _wake_dir() -> Path:
    return Path(settings.VAR_DIR) / "wake"


class WakeableORM(ORM):
    _socket: socket.socket | None = None
    _socket_pid: int | None = None

    def enqueue(self, task) -> int:
        task_id = super().enqueue(task)
        wake_pushers()
        return task_id

    def dequeue(self):
        # ORM.dequeue, with the wait on our socket in place of its sleep(poll), and a plain
        # SQL look first: the ORM query touches far more memory, which is what makes an idle
        # process's wake-up dear.
        if not self._any_ready():
            self._wait(Conf.POLL)
            return None
        tasks = self.get_connection().filter(key=self.list_key, lock__lt=timezone.now())[
            : Conf.BULK
        ]
        if tasks:
            return [
                (task.pk, task.payload)
                for task in tasks
                if self.get_connection()
                .filter(id=task.id, lock=task.lock)
                .update(lock=self.timeout(task))
            ]
        self._wait(Conf.POLL)
        return None

    def _any_ready(self) -> bool:
        self.get_connection()  # closes a broken connection, as ORM's queries do
        connection = connections[Conf.ORM or DEFAULT_DB_ALIAS]
        table, key, lock = map(connection.ops.quote_name, (OrmQ._meta.db_table, "key", "lock"))
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT 1 FROM {table} WHERE {key} = %s AND {lock} < %s LIMIT 1",  # noqa: S608
                [self.list_key, connection.ops.adapt_datetimefield_value(timezone.now())],
            )
            return cursor.fetchone() is not None

    def _wait(self, timeout: float) -> None:
        sock = self._listen()
        if sock is None:
            time.sleep(timeout)
            return
        readable, _, _ = select.select([sock], [], [], timeout)
        if readable:
            with contextlib.suppress(BlockingIOError):
                while sock.recv(64):  # one query serves every wake-up that arrived
                    pass

    def _listen(self) -> socket.socket | None:
        """This process's wake-up socket, bound on first use (the pusher is forked from the
        sentinel); None where it cannot be bound, and then the pusher polls."""
        if self._socket_pid != os.getpid():
            self._socket_pid, self._socket = os.getpid(), None
            path = _wake_dir() / f"{os.getpid()}.sock"
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.unlink(missing_ok=True)  # left by a dead process with the same pid
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.bind(str(path))  # a path over 107 bytes fails here
            except OSError as error:
                logger.warning(
                    "no wake-up socket at %s (%s); polling every %s s", path, error, Conf.POLL
                )
            else:
                sock.setblocking(False)
                self._socket = sock
        return self._socket


def wake_pushers() -> None:
    """Sends a wake-up to every pusher on this host; removes the sockets of dead ones."""
    directory = _wake_dir()
    if not directory.is_dir():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for path in directory.glob("*.sock"):
            try:
                sock.sendto(b"!", str(path))
            except BlockingIOError:
                pass  # its queue is full of wake-ups already
            except (ConnectionRefusedError, FileNotFoundError):
                path.unlink(missing_ok=True)  # its pusher is gone
