"""Takes the README's screenshots: a throwaway database with the examples and some history,
a dev server and a qcluster, and the system Chromium driven by Playwright.

    .venv/bin/python docs/screenshots/take.py

Everything lives in a temporary directory; nothing touches var/.
"""

import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent
PORT = int(os.environ.get("SCREENSHOT_PORT", "8765"))
BASE = f"http://127.0.0.1:{PORT}"
CHROMIUM = os.environ.get("STEPWISE_CHROMIUM", "/usr/bin/chromium")

VAR = Path(tempfile.mkdtemp(prefix="stepwise-shots-"))
os.environ.update(
    {
        "STEPWISE_VAR_DIR": str(VAR),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "STEPWISE_BASE_URL": BASE,
        "DJANGO_ALLOW_ASYNC_UNSAFE": "true",
    }
)
sys.path.insert(0, str(ROOT))

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.contrib.auth.models import Group  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.utils import timezone  # noqa: E402

from runbooks.models import Runbook  # noqa: E402
from runs import runner, services  # noqa: E402
from runs.models import Run, Step  # noqa: E402

LONG = """
slug: database-failover
name: Fail over the primary database
description: |
  Promotes the replica in the standby region and points the services at it.

  Run it only with the incident commander's go-ahead. Each phase checks the one before.
labels: {team: dba, kind: incident}
timeout: 30m
params:
  - name: cluster
    label: Cluster
    type: choice
    choices: [orders, billing, search]
    default: orders
  - name: region
    label: Standby region
    type: choice
    choices: [eu-west, us-east]
    default: eu-west
  - {name: ticket, label: Incident ticket, type: string, pattern: '^INC-[0-9]+$'}
  - {name: drain_seconds, label: Drain time (seconds), type: integer, min: 0, max: 600, default: 30}
  - {name: notify, label: Notify on-call, type: boolean, default: true}
  - {name: token, label: Deploy token, type: secret, required: false}
steps:
  - id: preflight
    name: Pre-flight checks
    shell: |
      echo "checking replication lag on {{ params.cluster }}"
      sleep 1
      echo "lag 120ms, within limits"
  - id: drain
    name: Drain writers
    parallel: true
    timeout: 5m
    steps:
      - id: drain_api
        name: Drain API writers
        retries: 2
        shell: |
          for i in 1 2 3; do echo "api: $i connections left"; sleep 1; done
      - id: drain_jobs
        name: Pause job queue
        shell: |
          echo "pausing queue"; sleep 2; echo "queue paused"
  - id: promote
    name: Promote replica
    shell: |
      echo "promoting {{ params.cluster }} replica in {{ params.region }}"
      for i in $(seq 1 60); do echo "waiting for promotion ($i)"; sleep 1; done
  - id: repoint
    name: Repoint services
    shell: echo repointing
"""


def user(name: str, role: str | None, superuser: bool = False):
    users = get_user_model().objects
    if superuser:
        return users.create_superuser(name, f"{name}@example.com", "screenshots-pw")
    made = users.create_user(name, f"{name}@example.com", "screenshots-pw")
    if role:
        made.groups.add(Group.objects.get_or_create(name=role)[0])
    return made


def drain(run: Run) -> Run:
    deadline = time.monotonic() + 60
    while True:
        runner.work(run.pk)
        run.refresh_from_db()
        if run.is_terminal or time.monotonic() > deadline:
            return run
        time.sleep(0.05)


def seed() -> dict[str, int]:
    call_command("migrate", verbosity=0)
    call_command("runbooks", "sync", str(ROOT / "examples"), verbosity=0)
    from runbooks.services import definition_parse, runbook_save

    runbook_save(definition=definition_parse(text=LONG), source=LONG, user=None)
    admin = user("maria", "author", superuser=True)
    ops = user("sam", "operator")
    user("val", "viewer")
    books = {rb.slug: rb for rb in Runbook.objects.all()}
    # Real runs, executed in this process by the workers' own code.
    finished = []
    for who, slug, params in [
        (ops, "disk-cleanup", {}),
        (admin, "release-checklist", {"version": "v2.4.0"}),
        (ops, "disk-cleanup", {"path": "/nonexistent"}),
        (admin, "release-checklist", {"version": "v2.4.1", "channel": "beta"}),
        (ops, "parallel-fanout", {}),
        (ops, "service-health-check", {"base_url": "http://127.0.0.1:9"}),
    ]:
        run = services.run_create(runbook=books[slug], params=params, user=who, origin="ui")
        finished.append(drain(run))
    # History for the charts: copies of those runs spread over two weeks. Screenshot data
    # only; the product never writes statuses like this.
    now = timezone.now()
    pattern = [3, 5, 2, 6, 4, 7, 3, 5, 8, 4, 6, 9, 5, 4]
    for day, count in enumerate(pattern):
        for i in range(count):
            source = finished[(day + i) % len(finished)]
            status = "failed" if (day * 7 + i) % 9 == 0 else source.status
            if (day + i) % 13 == 0:
                status = "timed_out"
            if (day * 3 + i) % 17 == 0:
                status = "cancelled"
            created = now - timedelta(days=13 - day, hours=i * 1.5 + 1)
            seconds = 20 + ((day * 37 + i * 53) % 140) + (200 if i % 5 == 0 else 0)
            run = Run.objects.create(
                runbook=source.runbook,
                version=source.version,
                title=f"{source.runbook.name}",
                params=source.params,
                created_by=source.created_by,
                origin="api" if i % 2 else "ui",
                status=status,
                started_at=created + timedelta(seconds=1),
                finished_at=created + timedelta(seconds=seconds),
                error={"message": "Step 2 (find) failed: exit code 2", "step": "2"}
                if status == "failed"
                else None,
            )
            Run.objects.filter(pk=run.pk).update(
                created_at=created, title=f"{source.runbook.name} #{run.number}"
            )
    failed = next(r for r in finished if r.status == "failed")
    return {"failed": failed.number, "succeeded": finished[1].number, **gates(books, ops, admin)}


def gates(books: dict[str, Runbook], ops, admin) -> dict[str, int]:
    """Approvals for the inbox and its history: two decided, one left waiting for maria."""
    from approvals.models import Approval
    from approvals.services import approval_decide

    approver = user("amir", "approvers")
    admin.groups.add(Group.objects.get(name="approvers"))
    decisions = [(approver, True, "Quiet hour, go."), (approver, False, "Not during the sale.")]
    waiting = None
    for service, decision in [("web", decisions[0]), ("worker", decisions[1]), ("api", None)]:
        run = services.run_create(
            runbook=books["approved-restart"],
            params={"service": service, "replicas": 3},
            user=ops,
            origin="ui",
        )
        runner.work(run.pk)  # runs the check, then the gate opens and the run waits
        waiting = Approval.objects.get(run=run)
        if decision:
            who, approve, comment = decision
            approval_decide(approval=waiting, user=who, approve=approve, comment=comment)
            drain(run)
    return {"approval": waiting.pk}


def main() -> None:
    numbers = seed()
    env = {**os.environ, "STEPWISE_WORKERS": "2"}
    manage = [sys.executable, str(ROOT / "manage.py")]
    server = subprocess.Popen(
        [*manage, "runserver", "--noreload", f"127.0.0.1:{PORT}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cluster = subprocess.Popen(
        [*manage, "qcluster"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        shoot(numbers)
    finally:
        server.terminate()
        cluster.terminate()
        server.wait(10)
        cluster.wait(30)


def shoot(numbers: dict[str, int]) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"],
        )
        context = browser.new_context(
            viewport={"width": 1280, "height": 800}, color_scheme="light", device_scale_factor=1
        )
        page = context.new_page()
        for _ in range(50):
            try:
                page.goto(f"{BASE}/accounts/login/")
                break
            except Exception:
                time.sleep(0.2)
        page.screenshot(path=OUT / "login.png")
        page.fill("#id_username", "maria")
        page.fill("#id_password", "screenshots-pw")
        page.click("button[type=submit]")
        page.wait_for_url(f"{BASE}/")

        # A live run: the failover waits in its long step while we take the pictures.
        failover = Runbook.objects.get(slug="database-failover")
        maria = get_user_model().objects.get(username="maria")
        live = services.run_create(
            runbook=failover,
            params={"ticket": "INC-4711", "token": "s3cret"},
            user=maria,
            origin="ui",
        )
        for _ in range(200):
            if Step.objects.filter(run=live, key="promote", status="running").exists():
                break
            time.sleep(0.1)
        time.sleep(3)

        page.goto(f"{BASE}/")
        page.screenshot(path=OUT / "dashboard.png", full_page=True)
        page.goto(f"{BASE}/runbooks/")
        page.screenshot(path=OUT / "runbooks.png", full_page=True)
        page.goto(f"{BASE}/runbooks/database-failover/")
        page.fill("input[name=ticket]", "4711")
        page.fill("input[name=drain_seconds]", "900")
        page.click("button:has-text('Run Fail over')")
        page.wait_for_selector(".field .error")
        page.screenshot(path=OUT / "runbook.png", full_page=True)
        page.goto(f"{BASE}/runs/")
        page.screenshot(path=OUT / "runs.png")
        page.goto(f"{BASE}/runs/{live.number}/")
        page.wait_for_timeout(1500)
        page.screenshot(path=OUT / "run-live.png", full_page=True)
        page.goto(f"{BASE}/runs/{numbers['failed']}/")
        page.screenshot(path=OUT / "run-failed.png", full_page=True)
        page.goto(f"{BASE}/approvals/")
        page.screenshot(path=OUT / "approvals.png")
        page.goto(f"{BASE}/approvals/{numbers['approval']}/")
        page.fill("textarea[name=values-note]", "Rolling, one replica at a time.")
        page.screenshot(path=OUT / "approval.png")
        page.goto(f"{BASE}/settings/tokens/")
        page.fill("#id_name", "CI deploy")
        page.fill("#id_expires_in_days", "90")
        page.click("button:has-text('Create token')")
        page.screenshot(path=OUT / "tokens.png")

        phone = browser.new_context(
            viewport={"width": 390, "height": 844}, color_scheme="light", device_scale_factor=2
        )
        phone.add_cookies(context.cookies())
        mobile = phone.new_page()
        mobile.goto(f"{BASE}/runs/{live.number}/")
        mobile.wait_for_timeout(1000)
        mobile.screenshot(path=OUT / "run-phone.png")

        dark = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="dark")
        dark.add_cookies(context.cookies())
        night = dark.new_page()
        night.goto(f"{BASE}/runs/{live.number}/")
        night.wait_for_timeout(1000)
        night.screenshot(path=OUT / "run-dark.png")
        services.run_cancel(run=live, user=maria, reason="screenshots taken")
        browser.close()


if __name__ == "__main__":
    main()
