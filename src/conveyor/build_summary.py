"""The end of a build on the controller's side: account for every test, save timing history,
and write the summary parts conveyor adds (GitHub step summary, timeline, the estimate, the
"conveyor" section)."""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import github
from conveyor.ci import machine_of
from conveyor.compat import sort_junit_in_collection_order
from conveyor.errors import QueueError
from conveyor.history import history_store
from conveyor.manifest_view import ManifestView
from conveyor.memory_plugin import NEWLY_FAILING
from conveyor.problems import BuildProblems, shown
from conveyor.queue import Queue
from conveyor.queue.protocol import Event
from conveyor.report_replay import Ledger
from conveyor.supervisor import Supervisor

SHOWN_NEWLY_FAILING = 5  # named in the order hint; the rest counted


class BuildSummary:
    def __init__(
        self,
        queue: Queue,
        problems: BuildProblems,
        ledger: Ledger,
        all_events: Callable[[], list[Event]],
        title: str,
        workers: int,
        node: str = "",
    ) -> None:
        self.queue = queue
        self.problems = problems
        self.ledger = ledger
        self._read_all_events = all_events
        self._events: list[Event] | None = None
        self.title = title
        self.workers = workers
        self.node = node  # this machine's prefix of its workers' ids on a shared queue

    def all_events(self) -> list[Event]:
        """The whole stream, read once at the end for the timeline and the GitHub summary."""
        if self._events is None:
            self._events = self._read_all_events()
        return self._events

    # -- accounting -------------------------------------------------------------------------

    def account(self, session: pytest.Session, manifest: ManifestView | None) -> None:
        """Every selected test has exactly one final outcome, or the build says which not."""
        if manifest is None:
            return
        sort_stats_in_collection_order(session, manifest)
        stop_reason = self.queue.status().stop_reason
        if stop_reason is not None:
            self.problems.stop_reason = stop_reason
            self.note_not_run(manifest)
            return
        self.problems.missing = sorted(manifest.unit_ids.keys() - self.ledger.reported)

    def note_not_run(self, manifest: ManifestView | None) -> None:
        if manifest is not None:
            self.problems.not_run = manifest.without_result(self.ledger.reported)

    def record_history(self, history: str, config: pytest.Config) -> None:
        """Durations of this build feed the order of the next one."""
        store = history_store(history, config, self.queue)
        if store is None or not self.ledger.durations:
            return
        try:
            store.record(self.ledger.durations)
        except (QueueError, OSError, ValueError) as exc:
            self.problems.lost.append(f"timing history was not saved: {exc}")

    # -- the terminal summary ---------------------------------------------------------------

    def write(
        self,
        terminalreporter: Any,
        timeline: str | None,
        estimate_s: float | None,
        finished: bool,
        started_at: float,
        supervisor: Supervisor | None,
    ) -> None:
        self._github_summary(terminalreporter)
        if timeline:
            self._write_timeline(terminalreporter, timeline)
        first, last = self.ledger.first_result_s, self.ledger.last_result_s
        if finished and first is not None and last is not None:
            took = time.monotonic() - started_at
            # The estimate is of the tests alone: set beside the span of the results, not
            # beside the whole build, which adds start-up and end. pytest's own "in N s"
            # below counts from its session's start, which comes after the workers' start:
            # say which is which, or the numbers look contradictory.
            estimated = (
                f" (the tests were estimated at {estimate_s:.1f} s)"
                if estimate_s is not None
                else ""
            )
            terminalreporter.write_line(
                f"conveyor: the build took {took:.2f} s from the command's start; results came "
                f"from {first:.2f} s to {last:.2f} s{estimated}; pytest's time below starts "
                "with its session"
            )
        if self.node and supervisor is not None:
            self._write_machine_share(terminalreporter)
        failures = supervisor.failures if supervisor else []
        self.problems.write(terminalreporter, failures, self.ledger.reruns)

    def hint_at_order(self, terminalreporter: Any, queue_url: str, build: str, how: str) -> None:
        """A test that passed in an earlier build of the same code and fails in this one,
        which was served out of collection order (slowest first), may pass under plain
        pytest, which runs it after what comes before it in the files: say so, naming it,
        and how to find the test it depends on, rather than leave a build that was green and
        is red on the same code without a word. Failures with no such record (a new failure,
        one that failed before too) get no hint: it would follow every red build."""
        config = getattr(terminalreporter, "config", None)
        newly_failing = config.stash.get(NEWLY_FAILING, []) if config is not None else []
        if not newly_failing:
            return
        if self.problems.resumable:
            # The one test named, or a placeholder for one of them.
            failing = (
                shlex.quote(shown(terminalreporter, newly_failing[0]))
                if len(newly_failing) == 1
                else "TEST_ID"
            )
            find = (
                f"`conveyor bisect --queue {queue_url} --build {build} --failing {failing}` "
                "finds the test it depends on"
            )
        else:
            find = (
                "run the build with --queue sqlite:///path/queue.db --build ID and `conveyor "
                "bisect` finds the test it depends on"
            )
        named = ", ".join(
            shown(terminalreporter, nodeid)
            for nodeid in sorted(newly_failing)[:SHOWN_NEWLY_FAILING]
        )
        more = len(newly_failing) - SHOWN_NEWLY_FAILING
        terminalreporter.write_line(
            f"conveyor: {len(newly_failing)} test(s) passed in an earlier build of this same "
            f"code and failed in this one, which ran its tests out of collection order{how}: "
            f"{named}{f' and {more} more' if more > 0 else ''}. Such a test depends on what ran "
            f"before it in its worker ({find}; --order collected keeps collection order), on "
            "what another worker did meanwhile (a file, port or database they share; -n 1 "
            "rules that out), or is flaky (`conveyor flaky`).",
            yellow=True,
        )

    def _write_machine_share(self, terminalreporter: Any) -> None:
        """Every machine of a shared build reports the whole build: which part of it this one
        ran is worth a line (a machine that ran nothing is worth knowing about)."""
        by_machine = self.ledger.by_machine
        total = sum(by_machine.values())
        if not total:
            return
        here = by_machine.get(self.node, 0)
        others = [machine for machine in by_machine if machine != self.node]
        # A node of this machine's name is another process here (an earlier run of a build
        # resumed after Ctrl-C, or a `conveyor worker` beside this one), not another machine.
        name = machine_of(self.node)
        here_too = sum(1 for machine in others if machine_of(machine) == name)
        parts = []
        if len(others) > here_too:
            count = len(others) - here_too
            parts.append(f"{count} other machine{'s' if count != 1 else ''}")
        if here_too:
            parts.append(f"{here_too} other process{'es' if here_too != 1 else ''} on this machine")
        elsewhere = f" ({' and '.join(parts)} ran the rest)"
        # Beside other processes of this machine, what this one ran is this process's part.
        who = "this process" if here_too else "this machine"
        terminalreporter.write_line(
            f"conveyor: {who} ({self.node.rstrip('/')}) ran {here} of the {total} "
            f"test(s) with a result{elsewhere if others else ''}"
        )

    def _github_summary(self, terminalreporter: Any) -> None:
        if not os.environ.get("GITHUB_STEP_SUMMARY"):
            return
        figures: list[tuple[str, str]] = []
        try:
            from conveyor.timeline import figures as timeline_figures

            found = timeline_figures(self.all_events(), self.workers or None)
            figures = [
                ("wall time", f"{found.wall_s:.1f} s"),
                ("lower bound", f"{found.lower_bound_s:.1f} s"),
                ("first result after", f"{self.ledger.first_result_s or 0:.2f} s"),
            ]
        except Exception:  # the summary must never fail a build
            figures = []
        text = github.render(
            terminalreporter.stats,
            title=self.title,
            flaky=self.problems.flaky,
            durations=self.ledger.durations,
            figures=figures,
            env=os.environ,
        )
        github.append_step_summary(text)

    def _write_timeline(self, terminalreporter: Any, path: str) -> None:
        from conveyor.timeline_page import write_html

        found = write_html(path, self.all_events(), title=self.title, workers=self.workers or None)
        terminalreporter.write_line(
            f"conveyor: timeline written to {path} (wall {found.wall_s:.1f} s, "
            f"lower bound {found.lower_bound_s:.1f} s)"
        )


def sort_stats_in_collection_order(session: pytest.Session, manifest: ManifestView) -> None:
    """Results arrive in completion order; the summary and --junitxml list them as plain
    pytest does."""
    position = manifest.collection_positions()
    sort_junit_in_collection_order(session.config, position)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    for reports in reporter.stats.values():
        reports.sort(key=lambda report: position.get(getattr(report, "nodeid", ""), -1))
