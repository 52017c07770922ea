"""Runs, their steps, logs, artifacts and the event timeline.

Statuses are written only by `runs.services.run_transition` and `step_transition`.
"""

from uuid import UUID, uuid4

from django.conf import settings
from django.db import models

from runs.state import RUN_ACTIVE, RUN_TERMINAL, STEP_TERMINAL, RunStatus, StepStatus


class RunQuerySet(models.QuerySet):
    def active(self) -> "RunQuerySet":
        return self.filter(status__in=[*RUN_ACTIVE, RunStatus.CANCELLING])

    def finished(self) -> "RunQuerySet":
        return self.filter(status__in=RUN_TERMINAL)


class Run(models.Model):
    """One execution of a pinned runbook version. `number` is the public, sequential id."""

    number = models.BigAutoField(primary_key=True)
    uuid = models.UUIDField(default=uuid4, unique=True, editable=False)
    runbook = models.ForeignKey("runbooks.Runbook", on_delete=models.PROTECT, related_name="runs")
    version = models.ForeignKey(
        "runbooks.RunbookVersion", on_delete=models.PROTECT, related_name="runs"
    )
    title = models.CharField(max_length=300)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    params = models.JSONField(default=dict, help_text="Coerced params; secrets replaced by ***.")
    sealed_secrets = models.TextField(
        blank=True, help_text="Secret param values, encrypted (runs.secrets)."
    )
    labels = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="runs",
    )
    origin = models.CharField(max_length=16, default="api")
    retried_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    deadline = models.DateTimeField(null=True, blank=True, help_text="Run timeout, if any.")
    outputs = models.JSONField(default=dict, blank=True)
    error = models.JSONField(null=True, blank=True)
    cancel_reason = models.TextField(blank=True)
    log_seq = models.PositiveBigIntegerField(
        default=0, help_text="The seq of the run's last log line (runs.services.logs_append)."
    )

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ["-number"]
        indexes = [
            models.Index(fields=["status", "number"], name="run_status_number"),
            models.Index(fields=["runbook", "number"], name="run_runbook_number"),
        ]

    def __str__(self) -> str:
        return f"#{self.number} {self.title}"

    @property
    def id(self) -> UUID:
        return self.uuid

    @property
    def is_terminal(self) -> bool:
        return self.status in RUN_TERMINAL

    @property
    def can_cancel(self) -> bool:
        return self.status in RUN_ACTIVE

    @property
    def duration_ms(self) -> int | None:
        if self.started_at and self.finished_at:
            return int((self.finished_at - self.started_at).total_seconds() * 1000)
        return None


class StepQuerySet(models.QuerySet):
    def leaves(self) -> "StepQuerySet":
        return self.exclude(kind="group")


class Step(models.Model):
    """A node of a run's step tree, copied from the version's definition when the run starts."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="steps")
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="children"
    )
    position = models.PositiveIntegerField(help_text="Outline order within the run.")
    number = models.CharField(max_length=64, help_text="Outline number: 1, 3.2, ...")
    key = models.CharField(max_length=100, help_text="The step's id in the definition.")
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16)
    condition = models.TextField(blank=True, help_text="The `if:` expression, if any.")
    status = models.CharField(max_length=16, choices=StepStatus.choices, default=StepStatus.PENDING)
    attempt = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=1)
    continue_on_error = models.BooleanField(default=False)
    parallel = models.BooleanField(default=False)
    not_before = models.DateTimeField(null=True, blank=True, help_text="Retry delay ends.")
    deadline = models.DateTimeField(
        null=True, blank=True, help_text="A group's timeout (its own or a parent's) ends it then."
    )
    enqueued_at = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    outputs = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)

    objects = StepQuerySet.as_manager()

    class Meta:
        ordering = ["run", "position"]
        constraints = [
            models.UniqueConstraint(fields=["run", "key"], name="unique_step_key_per_run"),
        ]
        indexes = [
            models.Index(fields=["status", "lease_expires_at"], name="step_status_lease"),
            models.Index(fields=["run", "status"], name="step_run_status"),
        ]

    def __str__(self) -> str:
        return f"{self.number} {self.key}"

    @property
    def is_terminal(self) -> bool:
        return self.status in STEP_TERMINAL

    @property
    def is_group(self) -> bool:
        return self.kind == "group"

    @property
    def duration_ms(self) -> int | None:
        if self.started_at and self.finished_at:
            return int((self.finished_at - self.started_at).total_seconds() * 1000)
        return None


class StepAttempt(models.Model):
    """One try of a step. Every attempt is kept so retries can be shown."""

    step = models.ForeignKey(Step, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveIntegerField()
    worker = models.CharField(max_length=200, blank=True, help_text="host:pid:id")
    pid = models.IntegerField(null=True, blank=True, help_text="The step's process group.")
    status = models.CharField(max_length=16, choices=StepStatus.choices)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["step", "number"]
        constraints = [
            models.UniqueConstraint(fields=["step", "number"], name="unique_step_attempt"),
        ]

    def __str__(self) -> str:
        return f"{self.step} attempt {self.number}"


class LogLevel(models.IntegerChoices):
    DEBUG = 10, "debug"
    INFO = 20, "info"
    WARN = 30, "warn"
    ERROR = 40, "error"
    SYSTEM = 50, "system"


class LogEntry(models.Model):
    """One line of a run's log. `seq` numbers a run's lines 1, 2, 3 ... and is the cursor.

    Lines are numbered per run by `logs_append`, in the transaction that writes them, from the
    run's row (`Run.log_seq`), so a run's numbers commit in order: a reader that follows `seq`
    never skips a line that commits later. `id` orders nothing and is only the row's key.
    """

    id = models.BigAutoField(primary_key=True)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="logs")
    seq = models.PositiveBigIntegerField(help_text="1, 2, 3 ... within the run.")
    step = models.ForeignKey(
        Step, null=True, blank=True, on_delete=models.CASCADE, related_name="logs"
    )
    attempt = models.PositiveIntegerField(default=0)
    timestamp = models.DateTimeField()
    level = models.PositiveSmallIntegerField(choices=LogLevel.choices, default=LogLevel.INFO)
    stream = models.CharField(max_length=8, default="system")
    message = models.TextField()

    class Meta:
        ordering = ["run_id", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["run", "seq"], name="unique_log_seq_per_run"),
        ]
        indexes = [
            models.Index(fields=["step", "seq"], name="log_step_seq"),
        ]

    def __str__(self) -> str:
        return self.message[:80]


def artifact_path(instance: "Artifact", filename: str) -> str:
    return f"artifacts/{instance.run.uuid}/{instance.step.key}/{instance.attempt}/{filename}"


class Artifact(models.Model):
    """A file a step left in $STEPWISE_ARTIFACTS."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="artifacts")
    step = models.ForeignKey(Step, on_delete=models.CASCADE, related_name="artifacts")
    attempt = models.PositiveIntegerField()
    name = models.CharField(max_length=500)
    file = models.FileField(upload_to=artifact_path, max_length=1000)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "step", "name"]

    def __str__(self) -> str:
        return self.name


class RunEvent(models.Model):
    """The timeline: every status change of a run or step, and who caused it and why."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="events")
    step = models.ForeignKey(
        Step, null=True, blank=True, on_delete=models.CASCADE, related_name="events"
    )
    kind = models.CharField(max_length=32, default="status")
    from_status = models.CharField(max_length=16, blank=True)
    to_status = models.CharField(max_length=16, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    message = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["run", "id"], name="event_run_id")]

    def __str__(self) -> str:
        return f"{self.run_id} {self.from_status}->{self.to_status}"
