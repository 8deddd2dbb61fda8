"""The hard timeout of one test in a pytest worker.

faulthandler's watchdog is a C thread: it fires even when the test holds the GIL or sleeps in
C, dumps every thread's stack to the timeout file and ends the process; the supervisor then
reports the test as timed out and starts a replacement. Without --test-timeout, every test gets
an automatic one (see conveyor.watchdog, cheap per test): from its timing history, or a long
fixed one for a test that history does not know, so a test that hangs on a first run does not
hold the build either.
"""

from __future__ import annotations

import contextlib
import faulthandler
import time
from collections.abc import Iterator, Mapping
from typing import TextIO

from conveyor.vocabulary import TIMEOUT_HEADER
from conveyor.watchdog import Watchdog

# Without --test-timeout, a test with timing history is stopped after this long: a hung test
# does not hold the build for hours, and a test whose time varies does not fail where plain
# pytest passes it (networkx's test_kcomponents.py::test_configuration builds a random graph:
# 0.1-1 s in most runs, 17 s in one; a 10 s base failed it).
AUTO_TIMEOUT_BASE_S = 60.0
AUTO_TIMEOUT_FACTOR = 10.0  # a loaded CI machine can run a test several times slower
# A test that timing history does not know (a first run, a new test) may be long: it is stopped
# only after this long, the automatic timeout of a test that usually takes 84 s. A single test
# running longer is rare; one that does fails with this message until --test-timeout says so.
UNKNOWN_TEST_TIMEOUT_S = 900.0


AUTOMATIC = (
    f"automatic, from timing history: {AUTO_TIMEOUT_BASE_S:g} s + {AUTO_TIMEOUT_FACTOR:g} x the "
    "test's usual time; --test-timeout SECONDS sets another, --test-timeout 0 none"
)
UNKNOWN_TEST = (
    "automatic for a test without timing history; --test-timeout SECONDS sets another, "
    "--test-timeout 0 none"
)


def automatic_timeouts(durations: Mapping[str, float]) -> dict[str, float]:
    return {unit: AUTO_TIMEOUT_BASE_S + AUTO_TIMEOUT_FACTOR * s for unit, s in durations.items()}


class HardTimeout:
    def __init__(self, timeout_file: str | None, fixed_s: float | None) -> None:
        """`fixed_s`: --test-timeout (None: automatic from history; 0: no timeout at all)."""
        self.fixed_s = fixed_s
        self.automatic: dict[str, float] = {}
        self._file: TextIO | None = (
            open(timeout_file, "w")  # noqa: SIM115 - faulthandler writes to it until exit
            if timeout_file and fixed_s != 0
            else None
        )
        self._watchdog: Watchdog | None = None
        self._fixed_deadline: float | None = None  # while --test-timeout's watchdog is armed

    def learn(self, durations: Mapping[str, float]) -> None:
        if self.fixed_s is None:
            self.automatic = automatic_timeouts(durations)

    def limit_for(self, unit: str) -> tuple[float, str] | None:
        """How long `unit` may run, and how its failure names that limit; None: no limit."""
        if self.fixed_s is not None:
            return (self.fixed_s, "--test-timeout") if self.fixed_s else None
        known = self.automatic.get(unit)
        if known is None:
            return UNKNOWN_TEST_TIMEOUT_S, UNKNOWN_TEST
        return known, AUTOMATIC

    @contextlib.contextmanager
    def around(self, unit: str) -> Iterator[None]:
        limit = self.limit_for(unit)
        if limit is None or self._file is None:
            yield
            return
        timeout, source = limit
        seconds = f"{timeout:.1f}".rstrip("0").rstrip(".")
        if self.fixed_s is None:
            if self._watchdog is None:
                self._watchdog = Watchdog(self._file)
                self._watchdog.start()
            self._watchdog.arm(timeout, f"{TIMEOUT_HEADER} {seconds} {source}")
            try:
                yield
            finally:
                self._watchdog.disarm()
            return
        handle = self._file
        handle.seek(0)
        handle.truncate()
        handle.write(f"{TIMEOUT_HEADER} {seconds} --test-timeout\n")
        handle.flush()
        faulthandler.dump_traceback_later(timeout, exit=True, file=handle)
        self._fixed_deadline = time.monotonic() + timeout
        try:
            yield
        finally:
            self._fixed_deadline = None
            faulthandler.cancel_dump_traceback_later()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Conveyor's own queue calls inside a test's protocol (the next lease, asked for at
        this test's teardown) do not count against the test's timeout: a queue slowed by a
        busy moment must not turn a passing test into a timed-out one."""
        if self._watchdog is not None:
            with self._watchdog.paused():
                yield
            return
        deadline = self._fixed_deadline
        if deadline is None or self._file is None:
            yield
            return
        faulthandler.cancel_dump_traceback_later()
        started = time.monotonic()
        try:
            yield
        finally:
            remaining = max(deadline - started, 0.001)
            self._fixed_deadline = time.monotonic() + remaining
            faulthandler.dump_traceback_later(remaining, exit=True, file=self._file)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
