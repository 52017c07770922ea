"""`page`/`per_page` pagination, and a cursor for lists that grow while being read."""

from rest_framework.pagination import CursorPagination, PageNumberPagination


class PagePagination(PageNumberPagination):
    page_size = 25
    page_size_query_param = "per_page"
    max_page_size = 100


class NewestFirstCursorPagination(CursorPagination):
    """Stable under inserts: `?cursor=` pages never repeat or skip a row."""

    page_size = 25
    page_size_query_param = "per_page"
    max_page_size = 100
    ordering = "-pk"
