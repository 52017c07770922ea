"""Production refuses to start without its secrets; the deploy checks pass."""

import os
import subprocess
import sys

from tests.conftest import ROOT


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "ALLOWED_HOSTS")}
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_refuses_to_start_without_a_secret_key():
    result = manage("check", STEPWISE_ENV="production", ALLOWED_HOSTS="example.com")
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr


def test_production_settings_pass_the_deploy_checks():
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        STEPWISE_ENV="production",
        SECRET_KEY="x" * 60 + "-a-long-random-production-secret-key",
        ALLOWED_HOSTS="stepwise.example.com",
    )
    assert result.returncode == 0, result.stderr
