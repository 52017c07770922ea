"""Whole runs, executed in this process by the workers' own code (runs.runner.work)."""

import itertools
import json
import os
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psutil
import pytest
from django.db import connection
from django.utils import timezone

from config.errors import Conflict, ValidationFailed
from runs import runner
from runs.executors.http import MAX_BODY
from runs.models import Artifact, LogEntry, LogLevel, Run, RunEvent, Step, StepAttempt
from runs.services import (
    StepResult,
    run_cancel,
    run_create,
    run_retry,
    step_claim,
    step_finish,
    workers,
)
from tests.conftest import drain, wait_for


def start(runbook, user=None, **params):
    return run_create(runbook=runbook, params=params, user=user, origin="cli")


def logs(run, step=None):
    entries = LogEntry.objects.filter(run=run).order_by("seq")
    if step:
        entries = entries.filter(step__key=step)
    return [entry.message for entry in entries]


def steps(run):
    return {step.key: step for step in run.steps.all()}


def drain_and_close(run) -> None:
    """`drain` for a thread: its own database connection, left open, would keep PostgreSQL
    from dropping the test database at the end of the session."""
    try:
        drain(run)
    finally:
        connection.close()


def pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_outputs_flow_between_steps_and_into_run_outputs(make_runbook):
    runbook = make_runbook(
        """
        slug: outputs
        name: Outputs
        outputs:
          greeting: "{{ steps.second.outputs.greeting }}"
        steps:
          - id: first
            shell: |
              echo "name=world" >> "$STEPWISE_OUTPUT"
              {
                echo "poem<<END"
                echo "line one"
                echo "line two"
                echo "END"
              } >> "$STEPWISE_OUTPUT"
          - id: second
            shell: |
              echo "greeting=hello {{ steps.first.outputs.name }}" >> "$STEPWISE_OUTPUT"
              printf '%s\\n' {{ steps.first.outputs.poem }}
        """
    )
    run = drain(start(runbook))
    assert run.status == "succeeded"
    assert run.outputs == {"greeting": "hello world"}
    assert steps(run)["first"].outputs == {"name": "world", "poem": "line one\nline two"}
    assert "line one" in logs(run, "second") and "line two" in logs(run, "second")


def test_parallel_group_runs_every_child_then_continues(make_runbook):
    runbook = make_runbook(
        """
        slug: fan
        name: Fan out
        steps:
          - id: group
            parallel: true
            steps:
              - {id: a, shell: echo a}
              - {id: b, shell: echo b}
              - {id: c, shell: echo c}
          - id: after
            shell: echo after
        """
    )
    run = drain(start(runbook))
    assert run.status == "succeeded"
    tree = steps(run)
    assert {key: tree[key].status for key in tree} == dict.fromkeys(
        ["group", "a", "b", "c", "after"], "succeeded"
    )
    assert [tree[k].number for k in ("group", "a", "b", "c", "after")] == [
        "1",
        "1.1",
        "1.2",
        "1.3",
        "2",
    ]
    assert tree["after"].started_at >= max(tree[k].finished_at for k in "abc")


def test_failure_in_parallel_group_fails_the_run_after_siblings_finish(make_runbook):
    runbook = make_runbook(
        """
        slug: fan-fail
        name: Fan out failing
        steps:
          - id: group
            parallel: true
            steps:
              - {id: bad, shell: exit 4}
              - {id: good, shell: echo fine}
          - id: after
            shell: echo never
        """
    )
    run = drain(start(runbook))
    tree = steps(run)
    assert run.status == "failed"
    assert tree["good"].status == "succeeded"
    assert tree["group"].status == "failed"
    assert tree["after"].status == "skipped"
    assert run.error == {"message": "Step 1.1 (bad) failed: exit code 4", "step": "1.1"}


def test_a_failure_in_a_parallel_group_skips_the_siblings_no_worker_has_taken(make_runbook):
    # "A parallel group lets running siblings finish, then fails": with fewer workers than
    # children, the ones still waiting for a worker have not started, so they never do.
    runbook = make_runbook(
        """
        slug: fan-stop
        name: Fan out that stops
        steps:
          - id: group
            parallel: true
            steps:
              - {id: bad, shell: exit 4}
              - {id: slow, shell: 'true'}
              - {id: again, retries: {max: 1, delay: 100ms}, shell: 'true'}
              - {id: waiting1, shell: 'true'}
              - {id: waiting2, shell: 'true'}
          - {id: after, shell: echo never}
        """
    )
    run = start(runbook)
    tree = steps(run)

    def claim(key):
        (step,) = step_claim(run_pk=run.pk, worker="w1", prefer=tree[key].pk)
        assert step.key == key
        return step

    again = claim("again")
    assert step_finish(step=again, worker="w1", result=StepResult(status="failed")).retry_at
    slow = claim("slow")
    step_finish(step=claim("bad"), worker="w1", result=StepResult(status="failed", exit_code=4))

    tree = steps(run)
    assert {key: tree[key].status for key in ("waiting1", "waiting2")} == dict.fromkeys(
        ("waiting1", "waiting2"), "skipped"
    )
    assert tree["waiting1"].error == "not run: step bad failed"
    assert tree["slow"].status == "running"  # running siblings finish
    assert tree["again"].status == "queued"  # and so does one between its attempts
    assert tree["group"].status == "running"

    step_finish(step=slow, worker="w1", result=StepResult(status="succeeded", exit_code=0))
    run = drain(run)
    tree = steps(run)
    assert run.status == "failed"
    assert (tree["slow"].status, tree["again"].status) == ("succeeded", "succeeded")
    assert tree["again"].attempt == 2
    assert (tree["group"].status, tree["after"].status) == ("failed", "skipped")
    assert StepAttempt.objects.filter(step__key__in=["waiting1", "waiting2"]).count() == 0


def test_a_failure_in_a_batch_of_siblings_skips_the_ones_no_worker_has_taken(make_runbook):
    from runs.services import Ended, step_finish_many

    runbook = make_runbook(
        """
        slug: fan-batch-stop
        name: Fan out in batches that stops
        steps:
          - id: group
            parallel: true
            steps:
              - {id: a, shell: exit 4}
              - {id: b, shell: 'true'}
              - {id: c, shell: 'true'}
              - {id: d, shell: 'true'}
        """
    )
    run = start(runbook)
    a, b = step_claim(run_pk=run.pk, worker="w1", siblings=1)

    finish = step_finish_many(
        ended=[
            Ended(step=a, result=StepResult(status="failed", exit_code=4)),
            Ended(step=b, result=StepResult(status="succeeded", exit_code=0)),
        ],
        worker="w1",
    )

    assert finish.run_ended
    run.refresh_from_db()
    tree = steps(run)
    assert run.status == "failed"
    assert {key: tree[key].status for key in "abcd"} == {
        "a": "failed", "b": "succeeded", "c": "skipped", "d": "skipped",
    }  # fmt: skip


def test_if_skips_or_runs_steps_by_params_and_earlier_results(make_runbook):
    runbook = make_runbook(
        """
        slug: conditions
        name: Conditions
        params:
          - {name: deploy, type: boolean, default: false}
        steps:
          - id: check
            shell: echo "ok=yes" >> "$STEPWISE_OUTPUT"
          - id: deploy
            if: params.deploy
            shell: echo deploying
          - id: report
            if: "steps.check.outputs.ok == 'yes' and steps.deploy.status == 'skipped'"
            shell: echo reported
        """
    )
    run = drain(start(runbook))
    tree = steps(run)
    assert (tree["deploy"].status, tree["report"].status) == ("skipped", "succeeded")
    run = drain(start(runbook, deploy=True))
    tree = steps(run)
    assert (tree["deploy"].status, tree["report"].status) == ("succeeded", "skipped")
    assert run.status == "succeeded"


def test_continue_on_error_keeps_the_run_going(make_runbook):
    runbook = make_runbook(
        """
        slug: tolerant
        name: Tolerant
        steps:
          - {id: flaky, shell: exit 1, continue_on_error: true}
          - {id: next, shell: echo next}
        """
    )
    run = drain(start(runbook))
    tree = steps(run)
    assert run.status == "succeeded"
    assert (tree["flaky"].status, tree["next"].status) == ("failed", "succeeded")


def test_retries_back_off_and_keep_every_attempt(make_runbook):
    runbook = make_runbook(
        """
        slug: retry
        name: Retry
        steps:
          - id: flaky
            retries: {max: 3, delay: 100ms, backoff: 2}
            shell: |
              echo "attempt $STEPWISE_ATTEMPT"
              [ "$STEPWISE_ATTEMPT" -ge 3 ]
        """
    )
    run = drain(start(runbook))
    flaky = steps(run)["flaky"]
    assert run.status == "succeeded"
    assert flaky.attempt == 3 and flaky.max_attempts == 4
    attempts = list(StepAttempt.objects.filter(step=flaky).values_list("number", "status"))
    assert attempts == [(1, "failed"), (2, "failed"), (3, "succeeded")]
    messages = logs(run, "flaky")
    assert "retrying in 0.1s (attempt 2 of 4)" in messages
    assert "retrying in 0.2s (attempt 3 of 4)" in messages
    assert [m for m in messages if m.startswith("attempt ")] == [
        "attempt 1",
        "attempt 2",
        "attempt 3",
    ]


def test_step_that_keeps_failing_exhausts_its_retries(make_runbook):
    runbook = make_runbook(
        """
        slug: hopeless
        name: Hopeless
        steps:
          - {id: broken, retries: 1, shell: exit 7}
        """
    )
    run = drain(start(runbook))
    assert run.status == "failed"
    assert steps(run)["broken"].attempt == 2
    assert run.error["message"] == "Step 1 (broken) failed: exit code 7"


def test_step_timeout_kills_the_whole_process_tree(make_runbook):
    runbook = make_runbook(
        """
        slug: slow
        name: Slow
        steps:
          - id: slow
            timeout: 1s
            shell: |
              sleep 300 &
              echo "child=$!"
              bash -c 'sleep 300 & echo "grandchild=$!"; wait'  &
              sleep 300
        """
    )
    run = drain(start(runbook))
    slow = steps(run)["slow"]
    assert run.status == "failed"
    assert slow.status == "timed_out"
    assert run.error["message"] == "Step 1 (slow) timed out: timed out after 1s"
    pids = [int(m.split("=")[1]) for m in logs(run, "slow") if "child=" in m]
    assert len(pids) == 2
    assert not any(pid_alive(pid) for pid in pids)


def test_run_timeout_stops_a_running_step_and_times_out_the_run(make_runbook):
    runbook = make_runbook(
        """
        slug: run-timeout
        name: Run timeout
        timeout: 1s
        steps:
          - {id: long, shell: sleep 300}
          - {id: never, shell: echo never}
        """
    )
    run = drain(start(runbook))
    tree = steps(run)
    assert run.status == "timed_out"
    assert tree["long"].status == "timed_out" and tree["long"].error == "run timed out"
    assert tree["never"].status == "cancelled"
    assert "run timed out after 1s" in run.error["message"]


@pytest.mark.django_db(transaction=True)
def test_cancel_mid_step_kills_the_process_and_cancels_the_rest(make_runbook, user):
    runbook = make_runbook(
        """
        slug: cancel-me
        name: Cancel me
        steps:
          - id: long
            shell: |
              echo "pid=$$"
              sleep 300
          - {id: after, shell: echo after}
        """
    )
    run = start(runbook)
    worker = threading.Thread(target=drain_and_close, args=(run,))
    worker.start()
    line = wait_for(lambda: LogEntry.objects.filter(run=run, message__startswith="pid=").first())
    pid = int(line.message.split("=")[1])
    run_cancel(run=Run.objects.get(pk=run.pk), user=user, reason="wrong service")
    worker.join(timeout=30)
    assert not worker.is_alive()
    run.refresh_from_db()
    tree = steps(run)
    assert run.status == "cancelled" and run.cancel_reason == "wrong service"
    assert (tree["long"].status, tree["after"].status) == ("cancelled", "cancelled")
    assert tree["long"].error == "stopped: the run was cancelled"
    assert "step 1 long cancelled: stopped: the run was cancelled" in logs(run)
    assert not pid_alive(pid)
    event = RunEvent.objects.get(run=run, to_status="cancelling")
    assert (event.actor, event.message) == (user, "wrong service")


@pytest.mark.django_db(transaction=True)
def test_cancel_inside_a_parallel_group_closes_the_group_and_the_run(make_runbook, user):
    runbook = make_runbook(
        """
        slug: cancel-group
        name: Cancel a group
        steps:
          - id: fan
            parallel: true
            steps:
              - {id: quick, shell: 'true'}
              - {id: slow, shell: 'echo "pid=$$"; sleep 300'}
          - {id: after, shell: echo after}
        """
    )
    run = start(runbook)
    worker = threading.Thread(target=drain_and_close, args=(run,))
    worker.start()
    line = wait_for(lambda: LogEntry.objects.filter(run=run, message__startswith="pid=").first())
    run_cancel(run=Run.objects.get(pk=run.pk), user=user, reason="stop")
    worker.join(timeout=30)
    run.refresh_from_db()
    tree = steps(run)
    assert run.status == "cancelled"
    assert tree["fan"].status == "cancelled" and tree["slow"].status == "cancelled"
    assert tree["after"].status == "cancelled"
    assert not pid_alive(int(line.message.split("=")[1]))


def work_and_close(run) -> None:
    """One worker task (`runner.work`) in a thread, closing its connection after."""
    try:
        runner.work(run.pk)
    finally:
        connection.close()


@pytest.mark.django_db(transaction=True)
def test_a_cancel_during_a_retry_delay_frees_the_worker_waiting_it_out(make_runbook, user):
    runbook = make_runbook(
        """
        slug: cancel-delay
        name: Cancel in a retry delay
        steps:
          - {id: flaky, retries: {max: 1, delay: 14s}, shell: 'exit 1'}
        """
    )
    run = start(runbook)
    worker = threading.Thread(target=work_and_close, args=(run,))
    worker.start()
    wait_for(lambda: Step.objects.filter(run=run, key="flaky", status="queued", attempt=1).exists())
    run_cancel(run=Run.objects.get(pk=run.pk), user=user, reason="stop")
    assert Run.objects.get(pk=run.pk).status == "cancelled"
    # The worker stops waiting for a retry that will not come: the run is over.
    wait_for(lambda: not worker.is_alive(), timeout=7)
    worker.join()


def test_cancel_refuses_a_finished_run(make_runbook, user):
    run = drain(start(make_runbook("slug: quick\nname: Quick\nsteps: [{id: a, shell: 'true'}]")))
    with pytest.raises(Conflict, match="only active runs"):
        run_cancel(run=run, user=user, reason="too late")


def test_retry_from_failed_reuses_succeeded_steps(make_runbook, tmp_path, user):
    marker = tmp_path / "fixed"
    runbook = make_runbook(
        f"""
        slug: retry-failed
        name: Retry from failed
        steps:
          - id: prepare
            shell: |
              echo "token=$RANDOM$RANDOM" >> "$STEPWISE_OUTPUT"
          - id: deploy
            shell: |
              test -e {marker}
              echo "deployed with {{{{ steps.prepare.outputs.token }}}}"
        """
    )
    first = drain(start(runbook))
    assert first.status == "failed" and first.error["step"] == "2"
    marker.touch()
    second = drain(run_retry(run=first, user=user, origin="api", mode="failed"))
    assert second.status == "succeeded" and second.retried_from == first
    token = steps(first)["prepare"].outputs["token"]
    assert steps(second)["prepare"].outputs == {"token": token}
    assert not StepAttempt.objects.filter(step=steps(second)["prepare"]).exists()
    assert f"deployed with {token}" in logs(second, "deploy")
    # Not run, so attempt 0; the log and exit code say whose result it shows.
    reused = steps(second)["prepare"]
    assert (reused.attempt, reused.exit_code) == (0, 0)
    assert logs(second, "prepare") == [
        f"step 1 prepare not run again: reused the result of run #{first.number} (attempt 1)"
    ]


def test_retry_from_failed_is_refused_for_a_succeeded_run(make_runbook, user):
    run = drain(start(make_runbook("slug: fine\nname: Fine\nsteps: [{id: a, shell: 'true'}]")))
    with pytest.raises(Conflict, match="no failed step"):
        run_retry(run=run, user=user, origin="api", mode="failed")
    again = drain(run_retry(run=run, user=user, origin="api", mode="start"))
    assert again.status == "succeeded" and again.number > run.number


def test_an_outputs_file_over_the_limit_fails_the_step_unread(make_runbook):
    runbook = make_runbook(
        """
        slug: big-outputs
        name: Big outputs
        steps:
          - id: big
            shell: head -c 1048577 /dev/zero | tr '\\0' x | sed 's/^/k=/' >> "$STEPWISE_OUTPUT"
        """
    )
    run = drain(start(runbook))
    big = steps(run)["big"]
    assert (run.status, big.status, big.outputs) == ("failed", "failed", {})
    assert big.error == "$STEPWISE_OUTPUT is over 1,048,576 bytes; put big data in artifacts"


def test_secret_params_never_appear_in_logs_outputs_or_the_run(make_runbook):
    runbook = make_runbook(
        """
        slug: secrets
        name: Secrets
        params:
          - {name: token, type: secret}
        outputs:
          leaked: "{{ params.token }}"
        steps:
          - id: use
            shell: |
              echo "token is {{ params.token }}"
              echo "env has $PARAM_TOKEN" >&2
              echo "copy=$PARAM_TOKEN" >> "$STEPWISE_OUTPUT"
              [ "$PARAM_TOKEN" = 's3cr3t-value' ]
        """
    )
    run = drain(start(runbook, token="s3cr3t-value"))
    assert run.status == "succeeded"
    assert run.params == {"token": "***"}
    assert "s3cr3t-value" not in run.sealed_secrets
    assert run.outputs == {"leaked": "***"}
    assert steps(run)["use"].outputs == {"copy": "***"}
    text = "\n".join(logs(run))
    assert "token is ***" in text and "env has ***" in text
    assert "s3cr3t-value" not in text


def test_a_secret_is_masked_as_an_output_name_and_line_by_line(make_runbook):
    runbook = make_runbook(
        """
        slug: secret-shapes
        name: Secret shapes
        params:
          - {name: token, type: secret}
          - {name: key, type: secret}
        steps:
          - id: use
            shell: |
              echo "$PARAM_TOKEN=1" >> "$STEPWISE_OUTPUT"
              printf '%s\\n' "$PARAM_KEY"
        """
    )
    key = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nAbCdEf==\n-----END KEY-----"
    run = drain(start(runbook, token="s3cr3t-name", key=key))
    assert run.status == "succeeded"
    assert steps(run)["use"].outputs == {"***": "1"}
    text = "\n".join(logs(run))
    assert "MIIEvQ" not in text and "AbCdEf==" not in text and "BEGIN KEY" not in text


def test_template_errors_do_not_show_secret_values(make_runbook):
    runbook = make_runbook(
        """
        slug: secret-errors
        name: Secret errors
        params:
          - {name: token, type: secret}
        steps:
          - id: check
            if: "steps[params.token].status == 'succeeded'"
            continue_on_error: true
            shell: "true"
          - id: gate
            approval:
              message: "{{ params[params.token] }}"
              approvers: {users: [nobody]}
        """
    )
    outputs = make_runbook(
        """
        slug: secret-outputs
        name: Secret outputs
        params:
          - {name: token, type: secret}
        outputs:
          broken: "{{ steps[params.token] }}"
        steps: [{id: a, shell: "true"}]
        """
    )
    runs = [drain(start(book, token="s3cr3t-in-an-error")) for book in (runbook, outputs)]
    stored = [
        *(run.error for run in runs),
        *(line for run in runs for line in logs(run)),
        *(step.error for run in runs for step in run.steps.all()),
        *RunEvent.objects.values_list("message", flat=True),
    ]
    assert "`if` failed" in steps(runs[0])["check"].error
    assert "approval message" in steps(runs[0])["gate"].error
    assert "Run outputs failed to render" in runs[1].error["message"]
    assert "s3cr3t-in-an-error" not in json.dumps(stored)


def test_invalid_params_start_nothing(make_runbook):
    runbook = make_runbook(
        """
        slug: strict
        name: Strict
        params:
          - {name: replicas, type: integer, min: 1, max: 5}
        steps: [{id: a, shell: 'true'}]
        """
    )
    with pytest.raises(ValidationFailed) as error:
        start(runbook, replicas="9", extra="x")
    assert set(error.value.details) == {"params.replicas", "params.extra"}
    assert Run.objects.count() == 0


def test_step_environment_is_scrubbed_and_carries_params_and_run_ids(make_runbook, monkeypatch):
    monkeypatch.setenv("WORKER_DATABASE_PASSWORD", "hunter2")
    runbook = make_runbook(
        """
        slug: env
        name: Env
        params:
          - {name: region, type: string, default: eu-west}
        steps:
          - id: show
            env: {GREETING: "hi {{ params.region }}"}
            shell: env | sort
        """
    )
    run = drain(start(runbook))
    lines = logs(run, "show")
    assert "PARAM_REGION=eu-west" in lines and "GREETING=hi eu-west" in lines
    assert f"STEPWISE_RUN_NUMBER={run.number}" in lines and "STEPWISE_STEP_ID=show" in lines
    assert f"STEPWISE_RUN_ID={run.uuid}" in lines
    assert not any("hunter2" in line for line in lines)


def test_log_levels_come_from_streams_and_prefixes(make_runbook):
    runbook = make_runbook(
        """
        slug: levels
        name: Levels
        steps:
          - id: talk
            shell: |
              echo out
              echo err >&2
              echo "::debug::details"
              echo "::warning::careful"
              echo "::error::broken"
        """
    )
    run = drain(start(runbook))
    entries = {
        e.message: (LogLevel(e.level).label, e.stream)
        for e in LogEntry.objects.filter(run=run, step__key="talk").exclude(stream="system")
    }
    assert entries == {
        "out": ("info", "stdout"),
        "err": ("warn", "stderr"),
        "details": ("debug", "stdout"),
        "careful": ("warn", "stdout"),
        "broken": ("error", "stdout"),
    }


def test_an_attempt_that_prints_past_the_log_limit_goes_on_with_its_output_dropped(
    make_runbook, settings
):
    settings.STEPWISE_MAX_LOG_MB = 0.0001  # 100 characters
    runbook = make_runbook(
        """
        slug: chatty
        name: Chatty
        steps:
          - id: talk
            shell: |
              for i in $(seq 10 59); do echo "line $i"; done
              echo "done=yes" >> "$STEPWISE_OUTPUT"
        """
    )
    run = drain(start(runbook))

    talk = run.steps.get(key="talk")
    assert (run.status, talk.outputs) == ("succeeded", {"done": "yes"})
    kept = list(
        LogEntry.objects.filter(step=talk)
        .exclude(stream="system")
        .values_list("message", flat=True)
    )
    assert kept == [f"line {i}" for i in range(10, 22)]  # 12 lines of 7 characters + newline
    notes = [m for m in logs(run, "talk") if m.startswith("log truncated")]
    assert notes == [
        "log truncated: this attempt printed over 0.0001 million characters"
        " (STEPWISE_MAX_LOG_MB); the rest of its output is not kept"
    ]


def test_template_error_fails_the_step_with_the_message_in_the_log(make_runbook):
    runbook = make_runbook(
        """
        slug: bad-template
        name: Bad template
        steps:
          - {id: a, shell: "echo {{ steps.nowhere.outputs.x }}"}
        """
    )
    run = drain(start(runbook))
    assert run.status == "failed"
    assert "template error" in steps(run)["a"].error
    assert any("nowhere" in line for line in logs(run, "a"))


def test_artifacts_are_kept(make_runbook):
    runbook = make_runbook(
        """
        slug: artifacts
        name: Artifacts
        steps:
          - id: report
            shell: |
              mkdir -p "$STEPWISE_ARTIFACTS/sub"
              echo "hello" > "$STEPWISE_ARTIFACTS/report.txt"
              echo "nested" > "$STEPWISE_ARTIFACTS/sub/data.csv"
              ln -s /etc/passwd "$STEPWISE_ARTIFACTS/escape"
        """
    )
    run = drain(start(runbook))
    stored = {a.name: a for a in Artifact.objects.filter(run=run)}
    assert set(stored) == {"report.txt", "sub/data.csv"}
    assert stored["report.txt"].size == 6
    assert stored["report.txt"].file.read() == b"hello\n"


def test_artifacts_past_the_attempts_budget_are_left_out_and_named_in_the_log(
    make_runbook, settings
):
    settings.STEPWISE_MAX_ARTIFACTS_MB = 0.00025  # 250 bytes
    runbook = make_runbook(
        """
        slug: big-artifacts
        name: Big artifacts
        steps:
          - id: report
            shell: |
              head -c 100 /dev/zero > "$STEPWISE_ARTIFACTS/a.bin"
              head -c 200 /dev/zero > "$STEPWISE_ARTIFACTS/b.bin"
              head -c 150 /dev/zero > "$STEPWISE_ARTIFACTS/c.bin"
        """
    )
    run = drain(start(runbook))

    assert run.status == "succeeded"
    assert sorted(Artifact.objects.filter(run=run).values_list("name", flat=True)) == [
        "a.bin",
        "c.bin",
    ]
    assert [m for m in logs(run, "report") if m.startswith("artifact")] == [
        "artifact b.bin not kept: its 200 bytes would take this attempt's artifacts over"
        " 0.00025 MB (STEPWISE_MAX_ARTIFACTS_MB)"
    ]


def test_the_reaper_sweeps_what_a_script_left_outside_its_attempts_folder(make_runbook, settings):
    from runs.reaper import SWEEP_AFTER, sweep_work_dirs

    runbook = make_runbook(
        """
        slug: litter
        name: Litter
        steps:
          - {id: drop, shell: 'echo left > "$STEPWISE_ARTIFACTS/../../litter.txt"'}
        """
    )
    run = drain(start(runbook))
    folder = settings.STEPWISE_WORK_DIR / str(run.uuid)
    assert (folder / "litter.txt").exists()  # the step's own cleanup keeps the run's folder
    stranger = settings.STEPWISE_WORK_DIR / "not-a-run"
    stranger.mkdir()

    assert sweep_work_dirs(run.finished_at + SWEEP_AFTER / 2) == 0  # only just ended
    assert folder.exists()
    assert sweep_work_dirs(run.finished_at + SWEEP_AFTER * 2) == 1
    assert not folder.exists()
    assert stranger.exists()  # not a run's: not ours to remove


class _Api(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"path": self.path}).encode())

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status = 202 if body.get("replicas") == 3 else 400
        payload = json.dumps(
            {"path": self.path, "got": body, "auth": self.headers["Authorization"]}
        )
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def api_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_step_sends_typed_json_and_exposes_the_response(make_runbook, api_server):
    runbook = make_runbook(
        """
        slug: http
        name: HTTP
        params:
          - {name: base, type: string}
          - {name: service, type: string}
          - {name: replicas, type: integer}
          - {name: token, type: secret}
        steps:
          - id: restart
            http:
              method: post
              url: "{{ params.base | safe }}/services/{{ params.service }}/restart"
              headers: {Authorization: "Bearer {{ params.token }}"}
              json: {replicas: "{{ params.replicas }}"}
              expect: [202]
          - id: show
            shell: echo status {{ steps.restart.outputs.status }} {{ steps.restart.outputs.json.path }}
        """
    )
    run = drain(start(runbook, base=api_server, service="a/b c", replicas=3, token="tok-123"))
    assert run.status == "succeeded"
    outputs = steps(run)["restart"].outputs
    assert outputs["status"] == 202
    assert outputs["json"]["got"] == {"replicas": 3}
    assert outputs["json"]["path"] == "/services/a%2Fb%20c/restart"
    assert outputs["json"]["auth"] == "Bearer ***"
    assert "status 202 /services/a%2Fb%20c/restart" in logs(run, "show")


class _Flood(BaseHTTPRequestHandler):
    """Answers with 64 MB, counting what it managed to send before the client hung up."""

    sent = 0

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        chunk = b"x" * (1024 * 1024)
        try:
            for _ in range(64):
                self.wfile.write(chunk)
                type(self).sent += len(chunk)
        except OSError:
            pass

    def log_message(self, *args):
        pass


def test_http_step_reads_no_more_of_a_body_than_it_keeps(make_runbook):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flood)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        runbook = make_runbook(
            f"""
            slug: flood
            name: Flood
            steps:
              - id: get
                http: {{url: "http://127.0.0.1:{server.server_address[1]}/"}}
            """
        )
        run = drain(start(runbook))
    finally:
        server.shutdown()
    assert run.status == "succeeded"
    assert len(steps(run)["get"].outputs["body"]) == MAX_BODY
    assert _Flood.sent < 16 * MAX_BODY  # the rest was never read into the worker's memory


def test_http_step_keeps_the_urls_query_string_and_adds_query_to_it(make_runbook, api_server):
    runbook = make_runbook(
        f"""
        slug: http-query
        name: HTTP query
        steps:
          - id: plain
            http: {{url: "{api_server}/search?term=abc&page=2"}}
          - id: added
            http:
              url: "{api_server}/search?term=abc"
              query: {{extra: "a b/c"}}
        """
    )
    run = drain(start(runbook))
    assert run.status == "succeeded"
    assert steps(run)["plain"].outputs["json"]["path"] == "/search?term=abc&page=2"
    assert steps(run)["added"].outputs["json"]["path"] == "/search?term=abc&extra=a+b%2Fc"


def test_http_step_fails_on_an_unexpected_status(make_runbook, api_server):
    runbook = make_runbook(
        """
        slug: http-fail
        name: HTTP fail
        steps:
          - id: call
            http: {method: POST, url: "URL/x", json: {replicas: 1}}
        """.replace("URL", api_server)
    )
    run = drain(start(runbook))
    assert run.status == "failed"
    assert steps(run)["call"].error == "HTTP 400, expected 2xx"


@pytest.mark.django_db(transaction=True)
def test_run_numbers_stay_unique_under_concurrent_creation(make_runbook):
    runbook = make_runbook("slug: many\nname: Many\nsteps: [{id: a, shell: 'true'}]")
    numbers: list[int] = []
    errors: list[Exception] = []

    def create() -> None:
        try:
            for _ in range(5):
                numbers.append(start(runbook).number)
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(numbers) == 20 == len(set(numbers))


def test_sleep_step_waits_and_succeeds(make_runbook):
    run = drain(start(make_runbook("slug: nap\nname: Nap\nsteps: [{id: nap, sleep: 200ms}]")))
    nap = steps(run)["nap"]
    assert run.status == "succeeded"
    assert (nap.finished_at - nap.started_at).total_seconds() >= 0.2


def test_worker_pid_is_not_the_steps_process_group(make_runbook):
    # Killing a step's process group must never hit the worker itself.
    run = drain(
        start(make_runbook("slug: pg\nname: PG\nsteps: [{id: a, shell: 'ps -o pgid= -p $$'}]"))
    )
    pgid = int(logs(run, "a")[1])
    assert pgid != os.getpgid(0)


def test_secret_is_masked_in_its_url_encoded_form_too(make_runbook, api_server):
    runbook = make_runbook(
        """
        slug: http-secret
        name: HTTP secret
        params:
          - {name: base, type: string}
          - {name: token, type: secret}
        steps:
          - id: call
            http:
              method: POST
              url: "{{ params.base | safe }}/keys/{{ params.token }}"
              json: {replicas: 3}
        """
    )
    run = drain(start(runbook, base=api_server, token="tok en/x"))
    assert run.status == "succeeded"
    text = "\n".join(logs(run)) + json.dumps(steps(run)["call"].outputs)
    assert "tok%20en%2Fx" not in text and "tok en/x" not in text
    assert f"POST {api_server}/keys/***" in logs(run, "call")


def test_template_errors_are_not_retried(make_runbook):
    runbook = make_runbook(
        """
        slug: no-retry
        name: No retry
        steps:
          - {id: a, retries: 3, shell: "echo {{ steps.nowhere.outputs.x }}"}
        """
    )
    run = drain(start(runbook))
    assert run.status == "failed" and steps(run)["a"].attempt == 1


def test_run_whose_secrets_cannot_be_decrypted_fails_with_the_reason(make_runbook, settings):
    runbook = make_runbook(
        """
        slug: rotated
        name: Rotated
        params: [{name: token, type: secret}]
        steps: [{id: a, retries: 2, shell: 'true'}]
        """
    )
    run = start(runbook, token="s3cret")
    settings.SECRET_KEY = "a-completely-different-secret-key-after-rotation"
    run = drain(run)
    assert run.status == "failed"
    assert "SECRET_KEY changed" in run.error["message"]
    assert steps(run)["a"].attempt == 1


def test_long_retry_delay_is_woken_by_the_reaper(make_runbook, settings):
    from runs.runner import work
    from runs.services import step_wake_due

    settings.STEPWISE_INLINE_RETRY_WAIT = 0
    runbook = make_runbook(
        """
        slug: slow-retry
        name: Slow retry
        steps:
          - {id: a, retries: {max: 1, delay: 100ms}, shell: '[ "$STEPWISE_ATTEMPT" = 2 ]'}
        """
    )
    run = start(runbook)
    work(run.pk)
    step = steps(run)["a"]
    assert (step.status, step.attempt, step.enqueued_at) == ("queued", 1, None)
    wait_for(lambda: step_wake_due() == 1, timeout=10)
    step.refresh_from_db()
    assert step.enqueued_at is not None
    assert drain(run).status == "succeeded"


def test_a_short_retry_its_worker_never_claims_is_woken_by_the_reaper(make_runbook):
    from runs.runner import worker_id
    from runs.services import step_wake_due

    # The worker that scheduled a short retry waits it out itself, unless it died or is
    # still busy with the rest of its batch: the reaper wakes the retry once it is overdue.
    runbook = make_runbook(
        """
        slug: orphan-retry
        name: Orphaned retry
        steps:
          - {id: a, retries: {max: 1, delay: 100ms}, shell: '[ "$STEPWISE_ATTEMPT" = 2 ]'}
        """
    )
    run = start(runbook)
    (step,) = step_claim(run_pk=run.pk, worker=worker_id())
    finish = step_finish(step=step, worker=worker_id(), result=StepResult(status="failed"))
    assert finish.retry_at is not None  # this worker said it would wait; it never does
    wait_for(lambda: step_wake_due() == 1, timeout=10)
    assert step_wake_due() == 0  # woken once
    assert drain(run).status == "succeeded"


def test_worker_hands_a_long_chain_over_instead_of_outliving_its_task(make_runbook, settings):
    from runs.runner import work

    settings.STEPWISE_MAX_STEP_SECONDS = 0.5
    runbook = make_runbook(
        """
        slug: chain
        name: Chain
        steps:
          - {id: a, shell: sleep 0.3}
          - {id: b, shell: sleep 0.3}
          - {id: c, shell: 'true'}
        """
    )
    run = start(runbook)
    assert work(run.pk) == 2
    tree = steps(run)
    assert (tree["b"].status, tree["c"].status, tree["c"].attempt) == ("succeeded", "queued", 0)
    assert not StepAttempt.objects.filter(step=tree["c"]).exists()
    assert drain(run).status == "succeeded"


def test_sequential_steps_and_groups_run_in_order_with_every_event(make_runbook):
    # A step that succeeds starts its next sibling without planning the whole run; groups,
    # conditions and the end of a group still go through the plan.
    runbook = make_runbook(
        """
        slug: chain
        name: Chain
        steps:
          - {id: a, shell: echo a}
          - id: inner
            steps:
              - {id: b, shell: echo b}
              - {id: c, if: "steps.b.status == 'failed'", shell: echo c}
              - {id: d, shell: echo d}
          - {id: e, shell: echo e}
        """
    )
    run = drain(start(runbook))
    tree = steps(run)
    assert run.status == "succeeded"
    assert {key: step.status for key, step in tree.items()} == {
        "a": "succeeded",
        "inner": "succeeded",
        "b": "succeeded",
        "c": "skipped",
        "d": "succeeded",
        "e": "succeeded",
    }
    ran = sorted((tree[key] for key in "abde"), key=lambda step: step.started_at)
    assert [step.key for step in ran] == ["a", "b", "d", "e"]
    assert all(x.finished_at <= y.started_at for x, y in itertools.pairwise(ran))
    for key in "abde":
        events = RunEvent.objects.filter(step=tree[key]).order_by("id")
        assert [(e.from_status, e.to_status) for e in events] == [
            ("pending", "queued"),
            ("queued", "running"),
            ("running", "succeeded"),
        ], key
    attempts = StepAttempt.objects.filter(step__run=run).order_by("started_at")
    assert [(a.step.key, a.number, a.status, a.exit_code) for a in attempts] == [
        (key, 1, "succeeded", 0) for key in "abde"
    ]
    assert all(a.worker and a.pid and a.started_at <= a.finished_at for a in attempts)


def test_two_workers_starting_a_parallel_runs_first_steps_at_once_both_claim(make_runbook):
    # Each worker read the run queued before the other's claim committed (PostgreSQL claims
    # run side by side): the second's move of the run to running finds it moved already. Its
    # claim stood rolled back before, and its step waited for a sibling to end.
    runbook = make_runbook(
        "slug: fan\nname: Fan\nsteps: [{id: fan, parallel: true, steps: ["
        "{id: a, shell: 'true'}, {id: b, shell: 'true'}]}]"
    )
    run = start(runbook)
    a, b = Step.objects.filter(run=run, status="queued").select_related("run").order_by("position")
    assert a.run.status == b.run.status == "queued"

    assert workers._claim(a, "w1")
    assert workers._claim(b, "w2")

    run.refresh_from_db()
    assert run.status == "running"
    assert set(run.steps.filter(key__in=["a", "b"]).values_list("status", flat=True)) == {"running"}
    started = RunEvent.objects.filter(run=run, step=None, to_status="running")
    assert started.count() == 1


def test_a_stale_upcoming_step_is_checked_not_trusted(make_runbook):
    # Finish.upcoming carries the next sequential steps from one finish to the next; the
    # claim's compare-and-swap decides, and a step that moved meanwhile goes through a plan.
    runbook = make_runbook(
        "slug: hint\nname: Hint\nsteps: [{id: a, shell: 'true'}, {id: b, shell: 'true'},"
        " {id: c, shell: 'true'}]"
    )
    run = start(runbook)
    [a] = step_claim(run_pk=run.pk, worker="w1")
    finish = step_finish(step=a, worker="w1", result=StepResult(status="succeeded"))
    assert finish.next_step.key == "b" and [s.key for s in finish.upcoming] == ["c"]
    run.steps.filter(key="c").update(status="cancelled")  # behind the worker's back
    after = step_finish(
        step=finish.next_step,
        worker="w1",
        result=StepResult(status="succeeded"),
        upcoming=finish.upcoming,
    )
    assert after.next_step is None
    run.refresh_from_db()
    assert run.status == "succeeded"
    assert not RunEvent.objects.filter(step__key="c", run=run).exists()


def test_a_worker_stops_claiming_once_its_run_has_ended(make_runbook, monkeypatch):
    # The finish that ends the run says so: a claim after it could find nothing, and on
    # SQLite it would take the write lock to find that out.
    runbook = make_runbook("slug: one\nname: One\nsteps: [{id: a, shell: 'true'}]")
    run = start(runbook)
    claims = []
    monkeypatch.setattr(
        runner.services, "step_claim", lambda **kw: claims.append(kw) or step_claim(**kw)
    )
    assert runner.work(run.pk, run.steps.get().pk) == 1
    assert len(claims) == 1
    run.refresh_from_db()
    assert run.status == "succeeded"

    two = start(
        make_runbook(
            "slug: two\nname: Two\nsteps: [{id: a, shell: 'true'}, {id: b, shell: 'true'}]"
        )
    )
    [a] = step_claim(run_pk=two.pk, worker="w1")
    first = step_finish(step=a, worker="w1", result=StepResult(status="succeeded"))
    assert (first.next_step.key, first.run_ended) == ("b", False)
    last = step_finish(step=first.next_step, worker="w1", result=StepResult(status="failed"))
    assert (last.next_step, last.run_ended) == (None, True)


def test_a_message_claims_only_its_own_runs_step_once_it_is_due(make_runbook):
    runbook = make_runbook("slug: due\nname: Due\nsteps: [{id: a, shell: 'true'}]")
    mine, other = start(runbook), start(runbook)
    others_step = other.steps.get()
    [claimed] = step_claim(run_pk=mine.pk, worker="w1", prefer=others_step.pk)
    assert claimed.run_id == mine.pk
    others_step.refresh_from_db()
    assert others_step.status == "queued"

    later = timezone.now() + timedelta(hours=1)
    other.steps.update(not_before=later)
    assert step_claim(run_pk=other.pk, worker="w1", prefer=others_step.pk) == []
    other.steps.update(not_before=timezone.now() - timedelta(seconds=1))
    [due] = step_claim(run_pk=other.pk, worker="w1", prefer=others_step.pk)
    assert (due.pk, due.status, due.run.pk) == (others_step.pk, "running", other.pk)
