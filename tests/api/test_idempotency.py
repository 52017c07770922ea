"""`Idempotency-Key` on POSTs: replays, reuse with another body, per-user keys, races, expiry."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from config.models import IdempotencyRecord
from runs.models import Run
from tests.api.conftest import api_client, bearer, race
from tests.conftest import make_user

START = {"runbook": "deploy", "params": {"service": "web"}}


@pytest.fixture
def api(operator, as_user):
    return as_user(operator)


def post(client, body, key: str, path: str = "/api/v1/runs"):
    return client.post(path, body, format="json", HTTP_IDEMPOTENCY_KEY=key)


def test_replay_returns_the_first_response_and_creates_nothing(api, deploy):
    first = post(api, START, "k-1")
    assert first.status_code == 202
    assert "Idempotent-Replayed" not in first

    again = post(api, START, "k-1")

    assert again.status_code == 202
    assert again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert again["Content-Type"] == "application/json"
    assert Run.objects.count() == 1


def test_requests_without_a_key_are_not_deduplicated(api, deploy):
    api.post("/api/v1/runs", START, format="json")
    api.post("/api/v1/runs", START, format="json")
    assert Run.objects.count() == 2
    assert not IdempotencyRecord.objects.exists()


def test_different_keys_create_different_runs(api, deploy):
    a = post(api, START, "k-a").json()
    b = post(api, START, "k-b").json()
    assert a["number"] != b["number"]
    assert Run.objects.count() == 2


def test_same_key_with_another_body_is_422(api, deploy):
    post(api, START, "k-1")

    response = post(api, {**START, "params": {"service": "db"}}, "k-1")

    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "idempotency-key-reused"
    assert "Idempotency-Key" in body["details"]
    assert Run.objects.count() == 1


def test_the_same_json_spaced_or_ordered_otherwise_is_the_same_request(api, deploy):
    first = api.post(
        "/api/v1/runs",
        '{"runbook": "deploy", "params": {"service": "web"}}',
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="k-json",
    )
    again = api.post(
        "/api/v1/runs",
        '{"params":{"service":"web"},"runbook":"deploy"}',
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="k-json",
    )
    assert first.status_code == again.status_code == 202
    assert again["Idempotent-Replayed"] == "true"
    assert Run.objects.count() == 1


def test_same_key_on_another_endpoint_is_422(api, deploy):
    run = post(api, START, "k-1").json()
    response = post(api, START, "k-1", path=f"/api/v1/runs/{run['number']}/cancel")
    assert response.status_code == 422
    assert Run.objects.get().status in {"queued", "running"}  # not cancelled


def test_keys_are_per_user(api, deploy, as_user):
    other = as_user(make_user("oscar", "operator"))
    mine = post(api, START, "shared-key")
    theirs = post(other, START, "shared-key")

    assert theirs.status_code == 202
    assert "Idempotent-Replayed" not in theirs
    assert theirs.json()["number"] != mine.json()["number"]
    assert theirs.json()["created_by"] == {"username": "oscar"}
    assert Run.objects.count() == 2


def test_a_rejected_request_is_replayed_as_rejected(api, deploy):
    bad = {"runbook": "deploy", "params": {"replicas": 99}}
    first = post(api, bad, "k-bad")
    assert first.status_code == 400
    again = post(api, bad, "k-bad")
    assert again.status_code == 400
    assert again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()


def test_key_that_is_too_long_is_rejected(api, deploy):
    response = post(api, START, "k" * 256)
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["details"]
    assert not Run.objects.exists()


def test_record_older_than_24_hours_is_not_replayed(api, deploy):
    first = post(api, START, "k-old")
    IdempotencyRecord.objects.update(created_at=timezone.now() - timedelta(hours=25))

    again = post(api, START, "k-old")

    assert again.status_code == 202
    assert "Idempotent-Replayed" not in again
    assert again.json()["number"] != first.json()["number"]
    assert Run.objects.count() == 2
    # the fresh record replays from now on
    assert post(api, START, "k-old")["Idempotent-Replayed"] == "true"
    assert Run.objects.count() == 2


def test_record_just_under_24_hours_is_still_replayed(api, deploy):
    post(api, START, "k-day")
    IdempotencyRecord.objects.update(created_at=timezone.now() - timedelta(hours=23, minutes=59))
    assert post(api, START, "k-day")["Idempotent-Replayed"] == "true"
    assert Run.objects.count() == 1


def test_idempotency_applies_to_token_creation_too(viewer, as_user):
    client = as_user(viewer)
    first = post(client, {"name": "ci"}, "tok-1", path="/api/v1/tokens")
    again = post(client, {"name": "ci"}, "tok-1", path="/api/v1/tokens")
    assert first.status_code == again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert viewer.auth_token_set.filter(name="ci").count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_with_one_key_create_exactly_one_run(deploy, operator):
    secret = bearer(operator)[1]
    for round_ in range(4):  # a few rounds, to meet both the in-flight and the replay outcome
        key = f"race-{round_}"
        responses = race(
            lambda key=key: post(api_client(secret), START, key),
            lambda key=key: post(api_client(secret), START, key),
        )

        original = [r for r in responses if r.status_code == 202 and "Idempotent-Replayed" not in r]
        assert len(original) == 1, [(r.status_code, r.content) for r in responses]
        [other] = [r for r in responses if r is not original[0]]
        if other.status_code == 202:
            assert other["Idempotent-Replayed"] == "true"
            assert other.json() == original[0].json()
        else:
            assert other.status_code == 409
            assert other.json()["error"] == "conflict"
        assert Run.objects.count() == round_ + 1


def test_a_server_error_leaves_the_key_free_for_a_retry(operator, deploy, monkeypatch):
    from runs import services

    client = APIClient(raise_request_exception=False)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {bearer(operator)[1]}")

    def broken(**kwargs):
        raise RuntimeError("database went away")

    with monkeypatch.context() as patch:
        patch.setattr(services, "run_create", broken)
        failed = post(client, START, "k-500")
    assert failed.status_code == 500
    assert failed.json() == {
        "error": "server-error",
        "message": "Something went wrong on our side; it was logged.",
        "details": {},
    }
    assert not IdempotencyRecord.objects.exists()

    retried = post(client, START, "k-500")

    assert retried.status_code == 202
    assert "Idempotent-Replayed" not in retried
    assert Run.objects.count() == 1
