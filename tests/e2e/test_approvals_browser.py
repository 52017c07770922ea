"""Approvals in the browser: the approver's badge, inbox and decision; the operator's run page
following along without a reload."""

import pytest
from django.contrib.auth.models import Group
from playwright.sync_api import expect

from approvals.models import Approval
from runs import services
from tests.approvals.test_approvals import drain_until_waiting
from tests.conftest import make_user

pytestmark = [pytest.mark.worker, pytest.mark.timeout(180)]

GATED = """
slug: gated
name: Gated change
steps:
  - id: check
    name: Check
    shell: echo "checked"
  - id: gate
    name: Approve the change
    approval:
      message: "Apply the change to production?"
      approvers: {users: [alice]}
  - id: apply
    name: Apply
    shell: echo "applying, approved by {{ steps.gate.outputs.approved_by }}"
"""


@pytest.fixture
def people(transactional_db):
    return make_user("otto", "operator"), make_user("alice")


def start_and_open(page_for, server, make_runbook, cluster, people):
    operator, approver = people
    runbook = make_runbook(GATED)
    cluster()
    run = services.run_create(runbook=runbook, params={}, user=operator, origin="ui")
    operator_page = page_for(operator)
    operator_page.goto(f"{server.url}/runs/{run.number}/")
    expect(operator_page.locator("#run-status")).to_have_text("waiting", timeout=30_000)
    operator_page.evaluate("window.__notReloaded = true")
    approver_page = page_for(approver)
    expect(approver_page).to_have_url(f"{server.url}/approvals/")  # alice has no role
    expect(approver_page.locator(".nav-badge")).to_have_text("1")
    approver_page.click("nav >> text=Approvals")
    approver_page.click("text=Apply the change to production?")
    expect(approver_page.locator("h1")).to_have_text("Apply the change to production?")
    return run, operator_page, approver_page


def test_approver_approves_and_the_operator_sees_the_run_continue(
    page_for, server, make_runbook, cluster, people
):
    run, operator_page, approver_page = start_and_open(
        page_for, server, make_runbook, cluster, people
    )
    approver_page.fill("#approve-comment", "looks good")
    approver_page.click("button:has-text('Approve')")
    expect(approver_page.locator("#decision-panel")).to_contain_text("approved")
    expect(approver_page.locator("#decision-panel")).to_contain_text("looks good")
    expect(approver_page.locator(".nav-badge")).to_have_count(0)  # nothing waits for her now
    expect(operator_page.locator("#run-status")).to_have_text("succeeded", timeout=30_000)
    expect(operator_page.locator("[data-log]")).to_contain_text(
        "applying, approved by alice", timeout=30_000
    )
    assert operator_page.evaluate("window.__notReloaded") is True
    assert Approval.objects.get(run=run).status == "approved"


def test_approver_denies_and_the_run_fails_with_the_reason(
    page_for, server, make_runbook, cluster, people
):
    run, operator_page, approver_page = start_and_open(
        page_for, server, make_runbook, cluster, people
    )
    approver_page.fill("#deny-reason", "change freeze")
    approver_page.click("button:has-text('Deny')")
    expect(approver_page.locator("#decision-panel")).to_contain_text("Denied")
    expect(operator_page.locator("#run-status")).to_have_text("failed", timeout=30_000)
    expect(operator_page.locator("#run-header")).to_contain_text(
        "denied by alice: change freeze", timeout=30_000
    )
    assert operator_page.evaluate("window.__notReloaded") is True
    run.refresh_from_db()
    assert run.error["message"] == "Step 2 (gate) failed: denied by alice: change freeze"


TWO_APPROVALS = """
slug: two-approvals
name: Two approvals
steps:
  - id: check
    shell: echo "checked"
  - id: gate
    approval:
      message: "Ship it?"
      approvers: {groups: [sre-leads]}
      required: 2
      fields:
        - {name: replicas, type: integer, min: 1, max: 5, required: false}
  - id: ship
    shell: echo "shipping"
"""


@pytest.fixture
def approver(transactional_db):
    """An approver who can also read runs, so the run page shows them the inline panel."""
    user = make_user("dave", "viewer")
    user.groups.add(Group.objects.get_or_create(name="sre-leads")[0])
    return user


def htmx_errors(page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text))
    return errors


def test_deciding_on_the_run_page_says_so_after_polls_without_htmx_errors(
    page_for, server, make_runbook, approver
):
    run = drain_until_waiting(
        services.run_create(runbook=make_runbook(TWO_APPROVALS), params={}, user=None, origin="ui")
    )
    page = page_for(approver)
    console = htmx_errors(page)
    page.goto(f"{server.url}/runs/{run.number}/")
    page.click("#decision-panel button:has-text('Approve')")
    expect(page.locator("#decision-state")).to_contain_text("dave approved")
    with page.expect_response(lambda response: "part=state" in response.url):
        pass  # a poll of the state, whose answer swaps the forms away, has been answered too
    expect(page.locator("#decision-panel")).to_contain_text("You have decided: approved")
    assert [line for line in console if "htmx:" in line] == []


def test_a_refused_decision_on_the_run_page_stays_there_with_the_reason(
    page_for, server, make_runbook, approver
):
    run = drain_until_waiting(
        services.run_create(runbook=make_runbook(TWO_APPROVALS), params={}, user=None, origin="ui")
    )
    page = page_for(approver)
    run_page = f"{server.url}/runs/{run.number}/"
    page.goto(run_page)
    page.evaluate("window.__notReloaded = true")
    panel = page.locator("#decision-panel")
    page.fill("#id_values-replicas", "99")
    panel.locator("button:has-text('Approve')").click()
    expect(panel.locator("#id_values-replicas-error")).to_have_text("must be at most 5")
    expect(page).to_have_url(run_page)  # not /approvals/N/decide
    panel.locator("button:has-text('Deny')").click()
    expect(panel.locator("#deny-reason-error")).to_have_text("A deny needs a reason.")
    expect(page.locator("#id_values-replicas")).to_have_value("99")  # what was typed stays
    page.fill("#id_values-replicas", "3")
    panel.locator("button:has-text('Approve')").click()
    expect(panel).to_contain_text("You have decided: approved")
    assert page.url == run_page and page.evaluate("window.__notReloaded") is True
    assert Approval.objects.get(run=run).decisions.get().values == {"replicas": 3}


def test_an_approval_that_opens_while_the_run_page_is_open_shows_its_panel(
    page_for, server, make_runbook, approver
):
    run = services.run_create(
        runbook=make_runbook(TWO_APPROVALS), params={}, user=None, origin="ui"
    )
    page = page_for(approver)
    page.goto(f"{server.url}/runs/{run.number}/")
    page.evaluate("window.__notReloaded = true")
    expect(page.locator("#run-status")).to_have_text("queued")
    drain_until_waiting(run)
    expect(page.locator("#decision-panel")).to_contain_text("0 of 2 approvals")
    page.fill("#approve-comment", "typed while the header polls")
    for _ in range(2):
        with page.expect_response(lambda response: "approval=" in response.url):
            pass
    expect(page.locator("#approve-comment")).to_have_value("typed while the header polls")
    assert page.evaluate("window.__notReloaded") is True
