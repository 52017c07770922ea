"""FilterSets shared by the runbook list of the API and of the UI."""

import django_filters
from django import forms
from django.db.models import Q, QuerySet

from config.api.filtering import BOOLEANS
from runbooks.models import Runbook
from runs.filters import LabelFilter


class StrictBooleanField(forms.Field):
    """true or false (BOOLEANS); anything else is an error, where Django's NullBooleanField
    would quietly read it as no answer."""

    def to_python(self, value: object) -> bool | None:
        if value in (None, ""):
            return None
        answer = BOOLEANS.get(str(value).lower())
        if answer is None:
            raise forms.ValidationError("must be true or false", code="invalid")
        return answer


class StrictBooleanFilter(django_filters.Filter):
    field_class = StrictBooleanField


class RunbookFilter(django_filters.FilterSet):
    q = django_filters.CharFilter(method="filter_q", help_text="Search slug, name, description.")
    label = LabelFilter(help_text="key, key:value or key=value")
    # Lists show runbooks that can be run; `archived=true` lists the archived ones instead.
    # The list's queryset holds both only when the parameter is given (RunbookViewSet).
    archived = StrictBooleanFilter(
        field_name="archived_at",
        method="filter_archived",
        help_text="true: the archived runbooks instead of the active ones.",
    )

    class Meta:
        model = Runbook
        fields = ["q", "label", "archived"]

    def filter_archived(self, queryset: QuerySet[Runbook], name: str, value: bool):
        return queryset.filter(archived_at__isnull=not value)

    def filter_q(self, queryset: QuerySet[Runbook], name: str, value: str) -> QuerySet[Runbook]:
        return queryset.filter(
            Q(slug__icontains=value) | Q(name__icontains=value) | Q(description__icontains=value)
        )
