"""The automatic per-test timeout's watchdog: one Python thread for the worker's whole life.

Arming it per test costs a lock and a notify, where faulthandler's own watchdog starts and
joins an OS thread every time (measurable on suites of thousands of tiny tests). A Python thread
runs whenever the test waits in a call that releases the GIL (sleep, sockets, locks, pause,
subprocesses): nearly every hang. An explicit --test-timeout still uses faulthandler's C-level
watchdog, which also stops code that holds the GIL forever.
"""

from __future__ import annotations

import datetime
import faulthandler
import os
import threading
import time
from typing import IO


class Watchdog(threading.Thread):
    def __init__(self, dump_file: IO[str], exit_code: int = 1) -> None:
        super().__init__(name="conveyor-watchdog", daemon=True)
        self._file = dump_file
        self._exit_code = exit_code
        self._wakeup = threading.Condition()
        self._deadline: float | None = None
        self._seconds = 0.0
        self._header = ""

    def arm(self, seconds: float, header: str) -> None:
        with self._wakeup:
            self._deadline = time.monotonic() + seconds
            self._seconds, self._header = seconds, header
            self._wakeup.notify()

    def disarm(self) -> None:
        with self._wakeup:
            self._deadline = None

    def run(self) -> None:
        with self._wakeup:
            while True:
                if self._deadline is None:
                    self._wakeup.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    self._fire()
                self._wakeup.wait(remaining)

    def _fire(self) -> None:
        """Write what faulthandler's watchdog writes, then end the process like it does."""
        handle = self._file
        handle.seek(0)
        handle.truncate()
        handle.write(f"{self._header}\n")
        handle.write(f"Timeout ({datetime.timedelta(seconds=self._seconds)})!\n")
        handle.flush()
        faulthandler.dump_traceback(file=handle, all_threads=True)
        handle.flush()
        os._exit(self._exit_code)
