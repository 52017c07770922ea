"""Runbook pages: the catalogue with search and labels, and a runbook's page with its run
form. Starting a run goes through runs.services.run_create, as the API does."""

import difflib
from typing import Any

import yaml
from django.contrib import messages
from django.db.models import OuterRef, Subquery
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from config.errors import DomainError, ValidationFailed
from config.numbers import whole_number
from config.views import role_required
from runbooks.filters import RunbookFilter
from runbooks.forms import RunForm
from runbooks.models import Runbook, RunbookVersion
from runbooks.services import version_definition
from runs import selectors, services
from runs.models import Run

HEAVY = ("latest_version__definition", "latest_version__source")


@role_required("viewer")
@require_GET
def runbook_list(request: HttpRequest) -> HttpResponse:
    last_runs = Run.objects.filter(runbook=OuterRef("pk")).order_by("-number")
    runbooks = (
        Runbook.objects.active()
        .select_related("latest_version")
        .defer(*HEAVY)
        .annotate(
            last_status=Subquery(last_runs.values("status")[:1]),
            last_number=Subquery(last_runs.values("number")[:1]),
            last_at=Subquery(last_runs.values("created_at")[:1]),
        )
        .order_by("name")
    )
    filterset = RunbookFilter(request.GET or None, queryset=runbooks)
    labels = sorted(
        {
            f"{key}:{value}"
            for row in Runbook.objects.active().values_list("labels", flat=True)
            for key, value in (row or {}).items()
        }
    )
    context = {
        "runbooks": list(filterset.qs),
        "labels": labels,
        "q": request.GET.get("q", ""),
        "label": request.GET.get("label", ""),
    }
    template = (
        "runbooks/runbook_list.html#runbook-grid"
        if request.htmx
        else ("runbooks/runbook_list.html")
    )
    return render(request, template, context)


def _page(request: HttpRequest, runbook: Runbook, form: RunForm | None) -> dict[str, Any]:
    version = runbook.latest_version
    definition = version_definition(version) if version else None
    if form is None and definition is not None:
        form = RunForm(definition.params)
    return {
        "runbook": runbook,
        "version": version,
        "definition": definition,
        "steps": list(definition.iter_steps()) if definition else [],
        "form": form,
        "versions": runbook.versions.defer("definition", "source")
        .select_related("created_by")
        .order_by("-number")[:20],
        "recent_runs": selectors.run_list().filter(runbook=runbook).order_by("-number")[:10],
    }


@role_required("viewer")
@require_GET
def runbook_detail(request: HttpRequest, slug: str) -> HttpResponse:
    runbook = get_object_or_404(Runbook.objects.select_related("latest_version"), slug=slug)
    return render(request, "runbooks/runbook_detail.html", _page(request, runbook, None))


@role_required("operator")
@require_POST
def runbook_run(request: HttpRequest, slug: str) -> HttpResponse:
    runbook = get_object_or_404(Runbook.objects.select_related("latest_version"), slug=slug)
    version = runbook.latest_version
    if version is None:
        messages.error(request, "This runbook has no version to run.")
        return redirect("runbooks:runbook_detail", slug=slug)
    form = RunForm(version_definition(version).params, request.POST)
    if form.is_valid():
        try:
            run = services.run_create(
                runbook=runbook,
                version=None,
                params=form.params(),
                user=request.user,
                origin="ui",
            )
        except ValidationFailed as error:
            form.add_service_errors(error.details)
        except DomainError as error:
            form.add_error(None, error.message)
        else:
            messages.success(request, f"Started run #{run.number}.")
            return redirect("runs:run_detail", number=run.number)
    template = (
        "runbooks/runbook_detail.html#run-form"
        if request.htmx
        else ("runbooks/runbook_detail.html")
    )
    return render(request, template, _page(request, runbook, form), status=400)


def _version_text(version: RunbookVersion) -> str:
    """What the author wrote, or (for JSON-created versions) the definition as YAML."""
    if version.source.strip():
        return version.source
    return yaml.safe_dump(version.definition, sort_keys=False, allow_unicode=True)


@role_required("viewer")
@require_GET
def runbook_diff(request: HttpRequest, slug: str) -> HttpResponse:
    """A unified diff between two versions (`?from=1&to=3`; by default the last two)."""
    runbook = get_object_or_404(Runbook, slug=slug)
    versions = list(runbook.versions.order_by("number"))
    by_number = {v.number: v for v in versions}
    newest = versions[-1].number if versions else 0

    def pick(name: str, default: int) -> RunbookVersion | None:
        number = whole_number(request.GET.get(name))
        return by_number.get(default if number is None else number)

    new = pick("to", newest)
    old = pick("from", (new.number - 1) if new else 0)
    lines: list[tuple[str, str]] = []
    if old and new:
        diff = difflib.unified_diff(
            _version_text(old).splitlines(),
            _version_text(new).splitlines(),
            fromfile=f"v{old.number}",
            tofile=f"v{new.number}",
            lineterm="",
        )
        kinds = {"+": "add", "-": "del", "@": "hunk"}
        lines = [(kinds.get(line[:1], "same"), line) for line in diff]
    context = {"runbook": runbook, "versions": versions, "old": old, "new": new, "lines": lines}
    return render(request, "runbooks/runbook_diff.html", context)
