from django.contrib import admin

from config.admin import ReadOnlyAdmin, ReadOnlyInline
from runs.models import Artifact, LogEntry, Run, RunEvent, Step, StepAttempt


class StepInline(ReadOnlyInline):
    model = Step
    fields = ("number", "key", "kind", "status", "attempt", "max_attempts", "started_at", "error")


class EventInline(ReadOnlyInline):
    model = RunEvent
    fields = ("created_at", "step", "from_status", "to_status", "actor", "message")
    show_change_link = False


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    list_display = ("number", "title", "runbook", "status", "created_by", "origin", "created_at")
    list_filter = ("status", "origin", "runbook")
    list_select_related = ("runbook", "created_by")
    search_fields = ("title", "runbook__slug")
    inlines = [StepInline, EventInline]


class AttemptInline(ReadOnlyInline):
    model = StepAttempt
    fields = ("number", "status", "worker", "started_at", "finished_at", "exit_code", "error")
    show_change_link = False


class LogInline(ReadOnlyInline):
    model = LogEntry
    fields = ("seq", "timestamp", "attempt", "level", "stream", "message")
    show_change_link = False


@admin.register(Step)
class StepAdmin(ReadOnlyAdmin):
    list_display = ("run", "number", "key", "kind", "status", "attempt")
    list_filter = ("status", "kind")
    list_select_related = ("run",)
    inlines = [AttemptInline, LogInline]


@admin.register(LogEntry)
class LogEntryAdmin(ReadOnlyAdmin):
    list_display = ("seq", "run", "step", "timestamp", "level", "stream", "message")
    list_filter = ("level", "stream")
    list_select_related = ("run", "step")
    search_fields = ("message",)


@admin.register(Artifact)
class ArtifactAdmin(ReadOnlyAdmin):
    list_display = ("name", "run", "step", "attempt", "size", "created_at")
    list_select_related = ("run", "step")


@admin.register(RunEvent)
class RunEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "run", "step", "from_status", "to_status", "actor", "message")
    list_select_related = ("run", "step", "actor")
