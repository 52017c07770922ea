"""The approvals API and the run's pending_approval summary."""

import pytest
from rest_framework.test import APIClient

from approvals.models import Approval
from config.services import token_create
from tests.approvals.test_approvals import GATED, person, waiting_run


def client_for(user) -> APIClient:
    _, secret = token_create(user=user, name="test")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


@pytest.fixture
def setup(make_runbook):
    runbook = make_runbook(GATED.replace("REQUIRED", "1").replace("SELF", "false"))
    olivia = person("olivia", "operator")
    alice = person("alice")
    mallory = person("mallory", "viewer")
    run, approval = waiting_run(runbook, olivia)
    return run, approval, olivia, alice, mallory


def test_run_shows_its_pending_approval(setup):
    run, approval, olivia, *_ = setup
    body = client_for(olivia).get(f"/api/v1/runs/{run.number}").json()
    assert body["status"] == "waiting"
    pending = body["pending_approval"]
    assert pending["id"] == approval.pk and pending["step"] == "2"
    assert pending["message"] == "Restart api?" and pending["required"] == 1
    assert pending["approvals"] == 0
    assert pending["approvers"] == {"users": ["alice", "bob", "carol"], "groups": ["sre-leads"]}
    assert pending["url"].endswith(f"/approvals/{approval.pk}/")


def test_approver_without_a_role_sees_and_decides_only_their_approvals(setup):
    _run, approval, _, alice, _ = setup
    client = client_for(alice)
    listing = client.get("/api/v1/approvals?mine=true&status=pending").json()
    assert [a["id"] for a in listing["results"]] == [approval.pk]
    assert listing["results"][0]["can_decide"] is True
    response = client.post(
        f"/api/v1/approvals/{approval.pk}/approve",
        {"comment": "ok", "values": {"window": "tonight"}},
        format="json",
    )
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "approved"
    again = client.post(f"/api/v1/approvals/{approval.pk}/deny", {"reason": "late"}, format="json")
    assert again.status_code == 409 and again.json()["error"] == "conflict"


def test_outsider_gets_403_and_deny_without_reason_gets_400(setup):
    _, approval, _, alice, mallory = setup
    refused = client_for(mallory).post(
        f"/api/v1/approvals/{approval.pk}/approve", {}, format="json"
    )
    assert refused.status_code == 403 and refused.json()["error"] == "permission-denied"
    no_reason = client_for(alice).post(f"/api/v1/approvals/{approval.pk}/deny", {}, format="json")
    assert no_reason.status_code == 400
    assert "reason" in no_reason.json()["details"]
    assert Approval.objects.get(pk=approval.pk).status == "pending"


def test_a_misspelt_key_decides_nothing(setup):
    _, approval, _, alice, _ = setup
    response = client_for(alice).post(
        f"/api/v1/approvals/{approval.pk}/approve",
        {"comment": "ok", "value": {"window": "tonight"}},
        format="json",
    )
    assert response.status_code == 400
    assert list(response.json()["details"]) == ["value"]
    assert Approval.objects.get(pk=approval.pk).status == "pending"


def test_invalid_form_values_are_named(setup):
    _, approval, _, alice, _ = setup
    response = client_for(alice).post(
        f"/api/v1/approvals/{approval.pk}/approve", {"values": {"replicas": 99}}, format="json"
    )
    assert response.status_code == 400
    assert list(response.json()["details"]) == ["values.replicas"]


def test_user_with_no_role_and_no_approval_sees_nothing(setup):
    stranger = person("stranger")
    listing = client_for(stranger).get("/api/v1/approvals").json()
    assert listing["count"] == 0
    _, approval, *_ = setup
    assert client_for(stranger).get(f"/api/v1/approvals/{approval.pk}").status_code == 404


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("mine=maybe", ["mine"]),
        ("mine=2", ["mine"]),
        ("status=bogus&mine=maybe", ["mine", "status"]),
    ],
)
def test_list_rejects_a_mine_that_is_not_a_boolean_naming_it(setup, query, named):
    *_, mallory = setup
    response = client_for(mallory).get(f"/api/v1/approvals?{query}")
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "validation-failed"
    assert sorted(body["details"]) == named


@pytest.mark.parametrize(("mine", "count"), [("True", 0), ("yes", 0), ("false", 1), ("0", 1)])
def test_list_reads_mine_in_any_case(setup, mine, count):
    """A viewer sees every approval; `mine` keeps those they may decide (none, for mallory).
    Python's requests sends True as "True"."""
    *_, mallory = setup
    assert client_for(mallory).get(f"/api/v1/approvals?mine={mine}").json()["count"] == count
