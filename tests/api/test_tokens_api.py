"""API tokens: made with the secret shown once, stored hashed, listed, used, revoked."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from knox.crypto import hash_token
from rest_framework.test import APIClient

from config.models import ApiToken, IdempotencyRecord
from config.services import token_create
from tests.api.conftest import api_client, bearer
from tests.conftest import make_user

LIST_KEYS = {"id", "name", "prefix", "created_at", "expires_at", "last_used_at"}


@pytest.fixture
def api(viewer, as_user):
    return as_user(viewer)


def create(client: APIClient, **body) -> dict:
    response = client.post("/api/v1/tokens", {"name": "ci", **body}, format="json")
    assert response.status_code == 201, response.content
    assert "no-store" in response["Cache-Control"]  # it holds the secret
    return response.json()


def test_create_shows_the_secret_once(api, viewer):
    body = create(api, name="deploy-bot")

    assert set(body) == {*LIST_KEYS, "token"}
    assert body["token"].startswith("sw_") and len(body["token"]) > 40
    assert body["name"] == "deploy-bot"
    assert body["token"].startswith(body["prefix"]) and len(body["prefix"]) < len(body["token"])
    assert body["expires_at"] is None and body["last_used_at"] is None
    assert ApiToken.objects.get(pk=body["id"]).user == viewer


def test_create_with_expiry_sets_expires_at(api):
    body = create(api, expires_in_days=30)
    expires = parse_datetime(body["expires_at"])
    assert abs(expires - (timezone.now() + timedelta(days=30))) < timedelta(minutes=1)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x", "expires_in_days": 0}, "expires_in_days"),
        ({"name": "x", "expires_in_days": 3651}, "expires_in_days"),
        ({"name": "x", "expires_in_days": 99999999}, "expires_in_days"),
    ],
)
def test_create_rejects_an_invalid_body(api, body, field):
    before = ApiToken.objects.count()
    response = api.post("/api/v1/tokens", body, format="json")
    assert response.status_code == 400
    assert list(response.json()["details"]) == [field]
    assert ApiToken.objects.count() == before


def test_create_refuses_a_key_it_does_not_take(api):
    # Ignoring a misspelt expiry would make a token that never expires.
    tokens = ApiToken.objects.count()

    response = api.post("/api/v1/tokens", {"name": "ci", "expires": 7}, format="json")

    assert response.status_code == 400
    assert list(response.json()["details"]) == ["expires"]
    assert ApiToken.objects.count() == tokens


def test_new_secret_works_as_a_bearer_token(api):
    secret = create(api)["token"]
    response = api_client(secret).get("/api/v1/me")
    assert response.status_code == 200
    assert response.json()["username"] == "vera"
    assert response.json()["auth"] == "token"


def test_list_shows_metadata_but_never_a_secret(api, viewer):
    made = create(api, name="laptop")

    response = api.get("/api/v1/tokens")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"count", "next", "previous", "results"}
    by_name = {token["name"]: token for token in body["results"]}
    assert "laptop" in by_name
    listed = by_name["laptop"]
    assert set(listed) == LIST_KEYS
    assert listed["prefix"] == made["prefix"]
    assert listed["created_at"] == made["created_at"]
    assert made["token"].encode() not in response.content
    assert b'"token"' not in response.content


def test_last_used_is_set_after_the_token_is_used(api):
    made = create(api, name="bot")
    listed = {t["name"]: t for t in api.get("/api/v1/tokens").json()["results"]}
    assert listed["bot"]["last_used_at"] is None

    api_client(made["token"]).get("/api/v1/me")

    listed = {t["name"]: t for t in api.get("/api/v1/tokens").json()["results"]}
    used = parse_datetime(listed["bot"]["last_used_at"])
    assert timezone.now() - used < timedelta(minutes=1)


def test_list_shows_only_my_tokens(api, viewer):
    other = make_user("mallory", "viewer")
    bearer(other, name="not-yours")
    names = [t["name"] for t in api.get("/api/v1/tokens").json()["results"]]
    assert "not-yours" not in names
    assert ApiToken.objects.filter(user=viewer).count() == len(names)


def test_revoke_then_the_secret_is_refused(api):
    made = create(api, name="short-lived")
    client = api_client(made["token"])
    assert client.get("/api/v1/me").status_code == 200

    response = api.delete(f"/api/v1/tokens/{made['id']}")

    assert response.status_code == 204
    assert not ApiToken.objects.filter(pk=made["id"]).exists()
    refused = client.get("/api/v1/me")
    assert refused.status_code == 401
    assert refused.json()["error"] == "unauthenticated"


def test_a_token_can_revoke_itself(viewer):
    token, secret = bearer(viewer)
    client = api_client(secret)
    assert client.delete(f"/api/v1/tokens/{token.pk}").status_code == 204
    assert client.get("/api/v1/me").status_code == 401


def test_cannot_revoke_someone_elses_token(api):
    other = make_user("mallory", "author")
    token, secret = bearer(other)

    response = api.delete(f"/api/v1/tokens/{token.pk}")

    assert response.status_code == 404
    assert response.json()["error"] == "not-found"
    assert ApiToken.objects.filter(pk=token.pk).exists()
    assert api_client(secret).get("/api/v1/me").status_code == 200


def test_revoke_of_unknown_token_is_404(api):
    assert api.delete("/api/v1/tokens/987654").status_code == 404


def test_token_is_stored_hashed(api):
    made = create(api)
    secret = made["token"]
    row = ApiToken.objects.filter(pk=made["id"]).values().get()
    assert all(secret not in str(value) for value in row.values())
    assert row["digest"] == hash_token(secret)


def test_an_idempotent_replay_makes_no_second_token_and_the_secret_is_stored_nowhere(api):
    headers = {"HTTP_IDEMPOTENCY_KEY": "token-once"}
    first = api.post("/api/v1/tokens", {"name": "ci"}, format="json", **headers)
    replay = api.post("/api/v1/tokens", {"name": "ci"}, format="json", **headers)

    secret = first.json()["token"]
    assert first.status_code == replay.status_code == 201
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.json() == {**first.json(), "token": None}
    assert ApiToken.objects.count() == 2  # the client's own, and the one made here
    kept = IdempotencyRecord.objects.values().get()
    assert all(secret not in str(value) for value in kept.values())


def test_a_token_that_expires_makes_only_tokens_that_expire_no_later(viewer):
    short = APIClient()
    short.credentials(
        HTTP_AUTHORIZATION=f"Bearer {token_create(user=viewer, name='ci', expires_in=timedelta(days=3))[1]}"
    )
    for body in ({"name": "forever"}, {"name": "longer", "expires_in_days": 3}):
        refused = short.post("/api/v1/tokens", body, format="json")
        assert refused.status_code == 400, body
        assert refused.json()["details"] == {
            "expires_in_days": ["must be at most 2 days: the token making it expires then"]
        }
    made = short.post("/api/v1/tokens", {"name": "ok", "expires_in_days": 2}, format="json")
    assert made.status_code == 201
    assert ApiToken.objects.filter(user=viewer).count() == 2


def test_me_with_a_token(viewer):
    response = api_client(bearer(viewer)[1]).get("/api/v1/me")
    assert response.status_code == 200
    assert response.json() == {
        "username": "vera",
        "email": "vera@example.com",
        "role": "viewer",
        "is_superuser": False,
        "auth": "token",
    }


def test_me_with_a_session(author):
    client = APIClient()
    client.force_login(author)
    response = client.get("/api/v1/me")
    assert response.status_code == 200
    assert response.json()["username"] == "ada"
    assert response.json()["role"] == "author"
    assert response.json()["auth"] == "session"


@pytest.mark.parametrize(
    ("fixture", "role"),
    [("outsider", None), ("operator", "operator"), ("superuser", "superuser")],
)
def test_me_reports_the_highest_role(request, fixture, role):
    user = request.getfixturevalue(fixture)
    body = api_client(bearer(user)[1]).get("/api/v1/me").json()
    assert body["role"] == role
    assert body["is_superuser"] is (fixture == "superuser")


def test_a_token_carries_the_highest_of_several_roles_and_sees_changes_at_once(viewer):
    client = api_client(bearer(viewer)[1])
    viewer.groups.add(Group.objects.get(name="author"), Group.objects.create(name="approvers"))
    assert client.get("/api/v1/me").json()["role"] == "author"
    viewer.groups.remove(Group.objects.get(name="author"))
    assert client.get("/api/v1/me").json()["role"] == "viewer"
    viewer.groups.clear()
    assert client.get("/api/v1/me").json()["role"] is None
    assert client.get("/api/v1/runs").status_code == 403


def test_tokens_of_an_inactive_user_are_refused(viewer):
    secret = bearer(viewer)[1]
    viewer.is_active = False
    viewer.save()
    assert api_client(secret).get("/api/v1/me").status_code == 401
