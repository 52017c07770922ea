from django.contrib import admin

from config.admin import ReadOnlyAdmin, ReadOnlyInline
from runbooks.models import Runbook, RunbookVersion


class VersionInline(ReadOnlyInline):
    model = RunbookVersion
    fields = ("number", "checksum", "created_by", "created_at")


@admin.register(Runbook)
class RunbookAdmin(ReadOnlyAdmin):
    list_display = ("slug", "name", "latest_version", "archived_at", "updated_at")
    list_select_related = ("latest_version",)
    search_fields = ("slug", "name")
    inlines = [VersionInline]


@admin.register(RunbookVersion)
class RunbookVersionAdmin(ReadOnlyAdmin):
    list_display = ("runbook", "number", "created_at")
    list_select_related = ("runbook",)
