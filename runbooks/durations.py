"""Durations as runbook authors write them, and back again for display.

Runbooks say `timeout: 30m` or `delay: 500ms`; the engine wants seconds. Keeping the one parser
here means every duration in a definition (run timeout, step timeout, retry delay, sleep, HTTP
timeout) accepts and rejects exactly the same forms, with the same message.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

__all__ = [
    "DURATION_FORMS",
    "DURATION_LIMIT",
    "DURATION_PATTERN",
    "MAX_DURATION_SECONDS",
    "duration_delta",
    "format_duration",
    "parse_duration",
]

#: Shown in every error so a person can fix the value without looking up the docs.
DURATION_FORMS = "a number of seconds (30, 1.5) or a number with a unit: 500ms, 10s, 5m, 2h"

#: The longest duration a definition may give: a year, leap day included. Nothing a runbook
#: waits for takes longer, and a bound keeps deadline arithmetic far from where datetime
#: overflows (a float holds 1e308 seconds, a timedelta under 1e14).
MAX_DURATION_SECONDS = 366 * 24 * 3600
#: The limit in words, with the same value in a unit a definition can use.
DURATION_LIMIT = "366 days (8784h)"

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = r"\d+(?:\.\d+)?|\.\d+"
_PLAIN = re.compile(rf"(?:{_NUMBER})")
# "1h30m" and "2m 5s" are accepted too, so that what format_duration prints parses back.
_PART = re.compile(rf"\s*({_NUMBER})\s*(ms|s|m|h)\s*")
#: The string forms parse_duration takes, as a JSON Schema pattern (the API's schema says it;
#: it cannot say that each unit is used once).
_UNIT = "(?:[mM][sS]|[sSmMhH])"
DURATION_PATTERN = rf"^\s*(?:{_NUMBER}|(?:(?:{_NUMBER})\s*{_UNIT}\s*)+)$"


def parse_duration(value: object) -> float:
    """Return `value` as a number of seconds.

    Accepts integers and floats (seconds), numeric strings ("30"), and strings with a unit:
    "500ms", "10s", "5m", "2h" (several parts may be combined: "1h 30m"). Zero is allowed;
    whether it makes sense is the caller's decision. Raises ValueError for anything else,
    including negative values and values over MAX_DURATION_SECONDS, saying what is accepted.
    """
    if isinstance(value, bool):
        # bool is an int subclass; `timeout: yes` is a mistake, not one second.
        raise ValueError(f"invalid duration {value!r}: use {DURATION_FORMS}")
    if isinstance(value, int):
        # JSON integers have no size limit; one too large for a float is simply too long.
        return _checked(float(value) if value <= MAX_DURATION_SECONDS else math.inf, value)
    if isinstance(value, float):
        return _checked(value, value)
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r}: use {DURATION_FORMS}")

    text = value.strip().lower()
    if text.startswith("-"):
        raise ValueError(f"invalid duration {value!r}: a duration cannot be negative")
    if _PLAIN.fullmatch(text):
        return _checked(float(text), value)

    total = 0.0
    position = 0
    seen: set[str] = set()
    while text and position < len(text):
        match = _PART.match(text, position)
        if match is None or match.group(2) in seen:
            raise ValueError(f"invalid duration {value!r}: use {DURATION_FORMS}")
        seen.add(match.group(2))
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if not seen:
        raise ValueError(f"invalid duration {value!r}: use {DURATION_FORMS}")
    return _checked(total, value)


def _checked(seconds: float, original: object) -> float:
    if math.isnan(seconds):
        raise ValueError(f"invalid duration {original!r}: use {DURATION_FORMS}")
    if seconds < 0:
        raise ValueError(f"invalid duration {original!r}: a duration cannot be negative")
    if seconds > MAX_DURATION_SECONDS:  # infinity too
        raise ValueError(
            f"invalid duration {original!r}: a duration can be at most {DURATION_LIMIT}"
        )
    return seconds


def duration_delta(seconds: float) -> timedelta:
    """`seconds` as a timedelta, for deadlines, shortened to MAX_DURATION_SECONDS.

    Definitions are held to that bound, but a computed wait (a retry delay grows by its
    backoff) or a definition that skipped validation can exceed it, and adding a timedelta
    near its own maximum to now overflows datetime. No caller needs more than the bound.
    """
    return timedelta(seconds=min(seconds, MAX_DURATION_SECONDS))


def format_duration(seconds: float) -> str:
    """Format seconds for people: "250ms", "1.5s", "2m 5s", "1h 2m".

    Precision drops as durations grow, because nobody reading "1h 2m" cares about the
    seconds. Negative values (clock skew between hosts) keep their sign rather than raise,
    since this is only ever used for display.
    """
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds == 0:
        return "0s"
    if seconds < 1:
        millis = round(seconds * 1000)
        if millis < 1000:
            return f"{max(millis, 1)}ms"
    if seconds < 60:
        tenths = round(seconds, 1)
        if tenths < 60:
            return f"{tenths:g}s" if tenths != int(tenths) else f"{int(tenths)}s"
    whole = round(seconds)
    if whole < 3600:
        minutes, secs = divmod(whole, 60)
        return f"{minutes}m {secs}s" if secs else f"{minutes}m"
    hours, rest = divmod(whole, 3600)
    minutes = rest // 60
    return f"{hours}h {minutes}m" if minutes else f"{hours}h"
