"""Writing log lines, numbered per run."""

import sqlite3
from collections.abc import Iterable

from django.db import transaction
from django.utils import timezone

from runs.models import LogEntry, LogLevel, Run, Step


def log_system(
    *, run_id: int, message: str, step: Step | None = None, level: int = LogLevel.SYSTEM
) -> None:
    logs_append(
        [
            LogEntry(
                run_id=run_id,
                step=step,
                attempt=step.attempt if step else 0,
                timestamp=timezone.now(),
                level=level,
                stream="system",
                message=message,
            )
        ]
    )


@transaction.atomic(savepoint=False)  # inside step_finish, a savepoint would cost 2 queries
def logs_append(entries: Iterable[LogEntry]) -> None:
    """Writes log lines, numbering each run's lines on from its `log_seq`.

    Reserving the numbers updates the run's row, which stays locked until this transaction
    commits: appenders to one run queue there, so the run's numbers commit in the order they
    were given out, and a reader that has seen line n has seen every line before it.
    """
    entries = list(entries)
    by_run: dict[int, list[LogEntry]] = {}
    for entry in entries:
        by_run.setdefault(entry.run_id, []).append(entry)
    for run_id in sorted(by_run):  # one order for every appender: no deadlock between them
        lines = by_run[run_id]
        last = _log_seq_reserve(run_id, len(lines))
        for seq, entry in enumerate(lines, start=last - len(lines) + 1):
            entry.seq = seq
    LogEntry.objects.bulk_create(entries, batch_size=500)


_RESERVE = "UPDATE runs_run SET log_seq = log_seq + %s WHERE number = %s"
_OLD_SQLITE = sqlite3.sqlite_version_info < (3, 35)  # no UPDATE ... RETURNING


def _log_seq_reserve(run_id: int, count: int) -> int:
    """Adds `count` to the run's log_seq and returns the new value (the last number reserved)."""
    connection = transaction.get_connection()
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite" and _OLD_SQLITE:
            # SQLite has one writer, so nobody moves the counter between these two.
            cursor.execute(_RESERVE, [count, run_id])
            row = Run.objects.filter(pk=run_id).values_list("log_seq").first()
        else:
            cursor.execute(_RESERVE + " RETURNING log_seq", [count, run_id])
            row = cursor.fetchone()
    if row is None:
        raise Run.DoesNotExist(f"Run #{run_id} does not exist.")
    return row[0]
