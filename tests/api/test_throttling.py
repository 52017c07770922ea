"""Rate limits: the request after the allowance gets 429 with Retry-After and the error body."""

import pytest
import yaml
from rest_framework.throttling import AnonRateThrottle, SimpleRateThrottle, UserRateThrottle

from runs.models import Run
from tests.api.conftest import api_client, bearer


@pytest.fixture
def rates(settings, monkeypatch):
    """Sets throttle rates for this test; DRF copied the old ones onto the classes at import."""

    def set_rates(anon: str = "1000/min", user: str = "1000/min") -> None:
        new = {"anon": anon, "user": user}
        settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": new}
        for throttle in (AnonRateThrottle, UserRateThrottle):
            monkeypatch.setattr(throttle, "THROTTLE_RATES", new)

    return set_rates


@pytest.fixture
def fake_clock(monkeypatch):
    """The throttles' clock, moved by hand."""
    now = [1_000_000.0]
    monkeypatch.setattr(SimpleRateThrottle, "timer", lambda self: now[0])
    return now


def assert_rate_limited(response) -> int:
    assert response.status_code == 429
    body = yaml.safe_load(response.content)  # JSON, or YAML from the schema view
    assert set(body) == {"error", "message", "details"}
    assert body["error"] == "rate-limited"
    retry_after = int(response["Retry-After"])
    assert str(retry_after) in body["message"]
    return retry_after


def test_user_gets_429_after_the_allowance(rates, viewer):
    rates(user="5/min")
    client = api_client(bearer(viewer)[1])

    for _ in range(5):
        assert client.get("/api/v1/me").status_code == 200
    retry_after = assert_rate_limited(client.get("/api/v1/me"))

    assert 1 <= retry_after <= 60


def test_throttled_post_creates_nothing(rates, operator, deploy):
    rates(user="2/min")
    client = api_client(bearer(operator)[1])
    for _ in range(2):
        assert client.post("/api/v1/runs", {"runbook": "deploy"}, format="json").status_code == 202

    assert_rate_limited(client.post("/api/v1/runs", {"runbook": "deploy"}, format="json"))
    assert Run.objects.count() == 2


def test_allowance_is_per_user(rates, viewer, operator):
    rates(user="2/min")
    first, second = api_client(bearer(viewer)[1]), api_client(bearer(operator)[1])
    for _ in range(2):
        first.get("/api/v1/me")
    assert first.get("/api/v1/me").status_code == 429
    assert second.get("/api/v1/me").status_code == 200


def test_allowance_is_shared_by_a_users_tokens(rates, viewer):
    rates(user="2/min")
    one, two = api_client(bearer(viewer)[1]), api_client(bearer(viewer)[1])
    assert one.get("/api/v1/me").status_code == 200
    assert two.get("/api/v1/me").status_code == 200
    assert one.get("/api/v1/me").status_code == 429
    assert two.get("/api/v1/me").status_code == 429


def test_allowance_comes_back_after_the_period(rates, viewer, fake_clock):
    rates(user="2/min")
    client = api_client(bearer(viewer)[1])
    client.get("/api/v1/me")
    client.get("/api/v1/me")
    fake_clock[0] += 30
    assert assert_rate_limited(client.get("/api/v1/me")) == 30

    fake_clock[0] += 31
    assert client.get("/api/v1/me").status_code == 200


def test_retry_after_is_never_zero(rates, viewer, fake_clock):
    rates(user="2/sec")
    client = api_client(bearer(viewer)[1])
    client.get("/api/v1/me")
    client.get("/api/v1/me")
    fake_clock[0] += 0.6  # 0.4 s left: waiting 0 s would be refused again

    assert assert_rate_limited(client.get("/api/v1/me")) == 1


def test_anonymous_gets_429_after_the_allowance(rates, db):
    rates(anon="2/min")
    client = api_client()
    # The schema is public, so anonymous requests reach the throttle. (API endpoints answer
    # anonymous callers 401 before throttling: DRF checks permissions first.)
    for _ in range(2):
        assert client.get("/api/schema/").status_code == 200
    assert_rate_limited(client.get("/api/schema/"))


def test_failed_authentication_is_throttled_at_the_anonymous_rate(client, monkeypatch):
    from django.core.cache import cache
    from rest_framework.throttling import AnonRateThrottle

    monkeypatch.setattr(AnonRateThrottle, "THROTTLE_RATES", {"anon": "3/min", "user": "1000/min"})
    cache.clear()
    statuses = [
        client.get("/api/v1/runs", HTTP_AUTHORIZATION="Bearer sw_guess").status_code
        for _ in range(5)
    ]
    assert statuses[:3] == [401, 401, 401]
    assert statuses[3:] == [429, 429]
    response = client.get("/api/v1/runs")
    assert response.status_code == 429 and int(response["Retry-After"]) >= 1
    assert response.json()["error"] == "rate-limited"
