"""`page`/`per_page` pagination, and a cursor for lists that grow while being read."""

from functools import partial

from django.core.paginator import Paginator
from django.db.models import QuerySet
from rest_framework.exceptions import NotFound
from rest_framework.pagination import Cursor, CursorPagination, PageNumberPagination
from rest_framework.request import Request

from config.errors import ValidationFailed
from config.numbers import whole_number


def _all_rows(queryset: QuerySet) -> QuerySet:
    return queryset


def _positive(request: Request, name: str, errors: dict[str, list[str]]) -> int | None:
    """The query parameter `name` as a whole number from 1, or None if it is absent or empty
    (the default applies); anything else goes into `errors`."""
    text = request.query_params.get(name, "")
    if text == "":
        return None
    number = whole_number(text)
    if not number:
        errors[name] = ["must be a whole number, 1 or more"]
    return number


def _refuse(errors: dict[str, list[str]]) -> None:
    if errors:
        raise ValidationFailed("Some paging parameters are not valid.", details=errors)


def _positive_schema(parameters: list[dict]) -> list[dict]:
    """DRF's descriptions of `page` and `per_page`, saying they start at 1."""
    for parameter in parameters:
        if parameter["schema"].get("type") == "integer":
            parameter["schema"]["minimum"] = 1
    return parameters


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
    # Only a page past the last gets this 404: paginate_queryset refuses one below 1 with a 400.
    invalid_page_message = "There is no page {page_number}: it is past the last page."

    @property
    def django_paginator_class(self):
        return partial(_RowsPaginator, rows=self.rows)

    def paginate_queryset(self, queryset, request, view=None):
        # Read before anything is counted. A malformed `page` or `per_page` is a 400: DRF
        # answers 404 for the one and quietly uses the default for the other.
        errors: dict[str, list[str]] = {}
        self.per_page = _positive(request, self.page_size_query_param, errors)
        self.page_number = _positive(request, self.page_query_param, errors)
        _refuse(errors)
        return super().paginate_queryset(queryset, request, view)

    def get_page_size(self, request):
        return min(self.per_page or self.page_size, self.max_page_size)

    def get_page_number(self, request, paginator):
        return self.page_number or 1

    def get_schema_operation_parameters(self, view):
        return _positive_schema(super().get_schema_operation_parameters(view))


class NewestFirstCursorPagination(CursorPagination):
    """Stable under inserts: `?cursor=` pages never repeat or skip a row. Pages carry
    `count` (rows matching the filters now) like numbered pages, as DESIGN.md's list shape
    asks."""

    page_size = 25
    page_size_query_param = "per_page"
    max_page_size = 100
    ordering = "-pk"
    rows = staticmethod(_all_rows)  # as PagePagination's
    cursor_query_description = (
        "Where to go on from: a `next` or `previous` link's cursor. "
        "An empty `cursor=` asks for the first page."
    )
    BAD_CURSOR = "is not a cursor from a next or previous link; send an empty cursor to start"

    def paginate_queryset(self, queryset, request, view=None):
        errors: dict[str, list[str]] = {}
        self.per_page = _positive(request, self.page_size_query_param, errors)
        try:
            self.decoded = self._decode(request)
        except ValueError:
            errors[self.cursor_query_param] = [self.BAD_CURSOR]
        _refuse(errors)
        self.count = queryset.count()
        return super().paginate_queryset(self.rows(queryset), request, view)

    def _decode(self, request: Request) -> Cursor | None:
        """DRF's reading of `cursor`; ValueError if it is not one this server makes."""
        try:
            cursor = super().decode_cursor(request)
        except NotFound:  # not base64, or an offset or direction that is not a number
            raise ValueError from None
        if cursor and cursor.position is not None and whole_number(cursor.position) is None:
            raise ValueError  # DRF leaves the position as sent; ours is a pk ("-pk" ordering)
        return cursor

    def decode_cursor(self, request):
        return self.decoded  # read and checked by paginate_queryset

    def get_page_size(self, request):
        return min(self.per_page or self.page_size, self.max_page_size)

    def get_schema_operation_parameters(self, view):
        return _positive_schema(super().get_schema_operation_parameters(view))

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
