"""Browser tests: Playwright driving the system Chromium against pytest-django's live server.

Chromium is never downloaded by Playwright: CI installs Debian's package (`.ci/run`). When it is
missing these tests fail, saying so, rather than skip.
"""

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

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
def page_for(live_server, transactional_db, browser) -> Iterator[Callable[..., object]]:
    """Opens a browser page logged in as `user` (through the login form).

    The database fixtures come before `browser` so that they are set up before, and torn
    down after, Playwright's event loop runs in this thread."""
    contexts = []

    def open_page(user, password: str | None = None):
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        context.set_default_timeout(20_000)
        contexts.append(context)
        page = context.new_page()
        page.goto(f"{live_server.url}/accounts/login/")
        page.fill("#id_username", user.username)
        page.fill("#id_password", password or f"pw-{user.username}-123")
        page.click("button[type=submit]")
        page.wait_for_url(f"{live_server.url}/")
        return page

    yield open_page
    for context in contexts:
        context.close()
