"""The runs list and a run's page: filters, paging, query counts, live fragments, logs,
cancel and retry."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from runbooks.services import runbook_archive
from runs.models import LogEntry, LogLevel, Run
from runs.secrets import unseal
from runs.services import logs_append, run_cancel
from tests.conftest import drain, make_user


def _fragment(client, url: str, target: str):
    return client.get(url, HTTP_HX_REQUEST="true", HTTP_HX_TARGET=target)


# --- List -----------------------------------------------------------------------------------


def test_run_list_shows_runs_newest_first(login, viewer, every_type, start_run):
    first = start_run(every_type)
    second = start_run(every_type)
    page = login(viewer).get("/runs/").content.decode()
    assert page.index(f"#{second.number}") < page.index(f"#{first.number}")


def test_run_list_says_just_now_for_a_run_started_under_a_minute_ago(
    login, viewer, every_type, start_run
):
    fresh = start_run(every_type)
    older = start_run(every_type)
    Run.objects.filter(pk=older.pk).update(created_at=timezone.now() - timedelta(hours=3))
    page = login(viewer).get("/runs/").content.decode()
    assert "just now" in page
    assert "3\xa0hours ago" in page
    assert "0\xa0minutes" not in page
    assert f"#{fresh.number}" in page


def test_run_list_says_how_the_steps_ended(login, viewer, make_runbook, start_run):
    runbook = make_runbook(
        """
        slug: mixed
        name: Mixed
        steps:
          - {id: one, shell: echo one}
          - {id: two, shell: exit 3}
          - {id: three, shell: echo never}
        """
    )
    drain(start_run(runbook))
    page = login(viewer).get("/runs/").content.decode()
    assert "1/3 succeeded, 1 failed, 1 skipped" in page


def test_run_list_filters_by_status_and_runbook(login, viewer, every_type, flaky, start_run):
    active = start_run(every_type)
    failed = drain(start_run(flaky))
    client = login(viewer)
    page = client.get("/runs/", {"status": "failed"}).content.decode()
    assert f"/runs/{failed.number}/" in page
    assert f"/runs/{active.number}/" not in page
    page = client.get("/runs/", {"runbook": "every-type"}).content.decode()
    assert f"/runs/{active.number}/" in page
    assert f"/runs/{failed.number}/" not in page


def test_run_list_filters_by_label_and_who_and_date(login, viewer, operator, every_type, start_run):
    labelled = start_run(every_type, user=operator, labels={"env": "prod"})
    other = start_run(every_type)
    client = login(viewer)
    page = client.get("/runs/", {"label": "env:prod"}).content.decode()
    assert f"/runs/{labelled.number}/" in page and f"/runs/{other.number}/" not in page
    page = client.get("/runs/", {"created_by": "otto"}).content.decode()
    assert f"/runs/{labelled.number}/" in page and f"/runs/{other.number}/" not in page
    tomorrow = (timezone.now() + timedelta(days=1)).date().isoformat()
    page = client.get("/runs/", {"since": tomorrow}).content.decode()
    assert "No runs match these filters" in page


def test_run_list_says_which_filter_it_cannot_use(login, viewer, every_type, start_run):
    start_run(every_type)
    page = login(viewer).get("/runs/", {"status": "bogus"}).content.decode()
    assert 'Status “<span class="mono">bogus</span>”: unknown value &#x27;bogus&#x27;;' in page


def test_run_list_shows_a_bad_date_above_the_table_also_when_htmx_asks(
    login, viewer, every_type, start_run
):
    run = start_run(every_type)
    client = login(viewer)
    for headers in ({}, {"HTTP_HX_REQUEST": "true"}):
        response = client.get("/runs/", {"since": "2026-13-45"}, **headers)
        assert response.status_code == 200
        body = response.content.decode()
        table = body[body.index('<section id="run-table"') :]
        assert table.index('role="alert"') < table.index("<table")
        assert "could not be used, so the runs below ignore it" in table
        assert 'From “<span class="mono">2026-13-45</span>”: Enter a valid date/time.' in table
        assert f"/runs/{run.number}/" in table


def test_run_list_pages_with_before(login, viewer, every_type, start_run):
    runs = [start_run(every_type) for _ in range(55)]
    client = login(viewer)
    page = client.get("/runs/").content.decode()
    assert page.count('<td class="title-cell">') == 50
    oldest_shown = runs[5].number
    assert f"?before={oldest_shown}" in page
    page = client.get("/runs/", {"before": oldest_shown}).content.decode()
    assert page.count('<td class="title-cell">') == 5
    assert "Older runs" not in page


@pytest.mark.parametrize("before", ["%C2%B2", "%EF%BC%91"])  # superscript 2, fullwidth 1
def test_run_list_ignores_a_before_that_is_not_ascii_digits(
    login, viewer, every_type, start_run, before
):
    run = start_run(every_type)
    response = login(viewer).get(f"/runs/?before={before}")
    assert response.status_code == 200
    assert f"/runs/{run.number}/" in response.content.decode()


def test_run_list_htmx_request_gets_the_table_only(login, viewer, every_type, start_run):
    start_run(every_type)
    response = login(viewer).get("/runs/", {"status": "queued"}, HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert body.lstrip().startswith('<section id="run-table"')
    assert "<html" not in body


def _count_queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


def test_run_list_query_count_does_not_grow_with_runs(
    login, viewer, every_type, flaky, start_run, django_assert_num_queries
):
    client = login(viewer)
    for _ in range(3):
        start_run(every_type, labels={"a": "b"})
    client.get("/runs/")  # warm the session and caches
    few = _count_queries(client, "/runs/")
    for _ in range(27):
        start_run(flaky, user=viewer)
    with django_assert_num_queries(few):
        client.get("/runs/")


# --- A run's page ---------------------------------------------------------------------------


def test_run_page_shows_header_steps_params_and_events(login, viewer, every_type, start_run):
    run = start_run(
        every_type, user=viewer, params={"service": "web", "password": "hunter2"}, origin="ui"
    )
    page = login(viewer).get(f"/runs/{run.number}/").content.decode()
    assert run.title in page
    assert "hunter2" not in page and "***" in page
    for text in ("1", "hello", "2.1", "left", "parallel", "shell", "started from ui"):
        assert text in page
    assert 'hx-trigger="every 1s"' in page


def test_run_page_masks_a_secret_typed_inside_another_param(login, viewer, every_type, start_run):
    run = start_run(every_type, params={"notes": "log in with hunter2", "password": "hunter2"})
    client = login(viewer)
    for page in (
        client.get(f"/runs/{run.number}/").content.decode(),
        _fragment(client, f"/runs/{run.number}/", "run-header").content.decode(),
    ):
        assert "hunter2" not in page and "log in with ***" in page


@pytest.mark.parametrize("target", ["run-header", "run-steps", "run-log", "run-results"])
def test_htmx_fragments_are_the_partial_only(login, viewer, every_type, start_run, target):
    run = start_run(every_type)
    response = _fragment(login(viewer), f"/runs/{run.number}/", target)
    body = response.content.decode().strip()
    assert body.startswith(f'<section id="{target}"')
    assert "<html" not in body and "<nav" not in body


def test_pollers_stop_once_the_run_is_terminal(login, viewer, flaky, start_run):
    run = drain(start_run(flaky))
    client = login(viewer)
    for target in ("run-header", "run-steps", "run-results"):
        body = _fragment(client, f"/runs/{run.number}/", target).content.decode()
        assert "hx-trigger" not in body
    body = client.get(f"/runs/{run.number}/log?after=0", HTTP_HX_REQUEST="true").content.decode()
    assert "hx-trigger" not in body
    assert "first" in body  # the lines are there


def test_active_run_pollers_keep_polling(login, viewer, every_type, start_run):
    run = start_run(every_type)
    client = login(viewer)
    for target in ("run-header", "run-steps"):
        body = _fragment(client, f"/runs/{run.number}/", target).content.decode()
        assert 'hx-trigger="every 1s"' in body
    body = _fragment(client, f"/runs/{run.number}/", "run-results").content.decode()
    assert 'hx-trigger="every 2s"' in body


def test_results_fragment_has_the_outputs_artifacts_and_events_so_far(
    login, viewer, flaky, start_run
):
    run = drain(start_run(flaky))
    body = _fragment(login(viewer), f"/runs/{run.number}/", "run-results").content.decode()
    assert "<h2>Outputs</h2>" in body and "<h2>Artifacts</h2>" in body
    assert "<h2>Timeline</h2>" in body
    assert "Step 2 (second) failed: exit code 3" in body  # the run's last event


def _log(run: Run, message: str, level: int = LogLevel.INFO) -> LogEntry:
    entry = LogEntry(
        run=run, timestamp=timezone.now(), level=level, stream="stdout", message=message
    )
    logs_append([entry])
    return entry


def test_log_poller_returns_only_lines_after_its_seq(login, viewer, every_type, start_run):
    run = start_run(every_type)
    old = _log(run, "old line")
    _log(run, "new line")
    body = login(viewer).get(f"/runs/{run.number}/log", {"after": old.seq}, HTTP_HX_REQUEST="true")
    text = body.content.decode()
    assert "new line" in text and "old line" not in text
    assert 'id="log-tail"' in text and 'hx-trigger="every 1s"' in text


def test_log_level_filter_and_step_selection(login, viewer, every_type, start_run):
    run = start_run(every_type)
    _log(run, "chatty", LogLevel.DEBUG)
    _log(run, "broken", LogLevel.ERROR)
    step = run.steps.get(key="left")
    logs_append(
        [LogEntry(run=run, step=step, timestamp=timezone.now(), level=20, message="on left")]
    )
    client = login(viewer)
    page = _fragment(client, f"/runs/{run.number}/?level=error", "run-log").content.decode()
    assert "broken" in page and "chatty" not in page
    page = _fragment(client, f"/runs/{run.number}/?step=left", "run-log").content.decode()
    assert "on left" in page and "broken" not in page
    page = _fragment(client, f"/runs/{run.number}/?step=group", "run-log").content.decode()
    assert "on left" in page and "broken" not in page


def test_long_log_shows_its_tail_and_loads_earlier_lines(login, viewer, every_type, start_run):
    run = start_run(every_type)
    logs_append(
        LogEntry(run=run, timestamp=timezone.now(), level=20, stream="stdout", message=f"line {i}")
        for i in range(1200)
    )
    client = login(viewer)
    page = client.get(f"/runs/{run.number}/").content.decode()
    assert page.count('class="log-line') == 1000
    assert "line 1199" in page and ">line 199<" not in page
    assert "Load earlier lines" in page
    first = LogEntry.objects.filter(run=run).order_by("seq")[200].seq
    earlier = client.get(
        f"/runs/{run.number}/log", {"before": first}, HTTP_HX_REQUEST="true"
    ).content.decode()
    assert earlier.count('class="log-line') == 200
    assert ">line 0<" in earlier and "Load earlier lines" not in earlier


@pytest.mark.parametrize("param", ["before", "after"])
@pytest.mark.parametrize("value", ["%C2%B2", "%EF%BC%91"])  # superscript 2, fullwidth 1
def test_log_fragment_ignores_a_seq_that_is_not_ascii_digits(
    login, viewer, every_type, start_run, param, value
):
    run = start_run(every_type)
    _log(run, "first line")
    response = login(viewer).get(f"/runs/{run.number}/log?{param}={value}", HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert "first line" in response.content.decode()


def test_log_download_is_plain_text(login, viewer, every_type, start_run):
    run = start_run(every_type)
    _log(run, "hello world")
    response = login(viewer).get(f"/runs/{run.number}/log.txt")
    assert response["Content-Type"].startswith("text/plain")
    assert "attachment" in response["Content-Disposition"]
    assert "hello world" in b"".join(response.streaming_content).decode()


def test_finished_run_page_shows_outputs_and_error(login, viewer, flaky, start_run):
    run = drain(start_run(flaky))
    page = login(viewer).get(f"/runs/{run.number}/").content.decode()
    assert "Why it failed" in page
    assert 'hx-trigger="every 1s"' not in page


# --- Actions --------------------------------------------------------------------------------


def test_operator_cancels_a_run_with_a_reason(login, operator, every_type, start_run):
    run = start_run(every_type)
    response = login(operator).post(f"/runs/{run.number}/cancel", {"reason": "wrong service"})
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.status in ("cancelling", "cancelled")
    assert run.cancel_reason == "wrong service"


def test_cancel_needs_a_reason(login, operator, every_type, start_run):
    run = start_run(every_type)
    client = login(operator)
    client.post(f"/runs/{run.number}/cancel", {"reason": "  "})
    run.refresh_from_db()
    assert run.status == "queued"


def test_cancel_of_a_finished_run_says_why(login, operator, flaky, start_run):
    run = drain(start_run(flaky))
    response = login(operator).post(f"/runs/{run.number}/cancel", {"reason": "late"}, follow=True)
    assert "only active runs can be cancelled" in response.content.decode()


def test_operator_retries_from_the_failed_step(login, operator, flaky, start_run):
    run = drain(start_run(flaky))
    response = login(operator).post(f"/runs/{run.number}/retry", {"from": "failed"})
    new = Run.objects.get(retried_from=run)
    assert response["Location"] == f"/runs/{new.number}/"
    assert new.origin == "ui"
    assert new.steps.get(key="first").status == "succeeded"
    page = login(operator).get(f"/runs/{new.number}/").content.decode()
    assert ">reused</span>" in page


def test_operator_retries_from_start(login, operator, flaky, start_run):
    run = drain(start_run(flaky))
    login(operator).post(f"/runs/{run.number}/retry", {"from": "start"})
    new = Run.objects.get(retried_from=run)
    assert new.steps.get(key="first").status != "succeeded"


def _as_the_browser_sends(form) -> dict:
    """The retry form's fields as a browser posts them untouched."""
    data = {}
    for field in form:
        value = field.value()
        if field.widget_type == "checkbox":
            if value:
                data[field.name] = "on"
        elif isinstance(value, str):
            data[field.name] = value.replace("\n", "\r\n")  # textareas post CRLF
        elif value is not None:
            data[field.name] = value
    return data


def test_retry_with_changes_sends_only_the_edits_and_keeps_the_rest(
    login, operator, every_type, start_run
):
    given = {
        "service": "web", "notes": "first\nsecond", "replicas": 3, "ratio": 0.5,
        "region": "us", "zones": ["a", "c"], "day": "2026-12-01", "at": "2026-12-01T09:30",
        "extra": {"k": [1, 2]}, "password": "s3cret",
    }  # fmt: skip
    run = drain(start_run(every_type, user=operator, params=given))
    client = login(operator)

    shown = client.get(f"/runs/{run.number}/retry/edit")
    assert shown.status_code == 200
    assert "s3cret" not in shown.content.decode()
    data = {**_as_the_browser_sends(shown.context["form"]), "replicas": "4", "from": "start"}
    response = client.post(f"/runs/{run.number}/retry/edit", data)

    new = Run.objects.get(retried_from=run)
    assert response["Location"] == f"/runs/{new.number}/"
    assert new.params == {**run.params, "replicas": 4}
    assert new.params["notes"] == "first\nsecond"  # no \r from the textarea
    assert unseal(new.sealed_secrets) == {"password": "s3cret"}  # left empty: kept


def test_retry_with_changes_of_someone_elses_run_asks_for_its_secrets_by_the_field(
    login, operator, every_type, start_run
):
    run = drain(start_run(every_type, user=operator, params={"password": "s3cret"}))
    client = login(make_user("oscar", "operator"))
    form = client.get(f"/runs/{run.number}/retry/edit").context["form"]

    data = {**_as_the_browser_sends(form), "service": "elsewhere", "from": "start"}
    refused = client.post(f"/runs/{run.number}/retry/edit", data)

    assert refused.status_code == 400
    assert refused.context["form"].errors == {
        "password": ["give it again: other params changed and you did not start this run"]
    }
    assert not Run.objects.filter(retried_from=run).exists()


def test_retry_with_changes_offers_the_failed_step_only_where_one_failed(
    login, operator, every_type, flaky, start_run
):
    failed = drain(start_run(flaky))
    cancelled = run_cancel(run=start_run(every_type), user=operator, reason="wrong day")
    client = login(operator)

    assert 'value="failed"' in client.get(f"/runs/{failed.number}/retry/edit").content.decode()
    page = client.get(f"/runs/{cancelled.number}/retry/edit").content.decode()
    assert 'value="failed"' not in page and 'name="from" value="start"' in page


def test_retry_with_changes_is_refused_for_an_active_run(login, operator, every_type, start_run):
    run = start_run(every_type)
    response = login(operator).get(f"/runs/{run.number}/retry/edit", follow=True)
    assert f"Run #{run.number} cannot be retried: it is still queued." in response.content.decode()
    assert login(operator).get(f"/runs/{run.number}/").status_code == 200


def test_a_failed_run_offers_a_retry_from_the_failed_step(login, operator, flaky, start_run):
    run = drain(start_run(flaky))
    page = login(operator).get(f"/runs/{run.number}/").content.decode()
    assert "Retry from start" in page
    assert "Retry from failed step" in page


def test_a_cancelled_run_where_no_step_failed_offers_only_a_full_retry(
    login, operator, flaky, start_run
):
    run = start_run(flaky, user=operator)
    run_cancel(run=run, user=operator, reason="wrong window")
    run = drain(run)
    assert run.status == "cancelled"
    page = login(operator).get(f"/runs/{run.number}/").content.decode()
    assert "Retry from start" in page
    assert "Retry from failed step" not in page


def test_a_run_of_an_archived_runbook_offers_no_retry(login, operator, flaky, start_run):
    run = drain(start_run(flaky))
    runbook_archive(runbook=flaky, user=operator)

    page = login(operator).get(f"/runs/{run.number}/").content.decode()
    refused = login(operator).post(f"/runs/{run.number}/retry", {"from": "start"}, follow=True)

    assert "Retry from start" not in page
    assert "Its runbook is archived, so it cannot be retried." in page
    assert "archived; it cannot be run" in refused.content.decode()
    assert not Run.objects.filter(retried_from=run).exists()


def test_a_running_group_shows_when_its_timeout_ends_it(login, viewer, make_runbook, start_run):
    runbook = make_runbook(
        """
        slug: boxed
        name: Boxed
        steps:
          - id: box
            timeout: 10m
            steps: [{id: inner, shell: 'true'}]
        """
    )
    run = start_run(runbook)
    box = run.steps.get(key="box")
    assert box.status == "running" and box.deadline is not None
    page = login(viewer).get(f"/runs/{run.number}/").content.decode()
    ends = timezone.localtime(box.deadline).strftime("%H:%M:%S")
    assert f'title="The group\'s timeout">ends by {ends}</span>' in page
    drain(run)
    page = login(viewer).get(f"/runs/{run.number}/").content.decode()
    assert "ends by" not in page
