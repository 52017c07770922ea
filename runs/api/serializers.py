"""Input and output shapes of the runs API (DESIGN.md section 5)."""

from datetime import datetime, tzinfo
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import F
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from config.api.inputs import Input
from runs.models import Artifact, LogEntry, LogLevel, Run, Step


def _timestamp(value: datetime | None, zone: tzinfo) -> str | None:
    """What DRF's DateTimeField shows (ISO 8601 in the current time `zone`, `Z` for UTC),
    written out: the field's own path costs 16 µs a value, and a page of runs has 75."""
    if value is None:
        return None
    text = value.astimezone(zone).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _error(error: dict[str, Any]) -> dict[str, str | None]:
    step = error.get("step")
    return {"message": str(error["message"]), "step": None if step is None else str(step)}


class RunCreateInput(Input):
    runbook = serializers.SlugField()
    params = serializers.DictField(required=False, default=dict)
    title = serializers.CharField(required=False, allow_blank=True, max_length=300, default="")
    labels = serializers.DictField(child=serializers.CharField(), required=False, default=dict)


class RunCancelInput(Input):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class RunRetryInput(Input):
    params = serializers.DictField(required=False)
    from_ = serializers.ChoiceField(choices=["start", "failed"], default="start")

    def get_fields(self) -> dict[str, Any]:
        fields = super().get_fields()
        fields["from"] = fields.pop("from_")  # `from` is a Python keyword
        return fields


class _RunbookRef(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()
    version = serializers.IntegerField()


class _UserRef(serializers.Serializer):
    username = serializers.CharField()


class _StepCounts(serializers.Serializer):
    total = serializers.IntegerField()
    pending = serializers.IntegerField()
    queued = serializers.IntegerField()
    running = serializers.IntegerField()
    waiting = serializers.IntegerField()
    succeeded = serializers.IntegerField()
    failed = serializers.IntegerField()
    timed_out = serializers.IntegerField()
    skipped = serializers.IntegerField()
    cancelled = serializers.IntegerField()


class _PendingApproval(serializers.Serializer):
    id = serializers.IntegerField()
    step = serializers.CharField()
    message = serializers.CharField()
    required = serializers.IntegerField()
    approvals = serializers.IntegerField()
    approvers = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))
    url = serializers.CharField()


class _RunError(serializers.Serializer):
    message = serializers.CharField()
    step = serializers.CharField(allow_null=True)


class RunOutput(serializers.ModelSerializer):
    id = serializers.UUIDField(source="uuid")
    url = serializers.SerializerMethodField()
    runbook = serializers.SerializerMethodField()
    created_by = serializers.SerializerMethodField()
    retried_from = serializers.IntegerField(source="retried_from_id", allow_null=True)
    duration_ms = serializers.IntegerField(allow_null=True)
    steps = _StepCounts(source="step_counts")
    current_steps = serializers.ListField(child=serializers.CharField())
    pending_approval = serializers.SerializerMethodField()
    error = _RunError(allow_null=True)
    cancel_reason = serializers.SerializerMethodField()

    class Meta:
        model = Run
        fields = [
            "number",
            "id",
            "url",
            "runbook",
            "title",
            "status",
            "params",
            "labels",
            "created_by",
            "origin",
            "retried_from",
            "created_at",
            "started_at",
            "finished_at",
            "duration_ms",
            "steps",
            "current_steps",
            "pending_approval",
            "outputs",
            "error",
            "cancel_reason",
        ]

    # What to_representation reads: the run's own columns, for `.only()` (building a query's
    # SELECT costs Django time per column), and its runbook's slug and name, version number
    # and creator's username as plain values, for `.annotate()`: model instances of the
    # runbook, version and creator would triple a list page's time to read its rows.
    COLUMNS = (
        *("number", "uuid", "title", "status", "params", "labels", "origin", "retried_from"),
        *("created_at", "started_at", "finished_at", "outputs", "error", "cancel_reason"),
    )
    RELATED = {
        "runbook_slug": F("runbook__slug"),
        "runbook_name": F("runbook__name"),
        "version_number": F("version__number"),
        "creator": F(f"created_by__{get_user_model().USERNAME_FIELD}"),
    }

    def to_representation(self, run: Run) -> dict[str, Any]:
        """The fields above, built directly.

        Written by hand because DRF's field-by-field walk costs about 0.5 ms a run, most of a
        25-run page's time. The declarations above still drive the OpenAPI schema, and
        tests/api/test_runs_api.py checks this against DRF's own output for runs in every
        state.
        """
        error = run.error
        zone = timezone.get_current_timezone()  # 7 µs a call: once a run, not once a value
        return {
            "number": run.number,
            "id": str(run.uuid),
            "url": self.get_url(run),
            "runbook": self.get_runbook(run),
            "title": run.title,
            "status": run.status,
            "params": run.params,
            "labels": run.labels,
            "created_by": self.get_created_by(run),
            "origin": run.origin,
            "retried_from": run.retried_from_id,
            "created_at": _timestamp(run.created_at, zone),
            "started_at": _timestamp(run.started_at, zone),
            "finished_at": _timestamp(run.finished_at, zone),
            "duration_ms": run.duration_ms,
            "steps": run.step_counts,
            "current_steps": [str(number) for number in run.current_steps],
            "pending_approval": self.get_pending_approval(run),
            "outputs": run.outputs,
            "error": error and _error(error),
            "cancel_reason": self.get_cancel_reason(run),
        }

    def _absolute(self, path: str) -> str:
        """`request.build_absolute_uri(path)`, with the scheme and host worked out once for
        a whole page (the context is the list's)."""
        origin = self.context.get("origin")
        if origin is None:
            request = self.context.get("request")
            if request is None:
                return path
            origin = self.context["origin"] = request.build_absolute_uri("/")[:-1]
        return origin + path

    def get_url(self, run: Run) -> str:
        return self._absolute(f"/runs/{run.number}")

    @extend_schema_field(_RunbookRef)
    def get_runbook(self, run: Run) -> dict[str, Any]:
        return {"slug": run.runbook_slug, "name": run.runbook_name, "version": run.version_number}

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_cancel_reason(self, run: Run) -> str | None:
        return run.cancel_reason or None  # null until cancelled, as in DESIGN.md's example

    @extend_schema_field(_UserRef(allow_null=True))
    def get_created_by(self, run: Run) -> dict[str, str] | None:
        return None if run.creator is None else {"username": run.creator}

    @extend_schema_field(_PendingApproval(allow_null=True))
    def get_pending_approval(self, run: Run) -> dict[str, Any] | None:
        approval = getattr(run, "open_approval", None)
        if approval is None:
            return None
        return {
            "id": approval.pk,
            "step": approval.step.number,
            "message": approval.message,
            "required": approval.required,
            "approvals": approval.approve_count,
            "approvers": {"users": approval.approver_users, "groups": approval.approver_groups},
            "url": self._absolute(f"/approvals/{approval.pk}/"),
        }


class StepOutput(serializers.ModelSerializer):
    id = serializers.CharField(source="key")
    duration_ms = serializers.IntegerField(allow_null=True)
    children = serializers.SerializerMethodField()

    class Meta:
        model = Step
        fields = [
            "number",
            "id",
            "name",
            "kind",
            "status",
            "attempt",
            "max_attempts",
            "started_at",
            "finished_at",
            "duration_ms",
            "exit_code",
            "outputs",
            "error",
            "children",
        ]

    @extend_schema_field(serializers.ListField(child=serializers.DictField()))
    def get_children(self, step: Step) -> list[dict[str, Any]]:
        return StepOutput(step.tree_children, many=True, context=self.context).data


class LogOutput(serializers.ModelSerializer):
    step = serializers.SerializerMethodField()
    step_id = serializers.SerializerMethodField()
    level = serializers.SerializerMethodField()

    class Meta:
        model = LogEntry
        fields = ["seq", "step", "step_id", "attempt", "timestamp", "level", "stream", "message"]
        read_only_fields = fields  # output only; `seq` is numbered by the server

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_step(self, entry: LogEntry) -> str | None:
        return entry.step.number if entry.step_id else None

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_step_id(self, entry: LogEntry) -> str | None:
        return entry.step.key if entry.step_id else None

    @extend_schema_field(serializers.ChoiceField(choices=LogLevel.labels))
    def get_level(self, entry: LogEntry) -> str:
        return LogLevel(entry.level).label


class ArtifactOutput(serializers.ModelSerializer):
    step = serializers.CharField(source="step.number")
    step_id = serializers.CharField(source="step.key")
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = Artifact
        fields = [
            "id",
            "step",
            "step_id",
            "attempt",
            "name",
            "size",
            "sha256",
            "created_at",
            "download_url",
        ]

    def get_download_url(self, artifact: Artifact) -> str:
        request = self.context.get("request")
        path = f"/api/v1/artifacts/{artifact.pk}/download"
        return request.build_absolute_uri(path) if request else path


class LogPageOutput(serializers.Serializer):
    """A page of log lines: `next` asks for the lines after the last one here, when there
    are more (`after` is the cursor; new lines never get a seq below one already seen)."""

    next = serializers.URLField(allow_null=True)
    results = LogOutput(many=True)


class OutputsOutput(serializers.Serializer):
    outputs = serializers.DictField()
    steps = serializers.DictField(child=serializers.DictField())
