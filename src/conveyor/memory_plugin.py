"""The report side of the build memory: what a build teaches the next ones, and quarantine.

A pytest plugin beside the controller's. It watches the reports the controller replays (every
attempt, retries included), and at the end of a build it records, once per build id however
many machines report it: the flaky events (conveyor.flaky), the outcomes of this build of its
commit, and what the build cost besides its tests (for `conveyor plan`). It also applies the
quarantine: a quarantined test still runs and is reported as it ran; only the exit code leaves
its failures out, and only when nothing else failed (collection errors, unrelated tests, tests
without a result still fail the build). Its failures get a section of their own in the summary,
a `quarantined` property in --junitxml and a line in GitHub's step summary.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import ChainMap
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from conveyor import github
from conveyor.build_memory import MEMORY_ERRORS, BuildMemory, memory_store
from conveyor.capacity_plan import Setups, merge_setups
from conveyor.flaky import (
    DEFAULT_RELEASE_AFTER,
    FAILED,
    KIND_FLIP,
    PASSED,
    FlakyTest,
    TestOutcome,
    auto_quarantined,
    commit_record,
    events_of_build,
    quarantine_events,
    summarise,
)
from conveyor.quarantine import Entry, Quarantine
from conveyor.queue import Queue

PROPERTY = "quarantined"
EMPTY_DIFF = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # sha256(b"")
CI_COMMIT_VARIABLES = (
    "GITHUB_SHA",
    "CI_COMMIT_SHA",
    "BUILDKITE_COMMIT",
    "CIRCLE_SHA1",
    "GIT_COMMIT",
)


def commit_of(code: Any, env: Mapping[str, str]) -> str | None:
    """The commit a build tested: the workers' git commit (with a digest of local changes when
    there are any), else the CI's commit variable, else None (no flips can be told then)."""
    if isinstance(code, Mapping) and isinstance(code.get("commit"), str):
        changes = code.get("changes")
        dirty = isinstance(changes, str) and changes != EMPTY_DIFF
        return str(code["commit"]) + (f"+{str(changes)[:12]}" if dirty else "")
    for name in CI_COMMIT_VARIABLES:
        if env.get(name, "").strip():
            return env[name].strip()
    return None


@dataclass(frozen=True)
class MemorySettings:
    build: str
    history: str  # where the timing history lives: "cache", "redis:<suite>" or "off"
    local_workers: int  # 0: this process only reports; its timing says nothing of start-up
    entries: tuple[Entry, ...] = ()
    auto_threshold: float | None = None
    release_after: int = DEFAULT_RELEASE_AFTER
    started_at: float | None = None


@dataclass(slots=True)
class _Seen:
    """What the replayed reports say about one test that did anything but pass cleanly: failed
    a phase, was skipped or xfailed, or was retried. A test that passed at once is held only as
    its setup time (`BuildMemoryPlugin.passed`): at a million tests a record each would cost
    the controller hundreds of megabytes for nothing the summary needs."""

    failed_when: tuple[str, ...] = ()
    skipped: bool = False
    xfail: str | None = None
    reruns: int = 0
    message: str = ""
    setup_s: float = 0.0

    def outcome(self) -> TestOutcome:
        if "call" in self.failed_when:
            word = "failed"
        elif self.failed_when:
            word = "error"
        elif self.xfail:
            word = self.xfail
        else:
            word = "skipped" if self.skipped else "passed"
        return TestOutcome(word, self.reruns, self.message)

    def passed_cleanly(self) -> bool:
        return not (self.failed_when or self.skipped or self.xfail or self.reruns)


PASSED_OUTCOME = TestOutcome(PASSED)


class _Outcomes(Mapping[str, TestOutcome]):
    """Every test's outcome, read from the two records without copying them into a dict of a
    million entries at the build's end."""

    def __init__(self, seen: Mapping[str, _Seen], passed: Mapping[str, float]) -> None:
        self._seen, self._passed = seen, passed

    def __getitem__(self, test: str) -> TestOutcome:
        if test in self._seen:
            return self._seen[test].outcome()
        if test in self._passed:
            return PASSED_OUTCOME
        raise KeyError(test)

    def __iter__(self) -> Iterator[str]:
        yield from self._seen
        yield from (test for test in self._passed if test not in self._seen)

    def __len__(self) -> int:
        return len(self._seen) + sum(1 for test in self._passed if test not in self._seen)

    def __bool__(self) -> bool:  # without it, truth would count every test
        return bool(self._seen or self._passed)


@dataclass(slots=True)
class _Lane:
    """One worker's span and busy time, summed attempt by attempt as results are replayed."""

    start: float
    stop: float
    busy_s: float = 0.0
    attempts: int = 0


@dataclass(slots=True)
class _Attempt:
    """The timing of the attempt being replayed (logstart to logfinish)."""

    start: float | None = None
    stop: float | None = None
    duration_s: float = 0.0
    worker: str = ""


REPORT_MAX_AGE_S = 7 * 86400.0  # a build's keys expire after a day by default
CLOCK_SLACK_S = 600.0  # other machines' clocks may run ahead of this one's


def real_timing(report: Any) -> tuple[float, float, float] | None:
    """A report's start, stop and duration, or None where they cannot be the real clock's.
    A test that freezes time (freezegun, time-machine) can freeze pytest's clocks too: one
    such report made a build's recorded cost (and `conveyor plan`'s prediction) decades
    long. A start and stop within the last week, in order, and a duration that fits between
    them are kept."""
    start, stop = getattr(report, "start", None), getattr(report, "stop", None)
    duration = getattr(report, "duration", None)
    numbers = (int, float)
    if not (
        isinstance(start, numbers) and isinstance(stop, numbers) and isinstance(duration, numbers)
    ):
        return None
    now = time.time()
    if not now - REPORT_MAX_AGE_S <= start <= stop <= now + CLOCK_SLACK_S:
        return None
    if not 0 <= duration <= stop - start + 1.0:
        return None
    return float(start), float(stop), float(duration)


def _first_line(report: Any) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr or "")
    return (text.strip().splitlines() or [""])[0][:200]


# Tests that failed in this build and passed in an earlier build of the same code (a flip),
# set at the session's finish for the summary (the order hint, BuildSummary.hint_at_order).
NEWLY_FAILING = pytest.StashKey[list[str]]()


class BuildMemoryPlugin:
    def __init__(self, settings: MemorySettings, queue: Queue) -> None:
        self.settings = settings
        self.queue = queue
        self.seen: dict[str, _Seen] = {}  # tests that did more than pass at once
        self.passed: dict[str, float] = {}  # tests that passed at once -> their setup time
        self._lanes: dict[str, _Lane] = {}
        self._attempt = _Attempt()
        self.quarantine = Quarantine(settings.entries)
        self.released: list[str] = []
        self.notes: list[str] = []
        self.quarantined_reports = 0
        self._config: pytest.Config | None = None
        self._store: BuildMemory | None = None
        self._summary: Mapping[str, FlakyTest] = {}
        self._claimed = False
        self._with_history: bool | None = None  # whether timing history planned the build

    # -- before the build: who is quarantined ---------------------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_configure(self, config: pytest.Config) -> None:
        self._config = config
        self._store = memory_store(self.settings.history, config, self.queue)
        if self.settings.auto_threshold is None:
            return
        if self._store is None:
            self.notes.append("--quarantine-auto needs the timing history (it is off here).")
            return
        try:
            summary = summarise(self._store.flaky_events(), time.time())
        except MEMORY_ERRORS as exc:
            self.notes.append(f"flaky tests could not be read, none auto-quarantined: {exc}")
            return
        self._summary = summary
        auto = auto_quarantined(summary, self.settings.auto_threshold)
        self.quarantine = Quarantine(self.settings.entries, auto)

    # -- during the build: every attempt of every test ------------------------------------

    def pytest_runtest_logstart(self) -> None:
        self._attempt = _Attempt()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        seen = self.seen.get(report.nodeid)
        if seen is None:
            seen = self.seen[report.nodeid] = _Seen()
        if report.outcome == "rerun":  # type: ignore[comparison-overlap]
            seen.reruns += 1
            seen.message = seen.message or _first_line(report)
            return
        if report.failed:
            seen.failed_when += (report.when or "call",)
            seen.message = seen.message or _first_line(report)
        elif hasattr(report, "wasxfail"):
            seen.xfail = "xpassed" if report.passed else "xfailed"
        elif report.skipped:
            seen.skipped = True
        self._note_timing(seen, report)
        reason = self.quarantine.reason(report.nodeid)
        if reason is None:
            return
        if report.failed and not hasattr(report, "wasxfail"):
            self.quarantined_reports += 1  # what pytest's session counts as a failure
        if report.when == "teardown":
            # --junitxml writes the teardown report's properties into the test's <testcase>.
            report.user_properties = [*report.user_properties, (PROPERTY, reason)]

    def _note_timing(self, seen: _Seen, report: pytest.TestReport) -> None:
        attempt = self._attempt
        timing = real_timing(report)
        if timing is not None:
            start, stop, duration = timing
            attempt.start = start if attempt.start is None else min(attempt.start, start)
            attempt.stop = stop if attempt.stop is None else max(attempt.stop, stop)
            attempt.duration_s += duration
        if report.when == "setup":
            seen.setup_s = timing[2] if timing is not None else 0.0  # the final attempt's
        for name, value in report.user_properties:
            if name == "conveyor_worker":
                attempt.worker = sys.intern(str(value))  # one string per worker, not per test

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        """The attempt's timing goes into its worker's lane; a test that passed at once
        keeps only its setup time."""
        attempt, self._attempt = self._attempt, _Attempt()
        if attempt.start is not None and attempt.stop is not None:
            lane = self._lanes.get(attempt.worker)
            if lane is None:
                lane = self._lanes[attempt.worker] = _Lane(attempt.start, attempt.stop)
            lane.start, lane.stop = min(lane.start, attempt.start), max(lane.stop, attempt.stop)
            lane.busy_s += attempt.duration_s
            lane.attempts += 1
        seen = self.seen.get(nodeid)
        if seen is not None and seen.passed_cleanly():
            del self.seen[nodeid]
            self.passed[nodeid] = seen.setup_s

    # -- at the end: what to remember, and the exit code ----------------------------------

    def quarantined_failures(self) -> dict[str, str]:
        """test -> why it is quarantined, for the quarantined tests that failed."""
        found = {}
        for nodeid, seen in self.seen.items():
            reason = self.quarantine.reason(nodeid)
            if reason is not None and seen.outcome().verdict == FAILED:
                found[nodeid] = reason
        return found

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Generator[None, object, object]:
        result = yield
        # pytest derives the exit code from this count of failed reports once the loop is
        # over: leaving out the quarantined ones is all it takes, and every other failure
        # (collection errors, other tests, crashes) still counts. Plugins that fold the exit
        # code into their own at the session's finish (syrupy does) see the same verdict.
        session.testsfailed = max(0, session.testsfailed - self.quarantined_reports)
        return result

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # Before the terminal summary, which says what was recorded.
        interrupted = session.exitstatus in (
            pytest.ExitCode.INTERRUPTED,
            pytest.ExitCode.INTERNAL_ERROR,
        )
        if not interrupted and (self.seen or self.passed):
            self._remember()

    def _remember(self) -> None:
        store = self._store
        if store is None:
            return
        now = time.time()
        outcomes = _Outcomes(self.seen, self.passed)
        try:
            if not store.claim(self.settings.build):
                return  # another report of this build (another machine, a replay) recorded it
            manifest = self.queue.manifest()
            meta = manifest.meta if manifest is not None else {}
            self._with_history = meta.get("with_history")
            complete = manifest is not None and len(outcomes) >= manifest.total
            digest = manifest.digest if manifest is not None and complete else ""
            commit = commit_of(meta.get("code"), os.environ)
            earlier = store.commit_builds(commit) if commit else []
            build = self.settings.build
            events = events_of_build(outcomes, earlier, build=build, digest=digest, ts=now)
            if self._config is not None:
                self._config.stash[NEWLY_FAILING] = [
                    event["test"]
                    for event in events
                    if event["kind"] == KIND_FLIP and outcomes[event["test"]].verdict == FAILED
                ]
            if self.quarantine.auto:
                more, self.released = quarantine_events(
                    self.quarantine.auto,
                    outcomes,
                    self._summary,
                    release_after=self.settings.release_after,
                    build=build,
                    ts=now,
                )
                events += more
            store.add_flaky_events(events)
            if commit:
                store.add_commit_build(
                    commit, commit_record(outcomes, build=build, digest=digest, ts=now)
                )
            setups = ChainMap(
                {nodeid: seen.setup_s for nodeid, seen in self.seen.items()}, self.passed
            )
            store.save_setups(merge_setups(Setups.from_json(store.setups()), setups).as_json())
            self._claimed = True
        except MEMORY_ERRORS as exc:
            self.notes.append(f"the flaky tests' record was not saved: {exc}")

    def record_cost(self) -> None:
        """Called once the session is over and the workers are gone, just before the queue
        closes, so that the tail counts the report and the workers' exit: what the build cost
        besides its tests, for `conveyor plan`. Only by the report that recorded the build,
        and only where workers ran here."""
        cost = self._cost(time.time()) if self._claimed and self._store is not None else None
        if cost is None or self._store is None:
            return
        with contextlib.suppress(*MEMORY_ERRORS):  # a plan without this build's cost still works
            self._store.add_build(cost)

    def _cost(self, now: float) -> dict[str, Any] | None:
        """Start-up (process start to the first test), tail (last test to now) and the gap
        between tests on a worker that the tests' own durations do not count."""
        started = self.settings.started_at
        lanes = self._lanes.values()
        if not self.settings.local_workers or started is None or not lanes:
            return None
        first = min(lane.start for lane in lanes)
        last = max(lane.stop for lane in lanes)
        idle = sum(lane.stop - lane.start - lane.busy_s for lane in lanes)
        gaps = sum(lane.attempts - 1 for lane in lanes)
        return {
            "build": self.settings.build,
            "ts": now,
            "workers": self.settings.local_workers,
            # Every worker seen in the build, this machine's and others': the next build of
            # the suite plans for the fleet (conveyor.fleet_size).
            "fleet_workers": len(self._lanes),
            "tests": sum(lane.attempts for lane in lanes),
            "startup_s": round(max(0.0, first - started), 4),
            "tail_s": round(max(0.0, now - last), 4),
            "gap_s": round(max(0.0, idle / gaps), 6) if gaps else None,
            "testing_s": round(last - first, 4),
            "with_history": self._with_history,
        }

    # -- the summary ----------------------------------------------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        failures = self.quarantined_failures()
        if not (failures or self.released or self.notes or self.quarantine):
            return
        tr = terminalreporter
        tr.write_sep("=", "quarantine (these failures do not fail the build)", yellow=True)
        tests = _Outcomes(self.seen, self.passed)
        covered = [nodeid for nodeid in tests if self.quarantine.reason(nodeid) is not None]
        by_file = sum(1 for nodeid in covered if self.quarantine.entry_of(nodeid) is not None)
        passed = sum(1 for nodeid in covered if nodeid not in failures)
        tr.write_line(
            f"{by_file} test(s) quarantined by file, {len(covered) - by_file} automatically; "
            f"{len(failures)} failed, {passed} did not."
        )
        for entry in self.quarantine.entries:
            if tests and not any(entry.covers(nodeid) for nodeid in tests):
                tr.write_line(
                    f"conveyor: {entry.where}: {entry.test} matches no test that ran in this build "
                    "(renamed or removed? a typo?); the entry quarantines nothing.",
                    yellow=True,
                )
        for nodeid, reason in sorted(failures.items()):
            message = self.seen[nodeid].message
            tr.write_line(f"QUARANTINED {nodeid} - {message}", yellow=True)
            tr.write_line(f"    {reason}")
        for nodeid in self.released:
            tr.write_line(
                f"{nodeid} left quarantine: it passed {self.settings.release_after} builds in a "
                "row; its failures fail the build again.",
                green=True,
            )
        for note in self.notes:
            tr.write_line(f"conveyor: {note}", yellow=True)
        self._github(failures)

    def _github(self, failures: Mapping[str, str]) -> None:
        if not os.environ.get("GITHUB_STEP_SUMMARY") or not (failures or self.released):
            return
        lines = ["### Quarantined (their failures do not fail the build)", ""]
        lines += [f"- `{nodeid}` failed; quarantined: {why}" for nodeid, why in failures.items()]
        lines += [f"- `{nodeid}` left quarantine after clean builds" for nodeid in self.released]
        github.append_step_summary("\n".join(lines) + "\n\n")
