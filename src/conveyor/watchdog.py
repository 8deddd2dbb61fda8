"""The automatic per-test timeout's watchdog: one Python thread for the worker's whole life.

Arming it per test is one attribute assignment: no lock, and no wake-up of the thread, which
looks at the deadline on its own at least every CHECK_EVERY_S (automatic timeouts are 60 s or
more, so one fires at most that late). faulthandler's own watchdog starts and joins an OS thread
every time, and a condition variable notified per test costs a thread switch per test: both are
measurable on suites of thousands of tiny tests. A Python thread runs whenever the test waits in
a call that releases the GIL (sleep, sockets, locks, pause, subprocesses): nearly every hang. An
explicit --test-timeout still uses faulthandler's C-level watchdog, which also stops code that
holds the GIL forever.

What this thread cannot see does not count, up to three timeouts: while the GIL is held
throughout (a full garbage collection walks every object, seconds in a worker that collected a
million tests) or the whole process is not scheduled, the deadline moves on. A stall is not a
hang, and counting it turned a test that passes at once into a timed-out one.
"""

from __future__ import annotations

import contextlib
import datetime
import faulthandler
import os
import threading
import time
from collections.abc import Iterator
from typing import IO, NamedTuple

# As they were at import: a test may patch `time.sleep` or `time.monotonic` while it runs (to
# skip a retry's delay, to move a clock), and this thread runs meanwhile.
_sleep = time.sleep
_monotonic = time.monotonic

CHECK_EVERY_S = 0.5
# A wake-up later than this past its time means the process was stalled, not the test slow.
STALL_SLACK_S = 0.1
# Stalls forgiven a test, in timeouts of its own: code that holds the GIL for long stretches is
# a hang all the same, stopped this much later.
STALL_CREDIT_TIMEOUTS = 3


class _Armed(NamedTuple):
    deadline: float  # time.monotonic(); moved on by pauses
    seconds: float
    header: str
    armed_at: float  # time.monotonic() when the test was armed; one test's, across pauses


class Watchdog(threading.Thread):
    def __init__(self, dump_file: IO[str], exit_code: int = 1) -> None:
        super().__init__(name="conveyor-watchdog", daemon=True)
        self._file = dump_file
        self._exit_code = exit_code
        self._armed: _Armed | None = None  # replaced whole, so the thread reads one test's

    def arm(self, seconds: float, header: str) -> None:
        now = _monotonic()
        self._armed = _Armed(now + seconds, seconds, header, now)

    def disarm(self) -> None:
        self._armed = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The armed test's clock stops while conveyor's own work runs inside its protocol;
        its deadline moves on by the time that took."""
        armed, self._armed = self._armed, None
        started = _monotonic()
        try:
            yield
        finally:
            if armed is not None:
                self._armed = armed._replace(deadline=armed.deadline + _monotonic() - started)

    def run(self) -> None:
        credited: float | None = None  # the test the stall credit belongs to (its armed_at)
        credit = 0.0
        asked = 0.0
        while True:
            slept_from = _monotonic()
            _sleep(asked)
            woke = _monotonic()
            armed = self._armed
            if armed is None:
                asked = CHECK_EVERY_S
                continue
            if armed.armed_at != credited:
                credited, credit = armed.armed_at, 0.0
            # Time this thread could not run (the GIL held throughout: a full garbage
            # collection of a million collected tests takes seconds) is not the test's; only
            # the part of it since the test was armed counts, up to STALL_CREDIT_TIMEOUTS.
            stall = woke - slept_from - asked - STALL_SLACK_S
            if stall > 0:
                credit += min(stall, max(0.0, woke - armed.armed_at))
                credit = min(credit, STALL_CREDIT_TIMEOUTS * armed.seconds)
            remaining = armed.deadline + credit - woke
            if remaining <= 0 and self._armed is armed:  # still the same test
                self._fire(armed)
            asked = min(max(remaining, 0.001), CHECK_EVERY_S)

    def _fire(self, armed: _Armed) -> None:
        """Write what faulthandler's watchdog writes, then end the process like it does."""
        handle = self._file
        handle.seek(0)
        handle.truncate()
        handle.write(f"{armed.header}\n")
        handle.write(f"Timeout ({datetime.timedelta(seconds=armed.seconds)})!\n")
        handle.flush()
        faulthandler.dump_traceback(file=handle, all_threads=True)
        handle.flush()
        os._exit(self._exit_code)
