"""Site-wide views: health check, the dashboard, API tokens, and what every page shares
(the role checks and the template context)."""

from collections.abc import Callable
from datetime import date, timedelta
from functools import wraps
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.db import connection
from django.db.models import Count
from django.db.models.functions import TruncDate
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from config.api.permissions import has_role, role_of
from config.errors import DomainError
from config.models import ApiToken
from config.services import TOKEN_MAX_DAYS, token_create, token_revoke
from runs import selectors
from runs.models import Run
from runs.state import RUN_TERMINAL, RunStatus


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness and database check for load balancers (no authentication, no details)."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:
        return JsonResponse({"status": "unavailable"}, status=503)
    return JsonResponse({"status": "ok"})


# --- What every page shares ------------------------------------------------------------------


def ui_context(request: HttpRequest) -> dict[str, Any]:
    """Role flags for templates: buttons are shown only to those who may use them."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"role": None, "can_view": False, "can_operate": False, "can_author": False}
    return {
        "role": role_of(user),
        "can_view": has_role(user, "viewer"),
        "can_operate": has_role(user, "operator"),
        "can_author": has_role(user, "author"),
        "approvals_waiting": _approvals_waiting(user),
    }


def _approvals_waiting(user: Any) -> int:
    """The navigation badge: open approvals this user may still decide."""
    from approvals.models import Approval, Decision

    return (
        Approval.objects.pending()
        .decidable_by(user)
        .exclude(requested_by=user, allow_self_approval=False)
        .exclude(pk__in=Decision.objects.filter(user=user).values("approval_id"))
        .count()
    )


def role_required(role: str) -> Callable:
    """Anonymous users go to the login page; signed-in users without `role` get a 403 page.

    Views check again inside (through this decorator on every POST view) whatever the page
    showed, so a hidden button is never the only guard.
    """

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not has_role(request.user, role):
                return forbidden(request, f"This needs the {role} role.")
            return view(request, *args, **kwargs)

        return wrapped

    return decorate


def forbidden(request: HttpRequest, message: str) -> HttpResponse:
    return render(request, "403.html", {"message": message}, status=403)


def domain_error_response(request: HttpRequest, error: DomainError) -> HttpResponse:
    return render(
        request,
        "error.html",
        {"message": error.message, "status": error.status},
        status=error.status,
    )


# --- Dashboard -------------------------------------------------------------------------------

CHART_DAYS = 14
CHART_STATUSES = [
    RunStatus.SUCCEEDED,
    RunStatus.FAILED,
    RunStatus.TIMED_OUT,
    RunStatus.CANCELLED,
    RunStatus.RUNNING,
    RunStatus.WAITING,
    RunStatus.QUEUED,
]


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    if not has_role(request.user, "viewer"):
        # Approving needs no role: someone who may only decide approvals starts in their inbox
        # (where they are sent after logging in), not on a page refusing them.
        return redirect("approvals:approval_list")
    active = selectors.run_summaries(selectors.run_list().active().order_by("-number")[:20])
    if request.htmx:
        return render(request, "dashboard.html#active-runs", {"active_runs": active})
    failures = list(
        selectors.run_list()
        .filter(status__in=[RunStatus.FAILED, RunStatus.TIMED_OUT])
        .order_by("-number")[:8]
    )
    approvals = _approvals_for(request)
    today = timezone.localdate()
    first = today - timedelta(days=CHART_DAYS - 1)
    per_day = _runs_per_day(first, today)
    durations = _durations_per_day(first, today)
    context = {
        "active_runs": active,
        "failures": failures,
        "approvals": approvals,
        "runs_chart": bar_chart(per_day, CHART_STATUSES),
        "duration_chart": line_chart(durations),
        "has_runbooks": _has_runbooks(),
        "totals": {
            "runs": sum(sum(day["counts"].values()) for day in per_day),
            "succeeded": sum(day["counts"].get(RunStatus.SUCCEEDED, 0) for day in per_day),
            "failed": sum(
                day["counts"].get(RunStatus.FAILED, 0) + day["counts"].get(RunStatus.TIMED_OUT, 0)
                for day in per_day
            ),
        },
    }
    finished = context["totals"]["succeeded"] + context["totals"]["failed"]
    context["totals"]["success_rate"] = (
        round(100 * context["totals"]["succeeded"] / finished) if finished else None
    )
    return render(request, "dashboard.html", context)


def _has_runbooks() -> bool:
    from runbooks.models import Runbook

    return Runbook.objects.active().exists()


def _approvals_for(request: HttpRequest) -> list:
    from approvals.models import Approval

    return list(
        Approval.objects.pending()
        .decidable_by(request.user)
        .select_related("run", "step", "run__runbook")
        .order_by("opened_at")[:10]
    )


def _day_range(first: date, last: date) -> list[date]:
    return [first + timedelta(days=offset) for offset in range((last - first).days + 1)]


def _runs_per_day(first: date, last: date) -> list[dict[str, Any]]:
    since = timezone.make_aware(timezone.datetime.combine(first, timezone.datetime.min.time()))
    rows = (
        Run.objects.filter(created_at__gte=since)
        .annotate(day=TruncDate("created_at"))
        .values_list("day", "status")
        .annotate(n=Count("number"))
        .order_by()
    )
    by_day: dict[date, dict[str, int]] = {}
    for day, status, n in rows:
        by_day.setdefault(day, {})[status] = n
    return [{"day": day, "counts": by_day.get(day, {})} for day in _day_range(first, last)]


def _durations_per_day(first: date, last: date) -> list[dict[str, Any]]:
    since = timezone.make_aware(timezone.datetime.combine(first, timezone.datetime.min.time()))
    rows = Run.objects.filter(
        created_at__gte=since,
        status__in=RUN_TERMINAL,
        started_at__isnull=False,
        finished_at__isnull=False,
    ).values_list("created_at", "started_at", "finished_at")
    by_day: dict[date, list[float]] = {}
    for created, started, finished in rows.iterator():
        by_day.setdefault(timezone.localdate(created), []).append(
            (finished - started).total_seconds()
        )
    return [
        {
            "day": day,
            "p50": selectors.percentile(by_day.get(day, []), 0.5),
            "p95": selectors.percentile(by_day.get(day, []), 0.95),
        }
        for day in _day_range(first, last)
    ]


# --- Charts as server-side SVG ---------------------------------------------------------------

CHART_W, CHART_H = 640, 220
PAD_L, PAD_R, PAD_T, PAD_B = 44, 12, 12, 28


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000):
        if value <= step * 4:
            return step * 4
    return value * 1.1


def _axis(top: float, fmt: Callable[[float], str]) -> list[dict[str, Any]]:
    plot_h = CHART_H - PAD_T - PAD_B
    return [{"y": PAD_T + plot_h - plot_h * i / 4, "label": fmt(top * i / 4)} for i in range(5)]


def bar_chart(days: list[dict[str, Any]], statuses: list[str]) -> dict[str, Any]:
    """Stacked bars of runs per day by status, as coordinates for the SVG template."""
    top = _nice_max(max((sum(d["counts"].values()) for d in days), default=0))
    plot_w = CHART_W - PAD_L - PAD_R
    plot_h = CHART_H - PAD_T - PAD_B
    slot = plot_w / max(len(days), 1)
    width = slot * 0.62
    bars = []
    for index, day in enumerate(days):
        x = PAD_L + slot * index + (slot - width) / 2
        y = PAD_T + plot_h
        total = sum(day["counts"].values())
        segments = []
        for status in statuses:
            n = day["counts"].get(status, 0)
            if not n:
                continue
            h = plot_h * n / top
            y -= h
            segments.append({"status": status, "y": y, "h": h, "n": n})
        bars.append(
            {
                "x": x,
                "w": width,
                "cx": x + width / 2,
                "label": day["day"].strftime("%b %-d"),
                "show_label": index % 2 == (len(days) - 1) % 2,
                "segments": segments,
                "total": total,
                "date": day["day"].isoformat(),
            }
        )
    return {
        "width": CHART_W,
        "height": CHART_H,
        "left": PAD_L,
        "right": CHART_W - PAD_R,
        "bottom": PAD_T + plot_h,
        "axis": _axis(top, lambda v: f"{v:g}"),
        "bars": bars,
        "legend": [s for s in statuses if any(d["counts"].get(s) for d in days)],
        "empty": not any(b["total"] for b in bars),
    }


def _seconds_text(value: float) -> str:
    if value >= 3600:
        return f"{value / 3600:g}h" if value % 1800 == 0 else f"{value / 3600:.1f}h"
    if value >= 60:
        return f"{value / 60:g}m" if value % 30 == 0 else f"{value / 60:.1f}m"
    return f"{value:.0f}s" if value >= 10 or value == 0 else f"{value:.1f}s"


def _nice_seconds(value: float) -> float:
    """An axis top in seconds whose quarters read well (15s, 1m, 5m, 1h ...)."""
    for quarter in (1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600):
        if value <= quarter * 4:
            return quarter * 4
    return value * 1.1


def line_chart(days: list[dict[str, Any]]) -> dict[str, Any]:
    """p50 and p95 run duration per day as polylines (gaps where a day had no runs)."""
    top = _nice_seconds(max((d["p95"] or 0 for d in days), default=0))
    plot_w = CHART_W - PAD_L - PAD_R
    plot_h = CHART_H - PAD_T - PAD_B
    slot = plot_w / max(len(days), 1)
    series = []
    for key in ("p50", "p95"):
        points = []
        for index, day in enumerate(days):
            if day[key] is None:
                continue
            x = PAD_L + slot * index + slot / 2
            y = PAD_T + plot_h - plot_h * day[key] / top
            points.append({"x": x, "y": y, "value": _seconds_text(day[key]), "date": day["day"]})
        series.append(
            {
                "key": key,
                "points": points,
                "path": " ".join(f"{p['x']:.1f},{p['y']:.1f}" for p in points),
            }
        )
    labels = [
        {
            "x": PAD_L + slot * index + slot / 2,
            "label": day["day"].strftime("%b %-d"),
            "show": index % 2 == (len(days) - 1) % 2,
        }
        for index, day in enumerate(days)
    ]
    return {
        "width": CHART_W,
        "height": CHART_H,
        "left": PAD_L,
        "right": CHART_W - PAD_R,
        "bottom": PAD_T + plot_h,
        "axis": _axis(top, _seconds_text),
        "series": series,
        "labels": labels,
        "empty": not any(s["points"] for s in series),
    }


# --- API tokens ------------------------------------------------------------------------------


class TokenForm(forms.Form):
    name = forms.CharField(
        max_length=100, label="Name", help_text="What uses it, e.g. “CI deploy”."
    )
    expires_in_days = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=TOKEN_MAX_DAYS,
        label="Expires after (days)",
        help_text="Leave empty for a token that never expires.",
    )


@role_required("viewer")
@require_http_methods(["GET", "POST"])
@never_cache  # the page shows a new token's secret: no browser or proxy may keep a copy
def token_list(request: HttpRequest) -> HttpResponse:
    form = TokenForm(request.POST or None)
    secret = None
    created = None
    if request.method == "POST" and form.is_valid():
        days = form.cleaned_data["expires_in_days"]
        created, secret = token_create(
            user=request.user,
            name=form.cleaned_data["name"],
            expires_in=timedelta(days=days) if days else None,
        )
        form = TokenForm()
    tokens = ApiToken.objects.filter(user=request.user).order_by("-created")
    status = 400 if request.method == "POST" and secret is None else 200
    return render(
        request,
        "settings/tokens.html",
        {
            "form": form,
            "tokens": tokens,
            "secret": secret,
            "created_token": created,
            "now": timezone.now(),
        },
        status=status,
    )


@role_required("viewer")
@require_POST
def token_revoke_view(request: HttpRequest, pk: int) -> HttpResponse:
    token = get_object_or_404(ApiToken, pk=pk, user=request.user)
    try:
        token_revoke(token=token, user=request.user)
    except DomainError as error:
        return domain_error_response(request, error)
    messages.success(request, f"Token “{token.name}” was revoked.")
    return redirect("tokens")
