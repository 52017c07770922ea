"""A log line's HTML from runs.loglines is what the template partial used to render."""

from datetime import UTC, datetime

import pytest
from django.template import Context, Template
from django.test import override_settings

from runs.loglines import entry_html
from runs.models import LogEntry, LogLevel, Step

TEMPLATE = (
    '<div class="log-line l-{{ line.get_level_display }}" data-seq="{{ line.seq }}">'
    '<time datetime="{{ line.timestamp|date:\'c\' }}">{{ line.timestamp|time:"H:i:s" }}</time>'
    '<span class="l-step">{{ line.step.number|default:"·" }}</span>'
    '<span class="l-lvl">{{ line.get_level_display }}</span>'
    '<span class="l-msg">{{ line.message }}</span></div>'
)


@pytest.mark.parametrize("zone", ["UTC", "Asia/Kolkata"])
@pytest.mark.parametrize("with_step", [True, False])
@pytest.mark.parametrize(
    ("level", "message"),
    [(LogLevel.INFO, "plain"), (LogLevel.ERROR, "<b>&\"'</b> é ✓"), (LogLevel.SYSTEM, "")],
)
def test_line_html_matches_the_old_template(zone, with_step, level, message):
    step = Step(pk=3, number="3.2", key="k") if with_step else None
    line = LogEntry(
        run_id=1,
        step=step,
        seq=42,
        timestamp=datetime(2026, 11, 29, 23, 59, 58, 123456, tzinfo=UTC),
        level=level,
        message=message,
    )
    with override_settings(TIME_ZONE=zone):
        assert entry_html(line) == Template(TEMPLATE).render(Context({"line": line}))
