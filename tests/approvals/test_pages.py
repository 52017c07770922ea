"""Approval pages: the inbox, one approval with its context, deciding in the browser."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from approvals.models import Approval
from approvals.services import approval_decide
from runs.services import run_create
from tests.approvals.test_approvals import GATED, drain_until_waiting, person, waiting_run


@pytest.fixture
def gate(make_runbook):
    runbook = make_runbook(GATED.replace("REQUIRED", "1").replace("SELF", "false"))
    olivia = person("olivia", "operator")
    alice = person("alice")
    run, approval = waiting_run(runbook, olivia)
    return run, approval, olivia, alice


def test_inbox_lists_what_waits_for_me(client, gate):
    _, approval, _, alice = gate
    client.force_login(alice)
    page = client.get("/approvals/")
    assert page.status_code == 200
    assert "Waiting for me" in page.text and "Restart api?" in page.text
    assert "asked by olivia just now" in page.text  # not "0 minutes ago"
    assert f"/approvals/{approval.pk}/" in page.text


def test_history_says_who_decided_and_when_in_a_fixed_number_of_queries(client, make_runbook):
    runbook = make_runbook(GATED.replace("REQUIRED", "2").replace("SELF", "false"))
    olivia, alice, bob = person("olivia", "operator"), person("alice"), person("bob")
    client.force_login(person("vera", "viewer"))

    def close_one() -> Approval:
        _, approval = waiting_run(runbook, olivia)
        approval_decide(approval=approval, user=alice, approve=True)
        return approval_decide(approval=approval, user=bob, approve=False, comment="no")

    close_one()
    with CaptureQueriesContext(connection) as first:
        client.get("/approvals/")
    closed = close_one()
    with CaptureQueriesContext(connection) as second:
        page = client.get("/approvals/").text
    assert len(second) == len(first)
    closed.refresh_from_db()
    assert "<strong>alice</strong> approved, <strong>bob</strong> denied" in page
    assert f'<time datetime="{closed.closed_at.isoformat()}"' in page


def test_an_approval_i_decided_waits_for_others_and_says_what_i_did(client, make_runbook):
    runbook = make_runbook(GATED.replace("REQUIRED", "2").replace("SELF", "false"))
    _, approval = waiting_run(runbook, person("olivia", "operator"))
    alice = person("alice")
    approval_decide(approval=approval, user=alice, approve=True)
    client.force_login(alice)

    page = client.get("/approvals/").text

    assert "Nothing waits for you" in page
    assert "Open, waiting for others" in page
    assert "1 of 2 approvals · <strong>you approved</strong>" in page


def test_pages_need_a_login(client, gate):
    _, approval, *_ = gate
    assert client.get("/approvals/").status_code == 302
    assert client.get(f"/approvals/{approval.pk}/").status_code == 302
    response = client.post(f"/approvals/{approval.pk}/decide", {"verdict": "approve"})
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    assert Approval.objects.get(pk=approval.pk).status == "pending"


def test_detail_shows_the_context_and_the_form_to_an_approver(client, gate):
    run, approval, _, alice = gate
    client.force_login(alice)
    page = client.get(f"/approvals/{approval.pk}/").text
    assert run.title in page and "olivia" in page
    assert "check" in page and "restart" in page  # done and what follows
    assert 'value="approve"' in page and 'value="deny"' in page
    assert 'name="values-window"' in page
    # alice has no role: the run and runbook are named, not linked to pages refusing her
    assert f'href="/runs/{run.number}/"' not in page and 'href="/runbooks/gated/"' not in page
    client.force_login(person("vera", "viewer"))
    page = client.get(f"/approvals/{approval.pk}/").text
    assert f'href="/runs/{run.number}/"' in page and 'href="/runbooks/gated/"' in page


def test_detail_shows_params_as_the_run_page_does_with_secrets_masked(client, make_runbook):
    runbook = make_runbook("""
        slug: secret-gate
        name: Secret gate
        params:
          - {name: token, type: secret}
          - {name: note, type: string}
          - {name: dry_run, type: boolean, default: false}
          - {name: zones, type: multichoice, choices: [eu, us], default: [eu, us]}
        steps:
          - id: gate
            approval: {message: "Go?", approvers: {users: [alice]}}
    """)
    params = {"token": "hunter2", "note": "log in with hunter2"}
    run = drain_until_waiting(run_create(runbook=runbook, params=params, user=None, origin="ui"))
    client.force_login(person("alice"))
    page = client.get(f"/approvals/{Approval.objects.get(run=run).pk}/").text
    assert "hunter2" not in page
    assert '<dd class="mono">***</dd>' in page and "log in with ***" in page
    assert '<dd class="mono">no</dd>' in page and '<dd class="mono">eu, us</dd>' in page


def test_form_marks_required_fields_shows_descriptions_and_labels_multichoice(client, make_runbook):
    runbook = make_runbook("""
        slug: described-gate
        name: Described gate
        steps:
          - id: gate
            approval:
              message: "Go?"
              approvers: {users: [alice]}
              fields:
                - {name: ticket, label: Change ticket, type: string, description: "e.g. CHG-1"}
                - {name: regions, label: Regions, type: multichoice, choices: [eu, us]}
                - {name: replicas, type: integer, required: false}
    """)
    run = drain_until_waiting(run_create(runbook=runbook, params={}, user=None, origin="ui"))
    client.force_login(person("alice"))
    page = client.get(f"/approvals/{Approval.objects.get(run=run).pk}/").text
    required = '<span class="req" aria-hidden="true">*</span>'
    assert f"Change ticket {required}</label>" in page
    assert '<p class="help">e.g. CHG-1</p>' in page
    assert "<fieldset><legend>Regions</legend>" in page and 'for=""' not in page
    assert f"replicas {required}" not in page and "replicas</label>" in page


def test_requester_sees_no_buttons_and_is_refused_when_posting(client, gate):
    _, approval, olivia, _ = gate
    client.force_login(olivia)
    page = client.get(f"/approvals/{approval.pk}/").text
    assert 'value="approve"' not in page and "you cannot approve it" in page
    response = client.post(f"/approvals/{approval.pk}/decide", {"verdict": "approve"})
    assert response.status_code == 403
    assert Approval.objects.get(pk=approval.pk).status == "pending"


def test_approving_in_the_browser_closes_it_and_the_run_goes_on(client, gate):
    run, approval, _, alice = gate
    client.force_login(alice)
    response = client.post(
        f"/approvals/{approval.pk}/decide",
        {"verdict": "approve", "comment": "ship it", "values-window": "tonight"},
    )
    assert response.status_code == 302
    approval.refresh_from_db()
    assert approval.status == "approved"
    assert approval.decisions.get().comment == "ship it"
    assert approval.step.outputs["window"] == "tonight"
    run.refresh_from_db()
    assert run.status == "running"


def test_deny_without_a_reason_shows_the_message_and_changes_nothing(client, gate):
    _, approval, _, alice = gate
    client.force_login(alice)
    response = client.post(f"/approvals/{approval.pk}/decide", {"verdict": "deny", "reason": ""})
    assert response.status_code == 400 and "A deny needs a reason." in response.text
    assert Approval.objects.get(pk=approval.pk).status == "pending"


def test_deny_without_a_reason_says_so_by_the_reason_and_keeps_what_was_typed(client, gate):
    _, approval, _, alice = gate
    client.force_login(alice)
    response = client.post(
        f"/approvals/{approval.pk}/decide",
        {
            "verdict": "deny",
            "reason": " ",
            "comment": "half-written",
            "values-window": "tonight",
            "values-replicas": "3",
        },
    )
    assert response.status_code == 400
    reason_box = response.text.split('<div class="deny-part')[1].split("</form>")[0]
    assert '<p class="error" id="deny-reason-error" role="alert">A deny needs a reason.</p>' in (
        reason_box
    )
    assert "A deny needs a reason." not in response.text.split('<div class="deny-part')[0]
    assert '<option value="tonight" selected>' in response.text
    assert 'name="values-replicas" value="3"' in response.text
    assert ">half-written</textarea>" in response.text


def test_an_invalid_approval_keeps_the_typed_deny_reason(client, gate):
    _, approval, _, alice = gate
    client.force_login(alice)
    response = client.post(
        f"/approvals/{approval.pk}/decide",
        {"verdict": "approve", "values-replicas": "99", "reason": "maybe later"},
    )
    assert response.status_code == 400 and "must be at most 5" in response.text
    assert ">maybe later</textarea>" in response.text


def test_a_deny_reason_from_the_browser_is_bounded_as_over_the_api(client, gate):
    # No role is needed to approve, and the reason becomes the run's error, shown with it
    # in every list and answer: a page must not take megabytes where the API takes 4,000.
    _, approval, _, alice = gate
    client.force_login(alice)
    response = client.post(
        f"/approvals/{approval.pk}/decide", {"verdict": "deny", "reason": "x" * 4001}
    )
    assert response.status_code == 400 and "The reason is too long." in response.text
    assert Approval.objects.get(pk=approval.pk).status == "pending"


def test_invalid_form_value_is_shown_beside_its_field(client, gate):
    _, approval, _, alice = gate
    client.force_login(alice)
    response = client.post(
        f"/approvals/{approval.pk}/decide", {"verdict": "approve", "values-replicas": "99"}
    )
    assert response.status_code == 400 and "must be at most 5" in response.text
    assert Approval.objects.get(pk=approval.pk).status == "pending"


def test_decision_panel_is_an_htmx_fragment_that_stops_polling_once_closed(client, gate):
    _, approval, _, alice = gate
    client.force_login(alice)
    open_panel = client.get(f"/approvals/{approval.pk}/", HTTP_HX_REQUEST="true").text
    assert open_panel.lstrip().startswith('<section id="decision-panel"')
    assert 'hx-trigger="every 2s"' in open_panel and "<html" not in open_panel
    client.post(f"/approvals/{approval.pk}/decide", {"verdict": "deny", "reason": "no"})
    closed_panel = client.get(f"/approvals/{approval.pk}/", HTTP_HX_REQUEST="true").text
    assert "hx-trigger" not in closed_panel and "Denied" in closed_panel
    assert 'value="approve"' not in closed_panel


def test_after_deciding_the_panel_says_so_and_keeps_saying_it_as_it_polls(client, make_runbook):
    runbook = make_runbook(GATED.replace("REQUIRED", "2").replace("SELF", "false"))
    run, approval = waiting_run(runbook, person("olivia", "operator"))
    client.force_login(person("dave", "sre-leads", "viewer"))
    client.post(f"/approvals/{approval.pk}/decide", {"verdict": "approve"})
    url = f"/approvals/{approval.pk}/"
    answers = {
        "page": client.get(url),
        "run page's panel": client.get(f"{url}?next=/runs/{run.number}/", HTTP_HX_REQUEST="true"),
        "poll": client.get(f"{url}?part=state", HTTP_HX_REQUEST="true"),
    }
    for where, answer in answers.items():
        assert "You have decided: <strong>approved</strong>" in answer.text, where
        assert "It waits for 1 more approval." in answer.text, where
        assert 'value="approve"' not in answer.text, where


def test_a_loaded_panel_swaps_nothing_out_of_band(client, gate):
    # Loaded into a run's page, the panel is not on the page yet: an out-of-band swap of its
    # #decision-forms finds no target (htmx:oobErrorNoTarget). Only its polls remove them.
    run, approval, olivia, _ = gate
    client.force_login(olivia)  # she started the run: she cannot decide
    panel = client.get(
        f"/approvals/{approval.pk}/?next=/runs/{run.number}/", HTTP_HX_REQUEST="true"
    ).text
    assert panel.count('id="decision-forms"') == 1 and "hx-swap-oob" not in panel
    state = client.get(f"/approvals/{approval.pk}/?part=state", HTTP_HX_REQUEST="true").text
    assert '<div id="decision-forms" hx-swap-oob="true"></div>' in state


def test_deciding_with_htmx_answers_the_panel_in_place(client, gate):
    _, approval, _, alice = gate
    client.force_login(alice)
    url = f"/approvals/{approval.pk}/decide"
    refused = client.post(url, {"verdict": "deny", "reason": ""}, HTTP_HX_REQUEST="true")
    assert refused.status_code == 400
    assert refused.text.lstrip().startswith('<section id="decision-panel"')
    assert "A deny needs a reason." in refused.text
    decided = client.post(url, {"verdict": "approve"}, HTTP_HX_REQUEST="true")
    assert decided.status_code == 200
    assert decided.text.lstrip().startswith('<section id="decision-panel"')
    assert "You have decided: <strong>approved</strong>" in decided.text
    assert '<span id="approvals-badge" hx-swap-oob="true"></span>' in decided.text  # 0 left
    again = client.post(url, {"verdict": "approve"}, HTTP_HX_REQUEST="true")
    assert again.status_code == 409
    assert again.text.lstrip().startswith('<section id="decision-panel"')
    assert "This approval is already approved." in again.text


def test_someone_not_named_cannot_see_the_approval(client, gate):
    _, approval, *_ = gate
    client.force_login(person("stranger"))
    assert client.get(f"/approvals/{approval.pk}/").status_code == 404


def test_run_page_loads_the_decision_panel_inline_and_decisions_return_there(client, gate):
    run, approval, *_ = gate
    client.force_login(person("dave", "sre-leads", "viewer"))  # an approver who can see runs
    run_page = client.get(f"/runs/{run.number}/").text
    assert f'hx-get="/approvals/{approval.pk}/?next=/runs/{run.number}/"' in run_page
    panel = client.get(
        f"/approvals/{approval.pk}/?next=/runs/{run.number}/", HTTP_HX_REQUEST="true"
    ).text
    assert panel.lstrip().startswith('<section id="decision-panel"')
    assert f'name="next" value="/runs/{run.number}/"' in panel
    response = client.post(
        f"/approvals/{approval.pk}/decide",
        {"verdict": "approve", "next": f"/runs/{run.number}/"},
    )
    assert response.status_code == 302 and response["Location"] == f"/runs/{run.number}/"
    assert Approval.objects.get(pk=approval.pk).status == "approved"


def test_the_run_header_poll_brings_the_panel_of_an_approval_that_opened(client, gate):
    run, approval, *_ = gate
    client.force_login(person("dave", "sre-leads", "viewer"))
    url = f"/runs/{run.number}/"
    loader = f'hx-get="/approvals/{approval.pk}/?next=/runs/{run.number}/" hx-trigger="load"'
    before = client.get(f"{url}?approval=", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="run-header")
    assert before.text.lstrip().startswith('<section id="run-header"')
    assert '<div id="inline-approval" hx-swap-oob="true">' in before.text and loader in before.text
    assert f'hx-get="{url}?approval={approval.pk}"' in before.text  # the next poll says so
    shown = client.get(
        f"{url}?approval={approval.pk}", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="run-header"
    )
    assert "inline-approval" not in shown.text  # the panel, and what is typed in it, stays
    assert f'hx-get="{url}?approval={approval.pk}"' in shown.text


def test_decision_state_polls_alone_and_removes_the_forms_once_closed(client, gate):
    _, approval, _, alice = gate
    client.force_login(alice)
    state = client.get(f"/approvals/{approval.pk}/?part=state", HTTP_HX_REQUEST="true").text
    assert state.lstrip().startswith('<div id="decision-state"') and "every 2s" in state
    assert "<form" not in state
    client.post(f"/approvals/{approval.pk}/decide", {"verdict": "deny", "reason": "no"})
    state = client.get(f"/approvals/{approval.pk}/?part=state", HTTP_HX_REQUEST="true").text
    assert "hx-trigger" not in state
    assert '<div id="decision-forms" hx-swap-oob="true"></div>' in state


def test_next_pointing_elsewhere_is_ignored(client, gate):
    _, approval, _, alice = gate
    client.force_login(alice)
    response = client.post(
        f"/approvals/{approval.pk}/decide",
        {"verdict": "approve", "next": "https://evil.example.com/"},
    )
    assert response["Location"] == f"/approvals/{approval.pk}/"
