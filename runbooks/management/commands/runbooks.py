"""`manage.py runbooks sync DIR`: load a folder of YAML/JSON runbooks."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from config.errors import ValidationFailed
from runbooks.services import definition_parse, runbook_save

SUFFIXES = (".yaml", ".yml", ".json")


class Command(BaseCommand):
    help = "Manage runbooks from files."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        sync = sub.add_parser("sync", help="Create or update runbooks from a folder of files.")
        sync.add_argument("directory", type=Path)

    def handle(self, *args: object, action: str, directory: Path, **options: object) -> None:
        if not directory.is_dir():
            raise CommandError(f"{directory} is not a directory")
        files = sorted(p for p in directory.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        if not files:
            raise CommandError(f"no runbook files (*.yaml, *.yml, *.json) in {directory}")
        failed = 0
        for path in files:
            name = path.relative_to(directory)
            try:
                text = path.read_text()
                result = runbook_save(
                    definition=definition_parse(text=text), source=text, user=None
                )
            except (ValidationFailed, OSError, UnicodeDecodeError) as error:
                failed += 1
                self.stdout.write(self.style.ERROR(f"error      {name}"))
                for line in _describe(error):
                    self.stdout.write(f"           {line}")
                continue
            slug, number = result.runbook.slug, result.version.number
            if result.created:
                self.stdout.write(self.style.SUCCESS(f"created    {name} -> {slug} v{number}"))
            elif result.changed:
                self.stdout.write(self.style.SUCCESS(f"updated    {name} -> {slug} v{number}"))
            else:
                self.stdout.write(f"unchanged  {name} -> {slug} v{number}")
        summary = f"{len(files)} files, {failed} with errors"
        if failed:
            raise CommandError(summary)
        self.stdout.write(summary)


def _describe(error: Exception) -> list[str]:
    if isinstance(error, ValidationFailed):
        return [f"{path}: {msg}" for path, msgs in error.details.items() for msg in msgs]
    return [str(error)]
