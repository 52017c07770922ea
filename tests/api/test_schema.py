"""The OpenAPI schema at /api/schema/: valid, and true to what the endpoints accept."""

import pytest
import yaml
from drf_spectacular.validation import validate_schema


@pytest.fixture
def schema(client, db) -> dict:
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return yaml.safe_load(response.content)


def test_the_schema_is_valid_openapi(schema):
    validate_schema(schema)  # raises on a schema that breaks the OpenAPI 3.0 specification


def test_only_runbooks_are_documented_as_taking_yaml(schema):
    takes_yaml = {
        f"{method.upper()} {path}"
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if "application/yaml" in operation.get("requestBody", {}).get("content", {})
    }
    assert takes_yaml == {"POST /api/v1/runbooks", "PUT /api/v1/runbooks/{slug}"}
