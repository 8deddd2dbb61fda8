"""Controller mode: a pytest session that collects nothing itself and replays the build.

Every result in the build's event stream is turned back into pytest's own report objects and
sent through pytest's hooks, so the terminal summary, --junitxml, the cache (--lf) and any
reporting plugin see exactly what they would see in a plain run.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from conveyor import github, progress
from conveyor.compat import (
    junit_testcase_appender,
    progress_letters_hidden,
    replay_collection_counts,
)
from conveyor.errors import BuildStateLost, QueueError
from conveyor.history import history_store
from conveyor.problems import BuildProblems
from conveyor.queue import Queue
from conveyor.queue.protocol import (
    EVENT_DUPLICATE_REJECTED,
    EVENT_FINISHED,
    EVENT_REQUEUED,
    EVENT_RESULT,
    EVENT_RESUMED,
    EVENT_UNIT_CRASHED,
    EVENT_WORKER_INPUT,
    EVENT_WORKER_JOINED,
    EVENT_WORKER_LOST,
    EVENT_WORKER_OUTPUT,
    Event,
    Manifest,
)
from conveyor.reports import (
    Deselected,
    crash_report,
    report_from_json,
    rerun_failure_element,
    warning_message,
)
from conveyor.scheduling import estimate
from conveyor.supervisor import Supervisor
from conveyor.vocabulary import EVENT_WORKER_ERROR, EVENT_WORKER_REFUSED
from conveyor.xdist_compat import (
    ControllerNodes,
    adopt_protocol,
    benchmark_note,
    ensure_hookspecs,
    keep_xdist_out,
    present_as_xdist_controller,
)

POLL_MIN_S = 0.005
POLL_MAX_S = 0.02
MANIFEST_CHECK_S = 1.0
EVENTS_PAGE = 2000
OUTPUT_WAIT_S = 30.0  # how long the report waits for workers' output (coverage data, ...)
OTHERS_CHECKS, OTHERS_POLL_S = 20, 0.05  # look for another machine's lease for about 1 s


@dataclass
class ControllerSettings:
    """What the controller needs besides pytest's own config."""

    queue_url: str
    build: str
    workers: int
    start_timeout_s: float = 600.0
    stall_timeout_s: float = 1800.0
    history: str = "cache"
    timeline: str | None = None
    no_progress: bool = False
    failures_live: bool = False
    header: str = ""
    shared: bool = False  # other processes may work on this build (an explicit --queue)
    node: str = ""  # this machine's prefix of worker ids ("host-pid/") on a shared queue


class ControllerPlugin:
    """Runs the build's report side inside the user's pytest session."""

    def __init__(
        self,
        settings: ControllerSettings,
        queue: Queue,
        supervisor: Supervisor | None,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.supervisor = supervisor
        self.problems = BuildProblems()
        self.manifest: Manifest | None = None
        self.cursor = 0
        self.finished = False
        self.reported: set[str] = set()
        self.durations: dict[str, float] = {}
        self.estimate_s: float | None = None
        self.live: progress.LiveProgress | None = None
        self.first_result_s: float | None = None
        self._units: list[str] | None = None
        self._unit_set: frozenset[str] | None = None
        self._every_event: list[Event] | None = None
        self._started_at = time.monotonic()
        # nodeid -> failed attempts that went back to the queue (shown as reruns)
        self.reruns: dict[str, list[Any]] = {}
        self._config: pytest.Config | None = None
        self.nodes: ControllerNodes | None = None
        self._benchmark_note: str | None = None
        self._reporting_only = False  # no local worker left; other machines work on
        self._finished_at_start = False
        self._handlers: dict[str, Callable[[Event], None]] = {
            EVENT_RESULT: self._on_result,
            EVENT_UNIT_CRASHED: self._on_unit_crashed,
            EVENT_WORKER_REFUSED: self._on_worker_refused,
            EVENT_WORKER_ERROR: self._on_worker_error,
            EVENT_WORKER_LOST: self._on_worker_lost,
            EVENT_FINISHED: self._on_finished,
            EVENT_WORKER_JOINED: self._on_worker_joined,
            EVENT_WORKER_OUTPUT: self._on_worker_output,
            EVENT_RESUMED: self._on_resumed,
            EVENT_REQUEUED: self._on_requeued,
            EVENT_DUPLICATE_REJECTED: self._on_duplicate_rejected,
            "malformed": self._on_malformed,
        }

    # -- session setup --------------------------------------------------------------------

    def pytest_addhooks(self, pluginmanager: pytest.PytestPluginManager) -> None:
        adopt_protocol(pluginmanager)

    @pytest.hookimpl(wrapper=True)
    def pytest_load_initial_conftests(self, early_config: pytest.Config) -> Generator[None]:
        # Before any plugin looks: this session is the controller of a distributed run.
        present_as_xdist_controller(early_config)
        return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_cmdline_main(self, config: pytest.Config) -> Generator[None, object, object]:
        # -n/--dist from the project's addopts are conveyor's to honour, never a cue for
        # pytest-xdist to start a session of its own inside this one.
        keep_xdist_out(config)
        return (yield)

    @pytest.hookimpl(trylast=True)
    def pytest_configure(self, config: pytest.Config) -> None:
        self._config = config
        ensure_hookspecs(config.pluginmanager)  # xdist's hooks are called, installed or not
        self._benchmark_note = benchmark_note(config)
        self.nodes = ControllerNodes(
            config,
            source=self.settings.node + "controller" if self.settings.node else "controller",
            workers=self.settings.workers,
            build=self.settings.build,
        )
        self._finished_at_start = self.queue.status().finished
        if not self._finished_at_start:
            # Plugins' part of each worker's input (a random seed, where coverage goes),
            # published before the workers configure; they wait for it.
            data = self.nodes.worker_input(shared=self.settings.shared)
            self.queue.publish(EVENT_WORKER_INPUT, self.nodes.source, {"input": data})
        if config.getoption("usepdb", False):
            raise pytest.UsageError(
                "--pdb cannot debug tests that run in other processes; run the failing test "
                "with plain `pytest --pdb`, or use `conveyor run -n 0 --pdb` to run in-process."
            )
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            # Tests of different files finish interleaved; printing a file name at every
            # switch would bury the progress letters. Verbose lines still name each test.
            reporter.showfspath = False

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        return [self.settings.header] + ([self._benchmark_note] if self._benchmark_note else [])

    # -- collection happens in the workers ------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection(self, session: pytest.Session) -> bool:
        config = session.config
        try:
            manifest = self._wait_for_manifest()
        except QueueError as exc:
            self._stop_local_workers()
            pytest.exit(f"conveyor: {exc}", returncode=pytest.ExitCode.INTERNAL_ERROR)
        self.manifest = manifest
        meta = manifest.meta
        hook = config.hook
        for data in meta.get("collect_reports", []):
            hook.pytest_collectreport(report=self._report_from_json(data))
        for data in meta.get("collect_warnings", []):
            self._replay_warning(data)
        deselected = int(meta.get("deselected", 0))
        if deselected:
            hook.pytest_deselected(items=[Deselected(i) for i in range(deselected)])
        replay_collection_counts(
            config, int(meta.get("collected", manifest.total)), meta.get("lf_status")
        )
        session.items = []
        session.testscollected = int(meta.get("selected", manifest.total))
        hook.pytest_collection_finish(session=session)
        self._announce_estimate(config)
        return True

    def _announce_estimate(self, config: pytest.Config) -> None:
        """The expected length of the build, from timing history, when it knows enough."""
        store = history_store(self.settings.history, config, self.queue)
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if store is None or reporter is None or self.manifest is None or not self.manifest.total:
            return
        try:
            history = store.load()
        except (QueueError, OSError, ValueError):
            return
        units = self._manifest_units()
        known = sum(1 for unit in units if unit in history)
        if not known:
            return
        seconds = estimate(units, history)
        workers = max(1, self.settings.workers or len(self.queue.status().workers) or 1)
        longest = max(seconds.values())
        self.estimate_s = max(longest, sum(seconds.values()) / workers)
        reporter.write_line(
            f"conveyor: timing history knows {known} of {len(units)} tests; estimated "
            f"{self.estimate_s:.1f} s with {workers} worker(s) (the longest test: {longest:.1f} s)"
        )

    def _wait_for_manifest(self) -> Manifest:
        deadline = time.monotonic() + self.settings.start_timeout_s
        delay = POLL_MIN_S
        while True:
            manifest = self.queue.manifest()
            if manifest is not None:
                return manifest
            self._drain_events()
            if self.supervisor is not None and (
                self.supervisor.alive() == 0 or self.supervisor.too_many_failures()
            ):
                self._abort_without_workers()
            if time.monotonic() > deadline:
                pytest.exit(
                    f"conveyor: no worker finished collecting within "
                    f"{self.settings.start_timeout_s:.0f} s (queue {self.queue.display_url}).",
                    returncode=pytest.ExitCode.INTERNAL_ERROR,
                )
            time.sleep(delay)
            delay = min(POLL_MAX_S, delay * 2)

    def _abort_stalled(self) -> None:
        never_ran = sorted(set(self._manifest_units()) - self.reported)
        self.problems.missing = never_ran
        shown = "\n".join(f"  {nodeid}" for nodeid in never_ran[:20])
        more = f"\n  ... and {len(never_ran) - 20} more" if len(never_ran) > 20 else ""
        pytest.exit(
            f"conveyor: nothing happened in build {self.settings.build} for "
            f"{self.settings.stall_timeout_s:.0f} s while {len(never_ran)} test(s) have no "
            f"result; are any workers still running? (--stall-timeout)\n{shown}{more}",
            returncode=pytest.ExitCode.INTERNAL_ERROR,
        )

    def _abort_without_workers(self) -> None:
        assert self.supervisor is not None
        failures = self.supervisor.failures
        if self.supervisor.too_many_failures():
            lines = [
                f"conveyor: more than {self.supervisor.max_worker_failures} worker(s) failed "
                "outside any test (--max-worker-failures); the build was aborted."
            ]
            self.queue.stop("too many worker failures")
            self._stop_local_workers()
        else:
            lines = ["conveyor: every worker stopped before the build could finish."]
        lines += self.problems.refused
        for failure in failures[-3:]:
            lines.append(f"worker {failure.worker} {failure.cause}; its last output:")
            lines.append(failure.output_tail or "(no output)")
        pytest.exit("\n".join(lines), returncode=pytest.ExitCode.INTERNAL_ERROR)

    # -- the run loop: replay the build ---------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        if session.testsfailed and not session.config.option.continue_on_collection_errors:
            raise session.Interrupted(
                f"{session.testsfailed} error{'s' if session.testsfailed != 1 else ''} "
                "during collection"
            )
        try:
            with self._live_progress(session):
                self._follow_build(session)
        except QueueError as exc:  # the build lost, or the queue unusable mid-build
            self._stop_local_workers()
            pytest.exit(f"conveyor: {exc}", returncode=pytest.ExitCode.INTERNAL_ERROR)
        except KeyboardInterrupt:
            if self.settings.shared and self.supervisor is not None:
                # Other machines may be working on this build: it goes on without this one.
                # With nobody else holding a test, it is stopped (to be resumed) instead.
                self.supervisor.leave("this machine was interrupted; its tests go back")
                if self._others_are_working():
                    self.problems.left_shared_build = True
                else:
                    self.queue.stop("interrupted")
                self._drain_events()
            else:
                self.queue.stop("interrupted")
                self._let_running_tests_finish(session)
            self._note_not_run()
            raise
        if self.supervisor is not None and self.supervisor.wait_for_stragglers():
            # What a late worker says (a refusal, a rejected late result) belongs in this
            # report even though the build finished without it.
            self._drain_events()
        self._await_worker_outputs()
        self._account(session)
        self._record_history(session)
        if session.shouldfail:
            raise session.Failed(session.shouldfail)
        if session.shouldstop:
            raise session.Interrupted(session.shouldstop)
        return True

    def _others_are_working(self) -> bool:
        """Whether another machine holds a test of this build within about a second (a worker
        between two tests holds none for a moment)."""
        for _ in range(OTHERS_CHECKS):
            if self.queue.status().leased:
                return True
            time.sleep(OTHERS_POLL_S)
        return False

    def _check_same_build(self) -> None:
        """A queue that lost its state may have been re-populated by a late worker under the
        same build id; the results read so far then belong to a build that no longer exists."""
        if self.manifest is None:
            return
        current = self.queue.manifest()
        if current is None or current.meta.get("nonce") != self.manifest.meta.get("nonce"):
            raise BuildStateLost(
                f"build {self.settings.build!r} vanished from the queue {self.queue.display_url} "
                "while it was running"
                + (f" and was started again from scratch by {current.leader}" if current else "")
                + ": the queue lost its state (a restarted Redis without persistence, a flush, "
                "or expired keys). Start the build again."
            )

    def _let_running_tests_finish(self, session: pytest.Session) -> None:
        """First interrupt: workers finish and report the test they are running, then leave.
        A second interrupt stops them at once."""
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                "conveyor: stopping; running tests finish first (interrupt again to stop now)",
                yellow=True,
            )
        try:
            while self.supervisor is not None and self.supervisor.alive() > 0:
                self._drain_events()
                time.sleep(POLL_MAX_S)
        except KeyboardInterrupt:
            self._stop_local_workers()
        self._drain_events()

    def _check_started(self) -> None:
        """--start-timeout: a build in which no worker ever took a test is not waited on."""
        if self.reported or time.monotonic() - self._started_at < self.settings.start_timeout_s:
            return
        status = self.queue.status()
        if status.leased == 0 and status.done == 0 and not status.finished:
            pytest.exit(
                f"conveyor: no worker has taken a test of build {self.settings.build} within "
                f"{self.settings.start_timeout_s:.0f} s (--start-timeout); "
                f"{len(status.workers)} worker(s) joined. Are workers running with the same "
                f"--queue and --build?",
                returncode=pytest.ExitCode.INTERNAL_ERROR,
            )

    def _stop_local_workers(self) -> None:
        if self.supervisor is not None:
            self.supervisor.shutdown(terminate=True)

    @contextlib.contextmanager
    def _live_progress(self, session: pytest.Session) -> Iterator[None]:
        """While the build runs on a terminal, a live status line stands in for pytest's row
        of progress letters (see conveyor.progress)."""
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        writer = getattr(reporter, "_tw", None)
        if not progress.wanted(session.config, self.settings.no_progress) or writer is None:
            yield
            return
        try:
            with (
                progress_letters_hidden(reporter),
                progress.LiveProgress(session.testscollected, self.estimate_s) as live,
            ):
                self.live = live
                yield
        finally:
            self.live = None

    def _show_progress(self, session: pytest.Session) -> None:
        if self.live is not None:
            alive = self.supervisor.alive() if self.supervisor else len(self.queue.status().workers)
            self.live.update(done=len(self.reported), failed=session.testsfailed, alive=alive)

    def _announce_failure(self, reports: list[Any]) -> None:
        """--show-failures-live: a failure is shown when it happens, not only at the end."""
        failed = [r for r in reports if r.failed]
        if not failed or not self.settings.failures_live:
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
        config = self._require_config()
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            writer = config.get_terminal_writer()
            if writer.width_of_current_line:
                writer.line()  # leave the row of progress letters first
            reporter.write_line(line, red=True)

    def _follow_build(self, session: pytest.Session) -> None:
        delay = POLL_MIN_S
        stopped = False
        last_progress = last_check = time.monotonic()
        while not self.finished:
            if time.monotonic() - last_check > MANIFEST_CHECK_S:
                self._check_same_build()
                self._check_started()
                last_check = time.monotonic()
            if self._drain_events():
                delay = POLL_MIN_S
                last_progress = time.monotonic()
                self._show_progress(session)
            else:
                if (
                    self.supervisor is not None
                    and not self._reporting_only
                    and (self.supervisor.alive() == 0 or self.supervisor.too_many_failures())
                ):
                    self._drain_events()
                    if not self.finished and self.settings.shared and self._others_are_working():
                        # This machine cannot work (its workers were refused, say), but the
                        # build goes on elsewhere: report it whole when it is finished.
                        self._reporting_only = True
                    elif not self.finished:
                        self._abort_without_workers()
                if time.monotonic() - last_progress > self.settings.stall_timeout_s:
                    self._abort_stalled()
                time.sleep(delay)
                delay = min(POLL_MAX_S, delay * 2)
            reason = session.shouldfail or session.shouldstop
            if reason and not stopped:
                self.queue.stop(str(reason))
                stopped = True

    def _drain_events(self) -> int:
        seen = 0
        while True:
            page = self.queue.events(self.cursor, EVENTS_PAGE)
            for event in page:
                handler = self._handlers.get(event.kind)
                if handler is not None:
                    handler(event)
                self.cursor = event.seq
            seen += len(page)
            if len(page) < EVENTS_PAGE:
                return seen

    # -- event handlers -------------------------------------------------------------------

    def _on_result(self, event: Event) -> None:
        config = self._require_config()
        hook = config.hook
        data = event.data
        try:
            nodeid = str(data["nodeid"])
            location = tuple(data["location"])
            reports = [self._report_from_json(raw) for raw in data["reports"]]
        except (KeyError, TypeError, ValueError, AssertionError) as exc:
            self.problems.errors.append(
                f"a result for {event.unit!r} from worker {event.worker} could not be read "
                f"({type(exc).__name__}: {exc}); the test is counted as not run."
            )
            return
        if nodeid in self.reported:
            return
        if nodeid not in self._manifest_set() or (event.unit is not None and event.unit != nodeid):
            # Accounting is by set: a result for a test nobody collected must not stand in
            # for one that has no result.
            self.problems.errors.append(
                f"a result for {nodeid!r} from worker {event.worker} was rejected: no worker "
                "of this build collected that test."
            )
            return
        self.reported.add(nodeid)
        if self.first_result_s is None:
            self.first_result_s = time.monotonic() - self._started_at
        if "cases" in data:
            self.durations[nodeid] = float(data.get("duration") or 0)
            self._replay_cases(event, data["cases"])
            for warning in data.get("warnings", []):
                self._replay_warning(warning)
            return
        earlier_attempts = self.reruns.get(nodeid, [])
        if earlier_attempts:
            self._attach_reruns_to_junit(reports[0], earlier_attempts)
            if not any(report.failed for report in reports):
                self.problems.flaky.append(nodeid)
        self.durations[nodeid] = sum(float(report.duration or 0) for report in reports)
        # --junitxml shows where and on which attempt each test ran, as <properties>.
        reports[-1].user_properties = [
            *reports[-1].user_properties,
            ("conveyor_worker", event.worker or ""),  # machine/gwN on a shared queue
            ("conveyor_attempt", data.get("attempt", 1)),
        ]
        hook.pytest_runtest_logstart(nodeid=nodeid, location=location)
        for report in reports:
            hook.pytest_runtest_logreport(report=report)
        hook.pytest_runtest_logfinish(nodeid=nodeid, location=location)
        self._announce_failure(reports)
        for warning in data.get("warnings", []):
            self._replay_warning(warning)

    def _replay_cases(self, event: Event, cases: list[Any]) -> None:
        """A unit that reported individual test cases (command mode reading JUnit XML): the
        report lists the cases, not the unit."""
        hook = self._require_config().hook
        for case in cases:
            try:
                nodeid = str(case["nodeid"])
                reports = [self._report_from_json(raw) for raw in case["reports"]]
            except (KeyError, TypeError, ValueError, AssertionError):
                self.problems.errors.append(f"an unreadable test case of {event.unit!r}.")
                continue
            location = tuple(reports[0].location) if reports else (nodeid, None, nodeid)
            hook.pytest_runtest_logstart(nodeid=nodeid, location=location)
            for report in reports:
                hook.pytest_runtest_logreport(report=report)
            hook.pytest_runtest_logfinish(nodeid=nodeid, location=location)

    def _on_requeued(self, event: Event) -> None:
        """A failed attempt that went back for a retry: shown as a rerun (as
        pytest-rerunfailures shows one), never counted as a failure."""
        config = self._require_config()
        try:
            nodeid = str(event.data["nodeid"])
            location = tuple(event.data["location"])
            reports = [self._report_from_json(raw) for raw in event.data["reports"]]
        except (KeyError, TypeError, ValueError, AssertionError):
            self.problems.errors.append(f"an unreadable rerun of {event.unit!r} was ignored.")
            return
        hook = config.hook
        hook.pytest_runtest_logstart(nodeid=nodeid, location=location)
        for report in reports:
            if report.failed:
                report.outcome = "rerun"
                self.reruns.setdefault(nodeid, []).append(report)
                hook.pytest_runtest_logreport(report=report)
                break
            hook.pytest_runtest_logreport(report=report)
        hook.pytest_runtest_logfinish(nodeid=nodeid, location=location)

    @pytest.hookimpl(tryfirst=True)
    def pytest_report_teststatus(self, report: Any) -> tuple[str, str, Any] | None:
        if getattr(report, "outcome", None) == "rerun":
            return "rerun", "R", ("RERUN", {"yellow": True})
        return None

    def _attach_reruns_to_junit(self, report: Any, attempts: list[Any]) -> None:
        """<rerunFailure> elements inside the test's <testcase>, the form CI dashboards read
        (Maven Surefire's, also written for pytest-rerunfailures)."""
        append = junit_testcase_appender(self._require_config())
        if append is None:
            return
        for attempt in attempts:
            append(report, rerun_failure_element(attempt))

    def _on_duplicate_rejected(self, event: Event) -> None:
        self.problems.duplicates.append(
            f"a late result for {event.unit} from worker {event.worker} (attempt "
            f"{event.data.get('attempt')}) was rejected: another attempt finished first."
        )

    def _report_from_json(self, raw: dict[str, Any]) -> Any:
        return report_from_json(self._require_config(), raw)

    def _on_unit_crashed(self, event: Event) -> None:
        """A test that took its worker down too often: reported as failed, naming the cause."""
        unit = event.unit or "?"
        if unit in self.reported:
            return
        self.reported.add(unit)
        report = crash_report(unit, event.worker, event.data)
        hook = self._require_config().hook
        hook.pytest_runtest_logstart(nodeid=unit, location=report.location)
        hook.pytest_runtest_logreport(report=report)
        hook.pytest_runtest_logfinish(nodeid=unit, location=report.location)

    def _await_worker_outputs(self) -> None:
        """Plugins read each worker's output (coverage data, ...) before the summary: wait
        (bounded) for every worker that joined to send it, to leave, or to be lost."""
        if self.nodes is None or not self.nodes.wants_output():
            return
        # A build that had finished before this controller started (a report of it, a
        # replay): whatever its workers sent is in the stream already; nothing more comes.
        deadline = time.monotonic() + (0.0 if self._finished_at_start else OUTPUT_WAIT_S)
        while self.nodes.awaiting() and time.monotonic() < deadline:
            if self.supervisor is not None and self.supervisor.alive() == 0:
                self._drain_events()
                if self.settings.node == "":
                    break  # every worker is local, and all have said what they will say
            time.sleep(POLL_MAX_S)
            self._drain_events()
        for worker in sorted(self.nodes.awaiting()):
            self.nodes.lost(worker, "the worker sent no output before the report")

    def _on_worker_joined(self, event: Event) -> None:
        if self.nodes is not None and event.worker:
            self.nodes.joined(event.worker)

    def _on_worker_output(self, event: Event) -> None:
        if self.nodes is not None and event.worker:
            self.nodes.output(event.worker, event.data)

    def _on_worker_refused(self, event: Event) -> None:
        self.problems.refused.append(str(event.data.get("message", "a worker was refused")))

    def _on_worker_error(self, event: Event) -> None:
        self.problems.errors.append(str(event.data.get("message", "a worker failed")))

    def _on_worker_lost(self, event: Event) -> None:
        cause = event.data.get("cause", {})
        requeued = event.data.get("requeued", [])
        if self.nodes is not None and event.worker:
            # Down either way: it will send no output (a machine that left included).
            self.nodes.lost(event.worker, cause.get("reason", "the worker was lost"))
        if cause.get("returncode") is None:
            return  # an orderly hand-back of unstarted units, not a loss
        self.problems.lost.append(
            f"{cause.get('reason', 'a worker was lost')}"
            + (f" while running {cause['culprit']}" if cause.get("culprit") else "")
            + f"; {len(requeued)} test(s) went back to the queue."
            + (f" Its log: {cause['log']}" if cause.get("log") else "")
        )

    def _on_finished(self, event: Event) -> None:
        self.finished = True

    def _on_resumed(self, event: Event) -> None:
        """A stopped build run again: the stream goes on past its earlier finish."""
        self.finished = False

    def _on_malformed(self, event: Event) -> None:
        self.problems.errors.append(
            f"the queue holds an unreadable event #{event.seq}: {event.data.get('raw', '')!r}"
        )

    def _replay_warning(self, data: dict[str, Any]) -> None:
        self._require_config().hook.pytest_warning_recorded.call_historic(
            kwargs={
                "warning_message": warning_message(data),
                "when": data.get("when", "runtest"),
                "nodeid": data.get("nodeid", ""),
                "location": None,
            }
        )

    def _require_config(self) -> pytest.Config:
        assert self._config is not None
        return self._config

    # -- accounting and summary -----------------------------------------------------------

    def _account(self, session: pytest.Session) -> None:
        """Every selected test has exactly one final outcome, or the build says which not."""
        if self.manifest is None:
            return
        self._sort_stats_in_collection_order(session)
        status = self.queue.status()
        if status.stop_reason is not None:
            self._note_not_run()
            return
        self.problems.missing = sorted(self._manifest_set() - self.reported)

    def _record_history(self, session: pytest.Session) -> None:
        """Durations of this build feed the order of the next one."""
        store = history_store(self.settings.history, session.config, self.queue)
        if store is None or not self.durations:
            return
        try:
            store.record(self.durations)
        except (QueueError, OSError, ValueError) as exc:
            self.problems.lost.append(f"timing history was not saved: {exc}")

    def _note_not_run(self) -> None:
        if self.manifest is not None:
            self.problems.not_run = [u for u in self._manifest_units() if u not in self.reported]

    def _sort_stats_in_collection_order(self, session: pytest.Session) -> None:
        """Results arrive in completion order; the summary lists them as plain pytest does."""
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        position = self._collection_positions()
        for reports in reporter.stats.values():
            reports.sort(key=lambda report: position.get(getattr(report, "nodeid", ""), -1))

    def _collection_positions(self) -> dict[str, int]:
        """unit -> its place in the collection (the manifest lists the serving order)."""
        units = self._manifest_units()
        ranks = self.manifest.meta.get("collection_order") if self.manifest else None
        if not isinstance(ranks, list) or len(ranks) != len(units):
            ranks = list(range(len(units)))
        return dict(zip(units, ranks, strict=True))

    def _github_summary(self, terminalreporter: Any) -> None:
        if not os.environ.get("GITHUB_STEP_SUMMARY"):
            return
        figures: list[tuple[str, str]] = []
        try:
            from conveyor.timeline import figures as timeline_figures

            found = timeline_figures(self._all_events(), self.settings.workers or None)
            figures = [
                ("wall time", f"{found.wall_s:.1f} s"),
                ("lower bound", f"{found.lower_bound_s:.1f} s"),
                ("first result after", f"{self.first_result_s or 0:.2f} s"),
            ]
        except Exception:  # the summary must never fail a build
            figures = []
        text = github.render(
            terminalreporter.stats,
            title=f"conveyor build {self.settings.build}",
            flaky=self.problems.flaky,
            durations=self.durations,
            figures=figures,
            env=os.environ,
        )
        github.append_step_summary(text)

    def _all_events(self) -> list[Event]:
        """The whole stream, read once at the end for the timeline and the GitHub summary."""
        if self._every_event is None:
            events, cursor = [], 0
            while page := self.queue.events(cursor, EVENTS_PAGE):
                events.extend(page)
                cursor = page[-1].seq
            self._every_event = events
        return self._every_event

    def _manifest_set(self) -> frozenset[str]:
        if self._unit_set is None:
            self._unit_set = frozenset(self._manifest_units())
        return self._unit_set

    def _manifest_units(self) -> list[str]:
        """The build's units in published order; the manifest never changes, so it is read
        once (at 100,000 tests the end of a build needs it several times)."""
        if self._units is None:
            self._units = self.queue.units()
        return self._units

    def _write_timeline(self, terminalreporter: Any) -> None:
        if not self.settings.timeline:
            return
        from conveyor.timeline_page import write_html

        found = write_html(
            self.settings.timeline,
            self._all_events(),
            title=f"conveyor build {self.settings.build}",
            workers=self.settings.workers or None,
        )
        terminalreporter.write_line(
            f"conveyor: timeline written to {self.settings.timeline} (wall {found.wall_s:.1f} s, "
            f"lower bound {found.lower_bound_s:.1f} s)"
        )

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        self._github_summary(terminalreporter)
        self._write_timeline(terminalreporter)
        if self.estimate_s is not None and self.finished:
            took = time.monotonic() - self._started_at
            first = (
                f"; first result after {self.first_result_s:.2f} s" if self.first_result_s else ""
            )
            terminalreporter.write_line(
                f"conveyor: estimated {self.estimate_s:.1f} s of testing, the build took "
                f"{took:.1f} s (start-up included{first})"
            )
        failures = self.supervisor.failures if self.supervisor else []
        self.problems.write(terminalreporter, failures, self.reruns)

    @pytest.hookimpl(wrapper=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> Any:
        passing = (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
        if self.problems.fail_the_build and session.exitstatus in passing:
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
        elif self.problems.not_run and session.exitstatus in passing:
            # A build with tests that never ran is never green (a stopped build replayed, a
            # build another machine's interrupt stopped): run it again to resume it.
            session.exitstatus = pytest.ExitCode.INTERRUPTED
        try:
            return (yield)
        finally:
            # Workers finish their own teardown while the summary is printed.
            if self.supervisor is not None:
                self.supervisor.shutdown()
