"""FilterSets shared by the runs list of the API and of the UI."""

import re
from datetime import UTC, datetime

import django_filters
from django import forms
from django.db.models import QuerySet
from django_filters.fields import IsoDateTimeField

from runs.models import Run
from runs.state import RunStatus

LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # no "__": it would read as a lookup


class CommaChoicesFilter(django_filters.BaseInFilter, django_filters.ChoiceFilter):
    """A comma list of choices (`status=failed,timed_out`); an unknown one is an error that
    names the choices there are."""

    def __init__(self, *args, choices: list[tuple[str, str]], **kwargs) -> None:
        known = ", ".join(value for value, _ in choices)
        kwargs["error_messages"] = {"invalid_choice": f"unknown value %(value)r; one of {known}"}
        super().__init__(*args, choices=choices, **kwargs)


class InstantField(IsoDateTimeField):
    """An ISO 8601 date and time that is still one in UTC, where it is compared: Python's
    datetime ends at the years 1 and 9999, so 0001-01-01T00:00+05:00 is none."""

    def to_python(self, value: object) -> datetime | None:
        moment = super().to_python(value)  # aware: a time without an offset is local time
        if moment is not None:
            try:
                moment.astimezone(UTC)
            except (OverflowError, ValueError):
                raise forms.ValidationError(
                    "is out of range: in UTC it must fall within the years 1 to 9999",
                    code="invalid",
                ) from None
        return moment


class InstantFilter(django_filters.IsoDateTimeFilter):
    field_class = InstantField


class RunFilter(django_filters.FilterSet):
    runbook = django_filters.CharFilter(field_name="runbook__slug")
    status = CommaChoicesFilter(field_name="status", choices=RunStatus.choices)
    created_by = django_filters.CharFilter(field_name="created_by__username")
    label = django_filters.CharFilter(method="filter_label", help_text="key:value")
    since = InstantFilter(field_name="created_at", lookup_expr="gte")
    until = InstantFilter(field_name="created_at", lookup_expr="lt")

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
