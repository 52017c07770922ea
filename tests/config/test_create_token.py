"""`manage.py create_token`."""

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from config.models import ApiToken


@pytest.mark.django_db
def test_create_token_prints_a_working_secret_once(user, client):
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "create_token", "alice", "--name", "deploy-bot", "--expires", "30", stdout=out, stderr=err
    )
    secret = out.getvalue().strip()
    token = ApiToken.objects.get(user=user)
    assert secret.startswith("sw_") and token.name == "deploy-bot"
    assert token.expiry is not None and "expires" in err.getvalue()
    assert secret not in {token.digest, token.token_key}
    response = client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 200 and response.json()["username"] == "alice"


@pytest.mark.django_db
def test_create_token_refuses_an_unknown_user():
    with pytest.raises(CommandError, match="no user 'nobody'"):
        call_command("create_token", "nobody")


@pytest.mark.django_db
def test_create_token_refuses_an_expiry_past_ten_years(user):
    with pytest.raises(CommandError, match="--expires must be at most 3650 days"):
        call_command("create_token", "alice", "--expires", "99999999")
    assert not ApiToken.objects.exists()


@pytest.mark.django_db
def test_create_token_takes_an_expiry_of_ten_years(user):
    call_command(
        "create_token", "alice", "--expires", "3650", stdout=io.StringIO(), stderr=io.StringIO()
    )
    assert ApiToken.objects.get(user=user).expiry is not None
