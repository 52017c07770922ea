"""Until the UI exists, the admin shows runbooks, runs, steps and logs, read-only."""

import pytest

from runs.services import run_create
from tests.conftest import drain


@pytest.fixture
def finished_run(make_runbook):
    runbook = make_runbook("slug: hello\nname: Hello\nsteps: [{id: hi, shell: echo hi}]")
    return drain(run_create(runbook=runbook, params={}, user=None, origin="cli"))


@pytest.mark.parametrize(
    "path",
    [
        "/admin/runs/run/",
        "/admin/runs/run/{run}/change/",
        "/admin/runs/step/",
        "/admin/runs/step/{step}/change/",
        "/admin/runs/logentry/",
        "/admin/runbooks/runbook/",
        "/admin/runbooks/runbookversion/",
    ],
)
def test_superuser_sees_runs_steps_and_logs(client, superuser, finished_run, path):
    client.force_login(superuser)
    step = finished_run.steps.get()
    response = client.get(path.format(run=finished_run.number, step=step.pk))
    assert response.status_code == 200
    if "step" in path and "change" in path:
        assert b"hi" in response.content  # the step's log line


def test_admin_cannot_add_change_or_delete(client, superuser, finished_run):
    client.force_login(superuser)
    assert client.get("/admin/runs/run/add/").status_code == 403
    assert client.get(f"/admin/runs/run/{finished_run.number}/delete/").status_code == 403
    response = client.post(f"/admin/runs/run/{finished_run.number}/change/", {"status": "failed"})
    assert response.status_code == 403
    finished_run.refresh_from_db()
    assert finished_run.status == "succeeded"


def test_admin_refuses_anonymous_and_non_staff(client, user, finished_run):
    assert client.get("/admin/runs/run/").status_code == 302
    client.force_login(user)
    assert client.get("/admin/runs/run/").status_code == 302


def test_healthz_answers_without_login(client, db):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
