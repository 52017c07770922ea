"""Shared OpenAPI pieces: the error body every endpoint may answer with."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import serializers

ErrorBody = inline_serializer(
    name="Error",
    fields={
        "error": serializers.CharField(),
        "message": serializers.CharField(),
        "details": serializers.DictField(),
    },
)

ERRORS = {
    400: OpenApiResponse(ErrorBody, description="bad-request or validation-failed"),
    401: OpenApiResponse(ErrorBody, description="unauthenticated"),
    403: OpenApiResponse(ErrorBody, description="permission-denied"),
    404: OpenApiResponse(ErrorBody, description="not-found"),
    409: OpenApiResponse(ErrorBody, description="conflict or invalid-transition"),
    422: OpenApiResponse(ErrorBody, description="idempotency-key-reused"),
    429: OpenApiResponse(ErrorBody, description="rate-limited (see Retry-After)"),
}


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "config.api.auth.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An API token (sw_...)."}
