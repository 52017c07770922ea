"""404 and 500 pages look like the rest of the product; the API keeps its JSON error body."""

from django.test import RequestFactory
from django.urls import get_resolver


def test_a_missing_page_is_the_products_404_page(login, viewer):
    response = login(viewer).get("/runs/424242/")
    assert response.status_code == 404
    html = response.content.decode()
    assert "stepwise/app.css" in html
    assert 'class="topbar"' in html
    assert "There is nothing here" in html
    assert "/runs/424242/" in html


def test_an_anonymous_visitor_gets_the_404_page_without_the_navigation(client):
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    html = response.content.decode()
    assert "There is nothing here" in html
    assert 'class="topbar"' not in html
    assert 'class="brand brand-lg"' in html  # no top bar: the card carries the brand


def test_the_api_answers_404_with_its_error_body(login, viewer):
    client = login(viewer)
    for url in ("/api/v1/no-such-endpoint", "/api/v1/runs/424242"):
        response = client.get(url)
        assert response.status_code == 404, url
        assert response["Content-Type"] == "application/json", url
        assert response.json()["error"] == "not-found", url


def test_a_server_error_is_the_products_500_page(db):
    handler = get_resolver().resolve_error_handler(500)
    response = handler(RequestFactory().get("/runs/1/"))
    assert response.status_code == 500
    html = response.content.decode()
    assert "stepwise/app.css" in html
    assert "Something went wrong on our side" in html
    assert 'class="brand brand-lg"' in html


def test_a_server_error_under_the_api_is_its_error_body(db):
    handler = get_resolver().resolve_error_handler(500)
    response = handler(RequestFactory().get("/api/v1/runs"))
    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert b'"server-error"' in response.content
