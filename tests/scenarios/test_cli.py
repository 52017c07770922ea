"""`manage.py runbook run ... --wait` against a real cluster, as an operator would use it."""

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, _database_url

pytestmark = pytest.mark.worker


def runbook_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "runbook", "run", *args],
        env={**os.environ, "DATABASE_URL": _database_url()},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def greet(make_runbook):
    return make_runbook(
        """
        slug: greet
        name: Greet
        params:
          - {name: who, type: string}
          - {name: fail, type: boolean, default: false}
        steps:
          - {id: hello, shell: 'echo "hello {{ params.who }}"'}
          - {id: check, shell: '[ "$PARAM_FAIL" = false ] || exit 3'}
        """
    )


def test_wait_streams_the_logs_and_exits_zero_on_success(cluster, greet):
    cluster()
    result = runbook_run("greet", "-p", "who=the world; rm -rf /", "--wait")
    assert result.returncode == 0, result.stderr
    assert "hello the world; rm -rf /" in result.stdout
    assert "succeeded" in result.stdout.splitlines()[-1]


def test_wait_exits_non_zero_with_the_reason_when_the_run_fails(cluster, greet):
    cluster()
    result = runbook_run("greet", "-p", "who=x", "-p", "fail=true", "--wait")
    assert result.returncode == 1
    assert "failed: Step 2 (check) failed: exit code 3" in result.stderr


def test_invalid_params_are_named_and_nothing_starts(transactional_db, greet):
    result = runbook_run("greet", "-p", "who=x", "-p", "fail=perhaps", "-p", "color=red")
    assert result.returncode != 0
    assert "params.fail" in result.stderr and "params.color" in result.stderr
    assert "started run" not in result.stdout
