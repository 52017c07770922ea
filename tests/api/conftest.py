"""API fixtures: users in each role, Bearer tokens, and a runbook whose runs leave logs,
outputs and an artifact."""

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.core.cache import cache
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from config.models import ApiToken
from config.services import token_create
from runbooks.models import Runbook
from tests.conftest import make_user

DEPLOY = """
slug: deploy
name: Deploy
description: Builds and fans out.
labels: {team: sre}
params:
  - name: service
    type: string
    default: api
  - name: replicas
    type: integer
    min: 1
    max: 5
    default: 2
  - name: token
    type: secret
    required: false
outputs:
  built: "{{ steps.build.outputs.count }}"
steps:
  - id: build
    shell: |
      echo "building {{ params.service }} with {{ params.token }}"
      echo "::debug::resolved {{ params.replicas }} replicas"
      echo "careful" >&2
      echo "::error::something odd"
      echo "count=3" >> "$STEPWISE_OUTPUT"
      echo "used={{ params.token }}" >> "$STEPWISE_OUTPUT"
      echo "report for {{ params.service }}" > "$STEPWISE_ARTIFACTS/report.txt"
  - id: fanout
    parallel: true
    steps:
      - id: left
        shell: echo left
      - id: right
        shell: echo right
"""

FAILING = """
slug: flaky
name: Flaky
steps:
  - id: first
    shell: echo first
  - id: second
    shell: exit 3
"""


@pytest.fixture(autouse=True)
def _fresh_throttle_history(db):
    # Throttling keeps request history in the cache; no test inherits another's.
    cache.clear()


def bearer(user, name: str = "test", **kwargs) -> tuple[ApiToken, str]:
    return token_create(user=user, name=name, **kwargs)


def api_client(secret: str | None = None) -> APIClient:
    client = APIClient()
    if secret:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


@pytest.fixture
def as_user() -> Callable[..., APIClient]:
    """An APIClient that sends a fresh Bearer token of `user`."""

    def make(user) -> APIClient:
        return api_client(bearer(user)[1])

    return make


@pytest.fixture
def expired_secret(db) -> str:
    user = make_user("eve", "author")
    token, secret = bearer(user, expires_in=timedelta(hours=1))
    ApiToken.objects.filter(pk=token.pk).update(expiry=timezone.now() - timedelta(minutes=1))
    return secret


@pytest.fixture
def deploy(make_runbook) -> Runbook:
    return make_runbook(DEPLOY)


@pytest.fixture
def flaky(make_runbook) -> Runbook:
    return make_runbook(FAILING)


def race(*calls: Callable[[], Any], timeout: float = 60) -> list[Any]:
    """Runs the calls at the same instant, each in its own thread (and database connection);
    returns their results in order. Needs a transactional test, to see each other's commits."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(index: int, call: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout=10)
            results[index] = call()
        except BaseException as error:  # re-raised in the test's thread below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=item) for item in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    assert not any(thread.is_alive() for thread in threads), "a racing request hung"
    if errors:
        raise errors[0]
    return results
