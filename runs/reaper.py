"""The reaper: keeps every run moving when workers die or queue messages are lost.

A thread starts in each django-q2 worker process when the worker spawns (so on cluster start,
and again whenever django-q2 replaces a dead worker), but only one per host reaps: the one
holding an exclusive lock on `<var>/reaper.lock`, every STEPWISE_REAPER_INTERVAL seconds. The
others wait for the lock in the kernel, which costs nothing while idle (each waking process
costs an idle cluster CPU), and one of them takes over the moment its holder's process exits,
killed or not. Every change a reaper makes is a compare-and-swap, so reapers on other hosts
(or two at once, if the lock cannot be taken) are safe.
"""

import contextlib
import fcntl
import logging
import os
import random
import shutil
import threading
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import close_old_connections, transaction
from django.utils import timezone
from django_q.brokers import Broker, get_broker
from django_q.signals import post_spawn

from approvals.services import approvals_expire_due
from runs import services
from runs.models import Run, Step
from runs.state import RUN_ACTIVE, RUN_TERMINAL, RunStatus, StepStatus

logger = logging.getLogger(__name__)
_tick = threading.Event()  # never set: a sleep that tools and readers see as a wait
SWEEP_AFTER = timedelta(minutes=1)  # a run's work folder outlives the run this long


def reap(broker: Broker | None = None) -> dict[str, int]:
    """One pass: take back lost steps, time out overdue runs and groups, re-send lost
    wake-ups."""
    now = timezone.now()
    counts = {"lost": 0, "timed_out": 0, "requeued": 0, "cancelled": 0, "woken": 0, "expired": 0}
    for step in Step.objects.filter(
        status=StepStatus.RUNNING, lease_expires_at__lt=now
    ).select_related("run")[:200]:
        counts["lost"] += services.step_reclaim_lost(step=step)
    overdue = Run.objects.filter(status__in=RUN_ACTIVE, deadline__lte=now)
    overdue_groups = Run.objects.filter(
        status__in=RUN_ACTIVE,
        steps__kind="group",
        steps__status=StepStatus.RUNNING,
        steps__deadline__lte=now,
    ).distinct()
    stuck_cancels = Run.objects.filter(status=RunStatus.CANCELLING)
    for run in [*overdue[:200], *overdue_groups[:200], *stuck_cancels[:200]]:
        with transaction.atomic():
            services.run_advance(run=run)
        run.refresh_from_db(fields=["status"])
        if run.status == RunStatus.TIMED_OUT:
            counts["timed_out"] += 1
        elif run.status == RunStatus.CANCELLED:
            counts["cancelled"] += 1
    # A message can only be known lost once the queue has drained: until then, a step that
    # waits long is just waiting its turn behind others.
    counts["expired"] = approvals_expire_due()
    counts["woken"] = services.step_wake_due()
    if (broker or get_broker()).queue_size() == 0:
        counts["requeued"] = services.step_requeue_stalled(
            older_than=settings.STEPWISE_REQUEUE_AFTER
        )
    counts["swept"] = sweep_work_dirs(now)
    return counts


def sweep_work_dirs(now: datetime) -> int:
    """Removes the work folders (`<work>/<run uuid>/`) of runs that ended over a minute ago.

    Each attempt removes its own folder as it ends, and the run's once it is empty; this
    takes what a script left beside it (`$STEPWISE_ARTIFACTS/../../x`), which would stay
    for good. Every host's reaper sweeps its own disk. Folders that do not name a run of
    this database are left alone: the folder may be shared, and nothing says whose they
    are. An idle cluster pays one directory listing a pass."""
    try:
        names = os.listdir(settings.STEPWISE_WORK_DIR)
    except FileNotFoundError:
        return 0
    folders = set()
    for name in names:
        with contextlib.suppress(ValueError):
            folders.add(uuid.UUID(name))
    if not folders:
        return 0
    ended = Run.objects.filter(
        uuid__in=folders, status__in=RUN_TERMINAL, finished_at__lt=now - SWEEP_AFTER
    ).values_list("uuid", flat=True)
    swept = 0
    for run_uuid in ended:
        shutil.rmtree(settings.STEPWISE_WORK_DIR / str(run_uuid), ignore_errors=True)
        swept += 1
    return swept


def _loop() -> None:
    interval = settings.STEPWISE_REAPER_INTERVAL
    # Spread the reapers of many workers over the interval.
    _tick.wait(random.uniform(0, min(interval, 1.0)))  # noqa: S311 - jitter, not security
    broker = get_broker()
    while True:
        try:
            counts = reap(broker)
            if any(counts.values()):
                logger.info("reaper: %s", counts)
        except Exception:
            logger.exception("reaper pass failed")
        finally:
            close_old_connections()
        _tick.wait(interval)


def _lead() -> None:
    """Waits until this process holds the host's reaper lock, then reaps until it exits."""
    path = settings.VAR_DIR / "reaper.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(descriptor, fcntl.LOCK_EX)  # never released: the kernel does, at exit
    except OSError as error:
        logger.warning("reaper: no lock at %s (%s); reaping from every worker", path, error)
    _loop()


def start(**_: object) -> None:
    threading.Thread(target=_lead, name="stepwise-reaper", daemon=True).start()


def connect() -> None:
    post_spawn.connect(start, dispatch_uid="stepwise-reaper")
