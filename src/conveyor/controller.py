"""Controller mode: a pytest session that collects nothing itself and replays the build.

Every result in the build's event stream is turned back into pytest's own report objects and
sent through pytest's hooks, so the terminal summary, --junitxml, the cache (--lf) and any
reporting plugin see exactly what they would see in a plain run. The work is done by
collaborators; this class wires them to pytest's hooks:

- `BuildFollower` reads the queue (manifest, event stream, start/stall/lost checks);
- `ReportReplayer` turns results into pytest's hook calls;
- `TerminalView` shows the estimate, live progress and live failures;
- `BuildSummary` accounts for every test and writes what conveyor adds to the summary.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from conveyor import interrupts
from conveyor.build_follower import BuildFollower, FollowSettings, interrupted_while_starting
from conveyor.build_summary import BuildSummary, sort_stats_in_collection_order
from conveyor.compat import (
    announce_collecting,
    log_file_emptied_for_the_build,
    recount_summary_line,
    remember_collected,
    uncaptured,
)
from conveyor.errors import BuildAborted, QueueError, SessionEnded
from conveyor.manifest_view import ManifestView
from conveyor.output_relay import OutputRelay
from conveyor.problems import BuildProblems
from conveyor.queue import Queue
from conveyor.queue.protocol import (
    EVENT_FINISHED,
    EVENT_RESUMED,
    EVENT_WORKER_INPUT,
    Event,
)
from conveyor.report_replay import ReportReplayer
from conveyor.supervisor import Supervisor
from conveyor.terminal_view import TerminalView
from conveyor.worker_events import WorkerEvents
from conveyor.worker_tmp import BUILD_FOLDER_KEY, build_folder, removes_build_folder
from conveyor.xdist_compat import (
    ControllerNodes,
    adopt_protocol,
    benchmark_note,
    ensure_hookspecs,
    keep_xdist_out,
    one_random_seed_per_build,
    present_as_xdist_controller,
)

_Part = TypeVar("_Part")


def _monotonic_at(epoch: float | None) -> float:
    """The monotonic clock's reading at an earlier wall-clock time (now, without one)."""
    now = time.monotonic()
    return now if epoch is None else now - max(0.0, time.time() - epoch)


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
    # When the command started (epoch seconds): the build's start-up and its first result
    # are measured from there, the workers' spawn and the controller's imports included.
    started_at: float | None = None


# pytest's stepwise options (--sw-skip and --sw-reset imply --sw).
STEPWISE_OPTIONS = ("stepwise", "stepwise_skip", "stepwise_reset")


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
        self.problems = BuildProblems(resumable=settings.shared)
        self.manifest: ManifestView | None = None
        self.nodes: ControllerNodes | None = None
        self._started_at = _monotonic_at(settings.started_at)
        self._benchmark_note: str | None = None
        self._finished_at_start = False
        # Made in pytest_configure, once pytest's config exists.
        self._replayer: ReportReplayer | None = None
        self._follower: BuildFollower | None = None
        self._view: TerminalView | None = None
        self._summary: BuildSummary | None = None
        self._workers: WorkerEvents | None = None
        self._interrupt_handled = False
        self._config: pytest.Config | None = None
        self._reporting = False  # the session reached collection: its finish prints the report
        self._accounted = False  # every selected test's outcome (or its absence) was noted
        self._history_recorded = False
        self._aborted = False  # the build could not go on (no worker left, the queue lost)

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
        if self.settings.shared:
            one_random_seed_per_build(config, self.settings.build)
        if self.supervisor is not None:  # this machine's workers append to it
            log_file_emptied_for_the_build(config)
        self._config = config
        return (yield)

    @pytest.hookimpl(trylast=True)
    def pytest_configure(self, config: pytest.Config) -> None:
        ensure_hookspecs(config.pluginmanager)  # xdist's hooks are called, installed or not
        self._benchmark_note = benchmark_note(config)
        settings = self.settings
        self.nodes = ControllerNodes(
            config,
            source=settings.node + "controller" if settings.node else "controller",
            workers=settings.workers,
            build=settings.build,
        )
        self._wire(config)
        with self._exit_on_abort():  # the queue gone before the session began: exit 3, say why
            # Finished before this controller began: a replay, or a report of a build run
            # elsewhere. Not a build this command started workers for, however quickly they
            # finished it (they may before the controller configures): their output and the
            # summary's timings still come.
            self._finished_at_start = self.queue.status().finished and self.supervisor is None
            if not self._finished_at_start:
                # Plugins' part of each worker's input (a random seed, where coverage goes),
                # published before the workers configure; they wait for it.
                data = self.nodes.worker_input(shared=settings.shared)
                if self.supervisor is not None and (folder := build_folder(config)) is not None:
                    data[BUILD_FOLDER_KEY] = folder  # where this machine's workers' tmp_path go
                self.queue.publish(EVENT_WORKER_INPUT, self.nodes.source, {"input": data})
        if any(config.getoption(name, False) for name in STEPWISE_OPTIONS):
            raise pytest.UsageError(
                "--stepwise (--sw) continues from the first failing test in collection order "
                "and skips every test before it next time; with tests running side by side, "
                "tests before the first failure may not have run yet, and skipping them could "
                "make a later run pass that should not. Run it in one process: plain pytest "
                "--sw, or `conveyor run -n 0 --sw`."
            )
        for flag, name in (("--pdb", "usepdb"), ("--trace", "trace")):
            # A worker's debugger has no terminal: it reads end of file and quits, and under
            # --trace the tests it stopped in were reported as passed without having run.
            if config.getoption(name, False):
                raise pytest.UsageError(
                    f"{flag} cannot debug tests that run in other processes; run the test with "
                    f"plain `pytest {flag}`, or use `conveyor run -n 0 {flag}` to run in-process."
                )
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            # Tests of different files finish interleaved; printing a file name at every
            # switch would bury the progress letters. Verbose lines still name each test.
            reporter.showfspath = False

    def _wire(self, config: pytest.Config) -> None:
        settings = self.settings
        self._view = TerminalView(config, settings.no_progress, settings.failures_live)
        self._replayer = ReportReplayer(
            config,
            self.problems,
            known_test=self._known_test,
            on_failure=self._view.announce_failure,
            started_at=self._started_at,
        )
        assert self.nodes is not None
        self._workers = WorkerEvents(self.nodes, self.problems)
        handlers = {
            **self._replayer.handlers(),
            **self._workers.handlers(),
            EVENT_FINISHED: self._on_finished,
            EVENT_RESUMED: self._on_resumed,
            "malformed": self._on_malformed,
        }
        follow = FollowSettings(
            settings.build, settings.start_timeout_s, settings.stall_timeout_s, settings.shared
        )
        self._follower = BuildFollower(
            self.queue,
            self.supervisor,
            follow,
            self.problems,
            handlers,
            self._replayer.ledger.reported,
        )
        self._summary = BuildSummary(
            self.queue,
            self.problems,
            self._replayer.ledger,
            self._follower.all_events,
            title=f"conveyor build {settings.build}",
            workers=settings.workers,
            node=settings.node,
        )

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        return [self.settings.header] + ([self._benchmark_note] if self._benchmark_note else [])

    # -- collection happens in the workers ------------------------------------------------

    @pytest.hookimpl(wrapper=True, tryfirst=True, specname="pytest_collection")
    def pytest_collection_then_its_warnings(
        self, session: pytest.Session
    ) -> Generator[None, object, object]:
        """The workers' collection warnings, as pytest lists them: after the warnings of the
        configuration, which pytest checks as its collection ends (an unknown ini key)."""
        collected = yield
        if self.manifest is not None:
            self._parts()[0].replay_collection_warnings(self.manifest.meta)
        return collected

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection(self, session: pytest.Session) -> bool:
        self._reporting = True
        announce_collecting(session.config)
        replayer, follower, view = self._parts()
        with self._exit_on_abort():
            try:
                published = follower.wait_for_manifest()
            except SessionEnded as ended:  # as plain pytest ends (a usage error: exit 4)
                self.problems.workers_ended_by_pytest = True
                self._stop_local_workers()
                replayer.end_collection(session, ended.ending.collected)
                ended.ending.end(session)
            self.manifest = manifest = ManifestView(self.queue, published)
        replayer.replay_collection(session, manifest.meta, manifest.manifest.total)
        self._require(self.nodes).collection_known(manifest.test_ids_in_collection_order)
        view.announce_in_order(manifest.meta)
        if not self._finished_at_start:  # a finished build's stored results take no time
            workers = self._estimate_workers(manifest.meta)
            fleet = self.settings.shared and workers != self.settings.workers
            view.announce_estimate(
                self.settings.history, self.queue, manifest.units, workers, fleet=fleet
            )
        return True

    def _estimate_workers(self, meta: dict[str, Any]) -> int:
        """The workers the build's length is estimated for: one for a build kept on one worker
        (conveyor.ordered_suite), else the whole fleet's the leader planned for (every
        machine's workers, not this one's), else this machine's."""
        if meta.get("in_order"):
            return 1
        planned = meta.get("plan_workers")
        if isinstance(planned, int) and not isinstance(planned, bool) and planned >= 1:
            return planned
        return max(1, self.settings.workers or len(self.queue.status().workers) or 1)

    # -- the run loop: replay the build ---------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        if session.testsfailed and not session.config.option.continue_on_collection_errors:
            raise session.Interrupted(
                f"{session.testsfailed} error{'s' if session.testsfailed != 1 else ''} "
                "during collection"
            )
        replayer, follower, view = self._parts()

        def show_progress() -> None:
            supervisor = self.supervisor
            alive = supervisor.alive() if supervisor else len(self.queue.status().workers)
            view.show_progress(len(replayer.ledger.reported), session.testsfailed, alive)

        def stop_reason() -> str | None:
            reason = session.shouldfail or session.shouldstop
            return str(reason) if reason else None

        relay = self._output_relay(session.config)
        try:
            with self._exit_on_abort(), view.live_progress(session.testscollected):
                follower.follow(show_progress, stop_reason, relay)
        except KeyboardInterrupt:
            relay()
            self._interrupted(session.config)
            interrupts.hold()  # the report is written whole (released by the command)
            raise
        interrupts.hold()
        if self.supervisor is not None:
            # What a late worker says (a refusal, a rejected late result) belongs in this
            # report even though the build finished without it. Drained whether or not
            # anyone was waited for: a worker may have said it and stopped between the last
            # look at the queue and this one.
            self.supervisor.wait_for_stragglers()
            follower.drain()
        self._require(self._workers).await_outputs(
            follower,
            self.supervisor,
            finished_at_start=self._finished_at_start,
            all_local=self.settings.node == "",
        )
        relay()  # what the workers printed as their sessions ended
        summary = self._require(self._summary)
        summary.account(session, self.manifest)
        self._accounted = True
        self._record_history(session.config)
        if (ending := self.problems.session_ended) is not None:
            ending.end(session)  # a test ended pytest's session: as it ends plain pytest's
        if session.shouldfail:
            raise session.Failed(session.shouldfail)
        if session.shouldstop:
            raise session.Interrupted(session.shouldstop)
        return True

    def _output_relay(self, config: pytest.Config) -> Callable[[], None]:
        """Under -s, what this machine's workers print is shown as it comes
        (conveyor.output_relay); otherwise nothing is read."""
        supervisor = self.supervisor
        if supervisor is None:
            return lambda: None
        relay = OutputRelay.for_session(config, lambda: list(supervisor.logs))
        return relay.relay if relay is not None else lambda: None

    def pytest_keyboard_interrupt(self, excinfo: Any) -> None:
        """Ctrl-C, or CI cancelling the job, anywhere in the session: the workers started
        first and may be running tests before this controller has even collected, so an
        interrupt is always handled as one during the build is (the build loop's own handling
        has run by then, and this does nothing)."""
        if not isinstance(excinfo.value, KeyboardInterrupt) or isinstance(
            excinfo.value, pytest.Session.Interrupted
        ):
            # pytest.exit() (an aborted build) comes here too, and pytest's own stop (errors
            # while collecting, a plugin's shouldstop) once the build is over: not interrupts.
            return
        if self._reporting and self._config is not None:
            self._interrupted(self._config)  # the session's finish reports what happened
        elif self.supervisor is not None and not self._interrupt_handled:
            # Before the session got as far as collecting, it ends without a report: say it
            # here, past pytest's capture.
            self._interrupt_handled = True
            interrupts.acted_on()
            with uncaptured(self._config):
                interrupted_while_starting(
                    self.queue, self.supervisor, self.settings.build, shared=self.settings.shared
                )

    @property
    def reporting(self) -> bool:
        """Whether the session reached the build: its end writes the report."""
        return self._reporting

    @property
    def interrupt_handled(self) -> bool:
        """Whether this controller has handled an interrupt (stopped or left the build)."""
        return self._interrupt_handled

    def _interrupted(self, config: pytest.Config) -> None:
        """A shared build is left to the other machines, this machine's tests handed back; a
        build of this machine alone is stopped once running tests finish. Once."""
        if self._interrupt_handled:
            return
        self._interrupt_handled = True
        interrupts.acted_on()
        reporter = config.pluginmanager.get_plugin("terminalreporter")

        def say(line: str) -> None:
            if reporter is not None:
                reporter.write_line(line, yellow=True)

        try:
            if self._require(self._follower).interrupted(say):
                self.problems.left_shared_build = True
            with interrupts.held():
                self._published_manifest()  # interrupted while collecting: what did not run
        except QueueError as exc:
            # The session still ends as interrupted (exit 2); the workers must not run on.
            say(f"conveyor: could not stop the build through its queue: {exc}")
            say("conveyor: this machine's workers are stopped; run the build again to finish it")
            self._stop_local_workers()
        with interrupts.held():
            self._require(self._summary).note_not_run(self.manifest)
        # Pressed again while the build was being stopped: it is stopped all the same.
        interrupts.acted_on()

    def _known_test(self, nodeid: str) -> str | None:
        """The manifest's own string for a test id, or None for a test no worker collected."""
        manifest = self._published_manifest()
        return None if manifest is None else manifest.unit_ids.get(nodeid)

    def _published_manifest(self) -> ManifestView | None:
        """The build's manifest, read now if the controller has not seen it yet: an interrupt
        while it waited for collection drains results that are this build's all the same (the
        workers queued the suite and ran tests meanwhile)."""
        if self.manifest is None and (published := self.queue.manifest()) is not None:
            self.manifest = ManifestView(self.queue, published)
        return self.manifest

    @contextlib.contextmanager
    def _exit_on_abort(self) -> Iterator[None]:
        """A build that cannot go on ends the session with exit code 3 and says why."""
        try:
            yield
        except BuildAborted as exc:
            self._aborted = True
            self._stop_local_workers()
            pytest.exit(str(exc), returncode=pytest.ExitCode.INTERNAL_ERROR)
        except QueueError as exc:  # the build lost, or the queue unusable mid-build
            self._aborted = True
            self._stop_local_workers()
            pytest.exit(f"conveyor: {exc}", returncode=pytest.ExitCode.INTERNAL_ERROR)

    def _stop_local_workers(self) -> None:
        if self.supervisor is not None:
            self.supervisor.shutdown(terminate=True)

    def _on_finished(self, event: Event) -> None:
        self._require(self._follower).finished = True

    def _on_resumed(self, event: Event) -> None:
        """A stopped build run again: the stream goes on past its earlier finish."""
        self._require(self._follower).finished = False

    def _on_malformed(self, event: Event) -> None:
        self.problems.errors.append(
            f"the queue holds an unreadable event #{event.seq}: {event.data.get('raw', '')!r}"
        )

    # -- summary --------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_report_teststatus(self, report: Any) -> tuple[str, str, Any] | None:
        if getattr(report, "outcome", None) == "rerun":
            return "rerun", "R", ("RERUN", {"yellow": True})
        return None

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self._summary is None:
            return  # interrupted before pytest_configure: nothing was wired to report
        summary, follower = self._summary, self._require(self._follower)
        summary.write(
            terminalreporter,
            timeline=self.settings.timeline,
            estimate_s=self._require(self._view).estimate_s,
            finished=follower.finished and not self._finished_at_start,
            started_at=self._started_at,
            supervisor=self.supervisor,
        )
        if self.manifest is not None and "collection_order" in self.manifest.meta:
            summary.hint_at_order(
                terminalreporter,
                self.queue.display_url,
                self.settings.build,
                how=_how_served(self.manifest.meta),
            )

    @pytest.hookimpl(wrapper=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> Any:
        if self.manifest is not None:  # at the end, off the path to the first result
            remember_collected(session.config, self.manifest.units)
        if self._aborted and not self._accounted and self._summary is not None:
            # A build aborted on its way (every worker gone, the queue lost): the tests left
            # without a result are listed and counted, as at a finished build's end.
            with contextlib.suppress(QueueError):
                self._summary.account(session, self.manifest)
        if self._interrupt_handled and not self._accounted and self.manifest is not None:
            # Stopped: what did run is listed as a finished build's is, in collection order.
            sort_stats_in_collection_order(session, self.manifest)
        if self._aborted or self._interrupt_handled:
            self._record_history(session.config)  # what did run still orders the next build
        passing = (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
        ended = self.problems.session_ended
        if ended is not None and ended.kind == "exit":
            pass  # the project's own pytest.exit() chose the exit code, as in plain pytest
        elif self.problems.fail_the_build and session.exitstatus in passing:
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
        elif self.problems.not_run and session.exitstatus in passing:
            # A build with tests that never ran is never green (a stopped build replayed, a
            # build another machine's interrupt stopped): run it again to resume it.
            session.exitstatus = pytest.ExitCode.INTERRUPTED
        if session.exitstatus not in passing and not self._interrupt_handled:
            self._not_green(session.config)
        if self.supervisor is not None and removes_build_folder(session.config):
            # pytest's own end removes the build's temporary folder: not under a worker
            # still ending its session in it.
            self.supervisor.wait_for_exit()
        result = yield
        if self._aborted:  # after the plugins' own session finish, as pytest's summary
            self._summary_of_an_aborted_build(session)
        # The workers end their own sessions meanwhile: `conveyor run` waits for them once
        # this session has ended, so the summary is not held up by their teardown.
        return result

    def _record_history(self, config: pytest.Config) -> None:
        """The durations of the tests this build ran, once: a stopped or aborted build's
        count too, or a build cancelled again and again would never learn its slow tests."""
        if self._summary is None or self._history_recorded:
            return
        self._history_recorded = True
        self._summary.record_history(self.settings.history, config)

    def _summary_of_an_aborted_build(self, session: pytest.Session) -> None:
        """pytest prints its terminal summary (failures, the short summary, the plugins'
        sections, conveyor's) only for exit codes 0, 1, 2, 4 and 5; an aborted build's is 3,
        and the failures of the tests that did run, with what did not, went unsaid."""
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        session.config.hook.pytest_terminal_summary(
            terminalreporter=reporter, exitstatus=session.exitstatus, config=session.config
        )

    def _not_green(self, config: pytest.Config) -> None:
        """A build that did not pass: its last line says what else happened (`1 conveyor
        error`, and where its reported tests all passed `2 not run`) rather than read as
        pytest's green "N passed", or as a red line that leaves out a refused worker. Tests a
        stop (-x) left unrun are not counted on a red line: plain pytest's does not either.
        One interrupted here ends as plain pytest's does."""
        reporter: Any = config.pluginmanager.get_plugin("terminalreporter")
        stats = getattr(reporter, "stats", None)
        if not isinstance(stats, dict):
            return
        red = "failed" in stats or "error" in stats
        for key, entries in self.problems.summary_entries(with_not_run=not red).items():
            stats.setdefault(key, []).extend(entries)
        recount_summary_line(reporter)

    # -- plumbing -------------------------------------------------------------------------

    def _parts(self) -> tuple[ReportReplayer, BuildFollower, TerminalView]:
        return (
            self._require(self._replayer),
            self._require(self._follower),
            self._require(self._view),
        )

    @staticmethod
    def _require(part: _Part | None) -> _Part:
        assert part is not None, "used before pytest_configure"
        return part


def _how_served(meta: dict[str, Any]) -> str:
    """How a build served out of collection order was served, for the order hint."""
    if meta.get("order") == "random":
        return " (--order random)"
    if meta.get("with_history"):
        return " (slowest first, from timing history)"
    return ""
