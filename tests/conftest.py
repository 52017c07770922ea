"""Shared fixtures: users, runbooks from YAML, running runs in-process or in a real qcluster."""

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection

from runbooks.models import Runbook
from runbooks.services import definition_parse, runbook_save
from runs import runner
from runs.models import Run
from runs.services import run_create

ROOT = Path(__file__).resolve().parent.parent


def wait_for(
    condition: Callable[[], object], timeout: float = 30, interval: float = 0.05
) -> object:
    """Polls until `condition()` is truthy; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@pytest.fixture(scope="session", autouse=True)
def _end_this_process_sessions(django_db_setup, django_db_blocker):
    """Before the test database is dropped, ends the PostgreSQL sessions this process still
    holds on other threads (asgiref's executor and the log hub keep theirs, CONN_MAX_AGE,
    and Django can close a connection only from its own thread). Sessions of qclusters or
    servers a test left running are not touched: dropping the database then fails, saying
    how many, which is how such a leak shows."""
    yield
    if connection.vendor != "postgresql":
        return
    import psutil

    server_port = int(connection.settings_dict["PORT"] or 5432)
    ports = [
        socket.laddr.port
        for socket in psutil.Process().net_connections(kind="tcp")
        if socket.raddr and socket.raddr.port == server_port
    ]
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND client_port = ANY(%s)",
            [ports],
        )


@pytest.fixture(autouse=True)
def _work_dirs(settings, tmp_path):
    settings.STEPWISE_WORK_DIR = tmp_path / "work"
    settings.MEDIA_ROOT = tmp_path / "media"
    # The real hasher is slow on purpose; tests make many users.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def make_user(username: str, role: str | None = None, **extra):
    """A user with password pw-<username>-123 and, optionally, a role (a group)."""
    user = get_user_model().objects.create_user(
        username, f"{username}@example.com", f"pw-{username}-123", **extra
    )
    if role:
        # get_or_create: transactional tests flush the groups the migration made
        user.groups.add(Group.objects.get_or_create(name=role)[0])
    return user


@pytest.fixture
def viewer(db):
    return make_user("vera", "viewer")


@pytest.fixture
def operator(db):
    return make_user("otto", "operator")


@pytest.fixture
def author(db):
    return make_user("ada", "author")


@pytest.fixture
def outsider(db):
    return make_user("olga")


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("alice", "alice@example.com", "pw-alice-123")


@pytest.fixture
def make_runbook(db) -> Callable[[str], Runbook]:
    def make(text: str) -> Runbook:
        text = textwrap.dedent(text)
        return runbook_save(definition=definition_parse(text=text), source=text, user=None).runbook

    return make


@pytest.fixture
def start_run() -> Callable[..., Run]:
    """Starts a run through the service; it stays active until something executes it."""

    def start(runbook: Runbook, user=None, **kwargs) -> Run:
        kwargs.setdefault("params", {})
        kwargs.setdefault("origin", "api")
        return run_create(runbook=runbook, user=user, **kwargs)

    return start


def drain(run: Run, timeout: float = 60) -> Run:
    """Executes a run in this process with the workers' own code, until it ends."""
    deadline = time.monotonic() + timeout
    while True:
        runner.work(run.pk)
        run.refresh_from_db()
        if run.is_terminal:
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run #{run.pk} still {run.status} after {timeout}s")
        time.sleep(0.05)  # a retry delay or a step held elsewhere


@pytest.fixture
def execute():
    return drain


def _database_url() -> str:
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] or "postgres"
    if db.get("PASSWORD"):
        auth += f":{db['PASSWORD']}"
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class Cluster:
    """A real `manage.py qcluster` process working on the test database."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.log = tmp_path / "qcluster.log"
        environment = {
            **os.environ,
            "DATABASE_URL": _database_url(),
            "STEPWISE_WORKERS": "2",
            "STEPWISE_LEASE_SECONDS": "3",
            "STEPWISE_REAPER_INTERVAL": "1",
            "STEPWISE_REQUEUE_AFTER": "5",
            "STEPWISE_KILL_GRACE": "2",
            "STEPWISE_WORK_DIR": str(tmp_path / "work"),
            "STEPWISE_MEDIA_DIR": str(tmp_path / "media"),
            "Q_LOG_LEVEL": "INFO",
            **env,
        }
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "manage.py"), "qcluster"],
                env=environment,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def worker_pids(self) -> list[int]:
        import psutil

        tree = psutil.Process(self.process.pid).children(recursive=True)
        # The sentinel's children are the workers, the monitor and the pusher; workers are the
        # ones that run our task, recognisable by their name django-q2 sets. A worker killed
        # a moment ago may linger as a zombie until the sentinel reaps it: not a worker.
        commands = {}
        for process in tree:
            with contextlib.suppress(psutil.Error):
                commands[process.pid] = " ".join(process.cmdline()).lower()
        return [pid for pid, command in commands.items() if "worker" in command] or list(commands)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=20)
        # Whatever is left (a worker we SIGKILLed leaves orphans behind) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def cluster(transactional_db, tmp_path, settings) -> Iterator[Callable[..., Cluster]]:
    """Starts qclusters; each is stopped at the end of the test."""
    from django_q.brokers import get_broker

    get_broker().purge_queue()  # messages a Redis broker kept from earlier tests
    started: list[Cluster] = []

    def start(**env: str) -> Cluster:
        started.append(Cluster(tmp_path, **env))
        return started[-1]

    yield start
    for one in started:
        one.stop()


def wait_for_run(run: Run, timeout: float = 60) -> Run:
    def finished() -> bool:
        run.refresh_from_db()
        return run.is_terminal

    wait_for(finished, timeout=timeout, interval=0.1)
    return run


@pytest.fixture
def superuser(db):
    return get_user_model().objects.create_superuser("root", "root@example.com", "pw-root-123")
