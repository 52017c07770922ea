"""`page`, `per_page` and `cursor` on every list endpoint (DESIGN.md section 5): a malformed
one is a 400 naming it, as for any other query parameter."""

import pytest

LISTS = [
    "/api/v1/runs",
    "/api/v1/runbooks",
    "/api/v1/runbooks/deploy/versions",
    "/api/v1/approvals",
    "/api/v1/tokens",
]
NOT_POSITIVE = ["0", "-1", "abc", "1.5", "last", "%C2%B2", "%EF%BC%91"]  # ², fullwidth 1


@pytest.fixture
def api(author, as_user, deploy):
    return as_user(author)


def assert_names(response, *params: str) -> None:
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["error"] == "validation-failed"
    assert sorted(body["details"]) == sorted(params)


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize("value", NOT_POSITIVE)
def test_a_page_that_is_not_a_positive_whole_number_is_400(api, path, value):
    assert_names(api.get(f"{path}?page={value}"), "page")


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize("value", NOT_POSITIVE)
def test_a_per_page_that_is_not_a_positive_whole_number_is_400(api, path, value):
    assert_names(api.get(f"{path}?per_page={value}"), "per_page")


def test_a_bad_page_and_per_page_are_named_together(api):
    assert_names(api.get("/api/v1/runbooks?page=0&per_page=abc"), "page", "per_page")


@pytest.mark.parametrize("path", LISTS)
def test_a_page_past_the_last_is_404_saying_so(api, path):
    response = api.get(f"{path}?page=2")
    assert response.status_code == 404
    body = response.json()
    assert body["error"] == "not-found"
    assert body["message"] == "There is no page 2: it is past the last page."


@pytest.mark.parametrize("path", LISTS)
def test_empty_page_and_per_page_are_the_defaults(api, path):
    assert api.get(f"{path}?page=&per_page=").status_code == 200
