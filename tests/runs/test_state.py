"""The transition tables: terminal statuses are final, and the documented paths exist."""

import pytest

from runs.state import (
    RUN_TERMINAL,
    RUN_TRANSITIONS,
    STEP_TERMINAL,
    STEP_TRANSITIONS,
    RunStatus,
    StepStatus,
    run_can_transition,
    step_can_transition,
)


@pytest.mark.parametrize("status", sorted(RUN_TERMINAL))
def test_terminal_run_statuses_never_change(status):
    assert RUN_TRANSITIONS[status] == frozenset()


@pytest.mark.parametrize("status", sorted(STEP_TERMINAL))
def test_terminal_step_statuses_never_change(status):
    assert STEP_TRANSITIONS[status] == frozenset()


def test_every_status_has_a_row():
    assert set(RUN_TRANSITIONS) == set(RunStatus.values)
    assert set(STEP_TRANSITIONS) == set(StepStatus.values)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        ("queued", "running"),
        ("running", "waiting"),
        ("waiting", "running"),
        ("running", "succeeded"),
        ("running", "failed"),
        ("running", "timed_out"),
        ("running", "cancelling"),
        ("cancelling", "cancelled"),
    ],
)
def test_documented_run_paths_are_allowed(current, target):
    assert run_can_transition(current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        ("succeeded", "running"),
        ("cancelling", "running"),
        ("cancelled", "waiting"),
        ("failed", "queued"),
    ],
)
def test_run_cannot_move_backwards_or_skip_ahead(current, target):
    assert not run_can_transition(current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        ("pending", "queued"),
        ("queued", "running"),
        ("running", "succeeded"),
        ("running", "failed"),
        ("running", "timed_out"),
        ("running", "cancelled"),
        ("pending", "skipped"),
        ("running", "waiting"),
        ("running", "queued"),
    ],
)
def test_documented_step_paths_are_allowed(current, target):
    assert step_can_transition(current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        ("succeeded", "queued"),
        ("skipped", "running"),
        ("queued", "succeeded"),
        ("cancelled", "queued"),
    ],
)
def test_step_cannot_leave_a_final_status_or_finish_without_running(current, target):
    assert not step_can_transition(current, target)
