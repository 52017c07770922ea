"""Tests for runs.executors.process: real processes, no database.

Processes that must die are checked with psutil. A killed orphan is reparented to PID 1,
which in a container may never reap it, so a zombie counts as dead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from runs.executors.process import MAX_LINE_BYTES, LineSplitter, ProcessResult, run_process

BASH = shutil.which("bash") or "/bin/bash"
PATH_ENV = {"PATH": os.environ.get("PATH", os.defpath)}
HANG_BOUND = 20.0  # seconds; only to catch hangs, never to measure speed


class Capture:
    """An on_output callback that records every (stream, line)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __call__(self, stream: str, line: str) -> None:
        self.lines.append((stream, line))

    def stream(self, name: str) -> list[str]:
        return [line for stream, line in self.lines if stream == name]

    def pids(self) -> list[int]:
        """PIDs the test scripts announce with lines of the form ``pid <n>``."""
        return [int(line.split()[1]) for line in self.stream("stdout") if line.startswith("pid ")]


def never_stop() -> str | None:
    return None


def run_bash(
    script: str,
    capture: Capture | None = None,
    *,
    should_stop: Callable[[], str | None] = never_stop,
    **kwargs: object,
) -> ProcessResult:
    return run_process(
        [BASH, "-c", script],
        env=PATH_ENV,
        cwd=Path.cwd(),
        on_output=capture if capture is not None else Capture(),
        should_stop=should_stop,
        poll_interval=0.05,
        **kwargs,  # type: ignore[arg-type]
    )


def run_python(code: str, capture: Capture) -> ProcessResult:
    return run_process(
        [sys.executable, "-c", code],
        env={},
        cwd=Path.cwd(),
        on_output=capture,
        should_stop=never_stop,
        poll_interval=0.05,
    )


def is_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes; return its last value."""
    give_up_at = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= give_up_at:
            return condition()
        time.sleep(0.02)
    return True


def all_dead(pids: list[int]) -> bool:
    return wait_for(lambda: not any(is_alive(pid) for pid in pids))


@pytest.fixture
def escaped_pids() -> Iterator[list[int]]:
    """PIDs a test deliberately lets escape the process group; killed after the test."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# -- output -------------------------------------------------------------------------------


def test_stdout_and_stderr_lines_keep_their_stream_and_order() -> None:
    capture = Capture()
    code = (
        "import sys\n"
        "for i in range(200):\n"
        "    print(f'out {i}', flush=True)\n"
        "    print(f'err {i}', file=sys.stderr, flush=True)\n"
    )
    result = run_python(code, capture)

    assert result.outcome == "exited"
    assert result.exit_code == 0
    assert capture.stream("stdout") == [f"out {i}" for i in range(200)]
    assert capture.stream("stderr") == [f"err {i}" for i in range(200)]


def test_partial_last_line_is_delivered_and_crlf_is_stripped() -> None:
    capture = Capture()
    run_python("import sys; sys.stdout.buffer.write(b'one\\r\\n\\ntwo\\nlast')", capture)

    assert capture.stream("stdout") == ["one", "", "two", "last"]


def test_long_line_is_delivered_in_bounded_pieces() -> None:
    capture = Capture()
    run_python("import sys; sys.stdout.buffer.write(b'x' * 200000 + b'\\nafter\\n')", capture)

    pieces = capture.stream("stdout")
    assert pieces[-1] == "after"
    assert all(len(piece) <= MAX_LINE_BYTES for piece in pieces)
    assert "".join(pieces[:-1]) == "x" * 200000
    assert len(pieces) == 5  # ceil(200000 / 65536) pieces, then "after"


def test_invalid_utf8_and_nul_bytes_are_replaced() -> None:
    capture = Capture()
    run_python("import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe end\\na\\x00b\\n')", capture)

    assert capture.stream("stdout") == ["ok \ufffd\ufffd end", "a\ufffdb"]


@pytest.mark.parametrize(("script", "code"), [("true", 0), ("echo hi; exit 3", 3)])
def test_exit_code_is_reported(script: str, code: int) -> None:
    result = run_bash(script)

    assert result.outcome == "exited"
    assert result.exit_code == code
    assert result.stop_reason is None


def test_death_by_signal_is_a_negative_exit_code() -> None:
    result = run_bash("kill -KILL $$")

    assert result.outcome == "exited"
    assert result.exit_code == -signal.SIGKILL


def test_stdin_is_empty() -> None:
    capture = Capture()
    result = run_bash("cat; echo done", capture)

    assert result.exit_code == 0
    assert capture.lines == [("stdout", "done")]


def test_env_is_exactly_what_was_passed(tmp_path: Path) -> None:
    capture = Capture()
    run_process(
        [shutil.which("env") or "/usr/bin/env"],
        env={"FOO": "bar", "EMPTY": ""},
        cwd=tmp_path,
        on_output=capture,
        should_stop=never_stop,
    )

    assert sorted(capture.stream("stdout")) == ["EMPTY=", "FOO=bar"]


def test_cwd_is_respected(tmp_path: Path) -> None:
    capture = Capture()
    run_process(
        [shutil.which("pwd") or "/bin/pwd"],
        env={},
        cwd=tmp_path,
        on_output=capture,
        should_stop=never_stop,
    )

    assert capture.stream("stdout") == [str(tmp_path.resolve())]


def test_missing_program_raises_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        run_process(
            [str(tmp_path / "no-such-program")],
            env={},
            cwd=tmp_path,
            on_output=Capture(),
            should_stop=never_stop,
        )


# -- ending the process -------------------------------------------------------------------

TREE_SCRIPT = """
sleep 300 &
echo "pid $!"
bash -c 'sleep 300 & echo "pid $!"; sleep 300' &
echo "pid $!"
echo "pid $$"
wait
"""


def test_timeout_kills_the_whole_process_tree() -> None:
    capture = Capture()
    result = run_bash(TREE_SCRIPT, capture, deadline=time.monotonic() + 3.0, kill_grace=2.0)

    assert result.outcome == "timed_out"
    assert result.exit_code is None
    assert result.duration < HANG_BOUND
    pids = capture.pids()
    assert len(pids) == 4  # leader, its sleep, the nested bash, and the grandchild sleep
    assert all_dead(pids)


def test_process_ignoring_sigterm_is_killed_after_the_grace_period() -> None:
    capture = Capture()
    script = """
trap '' TERM
sleep 300 &
echo "pid $!"
echo "pid $$"
while :; do sleep 0.05; done
"""
    result = run_bash(
        script,
        capture,
        should_stop=lambda: "cancelled" if len(capture.pids()) == 2 else None,
        kill_grace=1.0,
    )

    assert result.outcome == "stopped"
    # It survived SIGTERM, so only the SIGKILL after the full grace period ended it.
    assert 1.0 <= result.duration < HANG_BOUND
    assert all_dead(capture.pids())


def test_should_stop_reason_stops_the_process() -> None:
    capture = Capture()
    result = run_bash(
        'echo "pid $$"; sleep 300',
        capture,
        should_stop=lambda: "cancelled by alice" if capture.pids() else None,
    )

    assert result.outcome == "stopped"
    assert result.stop_reason == "cancelled by alice"
    assert result.exit_code is None
    assert result.duration < HANG_BOUND
    assert all_dead(capture.pids())


def test_output_written_while_handling_sigterm_is_captured() -> None:
    capture = Capture()
    script = """
trap 'echo "cleaning up"; exit 0' TERM
echo ready
while :; do sleep 0.05; done
"""
    result = run_bash(
        script, capture, should_stop=lambda: "stop" if capture.lines else None, kill_grace=10.0
    )

    assert result.outcome == "stopped"
    assert capture.stream("stdout") == ["ready", "cleaning up"]


def test_background_child_left_after_normal_exit_is_killed() -> None:
    capture = Capture()
    result = run_bash('sleep 100 &\necho "pid $!"\nexit 0', capture)

    assert result.outcome == "exited"
    assert result.exit_code == 0
    assert result.duration < HANG_BOUND
    assert len(capture.pids()) == 1
    assert all_dead(capture.pids())


def test_process_escaping_the_group_does_not_hold_us_on_its_pipe(
    tmp_path: Path, escaped_pids: list[int]
) -> None:
    capture = Capture()
    marker = tmp_path / "escaped"
    escapee = (
        "import os, pathlib, time; os.setsid(); print('pid', os.getpid(), flush=True); "
        f"pathlib.Path({str(marker)!r}).touch(); time.sleep(100)"
    )
    script = f"""
{sys.executable} -c "{escapee}" &
until [ -e {marker} ]; do sleep 0.01; done
"""
    result = run_bash(script, capture)
    escaped_pids.extend(capture.pids())

    assert result.outcome == "exited"
    assert result.exit_code == 0
    assert result.duration < HANG_BOUND
    assert len(capture.pids()) == 1
    assert is_alive(capture.pids()[0])  # it really escaped; we only stopped listening


def test_on_tick_is_called_while_the_process_is_silent() -> None:
    ticks = 0

    def on_tick() -> None:
        nonlocal ticks
        ticks += 1

    result = run_bash(
        "sleep 300", should_stop=lambda: "enough" if ticks >= 3 else None, on_tick=on_tick
    )

    assert result.outcome == "stopped"
    assert ticks >= 3


def test_exception_in_should_stop_propagates_after_killing_the_group() -> None:
    capture = Capture()

    def should_stop() -> str | None:
        if len(capture.pids()) == 2:
            raise RuntimeError("database went away")
        return None

    with pytest.raises(RuntimeError, match="database went away"):
        run_bash(
            'sleep 300 &\necho "pid $!"\necho "pid $$"\nsleep 300', capture, should_stop=should_stop
        )

    assert len(capture.pids()) == 2
    assert all_dead(capture.pids())


def test_exception_in_on_output_propagates_after_killing_the_group() -> None:
    capture = Capture()

    def on_output(stream: str, line: str) -> None:
        capture(stream, line)
        if line == "boom":
            raise RuntimeError("log sink failed")

    with pytest.raises(RuntimeError, match="log sink failed"):
        run_bash('sleep 300 &\necho "pid $!"\necho "pid $$"\necho boom\nsleep 300', on_output)  # type: ignore[arg-type]

    assert len(capture.pids()) == 2
    assert all_dead(capture.pids())


# -- LineSplitter, fed by hand to control chunk boundaries --------------------------------


def split(*chunks: bytes) -> list[str]:
    capture = Capture()
    splitter = LineSplitter("stdout", capture)
    for chunk in chunks:
        splitter.feed(chunk)
    splitter.flush()
    return capture.stream("stdout")


def test_splitter_handles_crlf_split_across_chunks() -> None:
    assert split(b"a\r", b"\nb\r", b"\n") == ["a", "b"]


def test_splitter_byte_by_byte_matches_one_chunk() -> None:
    data = b"alpha\r\nbeta\n\ngamma"
    assert split(*(data[i : i + 1] for i in range(len(data)))) == split(data)
    assert split(data) == ["alpha", "beta", "", "gamma"]


def test_splitter_does_not_split_a_maximum_length_line() -> None:
    line = b"y" * MAX_LINE_BYTES
    assert split(line[:1000], line[1000:], b"\r\n") == ["y" * MAX_LINE_BYTES]


def test_splitter_cuts_long_lines_on_character_boundaries() -> None:
    text = "é" * MAX_LINE_BYTES  # two bytes each
    pieces = split(text.encode()[:70000], text.encode()[70000:], b"\n")

    assert "".join(pieces) == text
    assert "\ufffd" not in "".join(pieces)
    assert all(len(piece.encode()) <= MAX_LINE_BYTES for piece in pieces)


def test_splitter_keeps_memory_bounded_without_newlines() -> None:
    capture = Capture()
    splitter = LineSplitter("stderr", capture)
    for _ in range(50):
        splitter.feed(b"z" * 10000)

    assert len(splitter._buf) <= MAX_LINE_BYTES + 1
    assert sum(len(line) for line in capture.stream("stderr")) + len(splitter._buf) == 500000
