"""A log line's HTML, built by a plain function: the run page shows up to 1,000 lines and the
live stream renders each new line once per process, so this runs far more often than any
other markup (a template per line cost more than the rest of the stream put together)."""

from datetime import datetime

from django.utils import timezone
from django.utils.html import escape

from runs.models import LogEntry, LogLevel

LEVEL_NAMES = {level.value: level.label for level in LogLevel}


def line_html(
    *, seq: int, timestamp: datetime, step_number: str | None, level: int, message: str
) -> str:
    """What the template partial `log-line` used to render, byte for byte."""
    local = timezone.localtime(timestamp)
    name = LEVEL_NAMES.get(level, str(level))
    return (
        f'<div class="log-line l-{name}" data-seq="{seq}">'
        f'<time datetime="{local.isoformat()}">{local:%H:%M:%S}</time>'
        f'<span class="l-step">{escape(step_number) if step_number else "·"}</span>'
        f'<span class="l-lvl">{name}</span>'
        f'<span class="l-msg">{escape(message)}</span></div>'
    )


def entry_html(entry: LogEntry) -> str:
    return line_html(
        seq=entry.seq,
        timestamp=entry.timestamp,
        step_number=entry.step.number if entry.step_id else None,
        level=entry.level,
        message=entry.message,
    )
