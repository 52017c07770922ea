"""`manage.py runbook run SLUG -p name=value ... [--wait]`."""

import sys
import time
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from config.errors import DomainError
from runbooks.models import Runbook
from runs.models import LogEntry, LogLevel, Run
from runs.services import run_create

POLL = 0.1  # seconds between looks at new log lines while waiting


class Command(BaseCommand):
    help = "Run runbooks from the command line."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        run = sub.add_parser("run", help="Start a run.")
        run.add_argument("slug")
        run.add_argument(
            "-p",
            "--param",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="A parameter; repeat for several.",
        )
        run.add_argument("--title", default="")
        run.add_argument("--user", help="Username recorded as who started the run.")
        run.add_argument(
            "--wait",
            action="store_true",
            help="Stream the logs; exit 0 only if the run succeeds.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        runbook = Runbook.objects.filter(slug=options["slug"]).first()
        if runbook is None:
            raise CommandError(f"no runbook {options['slug']!r}")
        params: dict[str, str] = {}
        for item in options["param"]:
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise CommandError(f"-p takes NAME=VALUE, not {item!r}")
            params[name] = value
        user = None
        if options["user"]:
            user = get_user_model().objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(f"no user {options['user']!r}")
        try:
            run = run_create(
                runbook=runbook, params=params, user=user, origin="cli", title=options["title"]
            )
        except DomainError as error:
            lines = [error.message]
            lines += [f"  {field}: {'; '.join(msgs)}" for field, msgs in error.details.items()]
            raise CommandError("\n".join(lines)) from error
        self.stdout.write(f"started run #{run.number}: {run.title}")
        if options["wait"]:
            sys.exit(self.follow(run))

    def follow(self, run: Run) -> int:
        last = 0
        try:
            while True:
                run.refresh_from_db(fields=["status", "error"])
                finished = run.is_terminal  # read before the logs, so none are missed
                for entry in (
                    LogEntry.objects.filter(run=run, seq__gt=last)
                    .select_related("step")
                    .order_by("seq")[:1000]
                ):
                    last = entry.seq
                    self.stdout.write(_format(entry))
                if finished and not LogEntry.objects.filter(run=run, seq__gt=last).exists():
                    break
                time.sleep(POLL)
        except KeyboardInterrupt:
            self.stderr.write(f"stopped following; run #{run.number} goes on")
            return 130
        if run.status == "succeeded":
            self.stdout.write(self.style.SUCCESS(f"run #{run.number} succeeded"))
            return 0
        reason = (run.error or {}).get("message") or run.status
        self.stderr.write(self.style.ERROR(f"run #{run.number} {run.status}: {reason}"))
        return 1


def _format(entry: LogEntry) -> str:
    where = f"{entry.step.number} {entry.step.key}" if entry.step else "run"
    level = LogLevel(entry.level).label
    stamp = entry.timestamp.strftime("%H:%M:%S")
    return f"{stamp} {where:<20} {level:<6} {entry.message}"
