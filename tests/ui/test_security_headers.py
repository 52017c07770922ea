"""The Content-Security-Policy every page carries, and the rule it relies on: no page has an
inline script or event handler, which the policy would block (and an injection would need)."""

from html.parser import HTMLParser

import pytest

from tests.approvals.test_approvals import GATED, person, waiting_run
from tests.conftest import drain


class _Scripts(HTMLParser):
    """Collects inline scripts and `on...=` handler attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.inline: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "script" and "src" not in names and names.get("type") != "application/json":
            self.inline.append(self.get_starttag_text() or tag)
        self.inline += [f"{tag} {name}=" for name in names if name.startswith("on")]


@pytest.fixture
def pages(make_runbook, every_type, flaky, start_run, superuser) -> list[str]:
    gated = make_runbook(GATED.replace("REQUIRED", "1").replace("SELF", "true"))
    _, approval = waiting_run(gated, person("olivia", "operator"))
    failed = drain(start_run(flaky, user=superuser))
    return [
        "/",
        "/runs/",
        f"/runs/{failed.number}/",
        f"/runs/{failed.number}/retry/edit",
        f"/runs/{approval.run.number}/",
        "/runbooks/",
        f"/runbooks/{every_type.slug}/",
        "/approvals/",
        f"/approvals/{approval.pk}/",
        "/settings/tokens/",
        "/admin/",
        "/admin/runs/run/",
        "/api/docs/",
    ]


def test_every_page_carries_the_policy_and_no_inline_script(client, superuser, pages):
    client.force_login(superuser)
    for url in pages:
        response = client.get(url)
        assert response.status_code == 200, url
        policy = response["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy, url
        parser = _Scripts()
        parser.feed(response.content.decode())
        assert parser.inline == [], url


def test_the_sign_in_page_carries_it_too(client):
    response = client.get("/accounts/login/")
    assert "default-src 'self'" in response["Content-Security-Policy"]


def test_the_apis_json_answers_go_without_it(client, superuser):
    # A policy governs documents only; building it is 5 % of an API read.
    client.force_login(superuser)
    response = client.get("/api/v1/me")
    assert response.status_code == 200
    assert "Content-Security-Policy" not in response
