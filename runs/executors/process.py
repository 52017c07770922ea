"""Run one process to completion, streaming its output line by line.

This is the part of the shell executor that touches the operating system; it knows nothing
about Django, runs or steps, so it can be tested (and reasoned about) on its own.

The rules it enforces:

- The child starts in a new session, hence its own process group whose id is the child's pid.
  Timeouts, stops and clean-up signal that whole group, so a script's background jobs and
  grandchildren go with it.
- The group is signalled only while the leader is still unreaped (running or a zombie). A
  zombie keeps its pid reserved, so the group id cannot have been reused by an unrelated
  process. We detect the leader's exit with ``waitid(WNOWAIT)``, which does not reap.
- stdout and stderr are read without threads, through a selector over non-blocking pipes,
  and split into bounded lines, so a chatty or hostile script cannot make us buffer
  unbounded memory or block it on a full pipe while it handles SIGTERM.
- Every exit path, including an exception raised by one of the caller's callbacks, kills the
  group and reaps the leader before returning or re-raising.
"""

from __future__ import annotations

import contextlib
import math
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import psutil

__all__ = ["MAX_LINE_BYTES", "LineSplitter", "Outcome", "ProcessResult", "run_process"]

Outcome = Literal["exited", "timed_out", "stopped"]

#: Longest line delivered in one piece; longer lines arrive as several pieces.
MAX_LINE_BYTES = 64 * 1024

_READ_SIZE = 64 * 1024
# After the group is killed, a grandchild that escaped it (setsid, setpgid) may still hold
# our pipes open. We read for at most this long, then stop listening and close them.
_DRAIN_TIMEOUT = 2.0
# Without a pidfd nothing wakes the selector when the leader exits, so we look this often.
_EXIT_POLL_FALLBACK = 0.05
_HAS_WAITID = hasattr(os, "waitid") and hasattr(os, "WNOWAIT")


@dataclass(frozen=True)
class ProcessResult:
    """How a process ended.

    ``exit_code`` is the leader's exit status when ``outcome == "exited"``; as with
    :class:`subprocess.Popen`, a negative value ``-N`` means it was killed by signal ``N``
    (by itself or by something other than us). It is ``None`` when we ended the process
    ("timed_out" or "stopped"), whatever status the killed process reported.
    """

    exit_code: int | None
    outcome: Outcome
    stop_reason: str | None
    duration: float


class LineSplitter:
    """Turns a byte stream into text lines for one named stream.

    Lines end at ``\\n`` (a preceding ``\\r`` is dropped too). Bytes are decoded as UTF-8 with
    replacement characters, and NUL becomes U+FFFD because databases (PostgreSQL text) reject
    it. A line longer than :data:`MAX_LINE_BYTES` is delivered in pieces of at most that many
    bytes, cut on a UTF-8 character boundary where possible, so memory stays bounded.
    """

    def __init__(self, stream: str, emit: Callable[[str, str], None]) -> None:
        self.stream = stream
        self._emit = emit
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        """Add bytes and deliver every line they complete."""
        buf = self._buf
        buf += data
        start = 0
        try:
            while (newline := buf.find(b"\n", start)) != -1:
                end = newline - 1 if newline > start and buf[newline - 1] == 0x0D else newline
                # Advance before delivering so a raising callback never sees a line twice.
                line_start, start = start, newline + 1
                self._deliver(buf, line_start, end)
            # Keep at most MAX_LINE_BYTES + 1 pending bytes. The extra byte means a line of
            # exactly the maximum followed by "\r\n" or "\n" is not split into a piece plus an
            # empty line, and a trailing "\r" always stays with the "\n" that may follow it.
            while len(buf) - start > MAX_LINE_BYTES + 1:
                cut = _piece_end(buf, start)
                piece_start, start = start, cut
                self._send(buf, piece_start, cut)
        finally:
            del buf[:start]

    def flush(self) -> None:
        """Deliver a pending partial line (the stream ended without a final newline)."""
        buf = self._buf
        if not buf:
            return
        end = len(buf) - 1 if buf[-1] == 0x0D else len(buf)
        data = bytearray(buf)
        buf.clear()
        self._deliver(data, 0, end)

    def _deliver(self, buf: bytearray, start: int, end: int) -> None:
        while end - start > MAX_LINE_BYTES:
            cut = _piece_end(buf, start)
            piece_start, start = start, cut
            self._send(buf, piece_start, cut)
        self._send(buf, start, end)

    def _send(self, buf: bytearray, start: int, end: int) -> None:
        text = buf[start:end].decode("utf-8", errors="replace").replace("\x00", "\ufffd")
        self._emit(self.stream, text)


def _piece_end(buf: bytearray, start: int) -> int:
    """Where to cut a too-long line: at the limit, moved back onto a UTF-8 character start.

    Callers guarantee ``buf`` extends past ``start + MAX_LINE_BYTES``.
    """
    limit = start + MAX_LINE_BYTES
    cut = limit
    # UTF-8 continuation bytes look like 0b10xxxxxx; a character has at most three of them.
    while cut > limit - 3 and buf[cut] & 0xC0 == 0x80:
        cut -= 1
    if buf[cut] & 0xC0 == 0x80:
        return limit  # not valid UTF-8 here anyway: cut at the limit
    return cut


def run_process(
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: str | Path,
    on_output: Callable[[str, str], None],
    should_stop: Callable[[], str | None],
    deadline: float | None = None,
    kill_grace: float = 5.0,
    poll_interval: float = 0.2,
    on_tick: Callable[[], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> ProcessResult:
    """Run ``argv`` and wait for it, streaming its output; never leaves a process behind.

    - ``env`` is the child's whole environment: nothing of ours leaks in. ``argv[0]``, when
      not a path, is looked up in ``env["PATH"]`` (or the system default path).
    - ``on_output(stream, line)`` gets each line of ``"stdout"`` or ``"stderr"``, without its
      line ending, in order within each stream.
    - ``should_stop()`` is polled every ``poll_interval`` seconds (and once at the start); a
      non-``None`` reason stops the process: outcome ``"stopped"``.
    - Past ``deadline`` (a :func:`time.monotonic` value) the process is killed: outcome
      ``"timed_out"``.
    - Stopping sends SIGTERM to the process group, then SIGKILL if the leader is still alive
      after ``kill_grace`` seconds. Output keeps being read meanwhile.
    - When the leader exits, for whatever reason, what is left of its group is SIGKILLed and
      the pipes are drained (for at most 2 s, in case something escaped the group).
    - ``on_start(pid)`` is called once the process runs; its pid is also its process group id.
    - ``on_tick()`` is called at least every ``poll_interval`` seconds until we return, so a
      caller can flush batched log lines.

    Errors starting the process (``FileNotFoundError`` for a missing program or ``cwd``,
    ``PermissionError``) propagate from :class:`subprocess.Popen` before anything ran. An
    exception from a callback propagates after the process group has been killed and reaped.
    """
    if not argv:
        raise ValueError("argv must not be empty")
    if poll_interval <= 0:
        raise ValueError("poll_interval must be positive")
    if kill_grace < 0:
        raise ValueError("kill_grace must not be negative")

    started = time.monotonic()
    # Created first: once the child runs, nothing that can fail (EMFILE) should stand between
    # it and the try/finally that guarantees its death.
    selector = selectors.DefaultSelector()
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            cwd=cwd,
            close_fds=True,
            start_new_session=True,
        )
    except BaseException:
        selector.close()
        raise
    # The constructor cleans up after itself if registering the pipes fails.
    supervisor = _Supervisor(
        proc, selector, on_output=on_output, on_tick=on_tick, interval=poll_interval
    )
    try:
        if on_start is not None:
            on_start(proc.pid)
        outcome, reason = supervisor.watch(should_stop, deadline)
        if outcome != "exited":
            supervisor.terminate(kill_grace)
        supervisor.finish()
    finally:
        supervisor.close()

    return ProcessResult(
        exit_code=proc.returncode if outcome == "exited" else None,
        outcome=outcome,
        stop_reason=reason,
        duration=time.monotonic() - started,
    )


class _Supervisor:
    """State of one running process: its group, its pipes and the tick schedule.

    The phases are called in order: :meth:`watch` until something ends the process,
    :meth:`terminate` if we end it, :meth:`finish` to clean up the group, reap and drain, and
    always :meth:`close`, which also handles being reached through an exception.
    """

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        selector: selectors.BaseSelector,
        *,
        on_output: Callable[[str, str], None],
        on_tick: Callable[[], None] | None,
        interval: float,
    ) -> None:
        self._proc = proc
        # start_new_session=True made the child a session and process-group leader.
        self._pgid = proc.pid
        self._on_tick = on_tick
        self._interval = interval
        self._next_tick = time.monotonic() + interval if on_tick is not None else math.inf
        self._pipes: list[IO[bytes]] = [p for p in (proc.stdout, proc.stderr) if p is not None]
        self._selector = selector
        self._pidfd: int | None = None
        try:
            for stream, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
                assert pipe is not None
                fd = pipe.fileno()
                os.set_blocking(fd, False)
                splitter = LineSplitter(stream, on_output)
                self._selector.register(fd, selectors.EVENT_READ, splitter)
            self._pidfd = _open_pidfd(proc.pid)
            if self._pidfd is not None:
                # Readable once the leader exits: wakes the selector without polling.
                self._selector.register(self._pidfd, selectors.EVENT_READ, None)
        except BaseException:
            self.close()  # the child is already running: it must not outlive this error
            raise

    # -- phases ---------------------------------------------------------------------------

    def watch(
        self, should_stop: Callable[[], str | None], deadline: float | None
    ) -> tuple[Outcome, str | None]:
        """Read output until the leader exits, the deadline passes or a stop is asked for."""
        next_poll = time.monotonic()
        end = math.inf if deadline is None else deadline
        while True:
            if self._leader_exited():
                return "exited", None
            now = time.monotonic()
            if now >= end:
                return "timed_out", None
            if now >= next_poll:
                reason = should_stop()
                if reason is not None:
                    return "stopped", reason
                now = time.monotonic()
                next_poll = now + self._interval
            self._tick_if_due(now)
            self._pump(self._exit_wait(min(next_poll, end, self._next_tick) - now))

    def terminate(self, kill_grace: float) -> None:
        """SIGTERM the group, and SIGKILL it if the leader outlives the grace period.

        Output is still read meanwhile: a script cleaning up on SIGTERM must not block
        on a full pipe.
        """
        self._signal_group(signal.SIGTERM)
        kill_at = time.monotonic() + kill_grace
        killed = False
        while not self._leader_exited():
            now = time.monotonic()
            if not killed and now >= kill_at:
                self._signal_group(signal.SIGKILL)
                killed = True
            self._tick_if_due(now)
            wake = self._next_tick if killed else min(kill_at, self._next_tick)
            self._pump(self._exit_wait(wake - now))

    def finish(self) -> None:
        """Kill what is left of the group, reap the leader, then drain the pipes (bounded)."""
        # The leader has exited but is not reaped yet, so its pid, and the group id, are
        # still reserved: this signal cannot reach an unrelated process.
        self._signal_group(signal.SIGKILL)
        self._proc.wait()
        self._close_pidfd()

        give_up_at = time.monotonic() + _DRAIN_TIMEOUT
        while self._reading():
            now = time.monotonic()
            if now >= give_up_at:
                break
            self._tick_if_due(now)
            self._pump(min(give_up_at, self._next_tick) - now)
        # Whatever is still open is held by something that escaped the group: deliver its
        # partial line and stop listening.
        for key in list(self._selector.get_map().values()):
            self._selector.unregister(key.fd)
            if key.data is not None:
                key.data.flush()

    def close(self) -> None:
        """Release everything. Reached through an exception, also kill and reap first."""
        try:
            if self._proc.returncode is None:
                # A callback raised (or we were interrupted). The caller is unwinding, so no
                # grace period: the group goes now, while the unreaped leader pins its id.
                self._signal_group(signal.SIGKILL)
                self._proc.wait()
        finally:
            self._close_pidfd()
            self._selector.close()
            for pipe in self._pipes:
                pipe.close()

    # -- helpers --------------------------------------------------------------------------

    def _leader_exited(self) -> bool:
        """Whether the leader has exited, without reaping it (see the module docstring)."""
        if self._proc.returncode is not None:
            return True
        if not _HAS_WAITID:
            # Without waitid we must reap to find out; the group id is then no longer pinned,
            # a small reuse window we accept on platforms other than Linux.
            return self._proc.poll() is not None
        try:
            info = os.waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            # Reaped behind our back (SIGCHLD ignored, or a stray waitpid(-1)); Popen.wait()
            # copes with that.
            return True
        return info is not None

    def _signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self._pgid, sig)
        except ProcessLookupError:
            pass  # the whole group is already gone
        except PermissionError:
            # Only members we may not signal are left (a setuid program), or, on macOS,
            # only zombies. Nothing more we can do to them.
            pass

    def _tick_if_due(self, now: float) -> None:
        if self._on_tick is not None and now >= self._next_tick:
            self._on_tick()
            self._next_tick = time.monotonic() + self._interval

    def _exit_wait(self, timeout: float) -> float:
        """Cap a wait while the leader may exit: without a pidfd nothing would wake us."""
        return timeout if self._pidfd is not None else min(timeout, _EXIT_POLL_FALLBACK)

    def _reading(self) -> bool:
        return any(key.data is not None for key in self._selector.get_map().values())

    def _pump(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for output (or the leader's exit) and read it."""
        # Capped so an infinite "next event" (no on_tick, no deadline) is still a number.
        timeout = min(max(0.0, timeout), self._interval)
        if not self._selector.get_map():
            time.sleep(timeout)
            return
        for key, _events in self._selector.select(timeout):
            if key.data is None:
                # The pidfd: the leader exited. Stop watching it or select would spin.
                self._close_pidfd()
                continue
            try:
                data = os.read(key.fd, _READ_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                data = b""  # treat a broken pipe like its end
            if data:
                key.data.feed(data)
            else:
                self._selector.unregister(key.fd)
                key.data.flush()

    def _close_pidfd(self) -> None:
        if self._pidfd is None:
            return
        pidfd, self._pidfd = self._pidfd, None
        # KeyError: never registered; ValueError: the selector is already closed.
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(pidfd)
        os.close(pidfd)


def _open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid`` where the platform has them (Linux 5.3+), else ``None``."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        return pidfd_open(pid)
    except OSError:
        return None  # old kernel, or seccomp forbids it: fall back to polling


def kill_orphans_by_environment(expected_env: dict[str, str]) -> bool:
    """SIGKILLs the process groups of every process on this host that has `expected_env`.

    For an attempt whose worker died before writing its pid (the first 50 ms of a step):
    without a pid to start from, this reads the environment of every process it may read
    (a few milliseconds for a few hundred processes; only a lost worker gets here). Returns
    whether a group was killed.
    """
    own_group = os.getpgid(0)
    groups = set()
    for process in psutil.process_iter():
        try:
            environment = process.environ()
            if all(environment.get(name) == value for name, value in expected_env.items()):
                groups.add(os.getpgid(process.pid))
        except (psutil.Error, ProcessLookupError):
            continue  # gone, a zombie, or not ours to read
    killed = False
    for group in groups - {own_group}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
            killed = True
    return killed


def kill_orphaned_group(pid: int, expected_env: dict[str, str]) -> bool:
    """SIGKILLs the process group led by `pid` if that process is the one we expect.

    A worker killed with SIGKILL leaves its step's processes running. Before the step is
    retried elsewhere, the reaper ends them, identifying the process by the environment we
    gave it (so a recycled pid is never hit). Returns whether a group was killed.
    """
    try:
        process = psutil.Process(pid)
        environment = process.environ()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    if any(environment.get(name) != value for name, value in expected_env.items()):
        return False
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True
