"""The runbooks API: create from JSON or YAML, update into new versions, archive, list."""

import pytest
import yaml

from runbooks.models import Runbook, RunbookVersion
from runbooks.services import runbook_archive
from runs.models import Run
from tests.api.conftest import DEPLOY, api_client, bearer, race

HELLO = {
    "slug": "hello",
    "name": "Say hello",
    "description": "Greets **someone**.",
    "labels": {"team": "sre"},
    "params": [{"name": "who", "type": "string", "default": "world"}],
    "steps": [{"id": "greet", "shell": "echo hello {{ params.who }}"}],
}
HELLO_YAML = """\
slug: hello
name: Say hello
labels: {team: sre}
params:
  - name: who
    type: string
    default: world
steps:
  - id: greet
    shell: echo hello {{ params.who }}
"""
DETAIL_KEYS = {
    "slug", "name", "description", "labels", "version", "archived", "created_at", "updated_at",
    "definition", "params",
}  # fmt: skip


@pytest.fixture
def api(author, as_user):
    return as_user(author)


def test_create_runbook_from_json(api, author):
    response = api.post("/api/v1/runbooks", HELLO, format="json")

    assert response.status_code == 201
    body = response.json()
    assert set(body) == DETAIL_KEYS
    assert body["slug"] == "hello" and body["name"] == "Say hello"
    assert body["description"] == "Greets **someone**."
    assert body["labels"] == {"team": "sre"}
    assert body["version"] == 1 and body["archived"] is False
    assert body["definition"]["steps"][0]["id"] == "greet"
    assert body["params"] == [
        {"name": "who", "type": "string", "default": "world", "required": False}
    ]
    version = RunbookVersion.objects.get(runbook__slug="hello")
    assert version.number == 1 and version.created_by == author


def test_create_runbook_from_yaml_keeps_the_source_text(api):
    response = api.post("/api/v1/runbooks", HELLO_YAML, content_type="application/yaml")

    assert response.status_code == 201, response.content
    assert response.json()["slug"] == "hello"
    assert response.json()["version"] == 1
    assert RunbookVersion.objects.get(runbook__slug="hello").source == HELLO_YAML


def test_created_runbook_can_be_run(api, as_user, operator):
    api.post("/api/v1/runbooks", HELLO, format="json")
    response = as_user(operator).post(
        "/api/v1/runs", {"runbook": "hello", "params": {"who": "you"}}, format="json"
    )
    assert response.status_code == 202
    assert response.json()["params"] == {"who": "you"}


def test_create_rejects_a_duplicate_slug(api):
    assert api.post("/api/v1/runbooks", HELLO, format="json").status_code == 201

    response = api.post("/api/v1/runbooks", {**HELLO, "name": "Other"}, format="json")

    assert response.status_code == 400
    assert response.json()["error"] == "validation-failed"
    assert list(response.json()["details"]) == ["slug"]
    runbook = Runbook.objects.get(slug="hello")
    assert runbook.name == "Say hello" and runbook.versions.count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_creates_of_one_slug_make_one_runbook(author):
    secret = bearer(author)[1]
    for round_ in range(3):
        slug = f"hello-{round_}"

        def create(name: str, slug: str = slug):
            return api_client(secret).post(
                "/api/v1/runbooks", {**HELLO, "slug": slug, "name": name}, format="json"
            )

        responses = race(lambda: create("A"), lambda: create("B"))

        assert sorted(r.status_code for r in responses) == [201, 400]
        [loser] = [r for r in responses if r.status_code == 400]
        assert list(loser.json()["details"]) == ["slug"]
        [winner] = [r for r in responses if r.status_code == 201]
        runbook = Runbook.objects.get(slug=slug)
        assert runbook.name == winner.json()["name"]
        assert runbook.versions.count() == 1


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"steps": [{"id": "greet", "shell": 123}]}, "steps[0].shell"),
        ({"steps": [{"id": "greet", "shell": "true", "bogus": 1}]}, "steps[0].bogus"),
        ({"steps": [{"id": "greet", "http": {"url": 5}}]}, "steps[0].http.url"),
        ({"slug": "Not A Slug"}, "slug"),
        ({"colour": "blue"}, "colour"),
        # Numbers that used to be saved and then broke every run: 500s, a crashing worker.
        (
            {"steps": [{"id": "a", "shell": "true", "retries": 99999999999999999999}]},
            "steps[0].retries",
        ),
        ({"timeout": 99999999999999999999}, "timeout"),
        (
            {
                "steps": [
                    {
                        "id": "a",
                        "shell": "exit 1",
                        "retries": {"max": 3, "delay": "1s", "backoff": 1e300},
                    }
                ]
            },
            "steps[0].retries.backoff",
        ),
    ],
)
def test_create_rejects_an_invalid_definition_naming_the_path(api, change, path):
    response = api.post("/api/v1/runbooks", {**HELLO, **change}, format="json")

    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "validation-failed"
    assert path in body["details"], body["details"]
    assert not Runbook.objects.exists()


def test_create_rejects_invalid_yaml(api):
    response = api.post("/api/v1/runbooks", "slug: [", content_type="application/yaml")
    assert response.status_code == 400
    assert response.json()["error"] == "validation-failed"
    assert "YAML" in response.json()["details"]["definition"][0]
    assert not Runbook.objects.exists()


def test_create_rejects_a_json_body_that_is_not_an_object(api):
    response = api.post("/api/v1/runbooks", [HELLO], format="json")
    assert response.status_code == 400
    assert list(response.json()["details"]) == ["body"]


def test_create_rejects_an_unsupported_content_type(api):
    response = api.post("/api/v1/runbooks", "slug: hello", content_type="text/plain")
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported-media-type"


def test_update_makes_a_new_version(api):
    api.post("/api/v1/runbooks", HELLO, format="json")
    changed = {**HELLO, "name": "Say hello twice"}

    response = api.put("/api/v1/runbooks/hello", changed, format="json")

    assert response.status_code == 200
    assert response.json()["version"] == 2
    assert response.json()["name"] == "Say hello twice"
    assert list(
        RunbookVersion.objects.filter(runbook__slug="hello").values_list("number", flat=True)
    ) == [2, 1]


def test_update_from_yaml_makes_a_new_version(api):
    api.post("/api/v1/runbooks", HELLO, format="json")
    response = api.put(
        "/api/v1/runbooks/hello",
        HELLO_YAML.replace("Say hello", "Hello in YAML"),
        content_type="application/yaml",
    )
    assert response.status_code == 200
    assert response.json()["version"] == 2 and response.json()["name"] == "Hello in YAML"


def test_update_with_an_unchanged_body_keeps_the_version(api):
    api.post("/api/v1/runbooks", HELLO, format="json")

    response = api.put("/api/v1/runbooks/hello", HELLO, format="json")

    assert response.status_code == 200
    assert response.json()["version"] == 1
    assert RunbookVersion.objects.filter(runbook__slug="hello").count() == 1


def test_update_rejects_a_slug_that_does_not_match_the_path(api):
    api.post("/api/v1/runbooks", HELLO, format="json")

    response = api.put("/api/v1/runbooks/hello", {**HELLO, "slug": "goodbye"}, format="json")

    assert response.status_code == 400
    assert list(response.json()["details"]) == ["slug"]
    assert not Runbook.objects.filter(slug="goodbye").exists()
    assert RunbookVersion.objects.count() == 1


def test_update_rejects_an_invalid_definition_and_keeps_the_version(api):
    api.post("/api/v1/runbooks", HELLO, format="json")
    response = api.put(
        "/api/v1/runbooks/hello", {**HELLO, "steps": [{"id": "greet"}]}, format="json"
    )
    assert response.status_code == 400
    assert "steps[0]" in response.json()["details"]
    assert RunbookVersion.objects.count() == 1


def test_update_of_an_unknown_runbook_is_404(api):
    response = api.put("/api/v1/runbooks/hello", HELLO, format="json")
    assert response.status_code == 404
    assert response.json()["error"] == "not-found"
    assert not Runbook.objects.exists()


def test_get_runbook_shows_definition_version_and_params(api, deploy):
    response = api.get("/api/v1/runbooks/deploy")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == DETAIL_KEYS
    assert body["version"] == 1
    assert [step["id"] for step in body["definition"]["steps"]] == ["build", "fanout"]
    assert [param["name"] for param in body["params"]] == ["service", "replicas", "token"]
    assert body["params"][1]["max"] == 5


def test_get_unknown_runbook_is_404(api, db):
    response = api.get("/api/v1/runbooks/nope")
    assert response.status_code == 404
    assert response.json()["error"] == "not-found"


# --- Archive --------------------------------------------------------------------------------


def test_archive_hides_the_runbook_keeps_its_runs_and_refuses_new_ones(
    api, deploy, start_run, operator, as_user
):
    run = start_run(deploy, user=operator)

    response = api.delete("/api/v1/runbooks/deploy")

    assert response.status_code == 204
    assert response.content == b""
    deploy.refresh_from_db()
    assert deploy.is_archived
    assert api.get("/api/v1/runbooks").json()["results"] == []
    assert api.get("/api/v1/runbooks/deploy").json()["archived"] is True
    old = api.get(f"/api/v1/runs/{run.number}").json()
    assert old["runbook"] == {"slug": "deploy", "name": "Deploy", "version": 1}
    start = as_user(operator).post("/api/v1/runs", {"runbook": "deploy"}, format="json")
    assert start.status_code == 409
    assert start.json()["error"] == "conflict"
    assert Run.objects.count() == 1


def test_archive_twice_is_a_conflict(api, deploy):
    assert api.delete("/api/v1/runbooks/deploy").status_code == 204
    response = api.delete("/api/v1/runbooks/deploy")
    assert response.status_code == 409
    assert response.json()["error"] == "conflict"


def test_archive_of_unknown_runbook_is_404(api, db):
    assert api.delete("/api/v1/runbooks/nope").status_code == 404


def test_creating_an_archived_slug_again_restores_it_with_a_new_version(api):
    api.post("/api/v1/runbooks", HELLO, format="json")
    api.delete("/api/v1/runbooks/hello")

    response = api.post("/api/v1/runbooks", HELLO, format="json")

    assert response.status_code == 201
    assert response.json()["archived"] is False and response.json()["version"] == 2
    assert [rb["slug"] for rb in api.get("/api/v1/runbooks").json()["results"]] == ["hello"]


# --- Versions and the list ------------------------------------------------------------------


def test_versions_lists_history_newest_first(api, author):
    api.post("/api/v1/runbooks", HELLO, format="json")
    api.put("/api/v1/runbooks/hello", {**HELLO, "name": "Two"}, format="json")
    api.put("/api/v1/runbooks/hello", {**HELLO, "name": "Three"}, format="json")

    response = api.get("/api/v1/runbooks/hello/versions")

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 3
    assert [v["number"] for v in body["results"]] == [3, 2, 1]
    assert set(body["results"][0]) == {"number", "checksum", "created_at", "created_by"}
    assert body["results"][0]["created_by"] == "ada"
    assert len({v["checksum"] for v in body["results"]}) == 3


def test_versions_of_unknown_runbook_is_404(api, db):
    assert api.get("/api/v1/runbooks/nope/versions").status_code == 404


@pytest.fixture
def several(make_runbook, deploy):
    make_runbook(HELLO_YAML)
    make_runbook(
        "slug: backup\nname: Nightly backup\ndescription: Copies the database.\n"
        "labels: {team: dba, tier: gold}\nsteps:\n  - id: dump\n    shell: 'true'\n"
    )


@pytest.mark.parametrize(
    ("query", "slugs"),
    [
        ("", ["backup", "deploy", "hello"]),
        ("q=hello", ["hello"]),
        ("q=NIGHTLY", ["backup"]),  # the name, case-insensitively
        ("q=database", ["backup"]),  # the description
        ("q=zzz", []),
        ("label=team:sre", ["deploy", "hello"]),
        ("label=team:dba", ["backup"]),
        ("label=tier", ["backup"]),
        ("label=team:sre&q=dep", ["deploy"]),
    ],
)
def test_runbook_list_filters(api, several, query, slugs):
    response = api.get(f"/api/v1/runbooks?{query}")
    assert response.status_code == 200
    body = response.json()
    assert [rb["slug"] for rb in body["results"]] == slugs
    assert body["count"] == len(slugs)


@pytest.mark.parametrize(
    ("query", "slugs"),
    [
        ("", ["deploy", "hello"]),
        ("archived=true", ["backup"]),
        ("archived=TRUE&q=nightly", ["backup"]),
        ("archived=false", ["deploy", "hello"]),
        ("archived=", ["deploy", "hello"]),
    ],
)
def test_runbook_list_shows_archived_runbooks_only_when_asked(api, several, author, query, slugs):
    runbook_archive(runbook=Runbook.objects.get(slug="backup"), user=author)
    response = api.get(f"/api/v1/runbooks?{query}")
    assert response.status_code == 200
    assert [rb["slug"] for rb in response.json()["results"]] == slugs


def test_runbook_list_refuses_an_archived_that_is_not_a_boolean(api, several):
    response = api.get("/api/v1/runbooks?archived=maybe")
    assert response.status_code == 400
    assert response.json()["details"] == {"archived": ["must be true or false"]}


def test_runbook_list_pages(api, several):
    first = api.get("/api/v1/runbooks?per_page=2").json()
    assert first["count"] == 3 and len(first["results"]) == 2 and first["next"]
    second = api.get(first["next"]).json()
    assert [rb["slug"] for rb in second["results"]] == ["hello"]


def test_deploy_fixture_round_trips_through_put(api, deploy):
    response = api.put("/api/v1/runbooks/deploy", yaml.safe_load(DEPLOY), format="json")
    assert response.status_code == 200
    assert response.json()["version"] == 1  # same definition, same version
