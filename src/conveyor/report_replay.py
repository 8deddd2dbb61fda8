"""Replaying a build's results through pytest's own hooks, one test at a time as results
arrive, so the terminal, --junitxml, the cache and reporting plugins see what a plain run shows.

Every replayed test goes through one path (`_replay`): logstart, each report, logfinish.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import pytest

from conveyor.compat import (
    SLIM_FROM_TESTS,
    forget_subtest_lookups,
    junit_records_replay,
    junit_testcase_appender,
    live_log_replay,
    replay_collection_counts,
    shared_node_id,
    slim_passed_reports,
    terminal_output_swallowed,
)
from conveyor.junit_records import JunitRecordsReplay
from conveyor.live_log import LiveLogReplay
from conveyor.problems import BuildProblems
from conveyor.queue.protocol import (
    EVENT_DUPLICATE_REJECTED,
    EVENT_REQUEUED,
    EVENT_RESULT,
    EVENT_UNIT_CRASHED,
    Event,
)
from conveyor.reports import (
    Deselected,
    crash_reports,
    report_from_json,
    rerun_failure_element,
    warning_message,
)

# What a malformed result raises when its reports are rebuilt.
UNREADABLE = (KeyError, TypeError, ValueError, AssertionError)


class ReportedTests(AbstractSet[str]):
    """The tests with a final result: those with a duration, and those reported failed for
    taking their workers down. A live view, not a set of its own: at a million tests a set
    beside the durations costs the controller 32 MB."""

    def __init__(self, durations: Mapping[str, float], crashed: AbstractSet[str]) -> None:
        self._durations, self._crashed = durations, crashed

    def __contains__(self, test: object) -> bool:
        return test in self._durations or test in self._crashed

    def __iter__(self) -> Iterator[str]:
        yield from self._durations
        yield from (test for test in self._crashed if test not in self._durations)

    def __len__(self) -> int:
        return len(self._durations) + sum(1 for t in self._crashed if t not in self._durations)


@dataclass
class Ledger:
    """What has been replayed: each test's final result once, its duration, its reruns."""

    durations: dict[str, float] = field(default_factory=dict)  # every test with a result
    crashed: set[str] = field(default_factory=set)  # failed for crashing, with no duration
    reruns: dict[str, list[Any]] = field(default_factory=dict)  # failed attempts retried
    first_result_s: float | None = None  # since the controller started
    last_result_s: float | None = None
    by_machine: Counter[str] = field(default_factory=Counter)  # results by machine prefix

    def __post_init__(self) -> None:
        self.reported = ReportedTests(self.durations, self.crashed)


class ReportReplayer:
    def __init__(
        self,
        config: pytest.Config,
        problems: BuildProblems,
        known_test: Callable[[str], str | None],
        on_failure: Callable[[list[Any]], None],
        started_at: float,
    ) -> None:
        self.config = config
        self.problems = problems
        self.known_test = known_test  # the manifest's own string for a test id, or None
        self.on_failure = on_failure  # --show-failures-live
        self.ledger = Ledger()
        self.slim = False  # set for builds of SLIM_FROM_TESTS tests or more
        self._started_at = started_at  # when the controller started (for "first result after")
        self._junit: JunitRecordsReplay | None = None  # made at the first test that recorded
        self._live_log: LiveLogReplay | None = None  # made at the first test that logged live

    def handlers(self) -> dict[str, Callable[[Event], None]]:
        return {
            EVENT_RESULT: self.on_result,
            EVENT_REQUEUED: self.on_requeued,
            EVENT_UNIT_CRASHED: self.on_unit_crashed,
            EVENT_DUPLICATE_REJECTED: self.on_duplicate_rejected,
        }

    def replay_collection(self, session: pytest.Session, meta: dict[str, Any], total: int) -> None:
        """What the workers' collection reported: failed collectors, deselected and collected
        counts, then pytest's own end of collection (warnings: replay_collection_warnings)."""
        hook = self.config.hook
        for data in _list(meta.get("collect_reports")):
            hook.pytest_collectreport(report=self.report(data))
        deselected = int(meta.get("deselected", 0))
        if deselected:
            hook.pytest_deselected(items=[Deselected(i) for i in range(deselected)])
        session.testscollected = int(meta.get("selected", total))
        self.slim = total >= SLIM_FROM_TESTS
        collected = int(meta.get("collected", total))
        self.end_collection(session, collected, meta.get("lf_status"))

    def end_collection(
        self, session: pytest.Session, collected: int | None, lf_status: object = None
    ) -> None:
        """pytest's own end of collection ("collected N items" included), for the build's
        manifest, or for a collection that ended the session (a usage error, pytest.exit() in
        a hook), which pytest ends all the same before it reports the error."""
        replay_collection_counts(self.config, collected or 0, lf_status)
        session.items = []
        self.config.hook.pytest_collection_finish(session=session)

    def _replay(
        self,
        nodeid: str,
        location: tuple[Any, ...],
        reports: list[Any],
        live_log: object = None,
        captured: frozenset[int] = frozenset(),
    ) -> None:
        # The test's own id: a unit's name differs from it for a test id collected twice
        # (conveyor.unit_names).
        nodeid = getattr(reports[0], "nodeid", nodeid) if reports else nodeid
        hook = self.config.hook
        live = self._live_log_replay() if live_log else None
        hook.pytest_runtest_logstart(nodeid=nodeid, location=location)
        for index, report in enumerate(reports):
            if live is not None:
                live.before(report, live_log)
            if index in captured:
                # Logged in the worker while the test's output was captured: plain pytest's
                # terminal output for it went into the capture (a unittest subTest's).
                with terminal_output_swallowed(self.config):
                    hook.pytest_runtest_logreport(report=report)
            else:
                hook.pytest_runtest_logreport(report=report)
        hook.pytest_runtest_logfinish(nodeid=nodeid, location=location)

    def _live_log_replay(self) -> LiveLogReplay | None:
        if self._live_log is None:
            self._live_log = live_log_replay(self.config)
        return self._live_log

    def report(self, raw: dict[str, Any]) -> Any:
        """One serialised report (a test's or a collector's) as pytest's own object."""
        return report_from_json(self.config, raw)

    def _reports(self, raws: list[Any]) -> list[Any]:
        return [self.report(raw) for raw in raws]

    def _test_reports(
        self, nodeid: str, node_id: Any, location: tuple[Any, ...], raws: list[Any]
    ) -> list[Any]:
        """A test's reports, sharing one nodeid and one location between its phases (each
        decoded from JSON separately, they would hold copies: about a kilobyte a test that
        the controller keeps for the session)."""
        reports = []
        for raw in raws:
            if isinstance(raw, dict) and raw.get("nodeid") == nodeid:
                raw = {**raw, "nodeid": node_id}
            report = self.report(raw)
            if getattr(report, "location", None) == location:
                report.location = location
            reports.append(report)
        return reports

    def _accept(self, nodeid: str, collected: bool, event: Event) -> bool:
        """Accounting is by set: a result for a test nobody collected must not stand in for one
        that has no result, and only the first result of a test counts."""
        if nodeid in self.ledger.reported:
            return False
        if not collected or (event.unit is not None and event.unit != nodeid):
            self.problems.errors.append(
                f"a result for {nodeid!r} from worker {event.worker} was rejected: no worker "
                "of this build collected that test."
            )
            return False
        self.ledger.durations[nodeid] = 0.0  # until its reports are replayed
        self.ledger.by_machine[machine_of(event.worker or "")] += 1
        self.ledger.last_result_s = time.monotonic() - self._started_at
        if self.ledger.first_result_s is None:
            self.ledger.first_result_s = self.ledger.last_result_s
        return True

    def on_result(self, event: Event) -> None:
        data = event.data
        try:
            sent = str(data["nodeid"])
            known = self.known_test(sent)  # the manifest's own string: one copy of each id
            nodeid = known or sent
            if "cases" in data:
                location = _location(data["location"], None)
                reports = self._reports(data["reports"])
            else:
                node_id = shared_node_id(nodeid)
                location = _location(data["location"], node_id)
                reports = self._test_reports(nodeid, node_id, location, data["reports"])
        except UNREADABLE as exc:
            self.problems.errors.append(
                f"a result for {event.unit!r} from worker {event.worker} could not be read "
                f"({type(exc).__name__}: {exc}); the test is counted as not run."
            )
            return
        if not self._accept(nodeid, known is not None, event):
            return
        if "cases" in data:  # command mode: the cases of a unit, not the unit
            self.ledger.durations[nodeid] = float(data.get("duration") or 0)
            self._replay_cases(event, data["cases"])
        else:
            self._replay_test(event, nodeid, location, reports)
        for warning in data.get("warnings", []):
            self.replay_warning(warning)

    def _replay_test(
        self, event: Event, nodeid: str, location: tuple[Any, ...], reports: list[Any]
    ) -> None:
        earlier_attempts = self.ledger.reruns.get(nodeid, [])
        if earlier_attempts:
            self._attach_reruns_to_junit(reports[0], earlier_attempts)
            if not any(report.failed for report in reports):
                self.problems.flaky.append(nodeid)
        self.ledger.durations[nodeid] = sum(float(report.duration or 0) for report in reports)
        where_it_ran(reports[-1], event)
        if recorded := event.data.get("junit"):
            self._replay_junit_records(recorded, reports[0], event.worker or "")
        captured = _indexes(event.data.get("captured"))
        self._replay(nodeid, location, reports, event.data.get("live_log"), captured)
        self.on_failure(reports)
        forget_subtest_lookups(self.config, reports)
        if self.slim:
            slim_passed_reports(self.config, reports)

    def _replay_cases(self, event: Event, cases: list[Any]) -> None:
        """A unit that reported individual test cases (command mode reading JUnit XML)."""
        for case in cases:
            try:
                nodeid = str(case["nodeid"])
                reports = self._reports(case["reports"])
            except UNREADABLE:
                self.problems.errors.append(f"an unreadable test case of {event.unit!r}.")
                continue
            location = tuple(reports[0].location) if reports else (nodeid, None, nodeid)
            self._replay(nodeid, location, reports)

    def on_requeued(self, event: Event) -> None:
        """A failed attempt that went back for a retry: shown as a rerun (as
        pytest-rerunfailures shows one), never counted as a failure."""
        try:
            nodeid = str(event.data["nodeid"])
            location = tuple(event.data["location"])
            reports = self._reports(event.data["reports"])
        except UNREADABLE:
            self.problems.errors.append(f"an unreadable rerun of {event.unit!r} was ignored.")
            return
        shown = []
        for report in reports:
            shown.append(report)
            if report.failed:
                report.outcome = "rerun"
                self.ledger.reruns.setdefault(nodeid, []).append(report)
                break
        self._replay(nodeid, location, shown)

    def _replay_junit_records(self, recorded: object, report: Any, worker: str) -> None:
        """What the test recorded with record_xml_attribute and record_testsuite_property,
        into --junitxml's file (conveyor.junit_records)."""
        if self._junit is None:
            self._junit = junit_records_replay(self.config)
        if self._junit is not None:
            self._junit.replay(recorded, report, worker)

    def _attach_reruns_to_junit(self, report: Any, attempts: list[Any]) -> None:
        """<rerunFailure> elements inside the test's <testcase>, the form CI dashboards read
        (Maven Surefire's, also written for pytest-rerunfailures)."""
        append = junit_testcase_appender(self.config)
        if append is None:
            return
        for attempt in attempts:
            append(report, rerun_failure_element(attempt))

    def on_unit_crashed(self, event: Event) -> None:
        """A test that took its worker down too often: reported as failed, naming the cause."""
        unit = event.unit or "?"
        if unit in self.ledger.reported:
            return
        self.ledger.crashed.add(unit)
        reports = crash_reports(unit, event.worker, event.data)
        where_it_ran(reports[-1], event)
        self._replay(unit, reports[0].location, reports)

    def on_duplicate_rejected(self, event: Event) -> None:
        self.problems.duplicates.append(
            f"a late result for {event.unit} from worker {event.worker} (attempt "
            f"{event.data.get('attempt')}) was rejected: another attempt finished first."
        )

    def replay_collection_warnings(self, meta: dict[str, Any]) -> None:
        for data in _list(meta.get("collect_warnings")):
            self.replay_warning(data)

    def replay_warning(self, data: dict[str, Any]) -> None:
        self.config.hook.pytest_warning_recorded.call_historic(
            kwargs={
                "warning_message": warning_message(data),
                "when": data.get("when", "runtest"),
                "nodeid": data.get("nodeid", ""),
                "location": None,
            }
        )


# Line numbers above 256 are an int object each: one per distinct value instead.
_LINE_NUMBERS: dict[int, int] = {}


def machine_of(worker: str) -> str:
    """The machine part of a worker id: `ci-3/` of `ci-3/gw0` on a shared queue, else ''."""
    machine, slash, _ = worker.rpartition("/")
    return machine + slash


def where_it_ran(report: Any, event: Event) -> None:
    """--junitxml shows where and on which attempt each test ran, as <properties>: a test
    that passed or failed, and one that crashed its worker or timed out."""
    report.user_properties = [
        *report.user_properties,
        ("conveyor_worker", event.worker or ""),  # machine/gwN on a shared queue
        ("conveyor_attempt", event.data.get("attempt", 1)),
    ]


def _location(value: Any, node_id: Any) -> tuple[Any, ...]:
    """A result's (path, line, name) as the controller keeps it for the session: its path one
    string for all the tests of a file, its line number one object per value, and its name,
    when it is the test's own (a function outside a class, not parametrized), the string the
    parsed id (pytest 9's NodeId) already holds. About 90 bytes a test."""
    location = tuple(value)
    if len(location) != 3:
        return location
    path, line, name = location
    if isinstance(path, str):
        path = sys.intern(path)
    if type(line) is int:
        line = _LINE_NUMBERS.setdefault(line, line)
    names = getattr(node_id, "names", ())
    if names and names[-1] == name and getattr(node_id, "params", None) is None:
        name = names[-1]
    return (path, line, name)


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _indexes(value: object) -> frozenset[int]:
    """A list of report indexes as the worker sent it; anything else is none."""
    if not isinstance(value, list):
        return frozenset()
    return frozenset(index for index in value if isinstance(index, int))
