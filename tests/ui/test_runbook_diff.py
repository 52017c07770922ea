"""The diff between two versions of a runbook."""

import textwrap

from runbooks.models import Runbook
from runbooks.services import definition_parse, runbook_save

V1 = """
slug: diffed
name: Diffed
steps:
  - {id: a, shell: echo one}
"""


def save(text: str) -> None:
    text = textwrap.dedent(text)
    runbook_save(definition=definition_parse(text=text), source=text, user=None)


def test_diff_shows_what_changed_between_two_versions(client, viewer):
    save(V1)
    save(V1.replace("echo one", "echo two"))
    client.force_login(viewer)
    detail = client.get("/runbooks/diffed/").text
    assert "/runbooks/diffed/diff?from=1&amp;to=2" in detail
    page = client.get("/runbooks/diffed/diff?from=1&to=2")
    assert page.status_code == 200
    assert '<span class="d-del">-  - {id: a, shell: echo one}</span>' in page.text
    assert '<span class="d-add">+  - {id: a, shell: echo two}</span>' in page.text


def test_diff_of_a_single_version_says_there_is_nothing_to_compare(client, viewer):
    save(V1)
    client.force_login(viewer)
    assert "nothing to compare" in client.get("/runbooks/diffed/diff").text
    assert Runbook.objects.get().versions.count() == 1


def test_diff_takes_a_version_that_is_not_ascii_digits_as_not_given(client, viewer):
    save(V1)
    save(V1.replace("echo one", "echo two"))
    client.force_login(viewer)
    for query in ("from=%C2%B2", "to=%C2%B2", "from=%EF%BC%91"):  # superscript 2, fullwidth 1
        page = client.get(f"/runbooks/diffed/diff?{query}")
        assert page.status_code == 200, query
        assert '<span class="d-add">+  - {id: a, shell: echo two}</span>' in page.text, query


def test_diff_needs_a_role(client, outsider):
    save(V1)
    assert client.get("/runbooks/diffed/diff").status_code == 302
    client.force_login(outsider)
    assert client.get("/runbooks/diffed/diff").status_code == 403
