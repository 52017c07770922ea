"""`manage.py runbooks sync DIR`."""

import textwrap

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from runbooks.models import Runbook

GOOD = """
slug: good
name: Good
steps:
  - {id: a, shell: echo a}
"""


def write(directory, name, text):
    (directory / name).write_text(textwrap.dedent(text))


def sync(directory, capsys):
    call_command("runbooks", "sync", str(directory))
    return capsys.readouterr().out


@pytest.mark.django_db
def test_sync_creates_then_leaves_unchanged_files_alone_then_versions_changes(tmp_path, capsys):
    write(tmp_path, "good.yaml", GOOD)
    assert "created    good.yaml -> good v1" in sync(tmp_path, capsys)
    assert "unchanged  good.yaml -> good v1" in sync(tmp_path, capsys)
    write(tmp_path, "good.yaml", GOOD.replace("echo a", "echo b"))
    assert "updated    good.yaml -> good v2" in sync(tmp_path, capsys)
    runbook = Runbook.objects.get(slug="good")
    assert list(runbook.versions.values_list("number", flat=True)) == [2, 1]
    assert runbook.latest_version.number == 2


@pytest.mark.django_db
def test_sync_reports_each_bad_file_and_still_loads_the_good_ones(tmp_path, capsys):
    write(tmp_path, "a-bad.yaml", "slug: bad\nname: Bad\nsteps:\n  - {id: x, shel: oops}\n")
    write(tmp_path, "b-broken.yml", "slug: [unclosed\n")
    write(tmp_path, "c-good.yaml", GOOD)
    with pytest.raises(CommandError, match="3 files, 2 with errors"):
        call_command("runbooks", "sync", str(tmp_path))
    out = capsys.readouterr().out
    assert "error      a-bad.yaml" in out and "steps[0]" in out
    assert "error      b-broken.yml" in out
    assert "created    c-good.yaml -> good v1" in out
    assert list(Runbook.objects.values_list("slug", flat=True)) == ["good"]


@pytest.mark.django_db
def test_sync_refuses_a_folder_without_runbooks(tmp_path):
    with pytest.raises(CommandError, match="no runbook files"):
        call_command("runbooks", "sync", str(tmp_path))


@pytest.mark.django_db
def test_every_example_loads(capsys):
    from django.conf import settings

    out = sync(settings.BASE_DIR / "examples", capsys)
    assert "with errors" in out and ", 0 with errors" in out
    assert Runbook.objects.count() >= 4
