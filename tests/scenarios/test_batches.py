"""A worker claims several ready shell steps of a parallel group at once and runs them side by
side (runs.runner.execute_many); each keeps its own result, retries, timeout and log."""

import threading

import pytest
from django.db import connection

from runs import runner
from runs.models import LogEntry, Run, RunEvent, Step, StepAttempt
from runs.services import run_cancel, run_create, step_claim, step_heartbeat_many
from tests.conftest import drain, wait_for
from tests.scenarios.test_runs import logs, pid_alive, steps


def start(runbook, **params):
    return run_create(runbook=runbook, params=params, user=None, origin="cli")


def overlap(a: StepAttempt, b: StepAttempt) -> bool:
    return a.started_at < b.finished_at and b.started_at < a.finished_at


def test_siblings_run_side_by_side_each_with_its_own_outcome(make_runbook):
    runbook = make_runbook(
        """
        slug: batch
        name: Batch
        steps:
          - id: fan
            parallel: true
            steps:
              - {id: ok, shell: 'sleep 0.5; echo "answer=42" >> "$STEPWISE_OUTPUT"'}
              - {id: also_ok, shell: 'sleep 0.5; echo also'}
              - {id: flaky, retries: 1, shell: 'echo "try $STEPWISE_ATTEMPT"; exit 3'}
              - id: slow
                timeout: 1s
                shell: |
                  bash -c 'sleep 300 & echo "grandchild=$!"; wait' &
                  sleep 300
          - {id: after, shell: echo never}
        """
    )
    run = drain(start(runbook))
    tree = steps(run)
    assert run.status == "failed"
    assert {key: tree[key].status for key in ("ok", "also_ok", "flaky", "slow", "after")} == {
        "ok": "succeeded",
        "also_ok": "succeeded",
        "flaky": "failed",
        "slow": "timed_out",
        "after": "skipped",
    }
    assert tree["ok"].outputs == {"answer": "42"}
    assert logs(run, "also_ok")[1] == "also"
    # The retry is a second attempt of its own, recorded like any other.
    flaky = StepAttempt.objects.filter(step=tree["flaky"]).order_by("number")
    assert [(a.number, a.status, a.exit_code) for a in flaky] == [
        (1, "failed", 3),
        (2, "failed", 3),
    ]
    assert [m for m in logs(run, "flaky") if m.startswith("try ")] == ["try 1", "try 2"]
    ok, also_ok = (StepAttempt.objects.get(step=tree[key]) for key in ("ok", "also_ok"))
    assert ok.worker == also_ok.worker and overlap(ok, also_ok)
    # The timeout killed the step's whole process tree, as it does outside a batch.
    grandchild = next(m for m in logs(run, "slow") if m.startswith("grandchild="))
    assert not pid_alive(int(grandchild.split("=")[1]))
    # Every status change is in the timeline, in order.
    ok_events = RunEvent.objects.filter(step=tree["ok"]).order_by("id")
    assert [(e.from_status, e.to_status) for e in ok_events] == [
        ("pending", "queued"),
        ("queued", "running"),
        ("running", "succeeded"),
    ]


def test_claim_takes_ready_siblings_but_not_one_another_worker_holds(make_runbook):
    runbook = make_runbook(
        """
        slug: claims
        name: Claims
        steps:
          - id: fan
            parallel: true
            steps:
              - {id: a, shell: 'true'}
              - {id: b, shell: 'true'}
              - {id: c, shell: 'true'}
              - {id: d, sleep: 1s}
        """
    )
    run = start(runbook)
    [first] = step_claim(run_pk=run.pk, worker="w1")
    batch = step_claim(run_pk=run.pk, worker="w2", siblings=7)
    assert first.key == "a"
    assert [step.key for step in batch] == ["b", "c"]  # shell steps only; `a` is w1's
    rows = {s.key: s for s in Step.objects.filter(run=run)}
    assert [(rows[k].status, rows[k].lease_owner, rows[k].attempt) for k in "abcd"] == [
        ("running", "w1", 1),
        ("running", "w2", 1),
        ("running", "w2", 1),
        ("queued", "", 0),
    ]
    assert sorted(StepAttempt.objects.filter(step__run=run).values_list("step__key", "worker")) == [
        ("a", "w1"),
        ("b", "w2"),
        ("c", "w2"),
    ]
    assert step_claim(run_pk=run.pk, worker="w3", siblings=7)[0].key == "d"
    assert step_claim(run_pk=run.pk, worker="w3", siblings=7) == []


def test_heartbeat_of_a_batch_reports_a_step_taken_back(make_runbook):
    runbook = make_runbook(
        """
        slug: beat
        name: Beat
        steps:
          - id: fan
            parallel: true
            steps: [{id: a, shell: 'true'}, {id: b, shell: 'true'}]
        """
    )
    run = start(runbook)
    batch = step_claim(run_pk=run.pk, worker="w1", siblings=7)
    assert len(batch) == 2
    Step.objects.filter(pk=batch[1].pk).update(lease_owner="someone-else")
    held, reason = step_heartbeat_many(steps=batch, worker="w1")
    assert (held, reason) == ({batch[0].pk}, None)


@pytest.mark.django_db(transaction=True)
def test_cancel_stops_every_step_of_a_batch(make_runbook, user):
    runbook = make_runbook(
        """
        slug: cancel-batch
        name: Cancel a batch
        steps:
          - id: fan
            parallel: true
            steps:
              - {id: a, shell: 'echo "pid=$$"; sleep 300'}
              - {id: b, shell: 'echo "pid=$$"; sleep 300'}
              - {id: c, shell: 'echo "pid=$$"; sleep 300'}
        """
    )
    run = start(runbook)

    def work() -> None:
        try:
            drain(run)
        finally:
            connection.close()  # the thread's own; left open it blocks dropping the test DB

    worker = threading.Thread(target=work)
    worker.start()
    wait_for(lambda: LogEntry.objects.filter(run=run, message__startswith="pid=").count() == 3)
    pids = [
        int(m.split("=")[1])
        for m in LogEntry.objects.filter(run=run, message__startswith="pid=").values_list(
            "message", flat=True
        )
    ]
    run_cancel(run=Run.objects.get(pk=run.pk), user=user, reason="stop")
    worker.join(timeout=30)
    assert not worker.is_alive()
    run.refresh_from_db()
    assert run.status == "cancelled"
    assert {step.status for step in run.steps.all()} == {"cancelled"}
    assert not any(pid_alive(pid) for pid in pids)
    # All three ran at once, in one worker, and each attempt knows its process group.
    attempts = StepAttempt.objects.filter(step__run=run)
    assert {a.worker for a in attempts} == {attempts[0].worker}
    assert sorted(a.pid for a in attempts) == sorted(pids)


def test_a_batch_of_one_runs_siblings_one_after_another(make_runbook, settings):
    settings.STEPWISE_STEP_BATCH = 1
    runbook = make_runbook(
        """
        slug: one-by-one
        name: One by one
        steps:
          - id: fan
            parallel: true
            steps: [{id: a, shell: sleep 0.2}, {id: b, shell: sleep 0.2}]
        """
    )
    run = drain(start(runbook))
    assert run.status == "succeeded"
    a, b = (StepAttempt.objects.get(step__run=run, step__key=key) for key in "ab")
    assert not overlap(a, b)


@pytest.mark.django_db(transaction=True)
def test_a_step_taken_back_mid_batch_is_stopped_and_left_alone(make_runbook, settings):
    settings.STEPWISE_LEASE_SECONDS = 0.9  # a heartbeat every 0.3 s
    runbook = make_runbook(
        """
        slug: taken
        name: Taken back
        steps:
          - id: fan
            parallel: true
            steps:
              - {id: a, shell: 'echo "pid=$$"; sleep 300'}
              - {id: b, shell: 'sleep 1.5; echo done'}
        """
    )
    run = start(runbook)

    def take_back() -> None:
        try:
            wait_for(lambda: LogEntry.objects.filter(run=run, message__startswith="pid=").exists())
            # What the reaper does, and another worker's claim after it: the row moves on.
            Step.objects.filter(run=run, key="a").update(lease_owner="another-worker")
        finally:
            connection.close()

    thief = threading.Thread(target=take_back)
    thief.start()
    runner.work(run.pk)
    thief.join(timeout=30)
    tree = steps(run)
    assert (tree["a"].status, tree["a"].lease_owner) == ("running", "another-worker")
    assert tree["b"].status == "succeeded" and "done" in logs(run, "b")
    assert "lease lost: another worker took this step over; stopping" in logs(run, "a")
    pid = next(m for m in logs(run, "a") if m.startswith("pid="))
    assert not pid_alive(int(pid.split("=")[1]))
    assert StepAttempt.objects.get(step=tree["a"]).status == "running"  # left to its new owner


@pytest.mark.parametrize("batch", [16, 1], ids=["batched", "one by one"])
def test_the_worker_that_schedules_short_retries_runs_them_all(make_runbook, settings, batch):
    # `fast` retries at once, twice, while `later`'s retry is due a second after its first
    # attempt: the worker busy with `fast` must not forget `later` (the reaper would only
    # notice it a minute later).
    settings.STEPWISE_STEP_BATCH = batch
    runbook = make_runbook(
        """
        slug: owed-retries
        name: Owed retries
        steps:
          - id: fan
            parallel: true
            steps:
              - {id: later, retries: {max: 1, delay: 1s}, shell: '[ "$STEPWISE_ATTEMPT" = 2 ]'}
              - {id: fast, retries: 2, shell: 'exit 1'}
        """
    )
    run = start(runbook)
    runner.work(run.pk)  # one worker, one task: no drain loop to pick up what it left
    run.refresh_from_db()
    assert run.status == "failed"
    assert (steps(run)["later"].status, steps(run)["later"].attempt) == ("succeeded", 2)
    assert steps(run)["fast"].attempt == 3


@pytest.mark.django_db(transaction=True)
def test_a_step_of_a_batch_ends_when_its_process_does_not_with_the_batch(make_runbook, tmp_path):
    release = tmp_path / "release"
    runbook = make_runbook(
        f"""
        slug: uneven-batch
        name: Uneven batch
        steps:
          - id: fan
            parallel: true
            steps:
              - {{id: quick, shell: 'exit 4'}}
              - {{id: slow, shell: 'while [ ! -e {release} ]; do sleep 0.05; done'}}
        """
    )
    run = start(runbook)
    worker = threading.Thread(target=_work_and_close, args=(run,))
    worker.start()
    try:
        wait_for(lambda: Step.objects.filter(run=run, key="slow", status="running").exists())
        # `slow` still runs, and will until released: `quick` has ended all the same.
        quick = wait_for(
            lambda: Step.objects.filter(run=run, key="quick", status="failed").first(), timeout=10
        )
        assert quick.exit_code == 4
        assert Step.objects.get(run=run, key="slow").status == "running"
    finally:
        release.touch()
        worker.join()
    run.refresh_from_db()
    assert run.status == "failed" and run.error["step"] == "1.1"
    assert steps(run)["quick"].finished_at < steps(run)["slow"].finished_at


def _work_and_close(run: Run) -> None:
    try:
        runner.work(run.pk)
    finally:
        connection.close()
