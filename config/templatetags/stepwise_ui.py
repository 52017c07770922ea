"""Small formatting helpers for the HTML pages."""

import json
from datetime import datetime

import markdown as markdown_lib
import nh3
from django import template
from django.http import QueryDict
from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe
from django.utils.timesince import timesince

from runbooks.durations import format_duration
from runs.loglines import entry_html
from runs.models import LogEntry

register = template.Library()

_MARKDOWN_TAGS = {
    "p", "br", "strong", "em", "code", "pre", "ul", "ol", "li", "blockquote", "a",
    "h1", "h2", "h3", "h4", "h5", "h6", "hr", "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip


@register.filter
def duration(ms: int | float | None) -> str:
    """1200 → "1.2s", 184000 → "3m 04s", 3.7e6 → "1h 01m"."""
    if ms is None:
        return "—"
    seconds = ms / 1000
    if seconds < 1:
        return f"{int(ms)}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


@register.filter
def seconds(value: float | None) -> str:
    """A limit a runbook sets, in seconds, as its author would write it: 900 → "15m",
    90 → "1m 30s" (where `duration`, for measured times, keeps the seconds: "15m 00s")."""
    return "—" if value is None else format_duration(value)


@register.filter
def since(start: datetime | None) -> str:
    """How long ago `start` was, as a duration (for things still running)."""
    if start is None:
        return "—"
    return duration((timezone.now() - start).total_seconds() * 1000)


@register.filter
def ago(moment: datetime | None) -> str:
    """How long ago `moment` was, in words: "just now" under a minute (where Django's
    timesince says "0 minutes"), else "3 minutes ago", "2 days, 4 hours ago"."""
    if moment is None:
        return "—"
    if (timezone.now() - moment).total_seconds() < 60:
        return "just now"
    return f"{timesince(moment)} ago"


@register.filter
def steps_summary(counts: dict[str, int]) -> str:
    """Leaf step counts in words: "1/3 succeeded, 1 failed, 1 skipped" (timed out counts as
    failed; what is still to come is the rest of the total)."""
    others = {
        "failed": counts.get("failed", 0) + counts.get("timed_out", 0),
        "skipped": counts.get("skipped", 0),
        "cancelled": counts.get("cancelled", 0),
    }
    parts = [f"{counts.get('succeeded', 0)}/{counts.get('total', 0)} succeeded"]
    parts += [f"{n} {word}" for word, n in others.items() if n]
    return ", ".join(parts)


@register.filter
def show_value(value: object) -> str:
    """A param or output value as a person reads it ("—" for none, or an empty text)."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return ", ".join(str(v) for v in value) or "—"
    if isinstance(value, dict | list):
        return json.dumps(value, indent=2)
    return str(value)


@register.filter
def markdown(text: str) -> SafeString:
    """Markdown rendered, then sanitised: raw HTML in a description never reaches the page."""
    html = markdown_lib.markdown(text or "", extensions=["fenced_code", "tables"])
    return mark_safe(  # noqa: S308 - nh3 removed every tag and attribute not listed
        nh3.clean(html, tags=_MARKDOWN_TAGS, attributes={"a": {"href", "title"}})
    )


@register.filter
def terminal_status(status: str) -> bool:
    return status in {"succeeded", "failed", "timed_out", "cancelled", "skipped"}


@register.filter
def status_label(status: str) -> str:
    return (status or "").replace("_", " ")


@register.simple_tag(takes_context=True)
def query(context: template.Context, **changes: object) -> str:
    """The current query string with some keys changed (None or "" removes a key)."""
    params: QueryDict = context["request"].GET.copy()
    for key, value in changes.items():
        params.pop(key, None)
        if value not in (None, ""):
            params[key] = str(value)
    encoded = params.urlencode()
    return f"?{encoded}" if encoded else "?"


@register.filter
def get_item(mapping: dict, key: str) -> object:
    return mapping.get(key) if isinstance(mapping, dict) else None


@register.simple_tag
def log_line(line: LogEntry) -> SafeString:
    """One log line (runs.loglines): the same markup the live stream sends."""
    return mark_safe(entry_html(line))  # noqa: S308 - every value in it is escaped
