"""`page`/`per_page` pagination, and a cursor for lists that grow while being read."""

from functools import partial

from django.core.paginator import Paginator
from django.db.models import QuerySet
from rest_framework.pagination import CursorPagination, PageNumberPagination


def _all_rows(queryset: QuerySet) -> QuerySet:
    return queryset


class _RowsPaginator(Paginator):
    """Django's paginator, reading a page's rows from `rows(page's slice)`."""

    def __init__(self, *args, rows, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rows = rows

    def page(self, number):
        page = super().page(number)
        page.object_list = self.rows(page.object_list)
        return page


class PagePagination(PageNumberPagination):
    """`page`/`per_page`. `rows` may add to the queryset what only a page's rows need, such as
    the joins of related values: the count, over every matching row, goes without them."""

    page_size = 25
    page_size_query_param = "per_page"
    max_page_size = 100
    rows = staticmethod(_all_rows)

    @property
    def django_paginator_class(self):
        return partial(_RowsPaginator, rows=self.rows)


class NewestFirstCursorPagination(CursorPagination):
    """Stable under inserts: `?cursor=` pages never repeat or skip a row. Pages carry
    `count` (rows matching the filters now) like numbered pages, as DESIGN.md's list shape
    asks."""

    page_size = 25
    page_size_query_param = "per_page"
    max_page_size = 100
    ordering = "-pk"
    rows = staticmethod(_all_rows)  # as PagePagination's

    def paginate_queryset(self, queryset, request, view=None):
        self.count = queryset.count()
        return super().paginate_queryset(self.rows(queryset), request, view)

    def get_paginated_response(self, data):
        response = super().get_paginated_response(data)
        response.data = {"count": self.count, **response.data}
        return response

    def get_paginated_response_schema(self, schema):
        schema = super().get_paginated_response_schema(schema)
        schema["required"] = ["count", *schema.get("required", [])]
        schema["properties"] = {
            "count": {"type": "integer", "example": 123},
            **schema["properties"],
        }
        return schema
