from django.contrib import admin

from runbooks.models import Runbook, RunbookVersion


class VersionInline(admin.TabularInline):
    model = RunbookVersion
    fields = ("number", "checksum", "created_by", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(Runbook)
class RunbookAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "latest_version", "archived_at", "updated_at")
    search_fields = ("slug", "name")
    readonly_fields = ("latest_version", "archived_at", "created_at", "updated_at")
    inlines = [VersionInline]


@admin.register(RunbookVersion)
class RunbookVersionAdmin(admin.ModelAdmin):
    list_display = ("runbook", "number", "created_at")
    readonly_fields = [f.name for f in RunbookVersion._meta.fields]
