"""FilterSets shared by the runs list of the API and of the UI."""

from datetime import UTC, datetime

import django_filters
from django import forms
from django.db.models import QuerySet
from django.db.models.fields.json import KeyTransform
from django_filters.fields import IsoDateTimeField

from runs.models import Run
from runs.state import RunStatus


def labels_matching(queryset: QuerySet, value: str) -> QuerySet:
    """Rows whose `labels` have the key (`key`) or the key with that value (`key:value`,
    also written `key=value`). Any key can be asked for, as any key can be given (up to the
    first ":" or "="): it goes into the query as a parameter, never as a lookup name."""
    split_at = min((i for i in (value.find(":"), value.find("=")) if i >= 0), default=-1)
    if split_at < 0:
        return queryset.filter(labels__has_key=value)
    key, wanted = value[:split_at], value[split_at + 1 :]
    return queryset.alias(_label=KeyTransform(key, "labels")).filter(_label=wanted)


class LabelField(forms.CharField):
    def validate(self, value: str) -> None:
        super().validate(value)
        if value and value[0] in ":=":
            raise forms.ValidationError("needs a key: key, key:value or key=value", code="invalid")


class LabelFilter(django_filters.CharFilter):
    """`label=key`, `label=key:value` or `label=key=value` (labels_matching)."""

    field_class = LabelField

    def filter(self, queryset: QuerySet, value: str) -> QuerySet:
        return labels_matching(queryset, value) if value else queryset


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
    label = LabelFilter(help_text="key, key:value or key=value")
    since = InstantFilter(field_name="created_at", lookup_expr="gte")
    until = InstantFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Run
        fields = ["runbook", "status", "created_by", "label", "since", "until"]
