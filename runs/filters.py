"""FilterSets shared by the runs list of the API and of the UI."""

import re

import django_filters
from django.db.models import QuerySet

from runs.models import Run

LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # no "__": it would read as a lookup


class CommaListFilter(django_filters.BaseInFilter, django_filters.CharFilter):
    pass


class RunFilter(django_filters.FilterSet):
    runbook = django_filters.CharFilter(field_name="runbook__slug")
    status = CommaListFilter(field_name="status")
    created_by = django_filters.CharFilter(field_name="created_by__username")
    label = django_filters.CharFilter(method="filter_label", help_text="key:value")
    since = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Run
        fields = ["runbook", "status", "created_by", "label", "since", "until"]

    def filter_label(self, queryset: QuerySet[Run], name: str, value: str) -> QuerySet[Run]:
        key, sep, wanted = value.partition(":")
        if not sep:
            key, sep, wanted = value.partition("=")
        if "__" in key or not LABEL_KEY.fullmatch(key):
            return queryset.none()
        if not sep:
            return queryset.filter(labels__has_key=key)
        return queryset.filter(**{f"labels__{key}": wanted})
