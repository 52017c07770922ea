"""Approvals (human gates in a run) and the decisions people make on them."""

from django.conf import settings
from django.db import models

from approvals.state import ApprovalStatus


class ApprovalQuerySet(models.QuerySet):
    def pending(self) -> "ApprovalQuerySet":
        return self.filter(status=ApprovalStatus.PENDING)

    def decidable_by(self, user) -> "ApprovalQuerySet":
        """Approvals naming the user, directly or through one of their groups."""
        if not user.is_authenticated:
            return self.none()
        groups = user.groups.values_list("name", flat=True)
        named = models.Q(kind="user", name=user.get_username()) | models.Q(
            kind="group", name__in=groups
        )
        return self.filter(pk__in=Approver.objects.filter(named).values("approval_id"))


class Approval(models.Model):
    """One approval step's gate, opened when the run reaches it."""

    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="approvals")
    step = models.OneToOneField("runs.Step", on_delete=models.CASCADE, related_name="approval")
    message = models.TextField(help_text="Rendered, with secrets masked.")
    approver_users = models.JSONField(default=list)
    approver_groups = models.JSONField(default=list)
    required = models.PositiveIntegerField(default=1)
    allow_self_approval = models.BooleanField(default=False)
    fields = models.JSONField(default=list, help_text="The form's param specs.")
    status = models.CharField(
        max_length=16, choices=ApprovalStatus.choices, default=ApprovalStatus.PENDING
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    opened_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    objects = ApprovalQuerySet.as_manager()

    class Meta:
        ordering = ["-opened_at"]
        indexes = [models.Index(fields=["status", "expires_at"], name="approval_status_expiry")]

    def __str__(self) -> str:
        return f"approval {self.pk} of run #{self.run_id}"

    @property
    def is_open(self) -> bool:
        return self.status == ApprovalStatus.PENDING

    def names(self, user, groups: list[str] | None = None) -> bool:
        """Whether the approval names this user as an approver."""
        if not user.is_authenticated:
            return False
        if user.get_username() in self.approver_users:
            return True
        if groups is None:
            groups = list(user.groups.values_list("name", flat=True))
        return any(group in self.approver_groups for group in groups)


class Approver(models.Model):
    """One user or group named by an approval, so "what may I decide?" is a plain query."""

    approval = models.ForeignKey(Approval, on_delete=models.CASCADE, related_name="approvers")
    kind = models.CharField(max_length=8, choices=[("user", "user"), ("group", "group")])
    name = models.CharField(max_length=150)

    class Meta:
        indexes = [models.Index(fields=["kind", "name"], name="approver_kind_name")]

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


class Decision(models.Model):
    """An approve or deny. Decisions are never edited or deleted."""

    class Verdict(models.TextChoices):
        APPROVE = "approve"
        DENY = "deny"

    approval = models.ForeignKey(Approval, on_delete=models.CASCADE, related_name="decisions")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    verdict = models.CharField(max_length=8, choices=Verdict.choices)
    comment = models.TextField(blank=True, help_text="The comment, or the reason of a deny.")
    values = models.JSONField(default=dict, blank=True)
    origin = models.CharField(max_length=16, default="api")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["approval", "user"], name="one_decision_per_person"),
        ]

    def __str__(self) -> str:
        return f"{self.user} {self.verdict}"
