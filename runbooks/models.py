"""Runbooks and their immutable versions."""

from django.conf import settings
from django.db import models


class RunbookQuerySet(models.QuerySet):
    def active(self) -> "RunbookQuerySet":
        return self.filter(archived_at__isnull=True)


class Runbook(models.Model):
    """A named, labelled runbook; what it does lives in its versions."""

    slug = models.SlugField(max_length=63, unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    labels = models.JSONField(default=dict, blank=True)
    latest_version = models.ForeignKey(
        "RunbookVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    archived_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = RunbookQuerySet.as_manager()

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug

    @property
    def is_archived(self) -> bool:
        return self.archived_at is not None


class RunbookVersion(models.Model):
    """One immutable definition of a runbook. Runs pin the version they ran."""

    runbook = models.ForeignKey(Runbook, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    definition = models.JSONField(help_text="The validated definition, in canonical form.")
    source = models.TextField(blank=True, help_text="The YAML or JSON text it was loaded from.")
    checksum = models.CharField(max_length=64, help_text="sha256 of the canonical definition.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["runbook", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["runbook", "number"], name="unique_runbook_version"),
        ]

    def __str__(self) -> str:
        return f"{self.runbook.slug} v{self.number}"

    def save(self, *args, **kwargs) -> None:
        if self.pk is not None:
            raise ValueError("Runbook versions are immutable; create a new one instead.")
        super().save(*args, **kwargs)
