"""One error body for every failure: {"error", "message", "details"} (DESIGN.md section 5)."""

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.csrf import csrf_failure as django_csrf_failure
from django.views.decorators.csrf import csrf_exempt
from django.views.defaults import server_error as django_server_error
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.throttling import AnonRateThrottle
from rest_framework.views import exception_handler as drf_exception_handler

from config.errors import DomainError

CODES = {
    400: "bad-request",
    401: "unauthenticated",
    403: "permission-denied",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    409: "conflict",
    415: "unsupported-media-type",
    422: "idempotency-key-reused",
    429: "rate-limited",
}


def error_body(code: str, message: str, details: dict | None = None) -> dict[str, Any]:
    return {"error": code, "message": message, "details": details or {}}


def _flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested validation errors as field path → messages."""
    if isinstance(detail, dict):
        flat: dict[str, list[str]] = {}
        for key, value in detail.items():
            name = "body" if key == "non_field_errors" else str(key)
            flat.update(_flatten(value, f"{prefix}.{name}" if prefix else name))
        return flat
    if isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            return {prefix or "body": [str(item) for item in detail]}
        flat = {}
        for index, item in enumerate(detail):
            flat.update(_flatten(item, f"{prefix}[{index}]"))
        return flat
    return {prefix or "body": [str(detail)]}


def exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, DomainError):
        return Response(error_body(exc.code, exc.message, exc.details), status=exc.status)
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        # DRF checks permissions before throttles, so without this a client guessing tokens
        # would get unlimited 401s: count failed authentications against the anonymous rate.
        throttle = AnonRateThrottle()
        if not throttle.allow_request(context["request"], context["view"]):
            exc = exceptions.Throttled(wait=throttle.wait())
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or None)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    code = CODES.get(response.status_code, "bad-request")
    if isinstance(exc, exceptions.ValidationError):
        body = error_body("validation-failed", "The request is not valid.", _flatten(exc.detail))
    elif isinstance(exc, exceptions.Throttled):
        wait = int(exc.wait or 1)
        body = error_body(code, f"Too many requests; try again in {wait} seconds.", {})
        response["Retry-After"] = str(wait)
    elif isinstance(exc, exceptions.UnsupportedMediaType):
        accepted = " or ".join(parser.media_type for parser in context["request"].parsers)
        body = error_body(code, f"{exc.detail} This endpoint takes {accepted}.", {})
    else:
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        body = error_body(code, str(detail) if not isinstance(detail, dict | list) else code, {})
    response.data = body
    return response


@csrf_exempt  # it changes nothing, so a POST to a wrong path gets a 404, not a CSRF page
def not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    """404 for paths under /api/ that match no route."""
    body = error_body("not-found", f"No such endpoint: {request.path}")
    return JsonResponse(body, status=status.HTTP_404_NOT_FOUND)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """A session POST without a CSRF token: JSON under /api/, Django's page elsewhere."""
    if request.path.startswith("/api/"):
        body = error_body("permission-denied", f"CSRF check failed: {reason}")
        return JsonResponse(body, status=status.HTTP_403_FORBIDDEN)
    return django_csrf_failure(request, reason=reason)


def server_error(request: HttpRequest) -> HttpResponse:
    """500: the error body under /api/, templates/500.html elsewhere."""
    if request.path.startswith("/api/"):
        body = error_body("server-error", "Something went wrong on our side; it was logged.")
        return JsonResponse(body, status=500)
    return django_server_error(request)
