"""Worker mode: a pytest session that collects, joins the build, and runs what the queue hands it.

The worker imports nothing of the controller side. It talks to the controller only through the
queue: collection reports and settings go into the manifest, each test's reports into one
result payload (JSON from pytest's own `pytest_report_to_serializable`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from conveyor.batch_policy import BatchPolicy, policy_for
from conveyor.code_identity import identify
from conveyor.compat import (
    NextItem,
    forward_rerun_reports,
    fresh_basetemp,
    log_file_shared,
    own_coverage_data_files,
    own_coverage_data_files_once_forked,
    record_live_logs,
    redirect_output,
    results_folder_emptied_once,
    silence_terminal,
    stand_in_for_junitxml,
)
from conveyor.environment import mark_worker_process, take_settings
from conveyor.errors import BuildStateLost, QueueError, UsageError
from conveyor.fleet_size import plan_workers
from conveyor.fork_server import ForkServer, channel_from_environment
from conveyor.hard_timeout import HardTimeout
from conveyor.heartbeat import Heartbeat
from conveyor.history import history_store
from conveyor.junit_records import JunitRecords
from conveyor.lease_stream import LeaseStream
from conveyor.live_log import LiveLogRecorder
from conveyor.manifest_handshake import CollectionRecord, ManifestHandshake, serving_plan
from conveyor.options import grouping_of
from conveyor.outcome_record import OutcomeRecord
from conveyor.output_relay import SessionEndMark, mark_tests_start
from conveyor.payload import bounded_payload
from conveyor.preload_server import preload_requested, serve_preloaded
from conveyor.process_exit import SettleGarbageAtEnd, end_with_the_session, exit_process
from conveyor.queue import Queue, open_queue
from conveyor.queue.protocol import EVENT_WORKER_LEFT, JSON, Lease, ResultPayload
from conveyor.result_outbox import ResultOutbox, refuse_uncollected
from conveyor.retry_policy import RetryPolicy
from conveyor.scheduling import DEFAULT_GROUPING
from conveyor.session_ending import SessionEnding
from conveyor.trace import configure as trace_configure
from conveyor.trace import event, follow_stderr
from conveyor.unit_names import XDIST_GROUPS_META, unit_names
from conveyor.vocabulary import (
    EVENT_SESSION_ENDED,
    EXIT_DONE,
    EXIT_REFUSED,
    EXIT_STATE_LOST,
)
from conveyor.worker_settings import StatusFile, WorkerSettings, run_worker_setup
from conveyor.worker_tmp import OwnBasetemp, in_build_folder, own_basetemp_once_forked
from conveyor.xdist_compat import (
    adopt_protocol,
    attach_worker_input,
    declare_xdist_markers,
    ensure_hookspecs,
    keep_xdist_out,
    publish_output,
    xdist_group_of,
)

trace = event("worker")


def _item_of(items: dict[str, pytest.Item], lease: Lease | None) -> pytest.Item | None:
    """The item a lease names; None for no lease, or one this worker did not collect (it will
    be refused, not run, so nothing needs to stay set up for it)."""
    return items.get(lease.unit) if lease is not None else None


# With -x or --maxfail, how often a worker asks between tests whether the build was stopped.
STOP_POLL_S = 0.02


class WorkerPlugin:
    """Takes over collection's outcome and the run loop of one pytest worker process.

    The policies live in collaborators: `ManifestHandshake` (publish or check the manifest),
    `BatchPolicy` (how much to reserve, when to hand back), `LeaseStream` (the leases in
    running order and pytest's nextitem promise), `HardTimeout`, `RetryPolicy`, `ResultOutbox`
    and `Heartbeat`. This class wires them to pytest's hooks."""

    def __init__(
        self, settings: WorkerSettings, fork_channel: tuple[int, int] | None = None
    ) -> None:
        self.queue: Queue | None = None
        self.finished_normally = False
        self.joined = False
        self.state_lost = False
        self.session_ended = False  # a test ended pytest's session (pytest.exit(), Ctrl-C)
        self.collection = CollectionRecord()
        self._adopt(settings)
        self._fork_channel = fork_channel
        self._handshake: ManifestHandshake | None = None
        self._outbox: ResultOutbox | None = None
        self._policy: BatchPolicy | None = None
        self.record = OutcomeRecord()
        self.junit = JunitRecords("")  # in use under --junitxml (conveyor.junit_records)
        self.live_log = LiveLogRecorder()  # in use with live logging on (conveyor.live_log)
        self._stopped = False
        self._stop_polled_at = 0.0  # when -x last asked whether the build was stopped
        self._pytest_dist: object = None  # pytest's own --dist (addopts), read as it configures
        self._refusal: pytest.UsageError | None = None  # raised as collection starts

    def _adopt(self, settings: WorkerSettings) -> None:
        """Become the worker `settings` describe (once at start; again in a forked worker)."""
        self.settings = settings
        self.status = StatusFile(settings.status_file)
        self.timeout = HardTimeout(settings.timeout_file, settings.test_timeout_s)
        self.retry = RetryPolicy(
            settings.max_requeues, settings.retry_on, settings.requeue_tolerance
        )

    @property
    def _machine_run_folder(self) -> Path | None:
        """On a machine of workers alone, the folder they share (conveyor.machine_lock)."""
        folder = self.settings.machine_run_folder
        return Path(folder) if folder else None

    @property
    def refused(self) -> bool:
        return self._handshake is not None and self._handshake.refused

    # -- configuration --------------------------------------------------------------------

    def pytest_addhooks(self, pluginmanager: pytest.PytestPluginManager) -> None:
        adopt_protocol(pluginmanager)

    @pytest.hookimpl(wrapper=True)
    def pytest_cmdline_main(self, config: pytest.Config) -> Generator[None, object, object]:
        # -n/--dist from addopts are conveyor's: xdist must not start a session in a worker;
        # a --dist there still says what the project's tests need kept together.
        self._pytest_dist = getattr(config.option, "dist", None)
        keep_xdist_out(config)
        self._take_grouping()
        self._connect(config)
        results_folder_emptied_once(config, self._machine_run_folder)  # before plugins configure
        log_file_shared(config, self._machine_run_folder)
        return (yield)

    def _take_grouping(self) -> None:
        """What one worker keeps together, where conveyor was not told: pytest's own --dist
        (a project's addopts, which pytest has just read) as pytest-xdist's mode. A mode
        conveyor cannot honour ends the session at collection, as a usage error."""
        try:
            grouping = grouping_of(self.settings.grouping, self._pytest_dist)
        except UsageError as error:
            self._refusal = pytest.UsageError(str(error))
            grouping = DEFAULT_GROUPING
        self.settings = self.settings.replace(grouping=grouping)

    def _connect(self, config: pytest.Config) -> None:
        """Open this worker's queue and what talks to it through this worker's id."""
        settings = self.settings
        self.queue = queue = open_queue(
            settings.queue_url,
            settings.build,
            lease_ttl_s=settings.lease_ttl_s,
            build_ttl_s=settings.build_ttl_s,
        )
        self._handshake = ManifestHandshake(
            queue, settings.worker_id, settings.start_timeout_s, settings.check_only
        )
        self._outbox = ResultOutbox(queue, settings.worker_id, on_stopped=self._stop)
        attach_worker_input(
            config,
            queue,
            worker_id=settings.worker_id,
            worker_count=settings.worker_count,
            build=settings.build,
            own_controller=settings.own_controller,
            start_timeout_s=settings.start_timeout_s,
        )

    def _stop(self) -> None:
        self._stopped = True

    @pytest.hookimpl(wrapper=True)
    def pytest_sessionfinish(self) -> Generator[None, object, object]:
        result = yield
        # After every plugin's own sessionfinish: workeroutput is complete now.
        if self.joined and self.queue is not None:
            output = getattr(self._config, "workeroutput", {})
            with contextlib.suppress(QueueError):
                publish_output(self.queue, self.settings.worker_id, output)
        return result

    @pytest.hookimpl(trylast=True)
    def pytest_configure(self, config: pytest.Config) -> None:
        self._config = config
        ensure_hookspecs(config.pluginmanager)  # xdist is turned off in workers
        declare_xdist_markers(config)
        forward_rerun_reports(config.pluginmanager)
        silence_terminal(config)
        config.pluginmanager.register(self.collection, "conveyor-collection-record")
        config.pluginmanager.register(self.record, "conveyor-outcome-record")
        stand_in_for_junitxml(config, self.junit)
        if self.settings.own_controller or self._machine_run_folder is not None:
            in_build_folder(config, self._machine_run_folder)
        self.status.write("collecting")

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        own_coverage_data_files(session.config)
        record_live_logs(session.config, self.live_log)

    @pytest.hookimpl(trylast=True)
    def pytest_unconfigure(self) -> None:
        self.timeout.close()

    # -- collection -----------------------------------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_collection(self) -> Generator[None, object, object]:
        """A usage error found while collecting (a path not found, a bad -k expression) ends
        this worker as it ends plain pytest; the build is told, so that the controller, which
        does not collect, ends with the same message and exit code instead of reporting
        workers that died."""
        try:
            if self._refusal is not None:
                raise self._refusal
            return (yield)
        except (pytest.exit.Exception, pytest.UsageError) as exc:
            # A plugin or conftest ended the session, or pytest refused the command line.
            collected = self.collection.collected
            ending = SessionEnding.of(self.settings.worker_id, None, exc, collected)
            self._publish_session_end(ending)
            raise

    def pytest_internalerror(self, excrepr: object) -> None:
        # The terminal writes into the void in a worker; the supervisor reads stderr.
        for line in str(excrepr).splitlines():
            sys.stderr.write(f"INTERNALERROR> {line}\n")
        sys.stderr.flush()

    # -- the run loop ---------------------------------------------------------------------

    def _unit_names(self, items: list[pytest.Item]) -> list[str]:
        groups = [xdist_group_of(item) for item in items] if self._by_xdist_group() else None
        return unit_names((item.nodeid for item in items), groups)

    def _by_xdist_group(self) -> bool:
        """Whether unit names carry xdist_groups: as the build's leader named them, for a
        worker that joins a build (another machine may not have been given --dist); else as
        this worker's --dist says."""
        manifest = self.queue.manifest() if self.queue is not None else None
        if manifest is not None:
            return manifest.meta.get(XDIST_GROUPS_META) is True
        return self.settings.grouping == "group"

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        assert self.queue is not None  # opened in pytest_cmdline_main
        # By unit name: a test id collected twice is two units, and a unit names its
        # xdist_group under --dist loadgroup (conveyor.unit_names).
        items = dict(zip(self._unit_names(session.items), session.items, strict=True))
        collection_failed = (
            bool(session.testsfailed) and not session.config.option.continue_on_collection_errors
        )
        collected = [] if collection_failed else list(items)
        code = identify(session.config.rootpath, {item.path for item in session.items})
        durations = history_for(self.settings.history, session.config, self.queue)
        if self.settings.fork_server:  # what is above is done once, for every forked worker
            self._serve_forks(session.config)
        settings = self.settings
        queue, handshake = self.queue, self._handshake
        assert queue is not None and handshake is not None
        self.timeout.learn(durations)
        leading = queue.manifest() is None  # likely the leader: its order is the one served
        workers = settings.worker_count
        if leading:  # the plan is for the whole fleet (conveyor.fleet_size)
            workers = plan_workers(settings, session.config, queue)
        units, meta = serving_plan(
            self.collection, session, settings, collected, durations, code, leading, workers
        )
        if not handshake.join_or_check(units, meta, code):
            self.status.write("refused")
            return True
        if not settings.check_only:
            mark_tests_start(session.config)  # under -s, what follows is shown
            self._join_and_work(session, queue, items, durations)
        if not self.state_lost:
            self.finished_normally = True
            self.status.write("done")
        return True

    def _serve_forks(self, config: pytest.Config) -> None:
        """--fork-workers: this process collected the suite for every worker. From here it
        forks them (conveyor.fork_server) and never returns in the server; a forked child
        returns as the worker it was asked for, collected and about to join, as a spawned
        worker comes here. --worker-setup runs in the child, after collection."""
        if self._fork_channel is None:
            raise pytest.UsageError("a fork server needs the channel its supervisor opens.")
        if self.queue is not None:
            self.queue.close()  # no queue connection may cross a fork
        self.timeout.close()
        server = ForkServer(*self._fork_channel)
        request = server.serve(self.settings.supervisor_pid)
        os.setsid()  # a process group of its own, as a spawned worker has
        os.environ.update(request.env)
        redirect_output(config, request.log_path)
        mark_worker_process()
        raw = take_settings()
        if raw is None:
            print("conveyor: the fork server lost this worker's settings.", file=sys.stderr)
            os._exit(int(pytest.ExitCode.INTERNAL_ERROR))
        # Its parent is the fork server, which leaves when the supervisor does.
        settings = WorkerSettings.from_env(raw).replace(supervisor_pid=server.pid)
        setup_failure = run_worker_setup(settings)
        if setup_failure is not None:
            os._exit(setup_failure)
        self.status.close()
        self._adopt(settings)
        self._take_grouping()
        self._connect(config)
        fresh_basetemp(config)
        own_basetemp_once_forked(config)
        own_coverage_data_files_once_forked(config)
        follow_stderr()  # a trace goes to this worker's log too
        self.status.write("collecting")
        trace("%s forked from the fork server", settings.worker_id)

    def _join_and_work(
        self,
        session: pytest.Session,
        queue: Queue,
        items: dict[str, pytest.Item],
        durations: dict[str, float],
    ) -> None:
        """Join the build and run what the queue hands out until nothing is left."""
        settings = self.settings
        heartbeat = Heartbeat(
            queue, settings.worker_id, settings.lease_ttl_s, supervisor_pid=settings.supervisor_pid
        )
        try:
            queue.join(settings.worker_id, {"host": socket.gethostname(), "pid": os.getpid()})
            self.joined = True
            trace("%s joined build %s", settings.worker_id, settings.build)
            self.status.write("joined")
            heartbeat.start()
            self._policy = policy_for(queue, self.settings, durations)
            self._work(session, queue, items, heartbeat)
            self._flush(force=True)
        except BuildStateLost as exc:
            self.state_lost = True
            self.status.write("lost")
            print(f"conveyor: {exc}", file=sys.stderr)
            return
        finally:
            heartbeat.stop()
        queue.publish(EVENT_WORKER_LEFT, settings.worker_id, {"reason": "no more work"})
        trace("%s finished: no more work", settings.worker_id)

    def _work(
        self,
        session: pytest.Session,
        queue: Queue,
        items: dict[str, pytest.Item],
        heartbeat: Heartbeat,
    ) -> None:
        policy, outbox = self._policy, self._outbox
        assert policy is not None and outbox is not None
        stream = LeaseStream(
            queue,
            self.settings.worker_id,
            batch=policy.batch,
            on_reserved=lambda leases: policy.reserved(leases[-1].unit),
            check=heartbeat.check,
            stopped=lambda: self._stopped,
            idle=lambda: self._flush(force=True),
            claim_ahead=policy.claim_ahead,
            # A class's tests share its fixtures and may depend on each other: one worker runs
            # them, in order, unless --dist test (pytest-xdist's load) lets them spread; --dist
            # file and scope keep more together (pytest-xdist's loadfile and loadscope).
            # A suite whose tests declare an order runs whole on one worker (the manifest's
            # "all", conveyor.ordered_suite).
            whole=policy.rule.whole,
        )
        # Leases this worker holds: reserved (running or not started) and finished but not
        # yet stored.
        heartbeat.held = lambda: [*stream.held(), *outbox.held()]
        for lease in stream:
            item = items.get(lease.unit)
            if item is None:
                self._refuse_uncollected(queue, lease)
                continue
            # Resolved when pytest first looks at it, at this test's teardown: see LeaseStream.
            nextitem = NextItem(lambda: self._next_item(items, stream))
            try:
                self._run_one(session, queue, item, nextitem, lease)
            except (KeyboardInterrupt, pytest.exit.Exception) as ending:
                self._end_the_build(queue, stream, lease, ending)
                raise
            stream.raise_deferred()
            if (
                self._stopped
                or session.shouldfail
                or session.shouldstop
                or self._stopped_by_others(session, queue)
            ):
                # -x, --maxfail or a stop of the whole build: nothing more runs here.
                self._flush(force=True)
                if session.shouldfail and not self._stopped:
                    self._stop_the_build(queue, str(session.shouldfail))
                stream.stop("the build was stopped; unstarted units returned")
                return
            if policy.should_give_back():
                # Without history this worker took a run of tests that turn out slow: other
                # workers may be idle, so the unstarted ones go back to the front of the queue,
                # except the rest of this test's class, which stays on this worker.
                self._flush(force=True)
                keep = policy.rest_of_group(lease.unit, stream.unstarted())
                stream.hand_back("slow run handed back", keep=keep)
                policy.handed_back()

    def _stopped_by_others(self, session: pytest.Session, queue: Queue) -> bool:
        """With -x or --maxfail, whether another worker's failure stopped the build: asked
        between tests, at most every STOP_POLL_S, so that this worker does not go on starting
        tests until its next batch of results is stored (every 0.1 s)."""
        if not session.config.option.maxfail:
            return False
        now = time.monotonic()
        if now - self._stop_polled_at < STOP_POLL_S:
            return False
        self._stop_polled_at = now
        with contextlib.suppress(QueueError):
            if queue.status().stop_reason is not None:
                self._stopped = True
        return self._stopped

    def _stop_the_build(self, queue: Queue, reason: str) -> None:
        """This worker's own failures reached -x or --maxfail, so the build's have (the
        build counts this worker's and others'): the other workers are told now, through the
        queue, rather than once the controller has read the failure, meanwhile starting tests
        that plain pytest never would."""
        with contextlib.suppress(QueueError):
            queue.stop(reason)

    def _end_the_build(
        self, queue: Queue, stream: LeaseStream, lease: Lease, ending: BaseException
    ) -> None:
        """A test ended pytest's session: it called pytest.exit(), or raised KeyboardInterrupt.
        In plain pytest nothing runs after it and the run ends with its exit code, so the
        whole build stops here: this test and this worker's unstarted ones go back uncharged
        (to be listed as not run), and the controllers end their sessions the same way. Not a
        crash of this worker: it ends as one that finished."""
        with contextlib.suppress(QueueError):
            self._flush(force=True)
        told = SessionEnding.of(self.settings.worker_id, lease.unit, ending)
        self._publish_session_end(told)
        reason = told.reason
        with contextlib.suppress(QueueError):
            queue.stop(reason)
            stream.stop(reason)
            queue.release(self.settings.worker_id, {"reason": reason, "orderly": True})

    def _publish_session_end(self, ending: SessionEnding) -> None:
        """Tell the build how pytest's session ended here (EVENT_SESSION_ENDED). A worker
        ended by a test or a hook then ends as one that finished; one that found the command
        line wrong ends with pytest's usage-error code, as plain pytest does."""
        if ending.kind != "usage_error":
            self.session_ended = True
            self.status.write("done")
        if self.queue is not None and not self.settings.check_only:
            with contextlib.suppress(QueueError):
                self.queue.publish(EVENT_SESSION_ENDED, self.settings.worker_id, ending.data)

    def _run_one(
        self,
        session: pytest.Session,
        queue: Queue,
        item: pytest.Item,
        nextitem: Any,
        lease: Lease,
    ) -> None:
        """Run one test through pytest's own protocol, then store its result or send the
        failed attempt back for a retry."""
        assert self._policy is not None and self._outbox is not None
        self.status.write(f"running {lease.unit}")
        record = self.record
        record.reset()
        started = time.time()
        failed_before = session.testsfailed
        with self.timeout.around(lease.unit):
            session.config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
        duration = time.time() - started
        payload: ResultPayload = {
            "nodeid": lease.unit,  # the queue's name; the reports carry the test's own id
            "location": list(item.location),
            "reports": record.reports,
            "warnings": record.warnings,
            "attempt": lease.attempt,
            "started": started,
            "duration": duration,
        }
        if record.captured:
            payload["captured"] = record.captured
        if (junit := self.junit.take()) is not None:
            payload["junit"] = junit
        if (live_log := self.live_log.take()) is not None:
            payload["live_log"] = live_log
        self._policy.ran(duration, lease.unit)
        self.status.write("between tests")
        stored: JSON = dict(payload)  # the queue's JSON object
        worker = self.settings.worker_id
        if self.retry.wants_retry(record.reports, record.raised) and self.retry.requeue(
            queue, worker, lease.unit, stored
        ):
            # Not a final failure: it must not trip this worker's -x / --maxfail.
            session.testsfailed = failed_before
            session.shouldfail = False
        else:
            self._outbox.add(lease.unit, bounded_payload(stored))
            self._flush()

    def _next_item(self, items: dict[str, pytest.Item], stream: LeaseStream) -> Any:
        """The test that runs next, leased now if need be; the queue's time is not the
        running test's (its timeout stops meanwhile)."""
        with self.timeout.paused():
            return _item_of(items, stream.peek())

    def _refuse_uncollected(self, queue: Queue, lease: Lease) -> None:
        assert self._outbox is not None
        refuse_uncollected(queue, self.settings.worker_id, lease, self._outbox)

    def _flush(self, force: bool = False) -> bool:
        return self._outbox is not None and self._outbox.flush(force)


def history_for(where: str, config: pytest.Config, queue: Queue) -> dict[str, float]:
    """Durations from earlier builds, or {} when there are none (or they cannot be read)."""
    store = history_store(where, config, queue)
    try:
        return store.load() if store is not None else {}
    except (QueueError, OSError, ValueError):
        return {}  # ordering is an optimisation; never fail a build over it


def main() -> int:
    """Entry point of a worker process: `python -m conveyor.worker PYTEST_ARGS...`."""
    # `python -m` put the working directory first on sys.path; plain `pytest` does not, and
    # imports must resolve exactly as they would in a plain run.
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    channel = channel_from_environment()
    parent: int | None = None
    if channel is not None and preload_requested():
        # The preloaded fork server (conveyor.preload_server): from here on this is one of
        # the workers it forks, which watches the server as its parent.
        parent, channel = serve_preloaded(channel, supervisor_pid=os.getppid()), None
    trace_configure()  # before pytest captures descriptor 2
    raw = take_settings()
    mark_worker_process()
    if raw is None:
        print(
            "conveyor worker: no settings were handed to this process; workers are started "
            "by `conveyor run` or `conveyor worker`.",
            file=sys.stderr,
        )
        return 4
    settings = WorkerSettings.from_env(raw)
    if parent is not None:
        settings = settings.replace(supervisor_pid=parent)
    setup_failure = run_worker_setup(settings)
    if setup_failure is not None:
        return setup_failure
    plugin = WorkerPlugin(settings, channel)
    code = pytest.main(
        sys.argv[1:], plugins=[plugin, OwnBasetemp(), SessionEndMark(), SettleGarbageAtEnd()]
    )
    if plugin.refused:
        return EXIT_REFUSED
    if plugin.state_lost:
        return EXIT_STATE_LOST
    if plugin.finished_normally or plugin.session_ended:
        return EXIT_DONE
    return int(code) or 3


if __name__ == "__main__":
    end_with_the_session()
    exit_process(main())
