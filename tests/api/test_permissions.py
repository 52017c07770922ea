"""Who may call what: every endpoint as every kind of caller, with the exact status each gets."""

from typing import Any

import pytest
import yaml
from django.conf import settings
from django.db.models import Q
from django.middleware.csrf import _get_new_csrf_string
from django.test import Client
from django.utils import timezone

from config.models import ApiToken
from runbooks.models import Runbook, RunbookVersion
from runs.models import Artifact, Run
from tests.api.conftest import DEPLOY, api_client, bearer
from tests.conftest import drain

IDENTITIES = ("anonymous", "expired", "no_role", "viewer", "operator", "author", "superuser")

# fmt: off
MATRIX = [
    # method  path                                   anonymous expired no_role viewer operator author superuser
    ("GET",    "/runbooks",                             401,   401,    403,    200,   200,    200,   200),
    ("POST",   "/runbooks",                             401,   401,    403,    403,   403,    201,   201),
    ("GET",    "/runbooks/deploy",                      401,   401,    403,    200,   200,    200,   200),
    ("PUT",    "/runbooks/deploy",                      401,   401,    403,    403,   403,    200,   200),
    ("DELETE", "/runbooks/deploy",                      401,   401,    403,    403,   403,    204,   204),
    ("GET",    "/runbooks/deploy/versions",             401,   401,    403,    200,   200,    200,   200),
    ("POST",   "/runs",                                 401,   401,    403,    403,   202,    202,   202),
    ("GET",    "/runs",                                 401,   401,    403,    200,   200,    200,   200),
    ("GET",    "/runs/{finished}",                      401,   401,    403,    200,   200,    200,   200),
    ("GET",    "/runs/{finished}/steps",                401,   401,    403,    200,   200,    200,   200),
    ("GET",    "/runs/{finished}/logs",                 401,   401,    403,    200,   200,    200,   200),
    ("GET",    "/runs/{finished}/outputs",              401,   401,    403,    200,   200,    200,   200),
    ("GET",    "/runs/{finished}/artifacts",            401,   401,    403,    200,   200,    200,   200),
    ("GET",    "/artifacts/{artifact}/download",        401,   401,    403,    200,   200,    200,   200),
    ("POST",   "/runs/{active}/cancel",                 401,   401,    403,    403,   200,    200,   200),
    ("POST",   "/runs/{finished}/retry",                401,   401,    403,    403,   202,    202,   202),
    ("GET",    "/stats/runs",                           401,   401,    403,    200,   200,    200,   200),
    ("GET",    "/tokens",                               401,   401,    200,    200,   200,    200,   200),
    ("POST",   "/tokens",                               401,   401,    201,    201,   201,    201,   201),
    ("DELETE", "/tokens/{token}",                       401,   401,    204,    204,   204,    204,   204),
    ("GET",    "/me",                                   401,   401,    200,    200,   200,    200,   200),
]
# fmt: on

NEW_RUNBOOK = {"slug": "brand-new", "name": "Brand new", "steps": [{"id": "a", "shell": "true"}]}
EDITED_DEPLOY = {**yaml.safe_load(DEPLOY), "name": "Deploy, edited"}
BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/runbooks"): NEW_RUNBOOK,
    ("PUT", "/runbooks/deploy"): EDITED_DEPLOY,
    ("POST", "/runs"): {"runbook": "deploy", "params": {"service": "web"}},
    ("POST", "/runs/{active}/cancel"): {"reason": "matrix"},
    ("POST", "/runs/{finished}/retry"): {"from": "start"},
    ("POST", "/tokens"): {"name": "ci"},
}

CASES = [
    pytest.param(method, path, identity, code, id=f"{method} {path} as {identity}")
    for method, path, *codes in MATRIX
    for identity, code in zip(IDENTITIES, codes, strict=True)
]


def state() -> tuple:
    """What a write could change; a refused request must leave it as it was."""
    live_tokens = ApiToken.objects.filter(Q(expiry__isnull=True) | Q(expiry__gt=timezone.now()))
    return (
        sorted(Run.objects.values_list("number", "status")),
        sorted(Runbook.objects.values_list("slug", "name", "archived_at")),
        RunbookVersion.objects.count(),
        sorted(live_tokens.values_list("pk", flat=True)),
    )


@pytest.fixture
def caller(request):
    """(user, client) for an identity name; the client sends that user's Bearer token."""

    def make(identity: str):
        if identity == "anonymous":
            return None, api_client()
        if identity == "expired":
            secret = request.getfixturevalue("expired_secret")
            return ApiToken.objects.get().user, api_client(secret)
        fixture = {"no_role": "outsider"}.get(identity, identity)
        user = request.getfixturevalue(fixture)
        return user, api_client(bearer(user, name="session-of-test")[1])

    return make


@pytest.mark.parametrize(("method", "path", "identity", "expected"), CASES)
def test_endpoint_answers_each_caller_with_its_status(
    method, path, identity, expected, caller, deploy, start_run, author
):
    user, client = caller(identity)
    # What the path needs, made only when it is used (executing a run takes a moment).
    values: dict[str, Any] = {}
    if "{finished}" in path or "{artifact}" in path:
        finished = drain(start_run(deploy, user=author))
        assert finished.status == "succeeded"
        values["finished"] = finished.number
        values["artifact"] = Artifact.objects.get(run=finished).pk
    if "{active}" in path:
        active = start_run(deploy, user=author)
        assert not active.is_terminal
        values["active"] = active.number
    if "{token}" in path:
        owner = user if user is not None and identity != "expired" else author
        values["token"] = bearer(owner, name="to-revoke")[0].pk
    runs_before = Run.objects.count()
    before = state()

    url = "/api/v1" + path.format(**values)
    body = BODIES.get((method, path))
    response = getattr(client, method.lower())(url, body, format="json")

    assert response.status_code == expected, response.content
    if expected in (401, 403):
        assert state() == before  # refused, so nothing changed
    if expected == 401:
        assert response.json()["error"] == "unauthenticated"
        assert response["WWW-Authenticate"] == "Bearer"
    elif expected == 403:
        assert response.json()["error"] == "permission-denied"
    elif method != "GET":
        assert state() != before  # allowed, so the write happened
    if expected == 202:
        assert Run.objects.count() == runs_before + 1


def test_expired_token_is_refused_even_for_reads(expired_secret):
    response = api_client(expired_secret).get("/api/v1/me")
    assert response.status_code == 401
    assert response.json() == {
        "error": "unauthenticated",
        "message": "Invalid token.",
        "details": {},
    }


def test_unknown_bearer_token_is_refused(db):
    response = api_client("sw_" + "x" * 60).get("/api/v1/runs")
    assert response.status_code == 401
    assert response.json()["error"] == "unauthenticated"


# --- Session auth ---------------------------------------------------------------------------


@pytest.fixture
def session(operator) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    return client


def test_session_reads_work_without_a_token(session, deploy):
    response = session.get("/api/v1/me")
    assert response.status_code == 200
    assert response.json()["auth"] == "session"
    assert session.get("/api/v1/runbooks").status_code == 200


def test_session_post_without_csrf_is_refused(session, deploy):
    response = session.post("/api/v1/runs", {"runbook": "deploy"}, content_type="application/json")
    assert response.status_code == 403
    body = response.json()
    assert body["error"] == "permission-denied"
    assert "CSRF" in body["message"]
    assert not Run.objects.exists()


def test_session_post_with_csrf_token_starts_the_run(session, deploy):
    csrf = _get_new_csrf_string()
    session.cookies[settings.CSRF_COOKIE_NAME] = csrf
    response = session.post(
        "/api/v1/runs",
        {"runbook": "deploy"},
        content_type="application/json",
        HTTP_X_CSRFTOKEN=csrf,
    )
    assert response.status_code == 202, response.content
    assert Run.objects.get().created_by.username == "otto"


def test_bearer_token_needs_no_csrf(operator, deploy):
    client = Client(enforce_csrf_checks=True)
    secret = bearer(operator)[1]
    response = client.post(
        "/api/v1/runs",
        {"runbook": "deploy"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )
    assert response.status_code == 202


def test_session_of_a_viewer_cannot_start_runs_even_with_csrf(viewer, deploy):
    client = Client(enforce_csrf_checks=True)
    client.force_login(viewer)
    csrf = _get_new_csrf_string()
    client.cookies[settings.CSRF_COOKIE_NAME] = csrf
    response = client.post(
        "/api/v1/runs",
        {"runbook": "deploy"},
        content_type="application/json",
        HTTP_X_CSRFTOKEN=csrf,
    )
    assert response.status_code == 403
    assert not Run.objects.exists()
