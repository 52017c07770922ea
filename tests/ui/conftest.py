"""UI fixtures: users in each role, a logged-in client per role, and runbooks to run."""

from collections.abc import Callable

import pytest
from django.test import Client

from runbooks.models import Runbook

EVERY_TYPE = """
slug: every-type
name: Every param type
description: |
  Shows **every** kind of param.

  <script>alert("x")</script>
labels: {team: sre}
params:
  - {name: service, label: Service, type: string, pattern: '^[a-z]+$', default: api}
  - {name: notes, type: text, required: false}
  - {name: replicas, label: Replicas, type: integer, min: 1, max: 5, default: 2}
  - {name: ratio, type: number, required: false}
  - {name: dry_run, label: Dry run, type: boolean, default: true}
  - {name: region, type: choice, choices: [eu, us], default: eu}
  - {name: zones, type: multichoice, choices: [a, b, c], default: [a]}
  - {name: day, type: date, required: false}
  - {name: at, type: datetime, required: false}
  - {name: extra, type: json, required: false}
  - {name: password, type: secret, required: false}
steps:
  - id: hello
    shell: echo "hello {{ params.service }}"
  - id: group
    parallel: true
    steps:
      - {id: left, shell: echo left}
      - {id: right, shell: echo right}
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


@pytest.fixture
def login() -> Callable[..., Client]:
    def make(user) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return make


@pytest.fixture
def every_type(make_runbook) -> Runbook:
    return make_runbook(EVERY_TYPE)


@pytest.fixture
def flaky(make_runbook) -> Runbook:
    return make_runbook(FAILING)
