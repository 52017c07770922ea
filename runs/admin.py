from django.contrib import admin

from runs.models import Artifact, LogEntry, Run, RunEvent, Step, StepAttempt


class StepInline(admin.TabularInline):
    model = Step
    fields = (
        "number",
        "key",
        "kind",
        "status",
        "attempt",
        "max_attempts",
        "started_at",
        "finished_at",
        "error",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


class EventInline(admin.TabularInline):
    model = RunEvent
    fields = ("created_at", "step", "from_status", "to_status", "actor", "message")
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ("number", "title", "runbook", "status", "created_by", "origin", "created_at")
    list_filter = ("status", "origin", "runbook")
    search_fields = ("title", "runbook__slug")
    readonly_fields = [f.name for f in Run._meta.fields]
    inlines = [StepInline, EventInline]

    def has_add_permission(self, request) -> bool:  # runs start through services only
        return False


@admin.register(Step)
class StepAdmin(admin.ModelAdmin):
    list_display = ("run", "number", "key", "kind", "status", "attempt")
    list_filter = ("status", "kind")
    readonly_fields = [f.name for f in Step._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(LogEntry)
class LogEntryAdmin(admin.ModelAdmin):
    list_display = ("seq", "run", "step", "timestamp", "level", "stream", "message")
    list_filter = ("level", "stream")
    list_select_related = ("run", "step")
    readonly_fields = [f.name for f in LogEntry._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False


admin.site.register(StepAttempt)
admin.site.register(Artifact)
admin.site.register(RunEvent)
