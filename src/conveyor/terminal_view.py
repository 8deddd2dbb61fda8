"""What the controller shows on the terminal while a build runs: the expected length from
timing history, a live status line in place of pytest's row of progress letters, and failures
as they happen (--show-failures-live)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import progress
from conveyor.compat import progress_letters_framed, progress_letters_hidden
from conveyor.errors import QueueError
from conveyor.history import history_store
from conveyor.ordered_suite import serial_notice
from conveyor.queue import Queue
from conveyor.queue.protocol import JSON
from conveyor.scheduling import estimate


class TerminalView:
    def __init__(self, config: pytest.Config, no_progress: bool, failures_live: bool) -> None:
        self.config = config
        self.no_progress = no_progress
        self.failures_live = failures_live
        self.live: progress.LiveProgress | None = None
        self.estimate_s: float | None = None

    @property
    def reporter(self) -> Any:
        return self.config.pluginmanager.get_plugin("terminalreporter")

    def announce_in_order(self, meta: JSON) -> None:
        """Why one worker runs the whole build (conveyor.ordered_suite): shown but with -qq, or
        a build slower than expected would give no sign why."""
        reason, reporter = meta.get("in_order"), self.reporter
        if isinstance(reason, str) and reporter is not None and self.config.get_verbosity() >= -1:
            reporter.write_line(serial_notice(reason), yellow=True)

    def announce_estimate(
        self, history: str, queue: Queue, units: list[str], workers: int, *, fleet: bool = False
    ) -> None:
        """The expected length of the build, from timing history, when it knows enough;
        `fleet`: `workers` are every machine's, not this one's alone."""
        store = history_store(history, self.config, queue)
        quiet = self.config.get_verbosity() < 0
        if store is None and history == "cache" and self.reporter is not None and not quiet:
            # Else a build that never gets faster with history would give no sign why.
            self.reporter.write_line(
                "conveyor: no timing history: pytest's cache is off (-p no:cacheprovider), so "
                "this build's durations are not kept to order the next one"
            )
        if store is None or self.reporter is None or not units:
            return
        try:
            known_durations = store.load()
        except (QueueError, OSError, ValueError):
            return
        known = sum(1 for unit in units if unit in known_durations)
        if not known:
            if not quiet:
                self.reporter.write_line(
                    f"conveyor: timing history knows none of the {len(units)} test(s) yet; "
                    "this build's durations are kept to order the next one"
                )
            return
        seconds = estimate(units, known_durations)
        longest = max(seconds.values())
        self.estimate_s = max(longest, sum(seconds.values()) / workers)
        self.reporter.write_line(
            f"conveyor: timing history knows {known} of {len(units)} tests; they should take "
            f"about {self.estimate_s:.1f} s with {workers} worker(s)"
            f"{' on all of its machines' if fleet else ''} (the longest test: {longest:.1f} s), "
            "start-up aside"
        )

    @contextlib.contextmanager
    def live_progress(self, total: int) -> Iterator[None]:
        """While the build runs on a terminal, a live status line stands in for pytest's row
        of progress letters (see conveyor.progress)."""
        reporter = self.reporter
        if reporter is None:
            yield
            return
        if not progress.wanted(self.config, self.no_progress):
            with progress_letters_framed(reporter) if total else contextlib.nullcontext():
                yield
            return
        try:
            with (
                progress.LiveProgress(total, self.estimate_s) as live,
                progress_letters_hidden(reporter, live.above()),
            ):
                self.live = live
                yield
        finally:
            self.live = None

    def show_progress(self, done: int, failed: int, alive: int) -> None:
        if self.live is not None:
            self.live.update(done=done, failed=failed, alive=alive)

    def announce_failure(self, reports: list[Any]) -> None:
        """--show-failures-live: a failure is shown when it happens, not only at the end."""
        failed = [r for r in reports if r.failed]
        if not failed or not self.failures_live:
            return
        report = failed[0]
        crash = getattr(report.longrepr, "reprcrash", None)
        detail = crash.message if crash is not None else str(report.longrepr or "")
        first = (detail.strip().splitlines() or [""])[0][:160]
        word = "ERROR" if report.when != "call" else "FAILED"
        line = f"{word} {report.nodeid} - {first}"
        if self.live is not None:
            self.live.note(line)
            return
        if self.reporter is not None:
            writer = self.config.get_terminal_writer()
            if writer.width_of_current_line:
                writer.line()  # leave the row of progress letters first
            self.reporter.write_line(line, red=True)
