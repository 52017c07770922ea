"""`timeout` on groups and sleep steps (DESIGN.md lists it among every step's keys)."""

import time

from runs.reaper import reap
from tests.conftest import drain, wait_for
from tests.scenarios.test_runs import logs, start, steps


def test_a_group_past_its_timeout_stops_its_steps_and_times_out(make_runbook):
    runbook = make_runbook(
        """
        slug: slow-group
        name: Slow group
        steps:
          - id: restart
            timeout: 1s
            steps:
              - {id: first, retries: 3, shell: 'echo started; sleep 300'}
              - {id: second, shell: 'echo never'}
          - {id: after, shell: 'echo never'}
        """
    )
    began = time.monotonic()
    run = drain(start(runbook))
    assert time.monotonic() - began < 20
    by_key = steps(run)
    assert run.status == "failed"
    assert run.error["message"] == "Step 1 (restart) timed out: group restart timed out after 1s"
    assert (by_key["restart"].status, by_key["restart"].error) == (
        "timed_out",
        "group restart timed out after 1s",
    )
    # The running step was stopped at the group's deadline, and not retried past it.
    assert (by_key["first"].status, by_key["first"].attempt) == ("timed_out", 1)
    assert by_key["first"].error == "its group timed out"
    assert (by_key["second"].status, by_key["second"].error) == (
        "cancelled",
        "not run: group restart timed out after 1s",
    )
    assert by_key["after"].status == "skipped"
    assert "never" not in logs(run)


def test_a_group_that_ends_in_time_is_not_affected(make_runbook):
    runbook = make_runbook(
        """
        slug: quick-group
        name: Quick group
        steps:
          - id: both
            parallel: true
            timeout: 30s
            steps:
              - {id: a, shell: 'true'}
              - {id: b, shell: 'true'}
        """
    )
    run = drain(start(runbook))
    assert run.status == "succeeded"
    assert all(step.deadline is not None for step in run.steps.all())


def test_continue_on_error_lets_the_run_go_on_after_a_group_times_out(make_runbook):
    runbook = make_runbook(
        """
        slug: optional-group
        name: Optional group
        steps:
          - id: warm
            timeout: 1s
            continue_on_error: true
            parallel: true
            steps:
              - {id: a, shell: 'sleep 300'}
              - {id: b, shell: 'sleep 300'}
          - {id: after, shell: 'echo after'}
        """
    )
    run = drain(start(runbook))
    by_key = steps(run)
    assert run.status == "succeeded"
    assert by_key["warm"].status == "timed_out"
    assert {by_key["a"].status, by_key["b"].status} == {"timed_out"}
    assert by_key["after"].status == "succeeded"


def test_an_inner_group_inherits_the_earlier_deadline_of_its_parent(make_runbook):
    runbook = make_runbook(
        """
        slug: nested-groups
        name: Nested groups
        steps:
          - id: outer
            timeout: 1s
            steps:
              - id: inner
                timeout: 1h
                steps:
                  - {id: work, shell: 'sleep 300'}
        """
    )
    run = drain(start(runbook))
    by_key = steps(run)
    assert (by_key["outer"].status, by_key["inner"].status) == ("timed_out", "cancelled")
    assert by_key["work"].status == "timed_out"
    assert by_key["work"].deadline == by_key["outer"].deadline == by_key["inner"].deadline


def test_a_group_waiting_for_an_approval_is_timed_out_by_the_reaper(make_runbook, operator):
    runbook = make_runbook(
        """
        slug: gated-group
        name: Gated group
        steps:
          - id: change
            timeout: 1s
            steps:
              - id: gate
                approval: {message: "Go?", approvers: {users: [nobody]}}
              - {id: apply, shell: 'echo never'}
        """
    )
    run = drain_until_waiting(start(runbook, user=operator))
    assert run.approvals.get().status == "pending"

    def reaped() -> bool:
        reap()
        return steps(run)["change"].status == "timed_out"

    wait_for(reaped, timeout=10)  # the group's 1 s has to pass first
    run.refresh_from_db()
    by_key = steps(run)
    assert run.status == "failed"
    assert by_key["gate"].status == "cancelled"
    assert by_key["apply"].status == "cancelled"
    assert run.approvals.get().status == "cancelled"


def drain_until_waiting(run):
    from runs.runner import work

    work(run.pk)
    run.refresh_from_db()
    assert run.status == "waiting", run.status
    return run


def test_a_sleep_longer_than_its_timeout_times_out_and_retries(make_runbook):
    runbook = make_runbook(
        """
        slug: nap
        name: Nap
        steps:
          - {id: nap, sleep: 1h, timeout: 200ms, retries: 1}
        """
    )
    run = drain(start(runbook))
    nap = steps(run)["nap"]
    assert run.status == "failed"
    assert (nap.status, nap.attempt, nap.error) == ("timed_out", 2, "timed out after 0.2s")


def test_retry_from_the_failed_step_gives_the_group_a_fresh_deadline(
    make_runbook, operator, tmp_path
):
    from runs.services import run_retry

    marker = tmp_path / "slow-once"
    runbook = make_runbook(
        f"""
        slug: slow-then-fast
        name: Slow then fast
        steps:
          - {{id: first, shell: 'echo once'}}
          - id: box
            timeout: 1s
            steps:
              - {{id: work, shell: '[ -e {marker} ] || {{ touch {marker}; sleep 300; }}'}}
        """
    )
    failed = drain(start(runbook, user=operator))
    assert steps(failed)["box"].status == "timed_out"
    again = drain(run_retry(run=failed, user=operator, origin="api", mode="failed"))
    by_key = steps(again)
    assert again.status == "succeeded", again.error
    assert by_key["box"].deadline > steps(failed)["box"].deadline
    assert logs(again, "first") == [  # reused, not run again
        f"step 1 first not run again: reused the result of run #{failed.number} (attempt 1)"
    ]
