"""What a person does in the browser: log in, start a run (first with a bad value), watch it
live to the end, cancel a long run, retry a failed one, manage tokens; and what a viewer
may not do."""

import re

import pytest
from playwright.sync_api import expect

from config.models import ApiToken
from runs import services
from runs.models import Run
from tests.conftest import drain, make_user, wait_for_run

pytestmark = [pytest.mark.worker, pytest.mark.timeout(180)]

STEADY = """
slug: steady
name: Steady rollout
description: Prints a few lines slowly.
params:
  - name: batches
    label: Batches
    type: integer
    min: 1
    max: 5
    default: 2
steps:
  - id: prepare
    name: Prepare
    shell: |
      echo "preparing {{ params.batches }} batches"
      sleep 2
      echo "prepared"
  - id: roll
    name: Roll out
    shell: |
      for i in $(seq 1 {{ params.batches }}); do echo "batch $i done"; sleep 0.5; done
"""

LONG = """
slug: long
name: Long task
steps:
  - id: wait
    shell: |
      echo "waiting a long time"
      sleep 120
"""

PRODUCING = """
slug: producing
name: Producing
steps:
  - id: wait
    shell: sleep 2
  - id: make
    name: Make
    shell: |
      echo "colour=teal" >> "$STEPWISE_OUTPUT"
      echo "report" > "$STEPWISE_ARTIFACTS/report.txt"
  - id: settle
    shell: sleep 2
"""

FLAKY = """
slug: flaky
name: Flaky
steps:
  - id: first
    name: First
    shell: echo first
  - id: second
    name: Second
    shell: exit 3
"""


@pytest.fixture
def operator(transactional_db):
    return make_user("otto", "operator")


@pytest.fixture
def viewer(transactional_db):
    return make_user("vera", "viewer")


def test_operator_starts_a_run_and_watches_it_live_to_success(
    page_for, server, operator, make_runbook, cluster
):
    make_runbook(STEADY)
    cluster()
    page = page_for(operator)
    page.click("nav >> text=Runbooks")
    page.click("text=Steady rollout")
    page.fill("input[name=batches]", "9")
    page.click("button:has-text('Run Steady rollout')")
    expect(page.locator(".field .error")).to_contain_text("must be at most 5")
    expect(page.locator(".callout-error")).to_contain_text("Nothing was started")
    assert Run.objects.count() == 0

    page.fill("input[name=batches]", "3")
    page.click("button:has-text('Run Steady rollout')")
    page.wait_for_url(re.compile(r"/runs/\d+/$"))
    page.evaluate("window.__notReloaded = true")
    run = Run.objects.get()
    assert run.origin == "ui"

    status = page.locator("#run-status")
    prepare = page.locator("[data-step-link=prepare] .badge")
    expect(prepare).to_have_text("running", timeout=30_000)
    expect(page.locator("[data-log]")).to_contain_text("preparing 3 batches", timeout=30_000)
    expect(prepare).to_have_text("succeeded", timeout=30_000)
    expect(page.locator("[data-log]")).to_contain_text("batch 3 done", timeout=30_000)
    expect(status).to_have_text("succeeded", timeout=30_000)
    expect(page.locator("[data-step-link=roll] .badge")).to_have_text("succeeded")
    assert page.evaluate("window.__notReloaded") is True
    # Once terminal, nothing polls any more.
    expect(page.locator("[hx-trigger^=every]")).to_have_count(0, timeout=5_000)


def test_run_page_shows_outputs_artifacts_and_events_as_they_come_then_stops_polling(
    page_for, server, operator, make_runbook, cluster
):
    runbook = make_runbook(PRODUCING)
    run = services.run_create(runbook=runbook, params={}, user=operator, origin="api")
    page = page_for(operator)
    page.goto(f"{server.url}/runs/{run.number}/")
    page.evaluate("window.__notReloaded = true")
    results = page.locator("#run-results")
    expect(results).to_contain_text("No outputs yet")
    expect(results).to_contain_text("No artifacts yet")
    cluster()

    expect(results).to_contain_text("colour", timeout=30_000)
    expect(results).to_contain_text("teal")
    expect(results.locator("a[download]")).to_have_text("report.txt", timeout=10_000)
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=30_000)
    timeline = page.locator("#run-timeline li")
    expect(timeline.last).to_contain_text("run running → succeeded", timeout=10_000)
    assert page.evaluate("window.__notReloaded") is True
    expect(page.locator("[hx-trigger^=every]")).to_have_count(0, timeout=5_000)


def test_operator_cancels_a_long_run_with_a_reason(
    page_for, server, operator, make_runbook, cluster
):
    runbook = make_runbook(LONG)
    cluster()
    run = services.run_create(runbook=runbook, params={}, user=operator, origin="api")
    page = page_for(operator)
    page.goto(f"{server.url}/runs/{run.number}/")
    expect(page.locator("#run-status")).to_have_text("running", timeout=30_000)
    expect(page.locator("[data-log]")).to_contain_text("waiting a long time", timeout=30_000)
    page.click("summary:has-text('Cancel run')")
    page.fill("#cancel-reason", "wrong window")
    page.click("#cancel-panel button[type=submit]")
    expect(page.locator(".message-success")).to_contain_text("being cancelled")
    expect(page.locator("#run-status")).to_have_text("cancelled", timeout=40_000)
    expect(page.locator("#run-header")).to_contain_text("wrong window")
    run.refresh_from_db()
    assert run.status == "cancelled" and run.cancel_reason == "wrong window"


def test_operator_retries_a_failed_run_from_the_failed_step(
    page_for, server, operator, make_runbook, cluster
):
    runbook = make_runbook(FLAKY)
    failed = drain(services.run_create(runbook=runbook, params={}, user=operator, origin="api"))
    assert failed.status == "failed"
    cluster()
    page = page_for(operator)
    page.goto(f"{server.url}/runs/{failed.number}/")
    expect(page.locator(".callout-error")).to_contain_text("Step 2 (second) failed")
    page.click("button:has-text('Retry from failed step')")
    page.wait_for_url(re.compile(rf"/runs/(?!{failed.number}/)\d+/$"))
    retry = Run.objects.get(retried_from=failed)
    expect(page.locator("#run-status")).to_have_text("failed", timeout=30_000)
    expect(page.locator("#run-header")).to_contain_text(f"retry of #{failed.number}")
    wait_for_run(retry)
    assert retry.steps.get(key="first").status == "succeeded"
    assert retry.steps.get(key="first").attempt == 0  # reused, not run again


def test_user_creates_and_revokes_a_token(page_for, server, operator):
    page = page_for(operator)
    page.click("nav >> text=Tokens")
    page.fill("#id_name", "ci deploy")
    page.fill("#id_expires_in_days", "30")
    page.click("button:has-text('Create token')")
    secret = page.locator("[data-secret]").input_value()
    token = ApiToken.objects.get(user=operator)
    assert secret.startswith(token.token_key)
    page.click("button:has-text('Copy')")
    page.goto(f"{server.url}/settings/tokens/")
    expect(page.locator("[data-secret]")).to_have_count(0)
    expect(page.locator("table")).to_contain_text("ci deploy")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button:has-text('Revoke')")
    expect(page.locator(".message-success")).to_contain_text("was revoked")
    assert not ApiToken.objects.filter(user=operator).exists()


def test_viewer_sees_no_action_buttons_and_is_refused_when_posting(
    page_for, server, viewer, operator, make_runbook
):
    steady = make_runbook(STEADY)
    flaky = make_runbook(FLAKY)
    active = services.run_create(runbook=steady, params={}, user=operator, origin="api")
    failed = drain(services.run_create(runbook=flaky, params={}, user=operator, origin="api"))
    page = page_for(viewer)
    page.goto(f"{server.url}/runbooks/steady/")
    expect(page.locator("#run-form")).to_contain_text("needs the operator role")
    expect(page.locator("button:has-text('Run ')")).to_have_count(0)
    page.goto(f"{server.url}/runs/{active.number}/")
    expect(page.locator("#run-header")).to_be_visible()
    expect(page.locator("text=Cancel run")).to_have_count(0)
    page.goto(f"{server.url}/runs/{failed.number}/")
    expect(page.locator("text=Retry from")).to_have_count(0)

    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    headers = {"X-CSRFToken": csrf, "Referer": server.url}
    for url, form in [
        ("/runbooks/steady/run", {"batches": "2"}),
        (f"/runs/{active.number}/cancel", {"reason": "no"}),
        (f"/runs/{failed.number}/retry", {"from": "failed"}),
    ]:
        response = page.request.post(f"{server.url}{url}", form=form, headers=headers)
        assert response.status == 403, url
        assert "operator role" in response.text()
    assert Run.objects.count() == 2
    active.refresh_from_db()
    assert active.status == "queued"
