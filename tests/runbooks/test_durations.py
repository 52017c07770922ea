"""Durations as runbook authors write them."""

from datetime import timedelta

import pytest

from runbooks.durations import (
    MAX_DURATION_SECONDS,
    duration_delta,
    format_duration,
    parse_duration,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1.5s", 1.5),
        ("30", 30.0),
        ("0", 0.0),
        (" 10S ", 10.0),
        ("1h30m", 5400.0),
        ("2m 5s", 125.0),
    ],
)
def test_parse_duration_accepts_units_and_plain_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_parse_duration_accepts_numbers_as_seconds() -> None:
    assert parse_duration(45) == 45.0
    assert parse_duration(0.25) == 0.25
    assert parse_duration(0) == 0.0


@pytest.mark.parametrize("value", ["", "abc", "10x", "1d", "5 minutes", "s", "1m1m", "ms10", None])
def test_parse_duration_rejects_garbage_naming_the_accepted_forms(value: object) -> None:
    with pytest.raises(ValueError, match="500ms, 10s, 5m, 2h"):
        parse_duration(value)


@pytest.mark.parametrize("value", [-1, -0.5, "-5s", "-3"])
def test_parse_duration_rejects_negative_values(value: object) -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        parse_duration(value)


def test_parse_duration_rejects_booleans_which_yaml_produces_for_yes() -> None:
    with pytest.raises(ValueError, match="invalid duration True"):
        parse_duration(True)


def test_parse_duration_rejects_infinity() -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(float("inf"))


@pytest.mark.parametrize(
    "value", [MAX_DURATION_SECONDS + 1, 1e20, 10**400, "8785h", "8784h 1s", "9" * 400, "527041m"]
)
def test_parse_duration_rejects_more_than_366_days(value: object) -> None:
    with pytest.raises(ValueError, match=r"can be at most 366 days \(8784h\)"):
        parse_duration(value)


@pytest.mark.parametrize(
    "value", [MAX_DURATION_SECONDS, "8784h", "527040m", float(MAX_DURATION_SECONDS)]
)
def test_parse_duration_accepts_366_days(value: object) -> None:
    assert parse_duration(value) == MAX_DURATION_SECONDS


def test_duration_delta_is_capped_at_the_limit_instead_of_overflowing() -> None:
    assert duration_delta(90) == timedelta(seconds=90)
    assert duration_delta(1e300) == timedelta(days=366)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.25, "250ms"),
        (1.5, "1.5s"),
        (5, "5s"),
        (59.96, "1m"),
        (125, "2m 5s"),
        (120, "2m"),
        (3720, "1h 2m"),
        (3725, "1h 2m"),
        (7200, "2h"),
        (-1.5, "-1.5s"),
    ],
)
def test_format_duration_drops_precision_as_durations_grow(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0.5, 1.5, 125, 7200, 3720])
def test_formatted_durations_parse_back(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds
