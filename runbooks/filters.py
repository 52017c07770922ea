"""FilterSets shared by the runbook list of the API and of the UI."""

import django_filters
from django.db.models import Q, QuerySet

from runbooks.models import Runbook
from runs.filters import LabelFilter


class RunbookFilter(django_filters.FilterSet):
    q = django_filters.CharFilter(method="filter_q", help_text="Search slug, name, description.")
    label = LabelFilter(help_text="key, key:value or key=value")

    class Meta:
        model = Runbook
        fields = ["q", "label"]

    def filter_q(self, queryset: QuerySet[Runbook], name: str, value: str) -> QuerySet[Runbook]:
        return queryset.filter(
            Q(slug__icontains=value) | Q(name__icontains=value) | Q(description__icontains=value)
        )
