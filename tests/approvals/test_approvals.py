"""Approval gates: quorum, self-approval, who may decide, deny, expiry, cancel, races, form."""

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core import mail
from django.utils import timezone

from approvals import notifications
from approvals.models import Approval, Decision
from approvals.services import approval_decide, approvals_expire_due
from config.errors import Conflict, PermissionDenied, ValidationFailed
from runs.models import LogEntry, Run
from runs.services import run_cancel, run_create, run_retry
from tests.conftest import drain

GATED = """
slug: gated
name: Gated restart
params:
  - {name: service, type: string, default: api}
steps:
  - id: check
    shell: echo "checking {{ params.service }}"
  - id: gate
    approval:
      message: "Restart {{ params.service }}?"
      approvers: {users: [alice, bob, carol], groups: [sre-leads]}
      required: REQUIRED
      allow_self_approval: SELF
      fields:
        - {name: window, type: choice, choices: [now, tonight], default: now}
        - {name: replicas, type: integer, min: 1, max: 5, required: false}
  - id: restart
    shell: echo "restarting in window {{ steps.gate.outputs.window }} by {{ steps.gate.outputs.approved_by }}"
"""


def person(name: str, *groups: str):
    user = get_user_model().objects.create_user(name, f"{name}@example.com", f"pw-{name}-123")
    for group in groups:
        user.groups.add(Group.objects.get_or_create(name=group)[0])
    return user


@pytest.fixture
def people(db):
    return {
        "alice": person("alice"),
        "bob": person("bob"),
        "carol": person("carol"),
        "dave": person("dave", "sre-leads"),
        "mallory": person("mallory", "operator"),
        "olivia": person("olivia", "operator"),
    }


@pytest.fixture
def gated(make_runbook):
    def make(required: int = 1, allow_self: bool = False):
        text = GATED.replace("REQUIRED", str(required)).replace("SELF", str(allow_self).lower())
        return make_runbook(text)

    return make


def waiting_run(runbook, by):
    run = drain_until_waiting(run_create(runbook=runbook, params={}, user=by, origin="ui"))
    return run, Approval.objects.get(run=run)


def drain_until_waiting(run: Run) -> Run:
    from runs.runner import work

    work(run.pk)
    run.refresh_from_db()
    assert run.status == "waiting", run.status
    return run


def step(run, key):
    return run.steps.get(key=key)


def test_run_waits_at_the_gate_with_a_rendered_message(gated, people):
    run, approval = waiting_run(gated(), people["olivia"])
    assert (step(run, "check").status, step(run, "gate").status) == ("succeeded", "waiting")
    assert step(run, "restart").status == "pending"
    assert approval.message == "Restart api?" and approval.status == "pending"
    assert approval.requested_by == people["olivia"]


def test_one_approval_lets_the_run_continue_with_outputs(gated, people):
    run, approval = waiting_run(gated(), people["olivia"])
    approval_decide(
        approval=approval,
        user=people["alice"],
        approve=True,
        comment="go",
        values={"window": "tonight"},
    )
    run = drain(run)
    assert run.status == "succeeded"
    assert step(run, "gate").outputs == {
        "window": "tonight",
        "replicas": None,
        "approved_by": "alice",
    }
    assert LogEntry.objects.filter(
        run=run, message="restarting in window tonight by alice"
    ).exists()


def test_quorum_of_two_needs_two_distinct_people(gated, people):
    run, approval = waiting_run(gated(required=2), people["olivia"])
    approval_decide(approval=approval, user=people["alice"], approve=True)
    run.refresh_from_db()
    assert run.status == "waiting" and Approval.objects.get(pk=approval.pk).status == "pending"
    with pytest.raises(Conflict, match="already decided"):
        approval_decide(approval=approval, user=people["alice"], approve=True)
    approval_decide(approval=approval, user=people["dave"], approve=True)  # through sre-leads
    run = drain(run)
    assert run.status == "succeeded"
    assert step(run, "gate").outputs["approved_by"] == "alice, dave"


def test_self_approval_is_refused_by_default_and_allowed_when_enabled(gated, people):
    _, approval = waiting_run(gated(), people["alice"])
    with pytest.raises(PermissionDenied, match="self-approval"):
        approval_decide(approval=approval, user=people["alice"], approve=True)
    run, approval = waiting_run(gated(allow_self=True), people["alice"])
    approval_decide(approval=approval, user=people["alice"], approve=True)
    assert drain(run).status == "succeeded"


def test_someone_outside_the_approvers_is_refused(gated, people):
    _, approval = waiting_run(gated(), people["olivia"])
    with pytest.raises(PermissionDenied, match="not an approver"):
        approval_decide(approval=approval, user=people["mallory"], approve=True)
    assert not Decision.objects.exists()


def test_deny_needs_a_reason_and_fails_the_run_with_it(gated, people):
    run, approval = waiting_run(gated(required=2), people["olivia"])
    with pytest.raises(ValidationFailed) as error:
        approval_decide(approval=approval, user=people["bob"], approve=False, comment="  ")
    assert error.value.details == {"reason": ["required"]}
    approval_decide(approval=approval, user=people["bob"], approve=False, comment="peak traffic")
    run.refresh_from_db()
    assert run.status == "failed"
    assert run.error == {
        "message": "Step 2 (gate) failed: denied by bob: peak traffic",
        "step": "2",
    }
    assert step(run, "restart").status == "skipped"
    with pytest.raises(Conflict, match="already denied"):
        approval_decide(approval=approval, user=people["carol"], approve=True)


def test_form_values_are_validated_like_params(gated, people):
    _, approval = waiting_run(gated(), people["olivia"])
    with pytest.raises(ValidationFailed) as error:
        approval_decide(
            approval=approval,
            user=people["alice"],
            approve=True,
            values={"window": "someday", "replicas": "9", "colour": "red"},
        )
    assert set(error.value.details) == {"values.window", "values.replicas", "values.colour"}
    assert not Decision.objects.exists()


def test_expired_approval_times_the_step_out(gated, people):
    run, approval = waiting_run(gated(), people["olivia"])
    Approval.objects.filter(pk=approval.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert approvals_expire_due() == 1
    run.refresh_from_db()
    approval.refresh_from_db()
    assert approval.status == "expired"
    assert step(run, "gate").status == "timed_out"
    assert run.status == "failed" and "expired" in run.error["message"]


def test_an_expired_approval_says_the_timeout_it_had(gated, people):
    run, approval = waiting_run(gated(), people["olivia"])
    opened = timezone.now() - timedelta(seconds=3)
    # As approval_open leaves them: the expiry is reckoned a moment before the row is made.
    Approval.objects.filter(pk=approval.pk).update(
        opened_at=opened, expires_at=opened + timedelta(seconds=2, microseconds=-50)
    )
    assert approvals_expire_due() == 1
    run.refresh_from_db()
    assert run.error["message"].endswith("approval expired after 2s without a decision")


def test_cancelling_a_waiting_run_cancels_its_approval(gated, people):
    run, approval = waiting_run(gated(), people["olivia"])
    run = run_cancel(run=run, user=people["olivia"], reason="not today")
    run.refresh_from_db()
    approval.refresh_from_db()
    assert run.status == "cancelled" and approval.status == "cancelled"
    assert step(run, "gate").status == "cancelled"
    with pytest.raises(Conflict):
        approval_decide(approval=approval, user=people["alice"], approve=True)


@pytest.mark.django_db(transaction=True)
def test_two_simultaneous_decisions_never_count_beyond_required(make_runbook):
    runbook = make_runbook(GATED.replace("REQUIRED", "1").replace("SELF", "false"))
    requester = person("olivia")
    deciders = [person("alice"), person("bob"), person("carol")]
    _run, approval = waiting_run(runbook, requester)
    barrier = threading.Barrier(len(deciders))
    outcomes: list[str] = []

    def decide(user) -> None:
        barrier.wait()
        try:
            approval_decide(approval=Approval.objects.get(pk=approval.pk), user=user, approve=True)
            outcomes.append("counted")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=decide, args=(user,)) for user in deciders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict", "conflict", "counted"]
    assert Decision.objects.filter(approval=approval).count() == 1
    assert Approval.objects.get(pk=approval.pk).status == "approved"


def test_opening_and_closing_notify_by_email(gated, people, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    _, approval = waiting_run(gated(), people["olivia"])
    notifications.send(approval.pk, "opened")
    assert len(mail.outbox) == 1
    sent = mail.outbox[0]
    assert sent.subject.startswith("Approval needed: Gated restart")
    assert set(sent.to) == {f"{n}@example.com" for n in ("alice", "bob", "carol", "dave")}
    assert f"/approvals/{approval.pk}/" in sent.body and "Restart api?" in sent.body


class _Receiver(BaseHTTPRequestHandler):
    received: list[dict] = []
    status = 200

    def do_POST(self):
        _Receiver.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(_Receiver.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    _Receiver.received = []
    _Receiver.status = 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Receiver
    server.shutdown()


def test_webhook_gets_a_slack_compatible_post_with_a_link(gated, people, settings, receiver):
    url, handler = receiver
    settings.STEPWISE_APPROVAL_WEBHOOK_URL = url
    _, approval = waiting_run(gated(), people["olivia"])
    notifications.send(approval.pk, "opened")
    (payload,) = handler.received
    assert payload["event"] == "opened" and "Restart api?" in payload["text"]
    assert payload["approval"]["url"].endswith(f"/approvals/{approval.pk}/")


def test_failed_webhook_is_logged_on_the_run_and_changes_nothing(gated, people, settings, receiver):
    url, handler = receiver
    handler.status = 500
    settings.STEPWISE_APPROVAL_WEBHOOK_URL = url
    run, approval = waiting_run(gated(), people["olivia"])
    notifications.send(approval.pk, "opened")
    assert LogEntry.objects.filter(run=run, message__startswith="approval webhook failed").exists()
    run.refresh_from_db()
    assert run.status == "waiting"


def test_a_secret_an_approver_types_is_masked_everywhere_it_goes(make_runbook, people):
    runbook = make_runbook(
        """
        slug: keyed
        name: Keyed gate
        params:
          - {name: token, type: secret}
        steps:
          - id: gate
            approval:
              message: "Go?"
              approvers: {users: [alice, bob]}
              fields:
                - {name: note, type: text, required: false}
        """
    )
    secret = "hunter2-typed-by-an-approver"

    def decided(user: str, approve: bool, **typed) -> Run:
        run = drain_until_waiting(
            run_create(
                runbook=runbook, params={"token": secret}, user=people["olivia"], origin="ui"
            )
        )
        approval = Approval.objects.get(run=run)
        approval_decide(approval=approval, user=people[user], approve=approve, **typed)
        return run

    approved = decided(
        "alice", True, comment=f"token is {secret}", values={"note": f"used {secret}"}
    )
    denied = decided("bob", False, comment=f"not with {secret}")

    stored = [
        *Decision.objects.values_list("comment", "values"),
        *Run.objects.values_list("error", "outputs"),
        *LogEntry.objects.values_list("message", flat=True),
        *(s.outputs for run in (approved, denied) for s in run.steps.all()),
        *(s.error for run in (approved, denied) for s in run.steps.all()),
    ]
    assert secret not in json.dumps(stored, default=str)
    assert step(drain(approved), "gate").outputs["note"] == "used ***"


def test_a_secret_field_is_sealed_for_later_steps_and_masked_everywhere_else(
    make_runbook, people, tmp_path
):
    runbook = make_runbook(
        """
        slug: otp
        name: Gate with a one-time password
        params:
          - {name: mark, type: string}
        steps:
          - id: gate
            approval:
              message: "Go?"
              approvers: {users: [alice]}
              fields:
                - {name: otp, type: secret}
          - id: use
            shell: |
              test {{ steps.gate.outputs.otp }} = otp-typed-by-alice
              echo "used {{ steps.gate.outputs.otp }}"
              if [ ! -e {{ params.mark }} ]; then touch {{ params.mark }}; exit 1; fi
        """
    )
    otp = "otp-typed-by-alice"
    params = {"mark": str(tmp_path / "failed-once")}
    run = drain_until_waiting(
        run_create(runbook=runbook, params=params, user=people["olivia"], origin="ui")
    )
    approval = Approval.objects.get(run=run)
    approval_decide(approval=approval, user=people["alice"], approve=True, values={"otp": otp})
    run = drain(run)
    # The script saw the real value (else `test` fails it before the mark is made).
    assert (tmp_path / "failed-once").exists() and step(run, "use").status == "failed"
    assert step(run, "gate").outputs["otp"] == "***"
    # A retry from the failed step reuses the gate, and with it the value alice typed.
    retry = drain(run_retry(run=run, user=people["olivia"], origin="ui", mode="failed"))
    assert step(retry, "gate").status == "succeeded"
    assert step(retry, "use").status == "succeeded"

    stored = [
        *Decision.objects.values_list("comment", "values"),
        *Run.objects.values_list("params", "error", "outputs"),
        *LogEntry.objects.values_list("message", flat=True),
        *(s.outputs for r in (run, retry) for s in r.steps.all()),
    ]
    assert otp not in json.dumps(stored, default=str)
    assert LogEntry.objects.filter(run=retry, message="used ***").exists()


@pytest.mark.parametrize("nested", [False, True], ids=["beside a step", "inside a group"])
def test_run_waits_once_its_parallel_siblings_of_a_gate_are_done(make_runbook, people, nested):
    gate = """
              - id: gate
                approval:
                  message: "Go?"
                  approvers: {users: [alice]}"""
    if nested:
        gate = """
              - id: inner
                steps:""" + gate.replace("\n", "\n    ")
    runbook = make_runbook(
        """
        slug: parallel-gate
        name: Parallel gate
        steps:
          - id: both
            parallel: true
            steps:
              - id: work
                shell: 'true'"""
        + gate
        + """
          - id: after
            shell: 'true'
        """
    )
    run = run_create(runbook=runbook, params={}, user=people["olivia"], origin="ui")
    run = drain_until_waiting(run)
    assert step(run, "work").status == "succeeded" and step(run, "gate").status == "waiting"
    assert step(run, "gate").parent.key == ("inner" if nested else "both")
    approval_decide(approval=Approval.objects.get(run=run), user=people["alice"], approve=True)
    assert drain(run).status == "succeeded"


def test_a_gate_no_one_may_approve_fails_when_it_opens_instead_of_waiting_forever(
    make_runbook, people
):
    runbook = make_runbook(
        """
        slug: only-me
        name: Only me
        steps:
          - id: gate
            approval:
              message: "Go?"
              approvers: {users: [olivia]}
          - {id: after, shell: 'true'}
        """
    )
    run = drain(run_create(runbook=runbook, params={}, user=people["olivia"], origin="ui"))
    assert run.status == "failed"
    assert step(run, "gate").status == "failed"
    assert run.error["message"] == (
        "Step 1 (gate) failed: no one can approve: 1 approval needed, but of the approvers only"
        " 0 did not start the run (olivia did, and allow_self_approval is false)"
    )
    assert not Approval.objects.filter(run=run).exists()
    # Someone else may start it and have it approved.
    run, _approval = waiting_run(runbook, people["alice"])
