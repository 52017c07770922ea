"""The OpenAPI schema at /api/schema/: valid, and true to what the endpoints accept."""

from pathlib import Path
from typing import Any

import pytest
import yaml
from drf_spectacular.validation import validate_schema
from jsonschema import Draft7Validator

from runbooks.schema import DefinitionError, parse_definition

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def schema(client, db) -> dict:
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return yaml.safe_load(response.content)


def test_the_schema_is_valid_openapi(schema):
    validate_schema(schema)  # raises on a schema that breaks the OpenAPI 3.0 specification


def test_no_operation_is_described_by_a_mixin_it_shares(schema):
    # Operations without a description of their own once inherited the docstring of the
    # idempotency mixin ("For DRF views: replays POSTs ...").
    descriptions = [
        operation.get("description", "")
        for operations in schema["paths"].values()
        for operation in operations.values()
    ]
    assert not [text for text in descriptions if "For DRF views" in text]


def test_only_lists_document_list_filters(schema):
    # The steps, artifacts and versions of one run or runbook are not filtered; their schema
    # once offered the run and runbook list filters, which they ignored.
    offering = {
        f"GET {path}"
        for path, operations in schema["paths"].items()
        for parameter in operations.get("get", {}).get("parameters", [])
        if parameter["name"] in ("status", "label", "q")
    }
    assert offering == {"GET /api/v1/runs", "GET /api/v1/runbooks", "GET /api/v1/approvals"}


def test_only_runbooks_are_documented_as_taking_yaml(schema):
    takes_yaml = {
        f"{method.upper()} {path}"
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if "application/yaml" in operation.get("requestBody", {}).get("content", {})
    }
    assert takes_yaml == {"POST /api/v1/runbooks", "PUT /api/v1/runbooks/{slug}"}


def test_the_run_list_documents_both_ways_of_paging(schema):
    parameters = {p["name"]: p for p in schema["paths"]["/api/v1/runs"]["get"]["parameters"]}
    assert {"page", "per_page", "cursor"} <= set(parameters)
    assert parameters["page"]["schema"] == {"type": "integer", "minimum": 1}
    assert parameters["per_page"]["schema"] == {"type": "integer", "minimum": 1}
    assert parameters["cursor"]["schema"] == {"type": "string"}
    assert "empty" in parameters["cursor"]["description"]


def test_every_operation_that_takes_a_body_documents_its_body_errors(schema):
    with_body = [
        (path, method, operation["responses"])
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
    ]
    assert len(with_body) > 5
    for path, method, responses in with_body:
        assert responses["413"]["description"] == "bad-request", (method, path)
        assert responses["415"]["description"] == "unsupported-media-type", (method, path)
        assert responses["503"]["description"] == "unavailable", (method, path)


def test_every_json_body_is_documented_as_taking_only_its_own_keys(schema):
    # The endpoints refuse a key they do not name (config.api.inputs.Input, and the runbook
    # definition's extra="forbid"); the schema says so, so clients and schemathesis know.
    components = schema["components"]["schemas"]
    bodies = {
        operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        for operations in schema["paths"].values()
        for operation in operations.values()
        if "requestBody" in operation
    }
    open_bodies = [
        ref
        for ref in bodies
        if components[ref.rsplit("/", 1)[1]].get("additionalProperties") is not False
    ]
    assert len(bodies) >= 6 and not open_bodies


def _json_schema(node: Any) -> Any:
    """An OpenAPI 3.0 schema as plain JSON Schema, for jsonschema: `nullable` as a null type."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable"):
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


@pytest.fixture
def definition_validator(schema) -> Draft7Validator:
    """Validates a runbook definition against the schema of POST /runbooks' JSON body."""
    body = schema["paths"]["/api/v1/runbooks"]["post"]["requestBody"]["content"]
    document = {
        "components": _json_schema(schema["components"]),
        **body["application/json"]["schema"],
    }
    return Draft7Validator(document)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda path: path.stem)
def test_every_example_runbook_fits_the_definition_schema(definition_validator, path):
    errors = list(definition_validator.iter_errors(yaml.safe_load(path.read_text())))
    assert not errors, [f"{list(error.absolute_path)}: {error.message}" for error in errors]


def test_the_definition_schema_takes_the_short_forms_a_runbook_may_use(definition_validator):
    definition = {
        "slug": "short-forms",
        "name": "Short forms",
        "timeout": "1h 30m",
        "steps": [
            {"id": "wait", "sleep": "500ms", "if": False, "retries": 3},
            {"id": "gate", "approval": {"message": "Go?", "approvers": {"users": ["ann"]}}},
        ],
    }
    assert definition_validator.is_valid(definition)
    assert parse_definition(definition)  # and the API takes them too


def test_the_definition_schema_takes_values_at_their_bounds(definition_validator):
    definition = {
        "slug": "bounds",
        "name": "Bounds",
        "timeout": 31_622_400,
        "steps": [
            {"id": "a", "shell": "true", "retries": 100},
            {"id": "b", "sleep": 1, "retries": {"max": 100, "delay": 31_622_400, "backoff": 10}},
        ],
    }
    assert definition_validator.is_valid(definition)
    assert parse_definition(definition)


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"slug": "Not A Slug"}, ["slug"]),
        ({"name": "  "}, ["name"]),
        ({"timeout": "5 minutes"}, ["timeout"]),
        ({"steps": [{"id": "1st", "shell": "true"}]}, ["steps", 0]),
        ({"steps": [{"id": "a", "shell": "true", "retries": -1}]}, ["steps", 0]),
        ({"steps": [{"id": "a", "shell": "true", "retries": 101}]}, ["steps", 0]),
        ({"steps": [{"id": "a", "shell": "true", "retries": {"max": 101}}]}, ["steps", 0]),
        (
            {"steps": [{"id": "a", "shell": "true", "retries": {"max": 1, "backoff": 11}}]},
            ["steps", 0],
        ),
        ({"timeout": 31_622_401}, ["timeout"]),
        ({"steps": []}, ["steps"]),
        ({"colour": "blue"}, []),
    ],
)
def test_the_definition_schema_refuses_what_the_api_refuses(definition_validator, change, path):
    definition = {"slug": "ok", "name": "OK", "steps": [{"id": "a", "shell": "true"}], **change}

    errors = list(definition_validator.iter_errors(definition))

    assert errors and all(list(error.absolute_path)[: len(path)] == path for error in errors)
    with pytest.raises(DefinitionError):
        parse_definition(definition)
