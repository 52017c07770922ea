"""Shared OpenAPI pieces: the error body every endpoint may answer with, the bearer token
scheme, and request bodies described by pydantic models."""

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerExtension
from drf_spectacular.plumbing import ResolvedComponent
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


class PydanticBody(OpenApiSerializerExtension):
    """A pydantic model in `@extend_schema(request=...)`, as the JSON schema of what it
    accepts (pydantic's validation mode), written in OpenAPI 3.0.

    drf-spectacular's own pydantic extension, which this replaces (a higher priority),
    describes a model's serialized output: for a request body that loses what only input
    may say (a duration as "5m", a step-level approval timeout), and it leaves pydantic's
    JSON Schema constructs that OpenAPI 3.0 lacks ({"type": "null"}, `const`) as they are.
    """

    target_class = "pydantic.BaseModel"
    match_subclasses = True
    priority = 1

    def get_name(self, auto_schema, direction):
        return self.target.__name__

    def map_serializer(self, auto_schema, direction):
        mode = "validation" if direction == "request" else "serialization"
        schema = self.target.model_json_schema(
            mode=mode, ref_template="#/components/schemas/{model}"
        )
        for name, definition in schema.pop("$defs", {}).items():
            component = ResolvedComponent(
                name=name, type=ResolvedComponent.SCHEMA, object=name, schema=openapi_30(definition)
            )
            auto_schema.registry.register_on_missing(component)
        return openapi_30(schema)


class InputBody(OpenApiSerializerExtension):
    """A `config.api.inputs.Input` body as DRF describes it, plus `additionalProperties:
    false`: it refuses keys it does not name."""

    target_class = "config.api.inputs.Input"
    match_subclasses = True

    def map_serializer(self, auto_schema, direction):
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        return {**schema, "additionalProperties": False}


def openapi_30(schema: Any) -> Any:
    """A pydantic JSON schema in OpenAPI 3.0's dialect: `anyOf` with {"type": "null"} becomes
    `nullable`, `const` a one-value `enum`, and pydantic's generated titles ("Continue On
    Error") are dropped. Written here because neither pydantic nor drf-spectacular converts
    to 3.0."""
    if isinstance(schema, list):
        return [openapi_30(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title" and isinstance(value, str):
            continue
        if key == "properties":
            converted[key] = {name: openapi_30(field) for name, field in value.items()}
        elif key in ("default", "enum", "example"):
            converted[key] = value  # values, not schemas
        else:
            converted[key] = openapi_30(value)
    if "const" in converted:
        converted["enum"] = [converted.pop("const")]
    options = converted.get("anyOf")
    if options and {"type": "null"} in options:
        rest = [option for option in options if option != {"type": "null"}]
        del converted["anyOf"]
        if len(rest) == 1 and "$ref" not in rest[0]:
            converted = {**rest[0], **converted}
        elif len(rest) == 1:
            converted["allOf"] = rest
        else:
            converted["anyOf"] = rest
        converted["nullable"] = True
    return converted


def document_body_errors(result: dict, generator, request, public) -> dict:
    """A postprocessing hook: every operation that takes a body may answer 413 to a body
    over the server's limit, 503 (`unavailable`) when the process holds too many bodies
    (both config/asgi.py), and 415 (`unsupported-media-type`) to a body in another media
    type than it lists."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict) and "requestBody" in operation:
                responses = operation["responses"]
                responses.setdefault("413", {"description": "bad-request", "content": error})
                responses.setdefault("503", {"description": "unavailable", "content": error})
                responses.setdefault(
                    "415", {"description": "unsupported-media-type", "content": error}
                )
    return result
