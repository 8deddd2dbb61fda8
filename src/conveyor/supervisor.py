"""Local worker processes: spawn them, watch them, and clean up after the ones that die.

A worker that dies mid-test has its leases released at once (no waiting for expiry), with the
test it was running named as the culprit; after a unit has killed `max_unit_crashes` workers the
queue finalises it as a failure, so a segfaulting test never loops forever. A worker that dies
before running anything is not restarted: the same start would fail the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from conveyor import environment, interrupts
from conveyor.environment import worker_environment, write_settings_file
from conveyor.errors import QueueError
from conveyor.fork_client import ForkedProcess, ForkServerProcess
from conveyor.fork_server import ForkRequest
from conveyor.preload_server import PRELOAD_ENV
from conveyor.queue import Queue

if TYPE_CHECKING:
    from conveyor.command import CommandSettings
from conveyor.trace import event
from conveyor.vocabulary import EXIT_DONE, EXIT_ORPHANED
from conveyor.worker_exit import (
    WorkerFailure,
    WorkerProcess,
    describe_exit,
    diagnose_crash,
    ended_after_its_tests,
    ended_for_good,
    may_still_report,
    tail,
    written_as_session_ended,
)
from conveyor.worker_settings import WorkerSettings

WorkerStart = Literal["spawn", "preload", "fork"]
POLL_INTERVAL_S = 0.05
trace = event("supervisor")
TERMINATE_GRACE_S = 5.0
STRAGGLER_WAIT_S = 30.0


def _signal_group(process: subprocess.Popen[bytes] | ForkedProcess, signum: int) -> None:
    """A worker leads a process group of its own (it was started in a new session): the
    signal reaches what its tests started too, not only the worker."""
    if process.pid is None:  # a worker the fork server has not forked yet
        return
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)


def _kill_what_it_left(process: subprocess.Popen[bytes] | ForkedProcess) -> None:
    """A worker that ended inside a test (a crash, its hard timeout) never ran that test's
    teardown: what the test started in the worker's process group (a server, a subprocess)
    would outlive the build, reparented to init. The group is empty once they are gone; Linux
    reuses no pid that is still some group's id, so this reaches only what the worker left."""
    if process.pid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


class Supervisor:
    """Starts `count` worker processes for one build and keeps the build moving when they die."""

    def __init__(
        self,
        *,
        queue: Queue,
        count: int,
        settings_template: WorkerSettings,
        pytest_args: Sequence[str],
        run_dir: Path,
        env: Mapping[str, str],
        max_restarts: int,
        node: str = "",
        max_worker_failures: int | None = None,
        log_dir: Path | None = None,
        command: CommandSettings | None = None,
        start: WorkerStart = "spawn",
    ) -> None:
        self.queue = queue
        self.count = count
        self.template = settings_template
        self.pytest_args = list(pytest_args)
        self.run_dir = run_dir
        self.env = dict(env)
        self.max_restarts = max_restarts
        self.max_worker_failures = max_worker_failures
        self.log_dir = log_dir
        self.command = command
        self.start_mode = start
        self.fork_server: ForkServerProcess | None = None
        self._server_env: dict[str, str] = {}
        self.restarts = 0
        self._stopped: set[int] = set()  # forked workers stopped because their server ended
        self._stopped_by_shutdown: set[int] = set()  # id() of processes a shutdown signalled
        self.node = node
        self.failures: list[WorkerFailure] = []
        self.slots = [WorkerProcess(name=f"gw{i}", index=i) for i in range(count)]
        self.logs: list[Path] = []  # every worker's log, a restarted one's too, in start order
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="conveyor-supervisor", daemon=True)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.start_mode == "fork":
            self.fork_server = self._start_fork_server()
        elif self.start_mode == "preload":
            self.fork_server = self._start_preload_server()
        for slot in self.slots:
            self._spawn(slot)
        self._thread.start()

    def worker_id(self, slot: WorkerProcess) -> str:
        return f"{self.node}{slot.name}"

    def runs(self, worker_id: str) -> bool:
        """Whether `worker_id` is one of this machine's workers."""
        return any(self.worker_id(slot) == worker_id for slot in self.slots)

    def _spawn(self, slot: WorkerProcess) -> None:
        slot.incarnation += 1
        suffix = "" if slot.incarnation == 1 else f".{slot.incarnation}"
        slot.log_path = (self.log_dir or self.run_dir) / f"{slot.name}{suffix}.log"
        self.logs.append(slot.log_path)
        slot.status_path = self.run_dir / f"{slot.name}{suffix}.status"
        slot.timeout_path = self.run_dir / f"{slot.name}{suffix}.timeout"
        settings = self.template.replace(
            worker_id=self.worker_id(slot),
            status_file=str(slot.status_path),
            timeout_file=str(slot.timeout_path),
            supervisor_pid=os.getpid(),
        )
        settings_path = self.run_dir / f"{slot.name}{suffix}.settings"
        write_settings_file(
            settings_path, self.command.to_env(settings) if self.command else settings.to_env()
        )
        env = self._environment(slot.name, settings_path)
        if self.fork_server is not None and not self._spawning_instead():
            # Only what makes this worker differ from the server travels with the request.
            request = ForkRequest(
                slot.name,
                slot.incarnation,
                str(slot.log_path),
                {name: value for name, value in env.items() if self._server_env.get(name) != value},
            )
            slot.process = self.fork_server.fork(request)
            slot.state = "running"
            trace("asked for %s (incarnation %d) from the fork server", slot.name, slot.incarnation)
            return
        with slot.log_path.open("wb") as log:
            # A session of its own: Ctrl-C in the terminal reaches the controller only, which
            # then stops the build in order instead of every process dying mid-write.
            slot.process = subprocess.Popen(
                [sys.executable, "-m", self._worker_module(), *self._worker_args()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        slot.state = "running"
        trace("spawned %s (incarnation %d) pid=%d", slot.name, slot.incarnation, slot.process.pid)

    def _spawning_instead(self) -> bool:
        """The preloaded fork server is gone (it found a thread running, or something killed
        it): from then on workers are spawned, as without it."""
        server = self.fork_server
        return self.start_mode == "preload" and server is not None and server.gone

    def _environment(self, name: str, settings_path: Path) -> dict[str, str]:
        own = {
            environment.SETTINGS_FILE: str(settings_path),
            environment.XDIST_WORKER: name,
            environment.XDIST_WORKER_COUNT: str(self.count),
            environment.WORKER: name,
            environment.WORKER_COUNT: str(self.count),
        }
        return worker_environment({**self.env, **own}, os.environ)

    def _start_preload_server(self) -> ForkServerProcess:
        """The default on Linux: one process imports pytest and forks every worker before it
        configures (conveyor.preload_server). It has no worker's id or settings; each forked
        worker gets its own with its request. Its log stays out of --worker-logs: it
        runs nothing of the project's (if it fails, each worker's log gets a copy)."""
        # No worker's id: what runs as the interpreter starts (a .pth file) runs once, here.
        self._server_env = worker_environment(dict(self.env), os.environ)
        return ForkServerProcess(
            [sys.executable, "-m", self._worker_module(), *self._worker_args()],
            {**self._server_env, PRELOAD_ENV: "1"},
            self.run_dir / "preload-server.log",
        )

    def _start_fork_server(self) -> ForkServerProcess:
        """--fork-workers: one process imports and collects the suite; the workers are forked
        from it (conveyor.fork_server). It configures as gw0 would: plugins that look at the
        worker id while they configure see gw0's in every worker."""
        first = self.slots[0].name
        settings = self.template.replace(
            worker_id=f"{self.node}{first}",
            status_file=str(self.run_dir / "fork-server.status"),
            timeout_file=None,
            supervisor_pid=os.getpid(),
            fork_server=True,
            worker_setup=None,  # each forked worker runs it, with its own id
        )
        settings_path = self.run_dir / "fork-server.settings"
        write_settings_file(settings_path, settings.to_env())
        self._server_env = self._environment(first, settings_path)
        return ForkServerProcess(
            [sys.executable, "-m", self._worker_module(), *self._worker_args()],
            self._server_env,
            (self.log_dir or self.run_dir) / "fork-server.log",
        )

    def _worker_args(self) -> list[str]:
        """A pytest worker runs without pytest-xdist's plugin: it is no xdist worker, and plugins
        that would reach a controller over xdist's side channels (pytest-rerunfailures' socket
        on the controller's machine) keep their state in the worker instead. What plugins need
        from the controller comes through the queue (conveyor.xdist_compat)."""
        if self.command:
            return list(self.pytest_args)
        return ["-p", "no:xdist", *self.pytest_args]

    def _worker_module(self) -> str:
        return "conveyor.command" if self.command else "conveyor.worker"

    # -- watching -------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.wait(POLL_INTERVAL_S):
            with self._lock:
                self._see_exits()

    def _see_exits(self) -> None:
        """Settle the slots whose worker has ended (under the lock)."""
        self._stop_orphans()
        for slot in self.slots:
            if slot.state != "running" or slot.process is None:
                continue
            returncode = slot.process.poll()
            if returncode is not None:
                self._on_exit(slot, returncode)

    def _on_exit(self, slot: WorkerProcess, returncode: int) -> None:
        trace("%s exited with %d, status %r", slot.name, returncode, slot.status())
        # Exit code 0 without the worker's own "done" is not the worker finishing: a test
        # called os._exit(0) or sys.exit(0) from a thread. It is a crash of the running test.
        if returncode == EXIT_DONE and slot.status() == "done":
            slot.state = "done"
            return
        if slot.process is not None:
            _kill_what_it_left(slot.process)
        if isinstance(slot.process, ForkedProcess) and (
            self._preload_server_lost(slot) or self._fork_server_lost(slot)
        ):
            return
        if (failed_at_end := ended_after_its_tests(slot, returncode)) is not None:
            slot.state = "done"  # its tests are stored: nothing to restart or hand back
            self.failures.append(failed_at_end)
            return
        ended = ended_for_good(slot, returncode)
        if ended is not None:  # refused, or the build is gone: restarting would not help
            slot.state, failure = ended
            self.failures.append(failure)
            return
        crash = diagnose_crash(slot, returncode)
        self.failures.append(crash.failure)
        if crash.started:
            # If the build is gone, there is nothing to release; the controller reports that.
            with contextlib.suppress(QueueError):
                self.queue.release(self.worker_id(slot), crash.cause(self.log_dir is not None))
        # A worker that failed while starting would fail the same way again, unless something
        # killed it from outside (a signal: the OOM killer, a chaos test).
        worth_restarting = (crash.started or returncode < 0) and not (
            self.start_mode == "fork" and self.fork_server is not None and self.fork_server.gone
        )
        if worth_restarting and not self._stop.is_set() and self.restarts < self.max_restarts:
            self.restarts += 1
            self._spawn(slot)
        else:
            slot.state = "failed"

    def _stop_orphans(self) -> None:
        """The preloaded fork server is gone: the workers it forked are stopped now, before
        they start more tests (each would notice at its next heartbeat, in the middle of one),
        and are replaced by spawned workers as they are seen to end."""
        server = self.fork_server
        if self.start_mode != "preload" or server is None or not server.gone:
            return
        for slot in self.slots:
            process = slot.process
            if slot.state != "running" or not isinstance(process, ForkedProcess):
                continue
            if process.orphaned and process.pid is not None and process.pid not in self._stopped:
                self._stopped.add(process.pid)
                trace("stopping %s: the preloaded fork server is gone", slot.name)
                _signal_group(process, signal.SIGKILL)

    def _preload_server_lost(self, slot: WorkerProcess) -> bool:
        """A worker that the preloaded fork server never forked, or that left because the
        server ended under it (its parent went away), is no crash of a test: its tests go
        back, and it is spawned afresh. True when that is the case."""
        process, server = slot.process, self.fork_server
        if self.start_mode != "preload" or server is None:
            return False
        assert isinstance(process, ForkedProcess)
        # Never forked: the server is gone, or it could not fork (out of processes).
        if not (process.pid is None or (server.gone and process.orphaned)):
            return False
        if slot.status() == "done":
            slot.state = "done"
            return True
        if process.pid is not None:
            code = server.process.returncode
            ended = describe_exit(code) if code is not None else "gone"
            reason = (
                f"worker {self.worker_id(slot)} left because the process it was forked from "
                f"(conveyor's preloaded fork server) ended ({ended}); a new worker was spawned"
            )
            with contextlib.suppress(QueueError):
                self.queue.release(
                    self.worker_id(slot), {"reason": reason, "returncode": EXIT_ORPHANED}
                )
        trace("%s is spawned: the preloaded fork server is gone", slot.name)
        if self._stop.is_set():
            slot.state = "failed"
        else:
            self._spawn(slot)
        return True

    def _fork_server_lost(self, slot: WorkerProcess) -> bool:
        """A forked worker that ended because its fork server did (killed from outside, out of
        memory) is no crash of the test it was running, and cannot be replaced: its tests go
        back to the queue, and the failure names the server. True when that is the case."""
        process, server = slot.process, self.fork_server
        assert isinstance(process, ForkedProcess)
        if server is None:
            return False
        # A server that ended before forking anything failed to start: reported as a worker
        # that failed to start, with the server's output, as a spawned one would be.
        if not (process.orphaned or (process.pid is None and server.gone and server.forked_any)):
            return False
        code = server.process.returncode
        cause = f"the fork server ({describe_exit(code) if code is not None else 'gone'})"
        self.failures.append(
            WorkerFailure(
                worker=self.worker_id(slot),
                cause=(
                    f"stopped: {cause} ended, so this worker could not go on or be replaced "
                    "(run the build again; if the fork server keeps ending, run without "
                    "--fork-workers)"
                ),
                culprit=None,
                output_tail=tail(server.log_path),
                during_startup=process.pid is None,
            )
        )
        slot.state = "failed"
        if process.pid is not None:
            with contextlib.suppress(QueueError):
                self.queue.release(self.worker_id(slot), {"reason": f"{cause} ended"})
        return True

    # -- queries for the controller -------------------------------------------------------

    def alive(self) -> int:
        """Workers still running. The watch thread keeps the slots current until shutdown
        stops it; a Ctrl-C can still come after that (as the session ends), and whoever then
        waits for the workers to leave must see them leave: the slots are looked at here."""
        with self._lock:
            if not self._thread.is_alive():
                self._see_exits()
            return sum(1 for slot in self.slots if slot.state == "running")

    def wait(self) -> None:
        """Block until every slot has ended (done, refused, lost or failed for good)."""
        while self.alive():
            interrupts.raise_if_lost()
            time.sleep(POLL_INTERVAL_S)

    def final_states(self) -> list[str]:
        with self._lock:
            return [slot.state for slot in self.slots]

    def leave(self, reason: str) -> None:
        """This machine leaves a shared build that goes on elsewhere: stop the workers now and
        hand their tests back at once (nobody is charged a crash) instead of on lease expiry."""
        self.shutdown(terminate=True)
        for slot in self.slots:
            if slot.incarnation:
                with contextlib.suppress(QueueError):
                    self.queue.release(self.worker_id(slot), {"reason": reason})

    def too_many_failures(self) -> bool:
        """More workers failed outside any test than --max-worker-failures allows."""
        if self.max_worker_failures is None:
            return False
        with self._lock:
            outside = [
                f
                for f in self.failures
                if f.culprit is None and not f.refused and not f.at_session_end
            ]
        return len(outside) > self.max_worker_failures

    def all_failed_at_startup(self) -> bool:
        with self._lock:
            return all(slot.state in ("failed", "refused", "lost") for slot in self.slots) and all(
                failure.during_startup for failure in self.failures
            )

    def wait_for_stragglers(self, timeout_s: float = STRAGGLER_WAIT_S) -> bool:
        """After the build finished: wait (bounded) for workers that may still say something
        about it (one still comparing its collection may refuse; one that was frozen mid-test
        may deliver a late result, to be rejected). True if there were any."""
        deadline = time.monotonic() + timeout_s
        waited = False
        while time.monotonic() < deadline:
            with self._lock:
                checking = [
                    slot
                    for slot in self.slots
                    if slot.state == "running" and may_still_report(slot.status())
                ]
            if not checking:
                return waited
            waited = True
            time.sleep(POLL_INTERVAL_S)
        return waited

    def wait_for_exit(self, timeout_s: float = TERMINATE_GRACE_S) -> bool:
        """After the build finished: wait (bounded) for the workers to end on their own, as
        they do once their session has ended. True if none is left running."""
        deadline = time.monotonic() + timeout_s
        while self.alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL_S)
        return True

    def session_end_outputs(self) -> dict[str, str]:
        """What each worker wrote as its pytest session ended, after its tests, by slot
        (its last process's log), where it wrote anything. Only a worker that did its work
        counts: one that a usage error ended writes the error, which the report gives."""
        with self._lock:
            logs = [
                (slot.name, slot.log_path)
                for slot in self.slots
                if slot.log_path and slot.status() == "done"
            ]
        written = {name: written_as_session_ended(path) for name, path in logs}
        return {name: text for name, text in written.items() if text}

    def session_end_failures(self) -> list[WorkerFailure]:
        """Workers whose pytest session failed as it ended, after their tests
        (`ended_after_its_tests`): the build fails as plain pytest's run does."""
        with self._lock:
            return [failure for failure in self.failures if failure.at_session_end]

    # -- shutdown -------------------------------------------------------------------------

    def shutdown(self, timeout_s: float = TERMINATE_GRACE_S, terminate: bool = False) -> None:
        """Wait for workers to leave on their own (they do once the build is finished); then
        terminate, and finally kill, whatever is still there."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.fork_server is not None:
            self.fork_server.stop_forking()
        processes = [slot.process for slot in self.slots if slot.process is not None]
        if terminate:
            # Not the fork server: it reports how its workers end, then ends itself.
            for process in processes:
                if process.poll() is None:
                    _signal_group(process, signal.SIGTERM)
                    self._stopped_by_shutdown.add(id(process))
        deadline = time.monotonic() + timeout_s
        for process in processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                self._stopped_by_shutdown.add(id(process))
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(TERMINATE_GRACE_S)
        self._see_session_ends()
        if self.fork_server is not None:
            self.fork_server.close()
            self.fork_server.wait(max(0.0, deadline - time.monotonic()) + TERMINATE_GRACE_S)

    def _see_session_ends(self) -> None:
        """Once the watch thread has stopped, the workers that ended on their own while
        shutdown waited for them: one whose session failed as it ended is noted as the watch
        thread would have. One a shutdown stopped is not: its end was not its own."""
        stopped = self._stopped_by_shutdown
        with self._lock:
            for slot in self.slots:
                process = slot.process
                if slot.state != "running" or process is None or id(process) in stopped:
                    continue
                returncode = process.poll()
                if returncode is None:
                    continue
                if (failed_at_end := ended_after_its_tests(slot, returncode)) is not None:
                    self.failures.append(failed_at_end)
