"""What tests print under `-s` (`--capture=no`, or `tee-sys`), shown as the build runs.

A plain run with `-s` writes a test's prints straight to the terminal, among the progress
characters. A worker has no terminal: its descriptors 1 and 2 go to its log file, so the
output was there and nowhere else. The controller now reads what each of this machine's
workers appended to its log since it last looked, and writes it to its own terminal as it
is, on a line of its own, between the results it reports. Output of workers on other
machines stays in their logs.

Every worker collects the whole suite, so what collection prints (a conftest's or a test
module's top level) would come once per worker: a worker marks the end of its collection in
its log (`mark_tests_start`) and only what follows the mark is shown, as under pytest-xdist.
The controller's own output (its conftests, loaded as it configures) reaches the terminal
directly. A worker's log also holds what conveyor says there after collection (a crash's
traceback); with `-s` that is shown as it comes too, besides in the summary.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from conveyor.compat import start_a_line
from conveyor.worker_exit import SESSION_END

# At most this much of one log is read at a time, so one chatty test cannot hold the loop.
READ_LIMIT = 1 << 20
TESTS_START = b"conveyor: this worker has collected; what its tests print follows\n"


def relays_output(config: pytest.Config) -> bool:
    """Whether this session's capture lets tests' output reach the terminal."""
    return config.getoption("capture", "fd") in ("no", "tee-sys")


def mark_tests_start(config: pytest.Config) -> None:
    """In a worker about to run tests: the line in its log after which the controller shows
    what it reads (descriptor 2 is the log; what Python buffered goes first)."""
    if not relays_output(config):
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.write(2, TESTS_START)


class SessionEndMark:
    """A worker's pytest plugin: as its session starts to end, after its tests, the line in
    its log after which comes what it writes as it ends (an unraisable exception's warning,
    an error as pytest unconfigures), shown once the workers have ended, as plain pytest
    shows it after its summary (`conveyor.cli`). First of the unconfigure hooks."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_unconfigure(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        with contextlib.suppress(OSError):
            os.write(2, SESSION_END)


class _Log:
    """How far one log has been read, and whether its marks were seen."""

    def __init__(self) -> None:
        self.read = 0
        self.started = False
        self.ended = False  # what follows the end mark is shown once the workers have ended
        self.before_mark = b""  # the end of what was read before the mark, in case it is split
        self.held = b""  # the end of what was read, if it may be the start of the end mark
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def shown(self, chunk: bytes) -> bytes:
        """The part of `chunk` (what the log gained) that is the tests' output."""
        if self.ended:
            return b""
        if not self.started:
            seen = self.before_mark + chunk
            at = seen.find(TESTS_START)
            if at < 0:
                self.before_mark = seen[-len(TESTS_START) :]
                return b""
            self.started, self.before_mark = True, b""
            chunk = seen[at + len(TESTS_START) :]
        seen = self.held + chunk
        at = seen.find(SESSION_END)
        if at >= 0:
            self.ended, self.held = True, b""
            return seen[:at]
        keep = _start_of(SESSION_END, seen)
        self.held = seen[len(seen) - keep :] if keep else b""
        return seen[: len(seen) - keep]


def _start_of(mark: bytes, data: bytes) -> int:
    """The length of the longest end of `data` that `mark` starts with (shorter than it)."""
    for length in range(min(len(mark) - 1, len(data)), 0, -1):
        if data.endswith(mark[:length]):
            return length
    return 0


class OutputRelay:
    """Reads each worker log from where it last stopped; a worker started again writes a log
    of its own (`gw0.2.log`), so each path is only ever appended to."""

    def __init__(self, logs: Callable[[], Iterable[Path]], write: Callable[[str], None]):
        self._logs = logs
        self._write = write
        self._seen: dict[Path, _Log] = {}

    @classmethod
    def for_session(
        cls, config: pytest.Config, logs: Callable[[], Iterable[Path]]
    ) -> OutputRelay | None:
        """The relay for a session run with `-s`, else None."""
        if not relays_output(config):
            return None
        reporter: Any = config.pluginmanager.get_plugin("terminalreporter")

        def write(text: str) -> None:
            if reporter is not None:
                start_a_line(reporter)
                reporter.write(text, flush=True)
            else:
                sys.stdout.write(text)
                sys.stdout.flush()

        return cls(logs, write)

    def relay(self) -> None:
        """Write what every log gained since the last call."""
        for path in self._logs():
            self._relay_one(path)

    def _relay_one(self, path: Path) -> None:
        log = self._seen.setdefault(path, _Log())
        try:
            with path.open("rb") as handle:
                handle.seek(log.read)
                chunk = handle.read(READ_LIMIT)
        except OSError:  # not written yet, or already gone with the run's folder
            return
        if not chunk:
            return
        log.read += len(chunk)
        text = log.decoder.decode(log.shown(chunk))
        if text:
            self._write(text)
