"""Browser tests: Playwright driving the system Chromium against the server `make run` starts.

Chromium is never downloaded by Playwright: CI installs Debian's package (`.ci/run`). When it is
missing these tests fail, saying so, rather than skip.
"""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, _database_url

CHROMIUM = os.environ.get("STEPWISE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.e2e)


@dataclass(frozen=True)
class Server:
    url: str


@pytest.fixture
def server(transactional_db, tmp_path) -> Iterator[Server]:
    """The web server `make run` starts (config/web.py, one process), on the test database.

    Replaces pytest-django's live server, a WSGI server in a thread, which serves the live
    log streams (async views) only by converting them to sync, and not the way production
    does (config/asgi.py). Work and media directories are the ones the `cluster` fixture
    gives its workers, so artifacts a step stores can be downloaded here."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.e2e.server_settings",
        "DATABASE_URL": _database_url(),
        "STEPWISE_WORK_DIR": str(tmp_path / "work"),
        "STEPWISE_MEDIA_DIR": str(tmp_path / "media"),
    }
    environment.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "config.web", "--port", str(port), "--workers", "1"],
            cwd=ROOT,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not _answers(f"{url}/healthz"):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the server did not start:\n{log.read_text()}", pytrace=False)
            time.sleep(0.1)  # the server is still importing Django: nothing to wait on but a port
        yield Server(url)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its web process too
            process.wait()


def _answers(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=1).status_code == 200
    return False


@pytest.fixture
def _orm_beside_playwright(monkeypatch):
    """Playwright's sync API runs an event loop in the test thread; the ORM calls the tests
    make between browser steps are still plain synchronous code. Only for these tests: set
    globally it would leak into other tests' subprocesses (and `check --deploy` refuses it)."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture
def browser(_orm_beside_playwright) -> Iterator[object]:
    """A headless Chromium per test, started after the database is set up (see page_for)."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.fail(
            f"Browser tests need Chromium at {CHROMIUM}: apt-get install -y chromium "
            "(or set STEPWISE_CHROMIUM). Playwright's own download is not used.",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def page_for(server, transactional_db, browser) -> Iterator[Callable[..., object]]:
    """Opens a browser page logged in as `user` (through the login form), on the page
    logging in leads to: the dashboard, or the approvals inbox for a user without a role.

    The database fixtures come before `browser` so that they are set up before, and torn
    down after, Playwright's event loop runs in this thread. Whatever the test did, no page
    may have broken the Content-Security-Policy: Chromium reports each refusal on the
    console, and the test fails with them at teardown."""
    contexts = []
    refused: list[str] = []

    def open_page(user, password: str | None = None):
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        context.set_default_timeout(20_000)
        contexts.append(context)
        page = context.new_page()
        page.on(
            "console",
            lambda message: (
                refused.append(message.text) if "Content Security Policy" in message.text else None
            ),
        )
        page.goto(f"{server.url}/accounts/login/")
        page.fill("#id_username", user.username)
        page.fill("#id_password", password or f"pw-{user.username}-123")
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(rf"^{re.escape(server.url)}/(approvals/)?$"))
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert refused == [], "the pages broke their Content-Security-Policy"
