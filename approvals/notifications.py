"""Tell approvers when an approval opens and everyone when it closes: email and a webhook.

Sent from a django-q2 task after the transaction commits, so a slow mail server or webhook
never holds up a run; a failure is written to the run's log and changes nothing else.
"""

import logging

import httpx
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Q
from django_q.tasks import async_task

from approvals.models import Approval
from runs.models import LogLevel

logger = logging.getLogger(__name__)

SUBJECTS = {
    "opened": "Approval needed: {title}",
    "approved": "Approved: {title}",
    "denied": "Denied: {title}",
    "expired": "Approval expired: {title}",
    "cancelled": "Approval cancelled: {title}",
}


def send_later(approval: Approval, event: str) -> None:
    pk = approval.pk
    transaction.on_commit(lambda: async_task("approvals.notifications.send", pk, event))


def approval_url(approval: Approval) -> str:
    return f"{settings.STEPWISE_BASE_URL.rstrip('/')}/approvals/{approval.pk}/"


def recipients(approval: Approval) -> list[str]:
    users = get_user_model().objects.filter(
        Q(username__in=approval.approver_users) | Q(groups__name__in=approval.approver_groups),
        is_active=True,
    )
    return sorted({user.email for user in users if user.email})


def send(approval_pk: int, event: str) -> None:
    from runs.services import log_system

    approval = Approval.objects.select_related("run", "step").get(pk=approval_pk)
    run = approval.run
    title = f"{run.title} (step {approval.step.number} {approval.step.key})"
    url = approval_url(approval)
    text = f"{SUBJECTS[event].format(title=title)}\n{approval.message}\n{url}"
    if event == "opened":
        addresses = recipients(approval)
    else:
        addresses = recipients(approval)
        if run.created_by and run.created_by.email:
            addresses = sorted({*addresses, run.created_by.email})
    try:
        if addresses:
            send_mail(SUBJECTS[event].format(title=title), text, None, addresses)
    except Exception as error:
        log_system(
            run_id=run.pk,
            step=approval.step,
            message=f"approval email failed: {error}",
            level=LogLevel.WARN,
        )
    webhook = settings.STEPWISE_APPROVAL_WEBHOOK_URL
    if not webhook:
        return
    payload = {
        "text": text,
        "event": event,
        "approval": {"id": approval.pk, "status": approval.status, "url": url},
        "run": {"number": run.number, "title": run.title},
        "step": {"id": approval.step.key, "number": approval.step.number},
        "message": approval.message,
    }
    try:
        httpx.post(webhook, json=payload, timeout=10).raise_for_status()
    except httpx.HTTPError as error:
        log_system(
            run_id=run.pk,
            step=approval.step,
            message=f"approval webhook failed: {error}",
            level=LogLevel.WARN,
        )
