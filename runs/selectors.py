"""Reads of runs that span relations: step counts and current steps for a page of runs."""

import math
from collections import defaultdict
from collections.abc import Iterable
from datetime import timedelta

from django.core.files import File
from django.db.models import Count, Q, QuerySet
from django.http import Http404
from django.shortcuts import get_object_or_404
from django.utils import timezone

from approvals.models import Approval
from config.prepared import PreparedQuery
from runs.models import Artifact, Run, Step
from runs.state import RUN_TERMINAL, RunStatus, StepStatus


def run_list() -> QuerySet[Run]:
    """Runs with what a list or a detail shows. A version's definition and source text are
    large and read through `version_steps`' cache, so they stay in the database."""
    return Run.objects.select_related("runbook", "version", "created_by").defer(
        "version__definition", "version__source"
    )


STEP_STATUSES = tuple(StepStatus.values)  # a property that rebuilds its list on every read


def _leaf_counts(steps: QuerySet[Step]) -> QuerySet:
    """(run id, status, how many) of the leaf steps among `steps`."""
    return steps.leaves().values_list("run_id", "status").annotate(n=Count("id")).order_by()


def _current_steps(run_ids: list[int]) -> QuerySet:
    """(run id, number) of the running and waiting leaf steps of the runs, in outline order."""
    return (
        Step.objects.leaves()
        .filter(run_id__in=run_ids, status__in=[StepStatus.RUNNING, StepStatus.WAITING])
        .order_by("position")
        .values_list("run_id", "number")
    )


def _open_approvals(run_ids: list[int]) -> QuerySet[Approval]:
    return (
        Approval.objects.pending()
        .filter(run_id__in=run_ids)
        .select_related("step")
        .annotate(approve_count=Count("decisions", filter=Q(decisions__verdict="approve")))
        .order_by("opened_at")
    )


# Every list page, run page and `GET /runs/{n}` reads these: prepared, for pages of up to
# PREPARED_PAGE runs (the API's largest page). An active run's page, and the answer to every
# `POST /runs`, reads all three.
LEAF_COUNTS = PreparedQuery(lambda run_ids: _leaf_counts(Step.objects.filter(run_id__in=run_ids)))
CURRENT_STEPS = PreparedQuery(_current_steps)
OPEN_APPROVALS = PreparedQuery(_open_approvals)
PREPARED_PAGE = 100


def run_summaries(runs: Iterable[Run]) -> list[Run]:
    """Attaches `step_counts`, `current_steps` and `open_approval` to each run, in at most
    three queries for any page: one when every run on it has ended, since an ended run has
    no running or waiting step and no open approval (`_stop_if_idle` cancels them)."""
    runs = list(runs)
    counts: dict[int, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STEP_STATUSES, 0))
    current: dict[int, list[str]] = defaultdict(list)
    pks = [run.pk for run in runs]
    active_pks = [run.pk for run in runs if run.status not in RUN_TERMINAL]
    if pks:
        rows = (
            LEAF_COUNTS(pks)
            if len(pks) <= PREPARED_PAGE
            else _leaf_counts(Step.objects.filter(run_id__in=pks))
        )
        for run_id, status, n in rows:
            counts[run_id][status] = n
    open_approvals: dict[int, Approval] = {}
    if active_pks:
        few = len(active_pks) <= PREPARED_PAGE
        for run_id, number in CURRENT_STEPS(active_pks) if few else _current_steps(active_pks):
            current[run_id].append(number)
        for approval in OPEN_APPROVALS(active_pks) if few else _open_approvals(active_pks):
            open_approvals.setdefault(approval.run_id, approval)
    for run in runs:
        run.open_approval = open_approvals.get(run.pk)
        tally = counts[run.pk]
        run.step_counts = {"total": sum(tally.values()), **tally}
        run.current_steps = current[run.pk]
    return runs


PERIODS = {"day": 1, "week": 7, "month": 30}


def percentile(values: list[float], fraction: float) -> float | None:
    """The nearest-rank percentile: the smallest value that at least `fraction` of `values`
    are at or below, so always one that was measured (p50 of 10, 20, 30, 40 is 20). None
    when there are no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def run_stats(*, period: str, runbook: str | None = None) -> dict:
    """Totals by status, success rate, duration percentiles and a daily breakdown."""
    now = timezone.now()
    since = now - timedelta(days=PERIODS[period])
    runs = Run.objects.filter(created_at__gte=since)
    if runbook:
        runs = runs.filter(runbook__slug=runbook)
    totals = dict.fromkeys(RunStatus.values, 0)
    daily: dict[str, dict[str, int]] = {}
    durations: list[int] = []
    for status, created, started, finished in runs.values_list(
        "status", "created_at", "started_at", "finished_at"
    ).iterator():
        totals[status] += 1
        # Days are the server's (TIME_ZONE), as `since` and `until` without an offset are.
        local_day = timezone.localtime(created).date().isoformat()
        day = daily.setdefault(local_day, dict.fromkeys(RunStatus.values, 0))
        day[status] += 1
        if started and finished and status in RUN_TERMINAL:
            durations.append(int((finished - started).total_seconds() * 1000))
    finished_count = sum(totals[s] for s in RUN_TERMINAL)
    first_day = timezone.localtime(since).date()
    breakdown = []
    for offset in range(PERIODS[period] + 1):
        date = (first_day + timedelta(days=offset)).isoformat()
        counts = daily.get(date, dict.fromkeys(RunStatus.values, 0))
        breakdown.append({"date": date, "total": sum(counts.values()), **counts})
    return {
        "period": period,
        "since": since,
        "until": now,
        "runbook": runbook,
        "total": sum(totals.values()),
        "by_status": totals,
        "success_rate": (totals[RunStatus.SUCCEEDED] / finished_count) if finished_count else None,
        "duration_ms": {"p50": percentile(durations, 0.5), "p95": percentile(durations, 0.95)},
        "daily": breakdown,
    }


def artifact_file(pk: int) -> tuple[File, str]:
    """An artifact's file, open, and the name to download it as. Http404 when there is no
    such artifact, or its file is gone from STEPWISE_MEDIA_DIR (removed by hand, or a
    restored database without its files)."""
    artifact = get_object_or_404(Artifact, pk=pk)
    try:
        opened = artifact.file.open("rb")
    except FileNotFoundError:
        raise Http404(f"The file of artifact {pk} is no longer stored.") from None
    return opened, artifact.name.rsplit("/", 1)[-1]
