"""Every write to approvals: open, decide, expire, cancel.

An approval belongs to a step of a run; each service locks the run row first (as every run
service does), so two people deciding at the same instant are serialised and never count
beyond `required`.
"""

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from approvals import notifications
from approvals.models import Approval, Approver, Decision
from approvals.state import APPROVAL_TRANSITIONS, ApprovalStatus
from config.errors import Conflict, InvalidTransition, PermissionDenied, ValidationFailed
from runbooks.durations import duration_delta
from runbooks.params import ParamsError, coerce_params
from runbooks.schema import ApprovalSpec
from runs import secrets
from runs import services as run_services
from runs.models import LogLevel, Run, Step
from runs.state import StepStatus

MAX_COMMENT = 4000  # characters of an approval's comment or a deny's reason


def _transition(approval: Approval, to: str, **fields: Any) -> None:
    if to not in APPROVAL_TRANSITIONS[approval.status]:
        raise InvalidTransition(f"An approval cannot go from {approval.status} to {to}.")
    updated = Approval.objects.filter(pk=approval.pk, status=approval.status).update(
        status=to, closed_at=timezone.now(), **fields
    )
    if not updated:
        raise InvalidTransition(f"Approval {approval.pk} is no longer {approval.status}.")
    approval.status = to


def approval_open(*, run: Run, step: Step, spec: ApprovalSpec, message: str) -> Approval:
    """Opens the gate of an approval step. Called by the engine with the run locked."""
    approval = Approval.objects.create(
        run=run,
        step=step,
        message=message,
        approver_users=spec.approvers.users,
        approver_groups=spec.approvers.groups,
        required=spec.required,
        allow_self_approval=spec.allow_self_approval,
        fields=[field.model_dump(mode="json") for field in spec.fields],
        requested_by=run.created_by,
        expires_at=timezone.now() + duration_delta(spec.timeout) if spec.timeout else None,
    )
    Approver.objects.bulk_create(
        [Approver(approval=approval, kind="user", name=name) for name in spec.approvers.users]
        + [Approver(approval=approval, kind="group", name=name) for name in spec.approvers.groups]
    )
    who = ", ".join([*spec.approvers.users, *(f"group {g}" for g in spec.approvers.groups)])
    run_services.log_system(
        run_id=run.pk, step=step, message=f"waiting for approval from {who}: {message}"
    )
    notifications.send_later(approval, "opened")
    return approval


def _check_decider(approval: Approval, user: AbstractBaseUser) -> None:
    if not approval.names(user):
        raise PermissionDenied("You are not an approver of this approval.")
    if (
        not approval.allow_self_approval
        and approval.requested_by_id is not None
        and approval.requested_by_id == user.pk
    ):
        raise PermissionDenied(
            "You started this run, and this approval does not allow self-approval."
        )


def _locked(approval: Approval) -> tuple[Run, Approval]:
    run = run_services.lock_run(approval.run)
    approval = Approval.objects.select_for_update().select_related("step").get(pk=approval.pk)
    if not approval.is_open:
        raise Conflict(f"This approval is already {approval.status}.")
    return run, approval


@transaction.atomic
def approval_decide(
    *,
    approval: Approval,
    user: AbstractBaseUser,
    approve: bool,
    comment: str = "",
    values: dict[str, Any] | None = None,
    origin: str = "api",
) -> Approval:
    """Records an approve or a deny; closes the approval when its rule is met."""
    comment = (comment or "").strip()
    field = "comment" if approve else "reason"
    if not approve and not comment:
        raise ValidationFailed("A deny needs a reason.", details={"reason": ["required"]})
    if len(comment) > MAX_COMMENT:
        # The API's serializer says so too; the pages post here directly. A deny reason
        # becomes the run's error, shown with the run everywhere.
        raise ValidationFailed(
            f"The {field} is too long.",
            details={field: [f"at most {MAX_COMMENT:,} characters"]},
        )
    run, approval = _locked(approval)
    _check_decider(approval, user)
    if approval.decisions.filter(user=user).exists():
        raise Conflict("You have already decided on this approval.")
    coerced: dict[str, Any] = {}
    if approve:
        try:
            coerced = coerce_params(_fields(approval), values or {})
        except ParamsError as error:
            details = {f"values.{name}": messages for name, messages in error.errors.items()}
            raise ValidationFailed("Some form values are not valid.", details=details) from error
    if coerced:
        _seal_typed_secrets(run, approval, coerced)
    # An approver may type a secret param's value: masked here, it reaches no log, output,
    # error or API answer, as with what steps print. So are the values of `secret` fields,
    # just sealed on the run, where later steps read them as the gate's outputs.
    masker = run_services.run_masker(run)
    comment, coerced = masker.text(comment), masker.data(coerced)
    Decision.objects.create(
        approval=approval,
        user=user,
        verdict=Decision.Verdict.APPROVE if approve else Decision.Verdict.DENY,
        comment=comment,
        values=coerced,
        origin=origin,
    )
    who = user.get_username()
    step = approval.step
    if not approve:
        _transition(approval, ApprovalStatus.DENIED)
        reason = f"denied by {who}: {comment}"
        run_services.log_system(run_id=run.pk, step=step, message=reason, level=LogLevel.ERROR)
        _finish_step(run, step, StepStatus.FAILED, error=reason)
        notifications.send_later(approval, "denied")
        return approval
    run_services.log_system(
        run_id=run.pk, step=step, message=f"approved by {who}" + (f": {comment}" if comment else "")
    )
    approvals = list(approval.decisions.filter(verdict=Decision.Verdict.APPROVE).order_by("pk"))
    if len(approvals) < approval.required:
        return approval
    _transition(approval, ApprovalStatus.APPROVED)
    outputs: dict[str, Any] = {}
    for decision in approvals:
        outputs.update(decision.values)
    outputs["approved_by"] = ", ".join(d.user.get_username() for d in approvals)
    _finish_step(run, step, StepStatus.SUCCEEDED, outputs=outputs)
    notifications.send_later(approval, "approved")
    return approval


def _seal_typed_secrets(run: Run, approval: Approval, values: dict[str, Any]) -> None:
    """Adds the values of the approval's `secret` fields to the run's sealed secrets (the
    run is locked). A later approver's value replaces an earlier one's, as in the outputs."""
    typed = {
        spec.name: values[spec.name]
        for spec in _fields(approval)
        if spec.is_secret and values.get(spec.name) not in (None, "")
    }
    if not typed:
        return
    sealed = secrets.unseal_all(run.sealed_secrets)
    by_step = secrets.step_secrets(sealed)
    by_step[approval.step.key] = {**by_step.get(approval.step.key, {}), **typed}
    sealed[secrets.STEP_SECRETS] = by_step
    run.sealed_secrets = secrets.seal(sealed)
    Run.objects.filter(pk=run.pk).update(sealed_secrets=run.sealed_secrets)


def _fields(approval: Approval) -> list:
    from runbooks.params import ParamSpec

    return [ParamSpec.model_validate(field) for field in approval.fields]


def _finish_step(
    run: Run, step: Step, status: str, *, error: str = "", outputs: dict | None = None
) -> None:
    moved = run_services.step_transition(
        step=step,
        to=status,
        reason=error,
        finished_at=timezone.now(),
        error=error,
        outputs=outputs or {},
    )
    if not moved:
        raise InvalidTransition(f"Step {step.number} is no longer waiting.")
    run_services.run_advance(run=run, locked=True)


@transaction.atomic
def approval_expire(*, approval: Approval) -> bool:
    """Closes an approval whose timeout passed; its step times out."""
    try:
        run, approval = _locked(approval)
    except Conflict:
        return False
    if approval.expires_at is None or approval.expires_at > timezone.now():
        return False
    _transition(approval, ApprovalStatus.EXPIRED)
    # Rounded: expires_at is set a moment before the row's opened_at, so 2 s is 1.99 s here.
    waited = round((approval.expires_at - approval.opened_at).total_seconds())
    reason = f"approval expired after {waited}s without a decision"
    run_services.log_system(run_id=run.pk, step=approval.step, message=reason, level=LogLevel.ERROR)
    _finish_step(run, approval.step, StepStatus.TIMED_OUT, error=reason)
    notifications.send_later(approval, "expired")
    return True


def approvals_cancel_for_run(*, run: Run, steps: list[Step] | None = None) -> None:
    """The run was cancelled or timed out (or, with `steps`, the group holding those steps
    timed out): close its open approvals. Run must be locked."""
    approvals = Approval.objects.filter(run=run)
    if steps is not None:
        approvals = approvals.filter(step__in=steps)
    for approval in approvals.pending():
        _transition(approval, ApprovalStatus.CANCELLED)
        notifications.send_later(approval, "cancelled")


def approvals_expire_due() -> int:
    due = Approval.objects.pending().filter(expires_at__lte=timezone.now())[:200]
    return sum(approval_expire(approval=approval) for approval in due)
