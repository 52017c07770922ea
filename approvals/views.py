"""Approval pages: my inbox and history, and one approval with its context and decision form.

Approving needs no role, only being named by the approval, so these views ask for a login,
not a role; someone with a role may read every approval.
"""

from typing import Any

from django.contrib.auth.decorators import login_required
from django.db.models import Prefetch
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from approvals.models import Approval, Decision
from approvals.services import approval_decide
from approvals.state import ApprovalStatus
from config.api.permissions import has_role
from config.errors import DomainError, PermissionDenied, ValidationFailed
from config.views import domain_error_response, forbidden
from runbooks.forms import RunForm
from runbooks.params import ParamSpec


def _visible(request: HttpRequest):
    approvals = Approval.objects.select_related("run__runbook", "step", "requested_by")
    if has_role(request.user, "viewer"):
        return approvals
    return approvals.decidable_by(request.user)


def can_decide(approval: Approval, user) -> bool:
    return (
        approval.is_open
        and approval.names(user)
        and (approval.allow_self_approval or approval.requested_by_id != user.pk)
        and not any(d.user_id == user.pk for d in approval.decisions.all())
    )


@login_required
@require_GET
def approval_list(request: HttpRequest) -> HttpResponse:
    mine = [
        approval
        for approval in _visible(request)
        .pending()
        .decidable_by(request.user)
        .prefetch_related("decisions")
        .order_by("opened_at")[:100]
        if can_decide(approval, request.user)
    ]
    history = (
        _visible(request)
        .exclude(status=ApprovalStatus.PENDING)
        .prefetch_related(Prefetch("decisions", Decision.objects.select_related("user")))
        .order_by("-closed_at")[:50]
    )
    others = list(
        _visible(request)
        .pending()
        .exclude(pk__in=[a.pk for a in mine])
        .prefetch_related("decisions")
        .order_by("opened_at")[:50]
    )
    for approval in others:
        # What the page says of each: how far it is, and whether this user has had a say.
        approval.approve_count, own = _tally(list(approval.decisions.all()), request.user)
        approval.my_verdict = own.verdict if own else ""
    return render(
        request,
        "approvals/approval_list.html",
        {"mine": mine, "others": others, "history": history},
    )


def _tally(decisions: list[Decision], user: Any) -> tuple[int, Decision | None]:
    """How many approved, and `user`'s own decision if they made one."""
    approvals = sum(d.verdict == Decision.Verdict.APPROVE for d in decisions)
    return approvals, next((d for d in decisions if d.user_id == user.pk), None)


def _form(approval: Approval, data: Any = None) -> RunForm:
    specs = [ParamSpec.model_validate(field) for field in approval.fields]
    return RunForm(specs, data, prefix="values")


def _detail_context(request: HttpRequest, approval: Approval, form: RunForm | None = None):
    run = approval.run
    steps = list(run.steps.order_by("position"))
    decisions = list(approval.decisions.select_related("user"))
    approve_count, my_decision = _tally(decisions, request.user)
    return {
        "approval": approval,
        "run": run,
        "done": [s for s in steps if s.position < approval.step.position and s.kind != "group"],
        "following": [s for s in steps if s.position > approval.step.position],
        "decisions": decisions,
        "approve_count": approve_count,
        "still_needed": max(approval.required - approve_count, 0),
        "my_decision": my_decision,
        "can_decide": can_decide(approval, request.user),
        "form": form or _form(approval),
    }


def _get(request: HttpRequest, pk: int) -> Approval:
    approval = _visible(request).prefetch_related("decisions").filter(pk=pk).first()
    if approval is None:
        raise Http404("No such approval")
    return approval


@login_required
@require_GET
def approval_detail(request: HttpRequest, pk: int) -> HttpResponse:
    approval = _get(request, pk)
    template = "approvals/approval_detail.html"
    # The state polls on its own, so what is typed in the forms is never lost; it removes
    # them (out of band) once they can no longer be used. A panel loaded into a run's page
    # has no forms to remove yet.
    polled = bool(request.htmx) and request.GET.get("part") == "state"
    if request.htmx:
        template += "#decision-state" if polled else "#decision-panel"
    context = _detail_context(request, approval)
    context["polled"] = polled
    context["next"] = _safe_next(request, request.GET.get("next", ""))
    return render(request, template, context)


def _safe_next(request: HttpRequest, target: str) -> str:
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        return target
    return ""


@login_required
@require_POST
def approval_decision(request: HttpRequest, pk: int) -> HttpResponse:
    """Records a decision. From htmx (the panel on the approval's page or in a run's page)
    it answers the panel, decided or saying why not, so the person stays where they are;
    without JavaScript it redirects back, or answers the page with the form and why."""
    approval = _get(request, pk)
    approve = request.POST.get("verdict") == "approve"
    form = _form(approval, request.POST)
    form.is_valid()  # field-level parsing only; the service validates the values
    values = {name: value for name, value in form.params().items() if value not in (None, "")}
    comment = request.POST.get("comment" if approve else "reason", "")
    target = _safe_next(request, request.POST.get("next", ""))
    page = "approvals/approval_detail.html" + ("#decision-panel" if request.htmx else "")
    try:
        approval_decide(
            approval=approval,
            user=request.user,
            approve=approve,
            comment=comment,
            values=values,
            origin="ui",
        )
    except ValidationFailed as error:
        # The message goes beside the box it is about: the reason, the comment, or (above
        # the form) the values, each of which gets its own messages beside it.
        field = next((name for name in ("reason", "comment") if name in error.details), "values")
        form.add_service_errors(
            {
                key.replace("values.", "params."): messages
                for key, messages in error.details.items()
                if key.startswith("values.")
            }
        )
        context = _detail_context(request, approval, form)
        context.update(
            {
                "error": {"field": field, "message": error.message},
                "comment": request.POST.get("comment", ""),
                "reason": request.POST.get("reason", ""),
                "next": target,
            }
        )
        return render(request, page, context, status=400)
    except DomainError as error:
        if request.htmx:  # someone decided first, the run ended ...: the panel as it is now
            context = _detail_context(request, _get(request, pk))
            context.update({"refused": error.message, "next": target})
            return render(request, page, context, status=error.status)
        if isinstance(error, PermissionDenied):
            return forbidden(request, error.message)
        return domain_error_response(request, error)
    if request.htmx:
        context = _detail_context(request, _get(request, pk))
        context.update({"next": target, "decided": True})  # "decided" updates the nav's badge
        return render(request, page, context)
    if target:
        return redirect(target)
    return redirect("approvals:approval_detail", pk=approval.pk)
