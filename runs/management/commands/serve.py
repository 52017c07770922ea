"""`manage.py serve`: what `make run` starts — set up, then web and workers together."""

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from config.web import stop_all, stop_on_signals


class Command(BaseCommand):
    help = "Migrate, load the examples, make a first admin, then serve web and workers."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("STEPWISE_HOST", "127.0.0.1"))
        parser.add_argument("--port", default=os.environ.get("STEPWISE_PORT", "8000"))
        parser.add_argument("--examples", type=Path, default=settings.BASE_DIR / "examples")
        parser.add_argument("--no-examples", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        self.stdout.write("database ready")
        if not options["no_examples"] and options["examples"].is_dir():
            call_command("runbooks", "sync", str(options["examples"]))
        self.ensure_admin()
        url = f"http://{options['host']}:{options['port']}"
        self.stdout.write(self.style.SUCCESS(f"Stepwise on {url}  (Ctrl-C stops web and workers)"))
        manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
        env = child_environment(url)
        children = [
            subprocess.Popen([*manage, "qcluster"], env=env),
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "config.web",
                    "--host",
                    options["host"],
                    "--port",
                    str(options["port"]),
                    "--workers",
                    os.environ.get("STEPWISE_WEB_WORKERS", str(web_workers())),
                ],
                cwd=settings.BASE_DIR,
                env=env,
            ),
        ]
        sys.exit(supervise(children))

    def ensure_admin(self) -> None:
        users = get_user_model()
        if users.objects.filter(is_superuser=True).exists():
            return
        password = secrets.token_urlsafe(12)
        users.objects.create_superuser("admin", "admin@localhost", password)
        self.stdout.write(
            self.style.WARNING(f"created the first admin user: admin / {password}  (change it)")
        )


def child_environment(url: str) -> dict[str, str]:
    """The web's and the workers' environment: links in approval emails and webhooks point
    at the address served here (another `STEPWISE_PORT`, say), unless STEPWISE_BASE_URL
    names one."""
    return {"STEPWISE_BASE_URL": url, **os.environ}


def web_workers() -> int:
    """One web process per core, 2 to 8: each serves sync views on one thread (config/asgi.py
    says why), so processes are what serve requests side by side."""
    return max(2, min(os.cpu_count() or 2, 8))


def supervise(children: list[subprocess.Popen]) -> int:
    """Waits until Ctrl-C or a child exits, then stops them all."""
    stop = stop_on_signals()
    code = 0
    while not stop.is_set():
        exited = [child for child in children if child.poll() is not None]
        if exited:
            code = exited[0].returncode or 1
            break
        time.sleep(0.5)  # a poll of the children: nothing to wait on across all of them
    stop_all(children, timeout=30)
    return code
