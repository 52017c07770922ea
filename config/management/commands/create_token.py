"""`manage.py create_token USER [--name N] [--expires DAYS]`: prints a new API token once."""

from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from config.services import TOKEN_MAX_DAYS, token_create


class Command(BaseCommand):
    help = "Create an API token for a user and print its secret (shown only this once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="cli", help="What the token is for.")
        parser.add_argument(
            "--expires",
            type=int,
            metavar="DAYS",
            help=f"Days until it expires, 1 to {TOKEN_MAX_DAYS}; without it, never.",
        )

    def handle(self, *args: Any, username: str, name: str, expires: int | None, **options: Any):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user {username!r}")
        if expires is not None and expires < 1:
            raise CommandError("--expires must be at least 1 day")
        if expires is not None and expires > TOKEN_MAX_DAYS:
            raise CommandError(
                f"--expires must be at most {TOKEN_MAX_DAYS} days; leave it out for a token "
                "that never expires"
            )
        token, secret = token_create(
            user=user, name=name, expires_in=timedelta(days=expires) if expires else None
        )
        self.stdout.write(secret)
        expiry = f"expires {token.expiry:%Y-%m-%d %H:%M} UTC" if token.expiry else "never expires"
        self.stderr.write(f"token {token.name!r} for {username} ({token.token_key}…), {expiry}")
