"""Runbook pages, the generated run form, the dashboard and API tokens."""

from django.db import connection
from django.test.utils import CaptureQueriesContext

from config.models import ApiToken
from runs.models import Run
from tests.conftest import drain

SIMPLE = """
slug: simple-{n}
name: Simple {n}
labels: {{team: t{n}}}
steps:
  - id: one
    shell: echo one
"""


def test_runbook_list_searches_and_filters_by_label(login, viewer, every_type, make_runbook):
    make_runbook(SIMPLE.format(n=1))
    client = login(viewer)
    page = client.get("/runbooks/").content.decode()
    assert "Every param type" in page and "Simple 1" in page
    page = client.get("/runbooks/", {"q": "every"}).content.decode()
    assert "Every param type" in page and "Simple 1" not in page
    page = client.get("/runbooks/", {"label": "team:t1"}).content.decode()
    assert "Simple 1" in page and "Every param type" not in page


def test_runbook_cards_render_the_description_as_safe_markdown(login, viewer, every_type):
    page = login(viewer).get("/runbooks/").content.decode()
    card = page[page.index('class="rb-desc"') :]
    card = card[: card.index("</div>")]
    assert "Shows <strong>every</strong> kind of param." in card
    assert "**" not in card
    assert "<script>" not in page and "&lt;script&gt;" not in card


def test_runbook_list_htmx_gets_the_grid_only(login, viewer, every_type):
    body = login(viewer).get("/runbooks/", {"q": "x"}, HTTP_HX_REQUEST="true").content.decode()
    assert body.strip().startswith('<div id="runbook-grid"')


def test_runbook_list_query_count_does_not_grow(
    login, viewer, make_runbook, start_run, django_assert_num_queries
):
    client = login(viewer)
    books = [make_runbook(SIMPLE.format(n=n)) for n in range(3)]
    for book in books:
        start_run(book)
    client.get("/runbooks/")
    with CaptureQueriesContext(connection) as queries:
        client.get("/runbooks/")
    few = len(queries)
    for n in range(3, 30):
        start_run(make_runbook(SIMPLE.format(n=n)))
    with django_assert_num_queries(few):
        client.get("/runbooks/")


def test_runbook_page_renders_description_safely_and_steps(login, viewer, every_type):
    page = login(viewer).get("/runbooks/every-type/").content.decode()
    assert "<strong>every</strong>" in page
    assert '<script>alert("x")</script>' not in page
    for text in ("2.1", "left", "parallel", "v1"):
        assert text in page


def test_runbook_page_shows_the_time_limits_of_steps_and_groups(login, viewer, make_runbook):
    make_runbook(
        """
        slug: limits
        name: Limits
        timeout: 1h
        steps:
          - id: box
            timeout: 15m
            steps: [{id: inner, shell: 'true', timeout: 1.5s, retries: 2}]
        """
    )
    page = login(viewer).get("/runbooks/limits/").content.decode()
    # Limits read as the author wrote them: "15m", not the "15m 00s" of a measured time.
    assert 'title="The whole group, from its start">15m limit' in page
    assert 'title="Each attempt">1.5s limit' in page
    assert "3 attempts" in page
    assert "times out after 1h" in page
    assert "1h 00m" not in page


def test_run_form_has_a_widget_per_type_with_defaults(login, operator, every_type):
    page = login(operator).get("/runbooks/every-type/").content.decode()
    assert 'name="service"' in page and 'value="api"' in page
    assert '<textarea name="notes"' in page
    assert 'type="number" name="replicas" value="2"' in page and 'min="1"' in page
    assert 'type="checkbox" name="dry_run"' in page and "checked" in page
    assert '<select name="region"' in page
    assert page.count('type="checkbox" name="zones"') == 3
    assert 'type="date" name="day"' in page
    assert 'type="datetime-local" name="at"' in page
    assert '<textarea name="extra"' in page
    assert 'type="password" name="password"' in page
    assert "<label" in page and "Replicas" in page


def test_invalid_run_form_shows_messages_beside_fields_and_starts_nothing(
    login, operator, every_type
):
    response = login(operator).post(
        "/runbooks/every-type/run",
        {"service": "Not Valid", "replicas": "9", "region": "eu", "zones": ["a"], "extra": "{"},
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert "Nothing was started" in page
    assert "must match the pattern" in page
    assert "must be at most 5" in page
    assert "must be valid JSON" in page
    assert Run.objects.count() == 0


def test_valid_run_form_starts_a_run_from_the_ui(login, operator, every_type):
    response = login(operator).post(
        "/runbooks/every-type/run",
        {
            "service": "web",
            "replicas": "3",
            "dry_run": "on",
            "region": "us",
            "zones": ["a", "c"],
            "extra": '{"k": 1}',
            "password": "s3cret",
            "password-again": "s3cret",
            "notes": "",  # as a browser sends an empty textarea
        },
    )
    run = Run.objects.get()
    assert response["Location"] == f"/runs/{run.number}/"
    assert run.origin == "ui"
    assert run.created_by == operator
    assert run.params["replicas"] == 3
    assert run.params["zones"] == ["a", "c"]
    assert run.params["extra"] == {"k": 1}
    assert run.params["password"] == "***"
    # Optional params left empty read as "—" on the run page, not as nothing.
    assert run.params["notes"] == ""
    page = login(operator).get(f"/runs/{run.number}/").content.decode()
    assert '<dt>notes</dt><dd class="mono">—</dd>' in page


def test_run_form_shows_a_params_pattern_as_help(login, operator, every_type):
    page = login(operator).get("/runbooks/every-type/").content.decode()
    assert "Must match the pattern <code>^[a-z]+$</code>" in page


def test_run_form_asks_for_a_secret_twice_and_starts_nothing_when_they_differ(
    login, operator, every_type
):
    client = login(operator)
    page = client.get("/runbooks/every-type/").content.decode()
    assert 'type="password" name="password-again"' in page
    assert "Type it again" in page
    form = {"service": "web", "region": "eu", "zones": ["a"], "password": "s3cret"}
    response = client.post("/runbooks/every-type/run", {**form, "password-again": "s3cert"})
    assert response.status_code == 400
    assert "does not match the value above; type both again" in response.content.decode()
    assert Run.objects.count() == 0
    response = client.post("/runbooks/every-type/run", {**form, "password-again": "s3cret"})
    assert response.status_code == 302
    assert Run.objects.count() == 1


def test_dashboard_shows_active_runs_failures_and_charts(
    login, viewer, every_type, flaky, start_run
):
    active = start_run(every_type)
    failed = drain(start_run(flaky))
    page = login(viewer).get("/").content.decode()
    assert f"/runs/{active.number}/" in page
    assert f"#{failed.number}" in page and "Recent failures" in page
    assert page.count('<svg class="chart"') == 2


def test_dashboard_empty_state_says_what_to_do(login, viewer):
    page = login(viewer).get("/").content.decode()
    assert "Nothing is running" in page
    assert "No runs in the last 14 days" in page
    assert "runbooks sync" in page


def test_dashboard_htmx_refresh_is_the_active_runs_only(login, viewer):
    body = login(viewer).get("/", HTTP_HX_REQUEST="true").content.decode()
    assert body.strip().startswith('<section id="active-runs"')


def test_token_create_shows_the_secret_once_and_lists_it(login, viewer):
    client = login(viewer)
    response = client.post("/settings/tokens/", {"name": "ci", "expires_in_days": "30"})
    page = response.content.decode()
    token = ApiToken.objects.get(user=viewer)
    assert token.name == "ci" and token.expiry is not None
    assert "data-secret" in page and token.token_key in page
    assert "no-store" in response["Cache-Control"]
    again = client.get("/settings/tokens/").content.decode()
    assert "data-secret" not in again
    assert "ci" in again and token.token_key in again


def test_token_create_needs_a_name(login, viewer):
    response = login(viewer).post("/settings/tokens/", {"name": ""})
    assert response.status_code == 400
    assert ApiToken.objects.count() == 0


def test_token_revoke(login, viewer):
    client = login(viewer)
    client.post("/settings/tokens/", {"name": "ci"})
    token = ApiToken.objects.get(user=viewer)
    response = client.post(f"/settings/tokens/{token.pk}/revoke", follow=True)
    assert "was revoked" in response.content.decode()
    assert not ApiToken.objects.filter(pk=token.pk).exists()


def test_token_revoke_needs_post(login, viewer):
    client = login(viewer)
    client.post("/settings/tokens/", {"name": "ci"})
    token = ApiToken.objects.get(user=viewer)
    assert client.get(f"/settings/tokens/{token.pk}/revoke").status_code == 405
