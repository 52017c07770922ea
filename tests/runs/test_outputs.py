"""Tests for runs.executors.outputs: the outputs-file parser and artifact listing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runs.executors.outputs import OutputsError, collect_files, parse_outputs

# -- parse_outputs --------------------------------------------------------------------------


def test_parses_key_value_lines() -> None:
    assert parse_outputs("name=web-1\ncount=3\n") == {"name": "web-1", "count": "3"}


def test_value_keeps_equals_signs_and_may_be_empty() -> None:
    text = "query=a=1&b=2\nempty=\n"
    assert parse_outputs(text) == {"query": "a=1&b=2", "empty": ""}


def test_equals_before_heredoc_marker_is_a_plain_value() -> None:
    assert parse_outputs("shift=x<<2") == {"shift": "x<<2"}


def test_parses_multiline_block() -> None:
    text = "notes<<EOF\nfirst line\n\n  indented = yes\nEOF\nafter=1\n"
    assert parse_outputs(text) == {"notes": "first line\n\n  indented = yes", "after": "1"}


def test_empty_multiline_block_is_an_empty_value() -> None:
    assert parse_outputs("k<<END\nEND") == {"k": ""}


def test_blank_lines_and_crlf_line_endings_are_accepted() -> None:
    text = "\r\na=1\r\n\r\n  \nb<<X\r\nline\r\nX\r\n"
    assert parse_outputs(text) == {"a": "1", "b": "line"}


def test_later_key_overwrites_earlier() -> None:
    assert parse_outputs("v=1\nv<<E\ntwo\nE\nv=3") == {"v": "3"}


def test_empty_text_has_no_outputs() -> None:
    assert parse_outputs("") == {}


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("ok=1\n1bad=x", 2),
        ("bad key=x", 1),
        ("=x", 1),
        ("a.b=x", 1),
        ("ok=1\n\nx y<<EOF\nEOF", 3),
    ],
)
def test_invalid_key_is_rejected_with_its_line(text: str, line: int) -> None:
    with pytest.raises(OutputsError, match="invalid key") as caught:
        parse_outputs(text)

    assert caught.value.line == line


def test_line_without_separator_is_rejected() -> None:
    with pytest.raises(OutputsError) as caught:
        parse_outputs("a=1\njust some text\n")

    assert caught.value.line == 2
    assert str(caught.value).startswith("line 2: ")


def test_unterminated_block_reports_the_line_it_started_on() -> None:
    with pytest.raises(OutputsError, match="not terminated by a line 'EOF'") as caught:
        parse_outputs("a=1\nbody<<EOF\nsome\ntext\n")

    assert caught.value.line == 2


def test_delimiter_must_match_the_whole_line() -> None:
    with pytest.raises(OutputsError, match="not terminated"):
        parse_outputs("body<<EOF\ntext\nEOF \n")


def test_heredoc_without_delimiter_is_rejected() -> None:
    with pytest.raises(OutputsError, match="missing delimiter") as caught:
        parse_outputs("body<<\ntext")

    assert caught.value.line == 1


# -- collect_files --------------------------------------------------------------------------


def test_collects_regular_files_recursively_sorted(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("b")
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "sub" / "deeper" / "c.log").write_text("c")
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / ".hidden").write_text("h")

    assert collect_files(tmp_path) == [
        (".hidden", tmp_path / ".hidden"),
        ("a.txt", tmp_path / "a.txt"),
        ("b.txt", tmp_path / "b.txt"),
        ("sub/deeper/c.log", tmp_path / "sub" / "deeper" / "c.log"),
    ]


def test_symlinks_are_skipped_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / "report.txt").write_text("ok")
    (artifacts / "shadow").symlink_to("/etc/shadow")
    (artifacts / "secret-link").symlink_to(outside / "secret.txt")
    (artifacts / "dir-link").symlink_to(outside, target_is_directory=True)
    (artifacts / "dangling").symlink_to(tmp_path / "missing")

    assert collect_files(artifacts) == [("report.txt", artifacts / "report.txt")]


def test_artifacts_directory_that_is_a_symlink_yields_nothing(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (tmp_path / "artifacts").symlink_to(outside, target_is_directory=True)

    assert collect_files(tmp_path / "artifacts") == []


def test_special_files_are_skipped(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "real").write_text("x")

    assert collect_files(tmp_path) == [("real", tmp_path / "real")]


def test_missing_directory_has_no_files(tmp_path: Path) -> None:
    assert collect_files(tmp_path / "nope") == []
