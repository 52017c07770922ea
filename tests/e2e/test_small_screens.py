"""A phone, 390 px wide: no page scrolls sideways, run tables keep each run's status in view,
the navigation fits, and log lines leave most of their width to the message."""

import pytest
from playwright.sync_api import expect

from runs import services
from tests.conftest import drain, make_user

pytestmark = pytest.mark.timeout(120)

PHONE = {"width": 390, "height": 844}

FLAKY = """
slug: flaky
name: Flaky deploy of the billing service to every region at once
steps:
  - {id: first, name: First, shell: echo first}
  - {id: second, name: Second, shell: exit 3}
"""


@pytest.fixture
def operator(transactional_db):
    return make_user("otto", "operator")


def _right_edge(locator) -> float:
    box = locator.bounding_box()
    assert box is not None
    return box["x"] + box["width"]


def test_pages_fit_a_phone_and_keep_the_status_in_view(page_for, server, operator, make_runbook):
    runbook = make_runbook(FLAKY)
    failed = drain(services.run_create(runbook=runbook, params={}, user=operator, origin="api"))
    active = services.run_create(runbook=runbook, params={}, user=operator, origin="api")
    page = page_for(operator)
    page.set_viewport_size(PHONE)

    for path in (
        "/",
        "/runs/",
        f"/runs/{failed.number}/",
        "/runbooks/",
        "/runbooks/flaky/",
        "/approvals/",
        "/settings/tokens/",
    ):
        page.goto(f"{server.url}{path}")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{path} is {width}px wide"
        nav = page.locator(".mainnav")
        assert nav.evaluate("n => n.scrollWidth <= n.clientWidth"), f"{path}: the nav overflows"
        for link in ("Runbooks", "Runs", "Approvals"):
            expect(nav.get_by_role("link", name=link, exact=True)).to_be_visible()

    for path, table in (("/runs/", "#run-table"), ("/", "#active-runs")):
        page.goto(f"{server.url}{path}")
        rows = page.locator(f"{table} tbody tr")
        expect(rows.first).to_be_visible()
        for row in rows.all():
            badge = row.locator(".badge")
            expect(badge).to_be_visible()
            assert _right_edge(badge) <= PHONE["width"], f"{path}: a status is off screen"
    expect(page.locator(f"#active-runs a.strong[href='/runs/{active.number}/']")).to_be_visible()

    page.goto(f"{server.url}/runs/{failed.number}/")
    line = page.locator(".log-line").first
    expect(line).to_be_visible()
    # The time stays on one line, and the message starts in the first quarter of the line.
    rows = line.locator("time").evaluate(
        "t => { const r = document.createRange(); r.selectNodeContents(t);"
        " return new Set([...r.getClientRects()].map(b => Math.round(b.top))).size; }"
    )
    assert rows == 1, f"the time wraps onto {rows} lines"
    box, message = line.bounding_box(), line.locator(".l-msg").bounding_box()
    assert message["x"] - box["x"] < box["width"] / 4, (box, message)
