"""Run pages: the history list and a run's live page (header, step tree, log), and the
Cancel and Retry actions. Writes go through runs.services, exactly as the API's do.

The run page polls while the run is active: the header, the step tree and the log tail each
replace themselves every second, and the outputs, artifacts and timeline every two; all
render without `hx-trigger` once the run is terminal. Which fragment a poll wants is the id
of its target (a partial's root id is its name).
"""

from collections.abc import Iterator
from typing import Any

from django.contrib import messages
from django.db.models import QuerySet
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    StreamingHttpResponse,
)
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from config.errors import DomainError, ValidationFailed
from config.numbers import whole_number
from config.views import role_required
from runbooks.forms import RunForm
from runbooks.models import Runbook
from runbooks.services import version_definition
from runs import selectors, services
from runs.api.views import step_tree
from runs.filters import RunFilter
from runs.models import Artifact, LogEntry, LogLevel, Run, RunEvent, Step
from runs.state import STEP_FAILED, RunStatus

PAGE_SIZE = 50
# The runs list's filter fields as its form labels them, for its error messages.
FILTER_LABELS = {
    "runbook": "Runbook",
    "status": "Status",
    "created_by": "Started by",
    "label": "Label",
    "since": "From",
    "until": "Until",
}
LOG_TAIL = 1000  # lines shown at first, and loaded per "earlier lines" click or poll
PAGE = "runs/run_detail.html"
FRAGMENTS = {"run-header", "run-steps", "run-log", "run-results"}


def _run_or_404(number: int) -> Run:
    try:
        return selectors.run_list().get(pk=number)
    except Run.DoesNotExist:
        raise Http404(f"There is no run #{number}.") from None


# --- The list ---------------------------------------------------------------------------------


@role_required("viewer")
@require_GET
def run_list(request: HttpRequest) -> HttpResponse:
    filterset = RunFilter(request.GET or None, queryset=selectors.run_list().order_by("-number"))
    runs = filterset.qs
    before = whole_number(request.GET.get("before"))
    if before is not None:
        runs = runs.filter(number__lt=before)
    page = list(runs[: PAGE_SIZE + 1])
    older = page[PAGE_SIZE - 1].number if len(page) > PAGE_SIZE else None
    context = {
        "runs": selectors.run_summaries(page[:PAGE_SIZE]),
        # A filter that cannot be used is left out of the query (django-filter drops it):
        # the page says so above the table rather than list runs as if it were applied.
        "filter_problems": [
            {
                "label": FILTER_LABELS.get(name, name),
                "value": request.GET.get(name, ""),
                "messages": errors,
            }
            for name, errors in filterset.errors.items()
        ],
        "values": request.GET,
        "older": older,
        "paged": before is not None,
        "runbooks": Runbook.objects.order_by("slug").values_list("slug", "name"),
        "statuses": RunStatus.values,
        "filtered": any(
            request.GET.get(key) for key in ("runbook", "status", "created_by", "label", "since")
        )
        or bool(request.GET.get("until")),
    }
    template = "runs/run_list.html#run-table" if request.htmx else "runs/run_list.html"
    return render(request, template, context)


# --- A run's page -----------------------------------------------------------------------------


def _selected_step(run: Run, key: str) -> Step | None:
    if not key:
        return None
    return run.steps.filter(key=key).first() or run.steps.filter(number=key).first()


def _level(value: str) -> int | None:
    try:
        return LogLevel[value.upper()].value if value else None
    except KeyError:
        return None


def _step_family(run: Run, step: Step) -> set[int]:
    """The step and, for a group, every step under it."""
    family = {step.pk}
    if step.is_group:
        for pk, parent in run.steps.values_list("pk", "parent_id").order_by("position"):
            if parent in family:
                family.add(pk)
    return family


def _log_entries(run: Run, step: Step | None, level: int | None) -> QuerySet[LogEntry]:
    entries = LogEntry.objects.filter(run=run).select_related("step")
    if step is not None:
        if step.is_group:
            entries = entries.filter(step_id__in=_step_family(run, step))
        else:
            entries = entries.filter(step=step)
    if level is not None:
        entries = entries.filter(level__gte=level)
    return entries


def _log_tail(entries: QuerySet[LogEntry], before: int | None = None) -> tuple[list, bool]:
    """The last LOG_TAIL lines (before a seq), oldest first, and whether earlier ones exist."""
    if before is not None:
        entries = entries.filter(seq__lt=before)
    lines = list(entries.order_by("-seq")[: LOG_TAIL + 1])
    earlier = len(lines) > LOG_TAIL
    return lines[:LOG_TAIL][::-1], earlier


def _log_context(request: HttpRequest, run: Run) -> dict[str, Any]:
    step = _selected_step(run, request.GET.get("step", ""))
    level_name = request.GET.get("level", "")
    level = _level(level_name)
    lines, earlier = _log_tail(_log_entries(run, step, level))
    return {
        "selected": step,
        "level": level_name if level else "",
        "levels": LogLevel.labels,
        "lines": lines,
        "earlier": earlier,
        "first_seq": lines[0].seq if lines else None,
        # The run was read before its lines, so its log_seq is no later than the last line
        # shown: a live view that starts after it misses nothing.
        "after": lines[-1].seq if lines else run.log_seq,
        "live": not run.is_terminal,
    }


def _header_context(run: Run, shown_approval: str = "") -> dict[str, Any]:
    """The header, and whether an approval opened that the page has no panel for yet.

    The page's decision panel lives outside the header (its poll would wipe what an approver
    types), so the header's poll carries which approval the page shows; when another one
    opens, the poll's answer brings its panel out of band."""
    run = selectors.run_summaries([run])[0]
    opened = run.open_approval is not None and str(run.open_approval.pk) != shown_approval
    return {
        "run": run,
        "retries": list(run.retries.order_by("number").values_list("number", flat=True)),
        "approval_opened": opened,
        "shown_approval": run.open_approval.pk if opened else shown_approval,
    }


def _results_context(run: Run) -> dict[str, Any]:
    """Outputs, artifacts and events. `run` was read first: once it is terminal, all of
    them are written, so a poll that renders them final has missed nothing."""
    steps = [step for step in run.steps.order_by("position") if step.outputs]
    return {
        "step_outputs": [(step, step.outputs) for step in steps],
        "artifacts": Artifact.objects.filter(run=run).select_related("step").order_by("pk"),
        "events": RunEvent.objects.filter(run=run)
        .select_related("actor", "step")
        .order_by("id")[:500],
    }


@role_required("viewer")
@require_GET
def run_detail(request: HttpRequest, number: int) -> HttpResponse:
    run = _run_or_404(number)
    target = request.htmx.target if request.htmx else None
    if target in FRAGMENTS:
        context: dict[str, Any] = {"run": run, "selected_key": request.GET.get("step", "")}
        if target == "run-header":
            context.update(_header_context(run, request.GET.get("approval", "")))
        elif target == "run-steps":
            context["tree"] = step_tree(run)
        elif target == "run-results":
            context.update(_results_context(run))
        else:
            context.update(_log_context(request, run))
        return render(request, f"{PAGE}#{target}", context)

    context = _header_context(run)
    context.update(_log_context(request, run))
    context.update(_results_context(run))
    context.update({"selected_key": request.GET.get("step", ""), "tree": step_tree(run)})
    return render(request, PAGE, context)


@role_required("viewer")
@require_GET
def run_log(request: HttpRequest, number: int) -> HttpResponse:
    """New log lines after `after` (the poller), or earlier ones before `before`."""
    run = _run_or_404(number)
    if not request.htmx:
        return redirect(reverse("runs:run_detail", args=[run.number]) + _log_query(request))
    # Read the status first: once a run is terminal its lines are all written, so a tail that
    # saw the terminal status and then read the lines has seen the last of them.
    terminal = run.is_terminal
    step = _selected_step(run, request.GET.get("step", ""))
    level_name = request.GET.get("level", "")
    entries = _log_entries(run, step, _level(level_name))
    context: dict[str, Any] = {"run": run, "selected": step, "level": level_name}
    before = whole_number(request.GET.get("before"))
    if before is not None:
        lines, earlier = _log_tail(entries, before=before)
        context.update(
            {"lines": lines, "earlier": earlier, "first_seq": lines[0].seq if lines else None}
        )
        return render(request, f"{PAGE}#log-earlier", context)
    after = whole_number(request.GET.get("after")) or 0
    lines = list(entries.filter(seq__gt=after).order_by("seq")[: LOG_TAIL + 1])
    more = len(lines) > LOG_TAIL
    lines = lines[:LOG_TAIL]
    context.update(
        {
            "lines": lines,
            "after": lines[-1].seq if lines else after,
            "live": more or not terminal,
        }
    )
    return render(request, f"{PAGE}#log-new", context)


def _log_query(request: HttpRequest) -> str:
    query = request.GET.copy()
    for key in ("after", "before"):
        query.pop(key, None)
    encoded = query.urlencode()
    return f"?{encoded}" if encoded else ""


@role_required("viewer")
@require_GET
def run_log_download(request: HttpRequest, number: int) -> StreamingHttpResponse:
    run = _run_or_404(number)
    step = _selected_step(run, request.GET.get("step", ""))
    entries = _log_entries(run, step, _level(request.GET.get("level", ""))).order_by("seq")

    def lines() -> Iterator[str]:
        for entry in entries.iterator(chunk_size=2000):
            where = entry.step.number if entry.step else "-"
            level = LogLevel(entry.level).label
            yield f"{entry.timestamp.isoformat()} {level:<6} {where:<6} {entry.message}\n"

    response = StreamingHttpResponse(lines(), content_type="text/plain; charset=utf-8")
    suffix = f"-{step.key}" if step else ""
    response["Content-Disposition"] = f'attachment; filename="run-{run.number}{suffix}.log"'
    return response


@role_required("viewer")
@require_GET
def artifact_download(request: HttpRequest, pk: int) -> FileResponse:
    opened, name = selectors.artifact_file(pk)
    return FileResponse(opened, as_attachment=True, filename=name)


# --- Actions ----------------------------------------------------------------------------------


@role_required("operator")
@require_POST
def run_cancel(request: HttpRequest, number: int) -> HttpResponse:
    run = _run_or_404(number)
    reason = request.POST.get("reason", "").strip()
    if not reason:
        messages.error(request, "Say why you are cancelling the run.")
        return redirect("runs:run_detail", number=run.number)
    try:
        services.run_cancel(run=run, user=request.user, reason=reason)
    except DomainError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, f"Run #{run.number} is being cancelled.")
    return redirect("runs:run_detail", number=run.number)


@role_required("operator")
def run_retry_edit(request: HttpRequest, number: int) -> HttpResponse:
    """Retry with changes: the run's params in the run form; the ones edited are sent to
    `run_retry`, which keeps the rest (secrets left empty included)."""
    run = _run_or_404(number)
    if not run.is_terminal or run.runbook.is_archived:
        why = "its runbook is archived" if run.is_terminal else f"it is still {run.status}"
        messages.error(request, f"Run #{run.number} cannot be retried: {why}.")
        return redirect("runs:run_detail", number=run.number)
    form = RunForm(version_definition(run.version).params, request.POST or None, values=run.params)
    for field in form.fields.values():
        if field.param_type == "secret":
            field.help_text = f"Leave it empty to keep the value run #{run.number} was given."
    # As the run page offers it: only where a step failed or timed out.
    can_retry_failed = run.steps.filter(status__in=STEP_FAILED).exists()
    mode = request.POST.get("from", "failed" if can_retry_failed else "start")
    if request.method == "POST" and form.is_valid():
        try:
            new = services.run_retry(
                run=run, user=request.user, origin="ui", params=form.edited(), mode=mode
            )
        except ValidationFailed as error:
            form.add_service_errors(error.details)
        except DomainError as error:
            form.add_error(None, error.message)
        else:
            messages.success(request, f"Run #{new.number} retries #{run.number} with changes.")
            return redirect("runs:run_detail", number=new.number)
    context = {"run": run, "form": form, "mode": mode, "can_retry_failed": can_retry_failed}
    return render(request, "runs/run_retry.html", context, status=400 if form.is_bound else 200)


@role_required("operator")
@require_POST
def run_retry(request: HttpRequest, number: int) -> HttpResponse:
    run = _run_or_404(number)
    mode = request.POST.get("from", "start")
    try:
        new = services.run_retry(run=run, user=request.user, origin="ui", mode=mode)
    except DomainError as error:
        messages.error(request, error.message)
        return redirect("runs:run_detail", number=run.number)
    where = "the failed step" if mode == "failed" else "the start"
    messages.success(request, f"Run #{new.number} retries #{run.number} from {where}.")
    return redirect("runs:run_detail", number=new.number)
