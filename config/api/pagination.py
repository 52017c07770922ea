"""`page`/`per_page` pagination, and a cursor for lists that grow while being read."""

from rest_framework.pagination import CursorPagination, PageNumberPagination


class PagePagination(PageNumberPagination):
    page_size = 25
    page_size_query_param = "per_page"
    max_page_size = 100


class NewestFirstCursorPagination(CursorPagination):
    """Stable under inserts: `?cursor=` pages never repeat or skip a row. Pages carry
    `count` (rows matching the filters now) like numbered pages, as DESIGN.md's list shape
    asks."""

    page_size = 25
    page_size_query_param = "per_page"
    max_page_size = 100
    ordering = "-pk"

    def paginate_queryset(self, queryset, request, view=None):
        self.count = queryset.count()
        return super().paginate_queryset(queryset, request, view)

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
