"""Middleware of our own."""

from csp.middleware import CSPMiddleware
from django.http import HttpRequest
from django.http.response import HttpResponseBase

API = "/api/v1/"


class ContentSecurityPolicyMiddleware(CSPMiddleware):
    """django-csp's middleware, minus the REST API's JSON answers.

    A policy only governs documents a browser renders, and django-csp builds it afresh for
    every response: about 50 µs, some 5 % of an API read (bench/api.py serves 1,700 a second
    on two cores). Pages, the API docs and the admin keep it.
    """

    def process_request(self, request: HttpRequest) -> None:
        if not request.path_info.startswith(API):
            super().process_request(request)

    def process_response(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        if request.path_info.startswith(API):
            return response
        return super().process_response(request, response)
