"""Every page's permission boundary: anonymous users log in, users without a role are
refused, viewers read but see no action buttons and are refused when they POST anyway."""

import pytest

from config.models import ApiToken
from config.services import token_create
from runs.models import Run
from tests.conftest import drain


@pytest.fixture
def pages(every_type, start_run, operator) -> list[str]:
    run = start_run(every_type, user=operator)
    return [
        "/",
        "/runs/",
        f"/runs/{run.number}/",
        f"/runs/{run.number}/log.txt",
        "/runbooks/",
        f"/runbooks/{every_type.slug}/",
        "/settings/tokens/",
    ]


def test_anonymous_users_are_sent_to_the_login_page(client, pages):
    for url in pages:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/accounts/login/?next="), url


def test_users_without_a_role_are_refused(login, outsider, pages):
    client = login(outsider)
    for url in pages:
        if url in ("/", "/settings/tokens/"):
            continue
        assert client.get(url).status_code == 403, url


def test_users_without_a_role_start_in_their_approvals_inbox(client, outsider):
    # Approving needs no role: the home page of someone who may only approve is the inbox,
    # and the navigation offers no page that would refuse them.
    response = client.post(
        "/accounts/login/", {"username": "olga", "password": "pw-olga-123"}, follow=True
    )
    assert response.redirect_chain[-1] == ("/approvals/", 302)
    assert "Waiting for me" in response.text
    nav = response.text.split('<nav class="mainnav"')[1].split("</nav>")[0]
    assert 'href="/approvals/"' in nav and 'href="/runs/"' not in nav
    assert 'href="/runbooks/"' not in nav and 'href="/" ' not in nav


def test_viewers_can_read_every_page(login, viewer, pages):
    client = login(viewer)
    for url in pages:
        assert client.get(url).status_code == 200, url


def test_login_page_logs_in_and_logout_logs_out(client, viewer):
    assert client.get("/accounts/login/").status_code == 200
    response = client.post(
        "/accounts/login/", {"username": "vera", "password": "pw-vera-123", "next": "/runs/"}
    )
    assert response.status_code == 302
    assert response["Location"] == "/runs/"
    assert client.get("/runs/").status_code == 200
    client.post("/accounts/logout/")
    assert client.get("/runs/").status_code == 302


def test_sign_in_pauses_after_repeated_wrong_passwords_for_that_user_and_address(
    client, viewer, settings
):
    def sign_in(password, address="10.0.0.1", username="vera"):
        return client.post(
            "/accounts/login/",
            {"username": username, "password": password},
            REMOTE_ADDR=address,
        )

    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert sign_in("wrong").status_code == 200  # the form again, with its error
    locked = sign_in("wrong")
    assert locked.status_code == 429
    assert b"Sign-in paused" in locked.content

    # The right password does not get through the pause either...
    assert sign_in("pw-vera-123").status_code == 429
    assert "_auth_user_id" not in client.session
    # ...but it is the pair that is paused: the same user from elsewhere still signs in.
    assert sign_in("pw-vera-123", address="10.0.0.2").status_code == 302


def test_a_forwarded_for_header_does_not_change_who_an_anonymous_client_is(client):
    from config.api.auth import client_address

    request = client.get("/healthz").wsgi_request
    request.META["HTTP_X_FORWARDED_FOR"] = "203.0.113.9"
    assert client_address(request) == request.META["REMOTE_ADDR"]


def test_viewer_sees_no_run_cancel_or_retry_buttons(login, viewer, every_type, flaky, start_run):
    client = login(viewer)
    active = start_run(every_type)
    failed = drain(start_run(flaky))
    runbook_page = client.get(f"/runbooks/{every_type.slug}/").content.decode()
    assert "Run Every param type" not in runbook_page
    assert "needs the <strong>operator</strong> role" in runbook_page
    assert "Cancel run" not in client.get(f"/runs/{active.number}/").content.decode()
    page = client.get(f"/runs/{failed.number}/").content.decode()
    assert "Retry from" not in page


def test_operator_sees_the_buttons(login, operator, every_type, flaky, start_run):
    client = login(operator)
    active = start_run(every_type)
    failed = drain(start_run(flaky))
    assert "Run Every param type" in client.get(f"/runbooks/{every_type.slug}/").content.decode()
    assert "Cancel run" in client.get(f"/runs/{active.number}/").content.decode()
    page = client.get(f"/runs/{failed.number}/").content.decode()
    assert "Retry from start" in page
    assert "Retry from failed step" in page


def test_viewer_posts_are_refused_and_change_nothing(login, viewer, every_type, flaky, start_run):
    client = login(viewer)
    active = start_run(every_type)
    failed = drain(start_run(flaky))
    runs_before = Run.objects.count()
    assert client.post(f"/runbooks/{every_type.slug}/run", {}).status_code == 403
    assert client.post(f"/runs/{active.number}/cancel", {"reason": "x"}).status_code == 403
    assert client.post(f"/runs/{failed.number}/retry", {"from": "start"}).status_code == 403
    active.refresh_from_db()
    assert active.status == "queued"
    assert Run.objects.count() == runs_before


def test_anonymous_posts_are_sent_to_login(client, every_type, start_run):
    run = start_run(every_type)
    response = client.post(f"/runs/{run.number}/cancel", {"reason": "x"})
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.status == "queued"


def test_author_can_start_runs(login, author, every_type):
    response = login(author).post(f"/runbooks/{every_type.slug}/run", {"service": "web"})
    assert response.status_code == 302


def test_tokens_of_others_cannot_be_revoked(login, viewer, operator):
    token, _ = token_create(user=operator, name="theirs")
    response = login(viewer).post(f"/settings/tokens/{token.pk}/revoke")
    assert response.status_code == 404
    assert ApiToken.objects.filter(pk=token.pk).exists()
