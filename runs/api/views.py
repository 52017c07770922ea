"""The runs API: start, list, follow, cancel and retry runs; logs, outputs, artifacts."""

from typing import Any

from django.db.models import Q, QuerySet
from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response

from config.api.idempotency import IdempotentMixin
from config.api.pagination import NewestFirstCursorPagination, PagePagination
from config.api.permissions import RolePermission
from config.api.schema import ERRORS
from config.errors import NotFound, ValidationFailed
from config.numbers import whole_number
from config.prepared import PreparedQuery
from runbooks.models import Runbook
from runs import selectors, services
from runs.api.serializers import (
    ArtifactOutput,
    LogOutput,
    LogPageOutput,
    OutputsOutput,
    RunCancelInput,
    RunCreateInput,
    RunOutput,
    RunRetryInput,
    StepOutput,
)
from runs.filters import RunFilter
from runs.models import Artifact, LogEntry, LogLevel, Run, Step


class RunPagination(PagePagination):
    """Page numbers with `page`; without it, `cursor` paging that stays stable as runs arrive.
    The rows of a page get RunOutput.RELATED; the count goes without its joins (on SQLite
    they make counting 100,000 runs take 20 ms instead of 0.1)."""

    @staticmethod
    def rows(runs: QuerySet[Run]) -> QuerySet[Run]:
        return runs.annotate(**RunOutput.RELATED)

    def paginate_queryset(self, queryset, request, view=None):
        if "page" in request.query_params or "cursor" not in request.query_params:
            self.cursor_mode = False
            return super().paginate_queryset(queryset, request, view)
        self.cursor_mode = True
        self.cursor = NewestFirstCursorPagination()
        self.cursor.rows = self.rows
        return self.cursor.paginate_queryset(queryset, request, view)

    def get_paginated_response(self, data):
        if self.cursor_mode:
            return self.cursor.get_paginated_response(data)
        return super().get_paginated_response(data)

    def get_schema_operation_parameters(self, view):
        cursor = NewestFirstCursorPagination().get_schema_operation_parameters(view)
        return [
            *super().get_schema_operation_parameters(view),
            *(parameter for parameter in cursor if parameter["name"] == "cursor"),
        ]


def _columns() -> QuerySet[Run]:
    """Runs with only the columns the API shows of them (RunOutput.COLUMNS)."""
    return Run.objects.only(*RunOutput.COLUMNS)


def _shown() -> QuerySet[Run]:
    """Runs with all the API shows of them: their columns and RunOutput.RELATED."""
    return RunPagination.rows(_columns())


# `GET /runs/{n}` is the API's busiest call (scripts poll it), so its query is prepared.
SHOWN_RUN = PreparedQuery(lambda number: _shown().filter(pk=number))
LARGEST_NUMBER = 2**63 - 1  # a run number is a 64-bit key; a larger one names no run


def _shown_run_or_404(number: int | str) -> Run:
    # The URL pattern lets only digits through, but any number of them: 20 or more name no
    # run, and Python refuses to read more than 4,300.
    key = int(number) if len(str(number)) < 20 else 0
    runs = SHOWN_RUN(key) if 0 < key <= LARGEST_NUMBER else []
    if not runs:
        raise NotFound(f"There is no run #{str(number)[:20]}.")
    return runs[0]


# `POST /runs` names its runbook by slug: the runbook with its latest version in one prepared
# query. The version's definition comes from version_definition's cache, not this row.
RUNBOOK_TO_RUN = PreparedQuery(
    lambda slug: (
        Runbook.objects.filter(slug=slug)
        .select_related("latest_version")
        .defer(*(f"latest_version__{name}" for name in services.VERSION_HEAVY))
    ),
    probe="\x00probe",
)


def _run_or_404(number: Any, runs: QuerySet[Run] | None = None) -> Run:
    try:
        return (selectors.run_list() if runs is None else runs).get(pk=int(number))
    except (Run.DoesNotExist, ValueError, TypeError):
        raise NotFound(f"There is no run #{number}.") from None


class RunViewSet(IdempotentMixin, viewsets.GenericViewSet):
    permission_classes = [RolePermission]
    lookup_field = "number"
    lookup_value_regex = "[0-9]+"
    filterset_class = RunFilter
    pagination_class = RunPagination
    serializer_class = RunOutput

    def get_queryset(self) -> QuerySet[Run]:
        return _columns().order_by("-number")  # RunPagination.rows adds RELATED to a page

    def _out(self, run: Run, status_code: int = 200, *, fresh: bool = False) -> Response:
        """The run as the API shows it; re-read unless `fresh` (a service may have moved it)."""
        if not fresh:
            run = _shown_run_or_404(run.pk)
        run = selectors.run_summaries([run])[0]
        return Response(RunOutput(run, context={"request": self.request}).data, status=status_code)

    @extend_schema(summary="List runs", responses={200: RunOutput(many=True), **ERRORS})
    def list(self, request: Request) -> Response:
        queryset = self.filter_queryset(self.get_queryset())
        page = selectors.run_summaries(self.paginate_queryset(queryset))
        return self.get_paginated_response(
            RunOutput(page, many=True, context={"request": request}).data
        )

    @extend_schema(summary="Get a run", responses={200: RunOutput, **ERRORS})
    def retrieve(self, request: Request, number: str) -> Response:
        return self._out(_shown_run_or_404(number), fresh=True)

    @extend_schema(
        summary="Start a run", request=RunCreateInput, responses={202: RunOutput, **ERRORS}
    )
    def create(self, request: Request) -> Response:
        data = RunCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        runbook = next(iter(RUNBOOK_TO_RUN(data.validated_data["runbook"])), None)
        if runbook is None:
            raise ValidationFailed(
                "No such runbook.",
                details={"runbook": [f"no runbook {data.validated_data['runbook']!r}"]},
            )
        run = services.run_create(
            runbook=runbook,
            params=data.validated_data["params"],
            user=request.user,
            origin="api",
            title=data.validated_data["title"],
            labels=data.validated_data["labels"],
        )
        return self._out(run, status.HTTP_202_ACCEPTED)

    @extend_schema(
        summary="Cancel a run", request=RunCancelInput, responses={200: RunOutput, **ERRORS}
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, number: str) -> Response:
        data = RunCancelInput(data=request.data)
        data.is_valid(raise_exception=True)
        run = services.run_cancel(
            run=_run_or_404(number), user=request.user, reason=data.validated_data["reason"]
        )
        return self._out(run)

    @extend_schema(
        summary="Retry a run", request=RunRetryInput, responses={202: RunOutput, **ERRORS}
    )
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, number: str) -> Response:
        data = RunRetryInput(data=request.data)
        data.is_valid(raise_exception=True)
        run = services.run_retry(
            run=_run_or_404(number),
            user=request.user,
            origin="api",
            params=data.validated_data.get("params"),
            mode=data.validated_data["from"],
        )
        return self._out(run, status.HTTP_202_ACCEPTED)

    @extend_schema(summary="The step tree", responses={200: StepOutput(many=True), **ERRORS})
    @action(detail=True, methods=["get"], pagination_class=None, filter_backends=[])
    def steps(self, request: Request, number: str) -> Response:
        run = _run_or_404(number)
        return Response(StepOutput(step_tree(run), many=True).data)

    @extend_schema(
        summary="Log lines",
        parameters=[
            OpenApiParameter(
                "after", int, description="Only lines with a greater seq (1, 2, 3 ... per run)."
            ),
            OpenApiParameter("level", str, enum=LogLevel.labels, description="Minimum level."),
            OpenApiParameter("step", str, description="A step's id or number."),
            OpenApiParameter("limit", int, description="At most this many lines (max 5000)."),
        ],
        responses={200: LogPageOutput, **ERRORS},
    )
    @action(detail=True, methods=["get"], pagination_class=None)
    def logs(self, request: Request, number: str) -> Response:
        run = _run_or_404(number)
        entries, next_after = log_page(run, request.query_params)
        next_url = None
        if next_after is not None:
            query = request.query_params.copy()
            query["after"] = str(next_after)
            next_url = request.build_absolute_uri(f"{request.path}?{query.urlencode()}")
        return Response({"next": next_url, "results": LogOutput(entries, many=True).data})

    @extend_schema(summary="Run and step outputs", responses={200: OutputsOutput, **ERRORS})
    @action(detail=True, methods=["get"], pagination_class=None)
    def outputs(self, request: Request, number: str) -> Response:
        run = _run_or_404(number)
        steps = run.steps.exclude(outputs={}).order_by("position").values_list("key", "outputs")
        return Response({"outputs": run.outputs, "steps": dict(steps)})

    @extend_schema(summary="Artifacts", responses={200: ArtifactOutput(many=True), **ERRORS})
    @action(detail=True, methods=["get"], pagination_class=None, filter_backends=[])
    def artifacts(self, request: Request, number: str) -> Response:
        run = _run_or_404(number)
        artifacts = Artifact.objects.filter(run=run).select_related("step").order_by("pk")
        return Response(ArtifactOutput(artifacts, many=True, context={"request": request}).data)


def step_tree(run: Run) -> list[Step]:
    steps = list(run.steps.order_by("position"))
    for step in steps:
        step.tree_children = []
    by_pk = {step.pk: step for step in steps}
    roots = []
    for step in steps:
        (by_pk[step.parent_id].tree_children if step.parent_id else roots).append(step)
    return roots


MAX_LOG_LINES = 5000


def log_page(run: Run, query: Any) -> tuple[list[LogEntry], int | None]:
    """A page of log lines after a seq; returns the lines and the seq to continue after."""
    errors: dict[str, list[str]] = {}
    entries = LogEntry.objects.filter(run=run).select_related("step").order_by("seq")
    after = query.get("after")
    if after not in (None, ""):
        seq = whole_number(after)
        if seq is None:
            errors["after"] = ["must be a log seq (a whole number)"]
        else:
            entries = entries.filter(seq__gt=seq)
    level = query.get("level")
    if level:
        if level not in LogLevel.labels:
            errors["level"] = [f"must be one of {', '.join(LogLevel.labels)}"]
        else:
            entries = entries.filter(level__gte=LogLevel[level.upper()].value)
    step = query.get("step")
    if step:
        steps = run.steps.filter(Q(key=step) | Q(number=step))
        number = steps.values_list("number", flat=True).first()
        if number is None:
            errors["step"] = [f"run #{run.number} has no step {step!r}"]
        else:  # a group's lines are those of the steps inside it too (2 holds 2.1, 2.1.3, ...)
            entries = entries.filter(
                Q(step__number=number) | Q(step__number__startswith=f"{number}.")
            )
    limit = whole_number(query.get("limit", "1000"))
    if limit is None or not 1 <= limit <= MAX_LOG_LINES:
        errors["limit"] = [f"must be a whole number from 1 to {MAX_LOG_LINES}"]
    if errors:
        raise ValidationFailed("Some query parameters are not valid.", details=errors)
    page = list(entries[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    return page, (page[-1].seq if more else None)


class ArtifactDownloadView(GenericAPIView):
    permission_classes = [RolePermission]

    @extend_schema(
        summary="Download an artifact",
        # The file's own type, guessed from its name (text/plain, application/json, ...).
        responses={(200, "*/*"): OpenApiTypes.BINARY, **ERRORS},
    )
    def get(self, request: Request, pk: int) -> FileResponse:
        opened, name = selectors.artifact_file(pk)
        return FileResponse(opened, as_attachment=True, filename=name)


class StatsQuery(serializers.Serializer):
    period = serializers.ChoiceField(choices=list(selectors.PERIODS), default="week")
    runbook = serializers.SlugField(required=False)


class StatsView(GenericAPIView):
    permission_classes = [RolePermission]

    @extend_schema(
        summary="Run statistics",
        parameters=[StatsQuery],
        responses={200: OpenApiTypes.OBJECT, **ERRORS},
    )
    def get(self, request: Request) -> Response:
        query = StatsQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        return Response(selectors.run_stats(**query.validated_data))
