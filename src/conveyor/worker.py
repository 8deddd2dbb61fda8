"""Worker mode: a pytest session that collects, joins the build, and runs what the queue hands it.

The worker imports nothing of the controller side. It talks to the controller only through the
queue: collection reports and settings go into the manifest, each test's reports into one
result payload (JSON from pytest's own `pytest_report_to_serializable`).
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import secrets
import socket
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any

import pytest

from conveyor.code_identity import describe_difference, identify
from conveyor.compat import (
    NextItem,
    SilentReporter,
    forward_rerun_reports,
    last_failed_status,
    settle_outcome,
)
from conveyor.environment import mark_worker_process, take_settings
from conveyor.errors import BuildStateLost, QueueError
from conveyor.history import history_store
from conveyor.lease_stream import LeaseStream
from conveyor.payload import bounded_payload, cap_report
from conveyor.queue import Queue, open_queue
from conveyor.queue.protocol import (
    ALREADY_DONE,
    EVENT_WORKER_LEFT,
    JSON,
    REQUEUED,
    Lease,
    ResultPayload,
    collection_digest,
)
from conveyor.scheduling import plan, range_keys, same_class, scope_of
from conveyor.trace import configure as trace_configure
from conveyor.trace import event
from conveyor.vocabulary import (
    EVENT_WORKER_ERROR,
    EVENT_WORKER_REFUSED,
    EXIT_DONE,
    EXIT_ORPHANED,
    EXIT_REFUSED,
    EXIT_STATE_LOST,
    TIMEOUT_HEADER,
)
from conveyor.watchdog import Watchdog
from conveyor.worker_settings import StatusFile, WorkerSettings, run_worker_setup
from conveyor.xdist_compat import (
    WorkerInput,
    adopt_protocol,
    ensure_hookspecs,
    keep_xdist_out,
    publish_output,
    wait_for_input,
)

# Without --test-timeout, a test with timing history is stopped after this long: generous
# enough for a slow machine, short enough that a hung test does not hold the build for hours.
AUTO_TIMEOUT_BASE_S = 10.0
AUTO_TIMEOUT_FACTOR = 10.0  # a loaded CI machine can run a test several times slower

# Results are sent in batches: at most this many, or after this long.
FLUSH_MAX_RESULTS = 64
FLUSH_INTERVAL_S = 0.1
MAX_BATCH = 32
BATCH_TARGET_S = 0.25  # work a batch should hold, by the durations seen so far
AFFINITY_TARGET_S = 2.0  # work of a module's run kept together when nothing else says so
GIVE_BACK_AFTER_S = 0.5  # without history, a test this slow hands the rest of its run back
WAIT_POLL_S = 0.05
trace = event("worker")


def serialize_warning(message: warnings.WarningMessage, when: str, nodeid: str) -> JSON:
    category = message.category
    return {
        "message": str(message.message),
        "category": category.__name__,
        "category_module": category.__module__,
        "filename": message.filename,
        "lineno": message.lineno,
        "line": message.line,
        "when": when,
        "nodeid": nodeid,
    }


def _item_of(items: dict[str, pytest.Item], lease: Lease | None) -> pytest.Item | None:
    """The item a lease names; None for no lease, or one this worker did not collect (it will
    be refused, not run, so nothing needs to stay set up for it)."""
    return items.get(lease.unit) if lease is not None else None


class Heartbeat(threading.Thread):
    """Renews this worker's leases so a slow test is never handed to someone else, and ends
    the process if its supervisor has gone (an orphan would hold leases nobody watches).
    Only the leases `held()` names are renewed: a lease this worker never learnt of (its
    reserve's reply was lost) expires and goes back to the queue instead of staying forever."""

    def __init__(
        self,
        queue: Queue,
        settings: WorkerSettings,
        held: Callable[[], Sequence[str]] = lambda: (),
    ) -> None:
        super().__init__(name="conveyor-heartbeat", daemon=True)
        self.queue = queue
        self.settings = settings
        self.held = held
        self.interval_s = max(0.05, min(5.0, settings.lease_ttl_s / 3))
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            if self.settings.supervisor_pid and os.getppid() != self.settings.supervisor_pid:
                os._exit(EXIT_ORPHANED)
            try:
                self.queue.heartbeat(self.settings.worker_id, self.held())
            except QueueError as exc:
                self.error = exc
                return

    def stop(self) -> None:
        self._stop_event.set()


class WorkerPlugin:
    """Takes over collection's outcome and the run loop of one pytest worker process."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.queue: Queue | None = None
        self.status = StatusFile(settings.status_file)
        self.finished_normally = False
        self.joined = False
        self.refused = False
        self.state_lost = False
        self._collect_reports: list[JSON] = []
        self._collect_warnings: list[JSON] = []
        self._reports: list[JSON] = []
        self._warnings: list[JSON] = []
        self._outbox: list[tuple[str, JSON]] = []
        self._sending: list[tuple[str, JSON]] = []  # the batch `complete` is storing now
        self._last_flush = time.monotonic()
        self._stopped = False
        self._exception_names: set[str] = set()
        self._timeout_file = (
            open(settings.timeout_file, "w")  # noqa: SIM115 - faulthandler writes to it until exit
            if settings.timeout_file and settings.test_timeout_s != 0
            else None
        )
        self._auto_timeouts: dict[str, float] = {}
        self._recent_durations: deque[float] = deque(maxlen=16)
        self._watchdog: Watchdog | None = None
        self._order: list[str] = []
        self._positions: dict[str, int] = {}
        self._affinity = 0
        self._has_history = False
        self._range_of: dict[str, str] = {}
        self._code: dict[str, str] = {}

    # -- configuration --------------------------------------------------------------------

    def pytest_addhooks(self, pluginmanager: pytest.PytestPluginManager) -> None:
        adopt_protocol(pluginmanager)

    @pytest.hookimpl(wrapper=True)
    def pytest_cmdline_main(self, config: pytest.Config) -> Generator[None, object, object]:
        # -n/--dist from addopts are conveyor's: xdist must not start a session in a worker.
        keep_xdist_out(config)
        # pytest and its reporting plugins recognise a worker of a distributed run by this
        # attribute (set by pytest-xdist too): junitxml, pytest-html and the cache then leave
        # writing to the controller. Set before any plugin's pytest_configure looks for it,
        # with what plugins put in for their workers on the controller's side.
        settings = self.settings
        self.queue = open_queue(
            settings.queue_url,
            settings.build,
            lease_ttl_s=settings.lease_ttl_s,
            build_ttl_s=settings.build_ttl_s,
        )
        workerinput = WorkerInput(
            {
                "workerid": os.environ.get("PYTEST_XDIST_WORKER", "gw0"),
                "workercount": settings.worker_count,
                "testrunuid": settings.build,
                "mainargv": list(sys.argv),
            },
            fetch=self._wait_for_plugin_input,
        )
        workerinput.merge_available(self._plugin_input(timeout_s=0.0))
        config.workerinput = workerinput  # type: ignore[attr-defined]
        config.workeroutput = {}  # type: ignore[attr-defined]
        return (yield)

    def _plugin_input(self, timeout_s: float) -> dict[str, Any] | None:
        assert self.queue is not None
        return wait_for_input(
            self.queue,
            self.settings.worker_id,
            own_controller=self.settings.own_controller,
            timeout_s=timeout_s,
        )

    def _wait_for_plugin_input(self) -> dict[str, Any] | None:
        """A plugin asked for a key only the controller's side provides: wait for it."""
        found = self._plugin_input(timeout_s=self.settings.start_timeout_s)
        if found is None:
            print(
                "conveyor: no controller published the plugins' input for this build's "
                "workers within --start-timeout; run `conveyor run` or `conveyor report` "
                "for the build.",
                file=sys.stderr,
            )
        return found

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
        forward_rerun_reports(config.pluginmanager)
        # The controller prints everything; a worker's own terminal output (progress, the
        # summary of its share of tests) would only cost time. A silent stand-in keeps the
        # terminal writer that assertion rewriting and plugins ask for; what plugins write
        # on it themselves (pytest-timeout's stack dump) goes to the worker's log.
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        writer = getattr(reporter, "_tw", None)
        if reporter is not None and writer is not None:
            config.pluginmanager.unregister(reporter)
            silent = SilentReporter(config, type(writer)(sys.__stderr__))
            config.pluginmanager.register(silent, "terminalreporter")
        self.status.write("collecting")

    @pytest.hookimpl(trylast=True)
    def pytest_unconfigure(self) -> None:
        if self._timeout_file is not None:
            self._timeout_file.close()

    # -- collection -----------------------------------------------------------------------

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if not report.passed:
            config = self._config
            data = config.hook.pytest_report_to_serializable(config=config, report=report)
            self._collect_reports.append(data)

    def pytest_internalerror(self, excrepr: object) -> None:
        # The terminal writes into the void in a worker; the supervisor reads stderr.
        for line in str(excrepr).splitlines():
            sys.stderr.write(f"INTERNALERROR> {line}\n")
        sys.stderr.flush()

    def pytest_warning_recorded(
        self, warning_message: warnings.WarningMessage, when: str, nodeid: str
    ) -> None:
        data = serialize_warning(warning_message, when, nodeid)
        if when == "runtest":
            self._warnings.append(data)
        elif when == "collect":
            self._collect_warnings.append(data)
        # "config" warnings are emitted by the controller itself, which parses the same config.

    def _manifest_meta(self, session: pytest.Session, units: list[str]) -> JSON:
        return {
            "collected": self._numcollected,
            "selected": len(units),
            "deselected": self._deselected,
            "collect_errors": session.testsfailed,
            "collect_reports": self._collect_reports,
            "collect_warnings": self._collect_warnings,
            "lf_status": last_failed_status(session.config),
            "max_unit_crashes": self.settings.max_unit_crashes,
            "hash_seed": os.environ.get("PYTHONHASHSEED"),
            "code": self._code,
            # Tells this build apart from one re-created under the same id after the queue
            # lost its state (a restarted Redis without persistence).
            "nonce": secrets.token_hex(8),
        }

    _numcollected = 0
    _deselected = 0

    @pytest.hookimpl(trylast=True)
    def pytest_itemcollected(self, item: pytest.Item) -> None:
        self._numcollected += 1

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self._deselected += len(items)

    # -- the run loop ---------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        settings = self.settings
        queue = self.queue
        assert queue is not None  # opened in pytest_cmdline_main
        items = {item.nodeid: item for item in session.items}
        collection_failed = (
            bool(session.testsfailed) and not session.config.option.continue_on_collection_errors
        )
        units = [] if collection_failed else list(items)
        self._code = identify(session.config.rootpath, {item.path for item in session.items})
        durations = history_for(settings.history, session.config, queue)
        self._has_history = bool(durations)
        if settings.test_timeout_s is None:
            self._auto_timeouts = {
                unit: AUTO_TIMEOUT_BASE_S + AUTO_TIMEOUT_FACTOR * seconds
                for unit, seconds in durations.items()
            }
        collected = units
        range_starts: frozenset[str] = frozenset()
        if queue.manifest() is None:
            # Likely the leader: serve the build in the order timing history suggests.
            serving = plan(
                units,
                durations,
                order=settings.order,
                grouping=settings.grouping,
                workers=settings.worker_count,
                seed=settings.seed,
            )
            units, range_starts = serving.order, serving.range_starts
        meta = self._manifest_meta(session, units)
        meta["range_starts"] = sorted(range_starts)
        if units != collected:
            # The controller reports in collection order, whatever the serving order.
            rank = {unit: index for index, unit in enumerate(collected)}
            meta["collection_order"] = [rank[unit] for unit in units]
        if settings.check_only:
            if self._collection_matches(queue, units):
                self.finished_normally = True
                self.status.write("done")
            return True
        if not queue.populate(settings.worker_id, units, meta) and not self._collection_matches(
            queue, units
        ):
            return True
        heartbeat = Heartbeat(queue, settings)
        try:
            queue.join(settings.worker_id, {"host": socket.gethostname(), "pid": os.getpid()})
            self.joined = True
            trace("%s joined build %s", settings.worker_id, settings.build)
            self.status.write("joined")
            heartbeat.start()
            manifest = queue.manifest()
            self._order = queue.units()
            starts = manifest.meta.get("range_starts", []) if manifest else []
            self._range_of = range_keys(self._order, frozenset(starts), settings.grouping)
            self._positions = {unit: index for index, unit in enumerate(self._order)}
            self._work(session, queue, items, heartbeat)
            self._flush(force=True)
        except BuildStateLost as exc:
            self.state_lost = True
            self.status.write("lost")
            print(f"conveyor: {exc}", file=sys.stderr)
            return True
        finally:
            heartbeat.stop()
        queue.publish(EVENT_WORKER_LEFT, settings.worker_id, {"reason": "no more work"})
        trace("%s finished: no more work", settings.worker_id)
        self.finished_normally = True
        self.status.write("done")
        return True

    def _collection_matches(self, queue: Queue, units: list[str]) -> bool:
        manifest = self._wait_for_manifest(queue)
        missing: list[str] = []
        extra: list[str] = []
        if manifest.digest == collection_digest(units):
            theirs = manifest.meta.get("code")
            other_code = describe_difference(self._code, theirs) if theirs else None
            if other_code is None:
                return True
            message = (
                f"worker {self.settings.worker_id} collected the same tests as "
                f"{manifest.leader}, which published the build, from other code ({other_code}); "
                "this worker will not run any test. Make every machine of a build check out "
                "the same commit, or give each run of other code a build id of its own."
            )
        else:
            published = set(queue.units())
            mine = set(units)
            missing, extra = sorted(published - mine), sorted(mine - published)
            message = describe_mismatch(self.settings.worker_id, manifest.leader, missing, extra)
        if not self.settings.check_only:  # a check leaves no trace in the build's record
            queue.publish(
                EVENT_WORKER_REFUSED,
                self.settings.worker_id,
                {"message": message, "missing": missing[:50], "extra": extra[:50]},
            )
        self.refused = True
        self.status.write("refused")
        print(f"conveyor: {message}", file=sys.stderr)
        return False

    def _wait_for_manifest(self, queue: Queue) -> Any:
        deadline = time.monotonic() + self.settings.start_timeout_s
        while (manifest := queue.manifest()) is None:
            if time.monotonic() > deadline:
                raise QueueError(
                    f"no worker published the build's manifest within "
                    f"{self.settings.start_timeout_s:.0f} s; is another worker still collecting?"
                )
            time.sleep(WAIT_POLL_S)
        return manifest

    def _lease_stream(self, queue: Queue, heartbeat: Heartbeat) -> LeaseStream:
        def check() -> None:
            if heartbeat.error is not None:
                raise heartbeat.error

        def on_reserved(leases: tuple[Lease, ...]) -> None:
            self._affinity = self._scope_run_after(leases[-1].unit)

        return LeaseStream(
            queue,
            self.settings.worker_id,
            batch=self._batch,
            on_reserved=on_reserved,
            check=check,
            stopped=lambda: self._stopped,
            idle=lambda: self._flush(force=True),
        )

    def _work(
        self,
        session: pytest.Session,
        queue: Queue,
        items: dict[str, pytest.Item],
        heartbeat: Heartbeat,
    ) -> None:
        hook = session.config.hook
        stream = self._lease_stream(queue, heartbeat)
        # Leases this worker holds: reserved (running or not started) and finished but not yet
        # stored. Read by the heartbeat thread; list() copies are atomic under the GIL.
        heartbeat.held = lambda: [
            *stream.held(),
            *(unit for unit, _ in list(self._outbox)),
            *(unit for unit, _ in list(self._sending)),
        ]
        for lease in stream:
            item = items.get(lease.unit)
            if item is None:
                self._refuse_uncollected(queue, lease)
                continue
            # Resolved when pytest first looks at it, at this test's teardown: see LeaseStream.
            nextitem = NextItem(lambda: _item_of(items, stream.peek()))
            self.status.write(f"running {lease.unit}")
            self._reports, self._warnings, self._exception_names = [], [], set()
            started = time.time()
            failed_before = session.testsfailed
            with self._hard_timeout(lease.unit):
                hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
            duration = time.time() - started
            payload: ResultPayload = {
                "nodeid": item.nodeid,
                "location": list(item.location),
                "reports": self._reports,
                "warnings": self._warnings,
                "attempt": lease.attempt,
                "started": started,
                "duration": duration,
            }
            self._recent_durations.append(duration)
            self.status.write("between tests")
            stored: JSON = dict(payload)  # the queue's JSON object
            if self._should_retry() and self._requeue(queue, lease.unit, stored):
                # Not a final failure: it must not trip this worker's -x / --maxfail.
                session.testsfailed = failed_before
                session.shouldfail = False
            else:
                self._outbox.append((lease.unit, bounded_payload(stored)))
                self._flush()
            stream.raise_deferred()
            if self._stopped or session.shouldfail or session.shouldstop:
                # -x, --maxfail or a stop of the whole build: nothing more runs here.
                self._flush(force=True)
                stream.stop("the build was stopped; unstarted units returned")
                return
            if self._should_give_back():
                # Without history this worker took a run of tests that turn out slow: other
                # workers may be idle, so the unstarted ones go back to the front of the queue,
                # except the rest of this test's class, which stays on this worker.
                self._flush(force=True)
                rest_of_class = 0
                if self.settings.grouping != "test":
                    for unit in stream.unstarted():
                        if not same_class(lease.unit, unit):
                            break
                        rest_of_class += 1
                stream.hand_back("slow run handed back", keep=rest_of_class)
                self._affinity = 0

    def _refuse_uncollected(self, queue: Queue, lease: Lease) -> None:
        """A unit this worker did not collect came out of the queue: something other than a
        worker of this build wrote it there. It is not run; it is logged, reported as an error
        of the build, and completed (the controller rejects the result) so the build ends."""
        message = (
            f"worker {self.settings.worker_id} was handed {lease.unit!r}, which it did not "
            "collect; it was not run. A worker runs only tests it collected itself: something "
            "other than a conveyor worker of this build wrote this one into the queue."
        )
        print(f"conveyor: {message}", file=sys.stderr, flush=True)
        queue.publish(EVENT_WORKER_ERROR, self.settings.worker_id, {"message": message})
        payload = {"nodeid": lease.unit, "location": [lease.unit, None, lease.unit]}
        self._outbox.append((lease.unit, {**payload, "reports": [], "attempt": lease.attempt}))
        self._flush(force=True)

    @contextlib.contextmanager
    def _hard_timeout(self, unit: str) -> Iterator[None]:
        """faulthandler's watchdog is a C thread: it fires even when the test holds the GIL or
        sleeps in C, dumps every thread's stack to the timeout file and ends the process; the
        supervisor then reports the test as timed out and starts a replacement."""
        fixed = self.settings.test_timeout_s
        timeout = fixed if fixed is not None else self._auto_timeouts.get(unit)
        if not timeout or self._timeout_file is None:
            yield
            return
        seconds = f"{timeout:.1f}".rstrip("0").rstrip(".")
        if fixed is None:
            # The automatic timeout: cheap per test (see conveyor.watchdog).
            if self._watchdog is None:
                self._watchdog = Watchdog(self._timeout_file)
                self._watchdog.start()
            self._watchdog.arm(
                timeout, f"{TIMEOUT_HEADER} {seconds} automatic, from timing history"
            )
            try:
                yield
            finally:
                self._watchdog.disarm()
            return
        handle = self._timeout_file
        handle.seek(0)
        handle.truncate()
        handle.write(f"{TIMEOUT_HEADER} {seconds} --test-timeout\n")
        handle.flush()
        faulthandler.dump_traceback_later(timeout, exit=True, file=handle)
        try:
            yield
        finally:
            faulthandler.cancel_dump_traceback_later()

    def _scope_run_after(self, unit: str) -> int:
        """How many units follow `unit` in the serving order within its module (or class, or
        range of a split module): the next reservation takes them all, so one worker runs
        them in a row and sets their fixtures up once."""
        position = self._positions.get(unit)
        if position is None or self.settings.grouping == "test":
            return 0
        scope = self._scope_key(unit)
        run = 0
        for following in self._order[position + 1 : position + 1 + MAX_BATCH]:
            if self._scope_key(following) != scope:
                break
            run += 1
        return run

    def _batch(self, pending: int) -> int:
        """How many units the next reservation asks for. A module's run of tests goes to one
        worker whole, so its fixtures are set up once: with timing history the leader has
        split the modules too long for balance into ranges (each held together); without
        it the run is cut to about AFFINITY_TARGET_S of work by the durations seen so far
        (nothing seen yet: one unit). Outside such runs the batch follows those durations."""
        return self._to_class_end(pending, self._batch_within_runs(pending))

    def _batch_within_runs(self, pending: int) -> int:
        typical = self._typical_test_s()
        run = self._affinity or self._run_at_front(pending)
        if run <= 1:
            return batch_size(pending, self.settings.worker_count, typical)
        if self._has_history:
            return min(run, MAX_BATCH)
        if typical is None:
            return 1
        return max(1, min(run, MAX_BATCH, int(AFFINITY_TARGET_S / max(typical, 1e-6))))

    def _to_class_end(self, pending: int, want: int) -> int:
        """A reservation never ends inside a class: a class's tests (a unittest TestCase, a
        class with class-scoped fixtures, tests that depend on an earlier one) run on one
        worker, in order. Only --dist test (pytest-xdist's load) lets a class be split."""
        if self.settings.grouping == "test":
            return want
        start = len(self._order) - pending
        if not 0 <= start < len(self._order):
            return want
        end = start + want
        while 0 < end < len(self._order) and same_class(self._order[end - 1], self._order[end]):
            end += 1
        return end - start

    def _should_give_back(self) -> bool:
        last = self._recent_durations[-1] if self._recent_durations else 0.0
        return not self._has_history and last > GIVE_BACK_AFTER_S

    def _scope_key(self, unit: str) -> str:
        return self._range_of.get(unit) or scope_of(unit, self.settings.grouping)

    def _run_at_front(self, pending: int) -> int:
        """The module run that the queue is about to serve: units are served in the published
        order, so with `pending` units left the front is at position total - pending."""
        position = len(self._order) - pending
        if not 0 <= position < len(self._order):
            return 0
        return 1 + self._scope_run_after(self._order[position])

    def _typical_test_s(self) -> float | None:
        """How long this worker's recent tests took. The queue serves the slowest first, so
        the recent past overestimates what comes next: batches err on the small side."""
        if self._recent_durations:
            return sum(self._recent_durations) / len(self._recent_durations)
        return None

    def _should_retry(self) -> bool:
        if self.settings.max_requeues <= 0:
            return False
        failed = any(report.get("outcome") == "failed" for report in self._reports)
        if not failed:
            return False
        wanted = set(self.settings.retry_on)
        return not wanted or bool(wanted & self._exception_names)

    def _requeue(self, queue: Queue, unit: str, payload: JSON) -> bool:
        """True when the failed attempt went back to the queue (or the unit is already done
        elsewhere); False when the retry budget is spent and this result is final."""
        answer = queue.requeue(
            self.settings.worker_id,
            unit,
            payload,
            max_requeues=self.settings.max_requeues,
            tolerance=self.settings.requeue_tolerance,
        )
        return answer in (REQUEUED, ALREADY_DONE)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if call.excinfo is not None:
            self._exception_names |= exception_names(call.excinfo.value)
        return report

    def _flush(self, force: bool = False) -> None:
        if not self._outbox or self.queue is None:
            return
        due = time.monotonic() - self._last_flush >= FLUSH_INTERVAL_S
        if not (force or due or len(self._outbox) >= FLUSH_MAX_RESULTS):
            return
        batch = self._sending = self._outbox
        self._outbox = []
        try:
            self.queue.complete(self.settings.worker_id, batch)
        finally:
            self._sending = []
        self._last_flush = time.monotonic()
        if self.queue.status().stop_reason is not None:
            self._stopped = True

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        config = self._config
        settle_outcome(config, report)
        self._reports.append(
            cap_report(config.hook.pytest_report_to_serializable(config=config, report=report))
        )


def history_for(where: str, config: pytest.Config, queue: Queue) -> dict[str, float]:
    """Durations from earlier builds, or {} when there are none (or they cannot be read)."""
    store = history_store(where, config, queue)
    try:
        return store.load() if store is not None else {}
    except (QueueError, OSError, ValueError):
        return {}  # ordering is an optimisation; never fail a build over it


def exception_names(error: BaseException) -> set[str]:
    """Class names (with their bases) of an exception and of everything in its chain, so that
    `--retry-on ConnectionError` also matches a ConnectionRefusedError raised from another."""
    names: set[str] = set()
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        names.update(cls.__name__ for cls in type(current).__mro__)
        current = current.__cause__ or current.__context__
    return names


def batch_size(pending: int, worker_count: int, typical_test_s: float | None = None) -> int:
    """How many units to reserve at once: tiny tests travel in batches (fewer round trips),
    slow ones alone (a batch of slow tests would pin them to one worker), and batches shrink
    near the end so that the tail stays balanced across workers."""
    if typical_test_s is None:
        return 1  # nothing seen yet: the first units served may be the slowest of the build
    share = pending // max(1, 4 * worker_count)
    if typical_test_s > 0:
        share = min(share, int(BATCH_TARGET_S / typical_test_s))
    return max(1, min(MAX_BATCH, share))


def describe_mismatch(worker: str, leader: str, missing: list[str], extra: list[str]) -> str:
    def sample(ids: list[str]) -> str:
        shown = ", ".join(ids[:10])
        return shown + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")

    parts = [
        f"worker {worker} collected a different set of tests than {leader}, "
        "which published the build;"
    ]
    if missing:
        parts.append(f"{len(missing)} missing here ({sample(missing)});")
    if extra:
        parts.append(f"{len(extra)} extra here ({sample(extra)});")
    parts.append(
        "this worker will not run any test. Make every machine run the same code with the same "
        "arguments, and make collection deterministic (no random or time-based parametrize)."
    )
    return " ".join(parts)


def main() -> int:
    """Entry point of a worker process: `python -m conveyor.worker PYTEST_ARGS...`."""
    # `python -m` put the working directory first on sys.path; plain `pytest` does not, and
    # imports must resolve exactly as they would in a plain run.
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
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
    setup_failure = run_worker_setup(settings)
    if setup_failure is not None:
        return setup_failure
    plugin = WorkerPlugin(settings)
    code = pytest.main(sys.argv[1:], plugins=[plugin])
    if plugin.refused:
        return EXIT_REFUSED
    if plugin.state_lost:
        return EXIT_STATE_LOST
    if plugin.finished_normally:
        return EXIT_DONE
    return int(code) or 3


if __name__ == "__main__":
    sys.exit(main())
