"""What went wrong outside the tests' own outcomes, collected during a build and shown in the
summary's "conveyor" section (a worker lost, a collection refused, tests without a result)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from conveyor.session_ending import SessionEnding
from conveyor.worker_exit import WorkerFailure

SHOWN = 20


@dataclass(frozen=True)
class SummaryEntry:
    """One count of the summary's last line that is no test's outcome: a test without a
    result, or an error of the build."""

    nodeid: str
    message: str = ""


@dataclass
class BuildProblems:
    refused: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    flaky: list[str] = field(default_factory=list)
    # How workers' pytest sessions ended (a usage error, pytest.exit(), KeyboardInterrupt), by
    # worker, in the order the build heard of them.
    endings: dict[str, SessionEnding] = field(default_factory=dict)
    left_shared_build: bool = False  # this machine was interrupted; the build goes on
    workers_ended_by_pytest: bool = False  # a usage error or pytest.exit(): not failures
    resumable: bool = True  # the queue outlives this command (an explicit --queue)
    stop_reason: str | None = None  # why the build was stopped, as the queue keeps it

    @property
    def session_ended(self) -> SessionEnding | None:
        """The first ending by a test or a hook (pytest.exit(), KeyboardInterrupt): it ends
        the build. Later ones came from tests that ran meanwhile elsewhere. A usage error ends
        only its own machine's run, before the build has a manifest."""
        return next((e for e in self.endings.values() if e.kind != "usage_error"), None)

    @property
    def fail_the_build(self) -> bool:
        """Problems that make a build whose reported tests all passed exit non-zero."""
        return bool(self.missing or self.refused or self.errors)

    def summary_entries(self, with_not_run: bool = True) -> dict[str, list[SummaryEntry]]:
        """What the summary's last line adds (`2 not run`, `1 conveyor error`), so that a
        build these problems fail never ends on pytest's green "N passed" line: entries of
        the terminal's `stats`, as plugins add theirs (pytest-rerunfailures' "rerun"). Tests
        that a stopped build left unrun count only `with_not_run`; those that should have a
        result and have none always do."""
        entries: dict[str, list[SummaryEntry]] = {}
        without_result = [*self.missing, *(self.not_run if with_not_run else [])]
        if without_result:
            entries["not run"] = [SummaryEntry(nodeid) for nodeid in without_result]
        errors = [*self.refused, *self.errors]
        if errors:
            noun = "conveyor error" if len(errors) == 1 else "conveyor errors"
            entries[noun] = [SummaryEntry("", message) for message in errors]
        return entries

    def write(
        self,
        tr: Any,
        failures: Sequence[WorkerFailure],
        reruns: Mapping[str, Sequence[Any]],
    ) -> None:
        """The flaky-tests section and the "conveyor" section of the terminal summary."""
        if self.flaky:
            tr.write_sep("=", "flaky tests (passed on a retry)", yellow=True)
            for nodeid in self.flaky:
                attempt = len(reruns.get(nodeid, [])) + 1
                tr.write_line(f"{shown(tr, nodeid)} passed on attempt {attempt}")
        # A session that failed as it ended is said after the report, once every worker has
        # ended (`conveyor.cli`), as plain pytest says it after its summary.
        outside = [
            f
            for f in failures
            if f.culprit is None
            and not f.refused
            and not f.at_session_end
            and not self.workers_ended_by_pytest
        ]
        listed = (self.refused, self.errors, self.lost, self.missing, self.not_run, self.duplicates)
        if not (any(listed) or outside):
            return
        tr.write_sep("=", "conveyor", yellow=True)
        for failure in outside:
            tr.write_line(f"worker {failure.worker} {failure.cause} outside any test.", red=True)
            for line in failure.output_tail.splitlines()[-10:]:
                tr.write_line(f"  {line}")
        for line in self.lost + self.duplicates:
            tr.write_line(line)
        for line in self.refused + self.errors:
            tr.write_line(line, red=True)
        self._write_without_result(tr)

    def _why_stopped(self) -> str:
        """-x and --maxfail stop a build as they stop plain pytest: resuming it is not what the
        user is after. Any other stop says how to resume."""
        reason = self.stop_reason or "interrupted"
        if reason.startswith(MAXFAIL_STOP):
            return f": {reason} (-x, --maxfail)"
        how = how_to_resume(self.resumable)
        return f" ({how})" if reason == "interrupted" else f" ({reason}; {how})"

    def _write_without_result(self, tr: Any) -> None:
        if self.left_shared_build:
            # Without a manifest yet (interrupted while starting) there is no count to give.
            count = f"{len(self.not_run)} test(s) have no result yet: " if self.not_run else ""
            tr.write_line(
                f"{count}this machine was interrupted and handed its tests back; the build "
                "goes on on the other machines (run the same command again to rejoin it).",
                yellow=True,
            )
            _list(tr, self.not_run)
        elif self.not_run:
            tr.write_line(
                f"{len(self.not_run)} test(s) have no result because the build was stopped"
                f"{self._why_stopped()}:",
                yellow=True,
            )
            _list(tr, self.not_run)
        if self.missing:
            tr.write_line(
                f"{len(self.missing)} test(s) have no result (every collected test must have "
                "exactly one):",
                red=True,
            )
            _list(tr, self.missing)


def shown(tr: Any, nodeid: str) -> str:
    """A test id as pytest's own summary writes it: relative to the folder the command ran
    in (node ids are relative to pytest's rootdir, which may be another). Config's own
    `cwd_relative_nodeid` takes a str before pytest 9.1 and a NodeId after."""
    config = getattr(tr, "config", None)
    if config is None:
        return nodeid
    here, root = config.invocation_params.dir, config.rootpath
    if here == root:
        return nodeid
    path, sep, rest = nodeid.partition("::")
    relative = os.path.relpath(root / path, here).replace(os.sep, "/")
    return f"{relative}{sep}{rest}"


def _list(tr: Any, nodeids: Sequence[str]) -> None:
    """The first SHOWN test ids, or every one under -v (as pytest's own lists grow with -v)."""
    verbose = int(getattr(tr, "verbosity", 0) or 0) > 0
    limit = len(nodeids) if verbose else SHOWN
    for nodeid in nodeids[:limit]:
        tr.write_line(f"  {shown(tr, nodeid)}")
    if len(nodeids) > limit:
        tr.write_line(f"  ... and {len(nodeids) - limit} more (-v lists them all)")


MAXFAIL_STOP = "stopping after "  # pytest's own reason for -x and --maxfail


def how_to_resume(resumable: bool) -> str:
    """How to run what a stopped build left: the same command, where its queue outlives it."""
    if resumable:
        return "the same command again resumes it and runs them"
    return (
        "the embedded queue was temporary: to resume a stopped build, run it with "
        "--queue sqlite:///path/queue.db --build ID"
    )
