"""Read what a shell step left behind: its outputs file and its artifacts directory.

Pure Python, no Django: the step's process has already been killed and reaped when these run.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

__all__ = ["OutputsError", "collect_files", "parse_outputs"]

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


class OutputsError(ValueError):
    """The outputs file is malformed; ``line`` is 1-based, ``problem`` says what is wrong."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.problem = problem


def parse_outputs(text: str) -> dict[str, str]:
    """Parse a GitHub-Actions-style outputs file (``$GITHUB_OUTPUT``) into a dict.

    The format, one entry per line:

    - ``key=value``: the value is everything after the first ``=`` (it may contain ``=``,
      and may be empty);
    - ``key<<DELIM`` then lines, then a line that is exactly ``DELIM``: the value is the lines
      in between joined with ``"\\n"`` (this is how a value holds newlines);
    - blank lines between entries are ignored; a later key overwrites an earlier one.

    Whichever of ``=`` and ``<<`` comes first decides the form, as in GitHub's runner, so
    ``url=a<<b`` is a plain value. Line endings may be ``\\n`` or ``\\r\\n``. Keys must match
    ``[A-Za-z_][A-Za-z0-9_-]*``: they are used as ``steps.<id>.outputs.<key>`` in templates.

    Raises :class:`OutputsError` naming the first bad line rather than guessing, so a step
    with a typo in its outputs fails visibly instead of passing on a silently wrong value.
    """
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    outputs: dict[str, str] = {}
    index = 0
    while index < len(lines):
        line = lines[index]
        number = index + 1
        index += 1
        if not line.strip():
            continue

        equals = line.find("=")
        heredoc = line.find("<<")
        if equals != -1 and (heredoc == -1 or equals < heredoc):
            key, value = line[:equals], line[equals + 1 :]
            _check_key(key, number)
            outputs[key] = value
        elif heredoc != -1:
            key, delimiter = line[:heredoc], line[heredoc + 2 :]
            _check_key(key, number)
            if not delimiter:
                raise OutputsError(number, f"missing delimiter after '{key}<<'")
            try:
                end = lines.index(delimiter, index)
            except ValueError:
                raise OutputsError(
                    number, f"block '{key}' is not terminated by a line '{delimiter}'"
                ) from None
            outputs[key] = "\n".join(lines[index:end])
            index = end + 1
        else:
            raise OutputsError(number, "expected 'key=value' or 'key<<DELIMITER'")
    return outputs


def _check_key(key: str, number: int) -> None:
    if not _KEY.fullmatch(key):
        raise OutputsError(
            number,
            f"invalid key {key!r}: use letters, digits, '_' and '-', not starting with a digit",
        )


def collect_files(directory: Path) -> list[tuple[str, Path]]:
    """List the regular files below ``directory`` as ``(relative posix name, path)``, sorted.

    Symlinks are skipped and never followed, whether to files or directories, and a
    ``directory`` that is itself a symlink yields nothing: a step could otherwise point one at
    a file only the worker may read (``/etc/shadow``, its own secrets) and have us publish it
    as an artifact. FIFOs, sockets and devices are skipped too: copying them would block or
    make no sense. A missing directory yields ``[]``.

    The caller should still open each file with ``O_NOFOLLOW``: this list is a snapshot, and
    only a killed process group guarantees nothing swaps a file for a symlink afterwards.
    """
    found: list[tuple[str, Path]] = []
    # The step may have replaced the directory itself with a symlink (to "/", say): its
    # parent is usually writable by the step too.
    if directory.is_symlink() or not directory.is_dir():
        return found
    for root, _dirs, files in os.walk(directory, followlinks=False):
        base = Path(root)
        for name in files:
            path = base / name
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                continue
            if stat.S_ISREG(mode):
                found.append((path.relative_to(directory).as_posix(), path))
    found.sort()
    return found
