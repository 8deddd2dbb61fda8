"""Following a build through the queue: wait for the manifest, page through the event stream,
and notice when the build cannot go on (no worker left, no start, a stall, a lost build).

It knows nothing of pytest: events go to the handlers it is given, and a build that cannot go
on raises `BuildAborted` with a message for the person at the terminal.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from conveyor import interrupts
from conveyor.errors import BuildAborted, BuildStateLost, SessionEnded
from conveyor.problems import BuildProblems, how_to_resume
from conveyor.queue import Queue
from conveyor.queue.protocol import Event, Manifest
from conveyor.supervisor import Supervisor

POLL_MIN_S = 0.005
POLL_MAX_S = 0.02
MANIFEST_CHECK_S = 1.0
EVENTS_PAGE = 2000  # events read per round trip
OTHERS_CHECKS, OTHERS_POLL_S = 20, 0.05  # look for another machine's lease for about 1 s

Handler = Callable[[Event], None]


@dataclass(frozen=True)
class FollowSettings:
    build: str
    start_timeout_s: float = 600.0
    stall_timeout_s: float = 1800.0
    shared: bool = False  # other machines may work on this build


def backoff(delay: float) -> float:
    """Sleep `delay`, and return the next, longer one (bounded): an idle queue is polled less."""
    time.sleep(delay)
    return min(POLL_MAX_S, delay * 2)


class BuildFollower:
    """The controller's read side of the queue: one cursor into the event stream."""

    def __init__(
        self,
        queue: Queue,
        supervisor: Supervisor | None,
        settings: FollowSettings,
        problems: BuildProblems,
        handlers: Mapping[str, Handler],
        reported: Collection[str],
    ) -> None:
        self.queue = queue
        self.supervisor = supervisor
        self.settings = settings
        self.problems = problems
        self.handlers = dict(handlers)
        self.reported = reported  # the tests with a final result so far (kept by the replay)
        self.cursor = 0
        self.finished = False
        self.reporting_only = False  # no local worker left; other machines work on
        self.started_at = time.monotonic()
        self.manifest: Manifest | None = None

    def drain(self) -> int:
        """Dispatch every event not yet seen; returns how many there were."""
        seen = 0
        for event in self.queue.iter_events(self.cursor, EVENTS_PAGE):
            handler = self.handlers.get(event.kind)
            if handler is not None:
                handler(event)
            self.cursor = event.seq
            seen += 1
        return seen

    def all_events(self) -> list[Event]:
        """The whole stream from its start (for the timeline and the GitHub summary)."""
        return list(self.queue.iter_events(0, EVENTS_PAGE))

    # -- start ------------------------------------------------------------------------------

    def wait_for_manifest(self) -> Manifest:
        deadline = time.monotonic() + self.settings.start_timeout_s
        delay = POLL_MIN_S
        while True:
            interrupts.raise_if_lost()
            manifest = self.queue.manifest()
            if manifest is not None:
                self.manifest = manifest
                return manifest
            self.drain()
            self._refuse_as_pytest_did()
            if self.supervisor is not None and (
                self.supervisor.alive() == 0 or self.supervisor.too_many_failures()
            ):
                self.abort_without_workers()
            if time.monotonic() > deadline:
                raise BuildAborted(
                    f"conveyor: no worker finished collecting within "
                    f"{self.settings.start_timeout_s:.0f} s (queue {self.queue.display_url})."
                )
            delay = backoff(delay)

    # -- the run ----------------------------------------------------------------------------

    def follow(
        self,
        on_progress: Callable[[], None],
        stop_reason: Callable[[], str | None],
        before_events: Callable[[], None] = lambda: None,
    ) -> None:
        """Dispatch events until the build finishes; a stop asked for by the session (-x,
        --maxfail) is passed on to the queue once. `before_events` runs before each look at
        the queue (what a test printed comes before its result)."""
        delay = POLL_MIN_S
        stopped = False
        last_progress = last_check = time.monotonic()
        while not self.finished:
            interrupts.raise_if_lost()
            before_events()
            if time.monotonic() - last_check > MANIFEST_CHECK_S:
                self.check_same_build()
                self.check_started()
                last_check = time.monotonic()
            if self.drain():
                delay = POLL_MIN_S
                last_progress = time.monotonic()
                on_progress()
            else:
                self._check_workers_left()
                if time.monotonic() - last_progress > self.settings.stall_timeout_s:
                    self.abort_stalled()
                delay = backoff(delay)
            reason = stop_reason()
            if reason and not stopped:
                self.queue.stop(reason)
                stopped = True

    def _check_workers_left(self) -> None:
        supervisor = self.supervisor
        if supervisor is None or self.reporting_only:
            return
        if supervisor.alive() and not supervisor.too_many_failures():
            return
        self.drain()
        if self.finished:
            return
        if self.settings.shared and self.others_are_working():
            # This machine cannot work (its workers were refused, say), but the build goes
            # on elsewhere: report it whole when it is finished.
            self.reporting_only = True
        else:
            self.abort_without_workers()

    def others_are_working(self) -> bool:
        """Whether another machine holds a test of this build within about a second (a worker
        between two tests holds none for a moment)."""
        for _ in range(OTHERS_CHECKS):
            if self.queue.status().leased:
                return True
            time.sleep(OTHERS_POLL_S)
        return False

    def wait_for_local_workers(self) -> None:
        """Drain events while local workers finish what they run (after a first Ctrl-C)."""
        while self.supervisor is not None and self.supervisor.alive() > 0:
            interrupts.raise_if_lost()
            self.drain()
            time.sleep(POLL_MAX_S)

    # -- checks -----------------------------------------------------------------------------

    def check_same_build(self) -> None:
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

    def check_started(self) -> None:
        """--start-timeout: a build in which no worker ever took a test is not waited on."""
        if self.reported:
            return
        if time.monotonic() - self.started_at < self.settings.start_timeout_s:
            return
        status = self.queue.status()
        if status.leased == 0 and status.done == 0 and not status.finished:
            raise BuildAborted(
                f"conveyor: no worker has taken a test of build {self.settings.build} within "
                f"{self.settings.start_timeout_s:.0f} s (--start-timeout); "
                f"{len(status.workers)} worker(s) joined. Are workers running with the same "
                f"--queue and --build?"
            )

    def abort_stalled(self) -> None:
        never_ran = sorted(set(self.queue.units()) - set(self.reported))
        self.problems.missing = never_ran
        shown = "\n".join(f"  {nodeid}" for nodeid in never_ran[:20])
        more = f"\n  ... and {len(never_ran) - 20} more" if len(never_ran) > 20 else ""
        raise BuildAborted(
            f"conveyor: nothing happened in build {self.settings.build} for "
            f"{self.settings.stall_timeout_s:.0f} s while {len(never_ran)} test(s) have no "
            f"result; are any workers still running? (--stall-timeout)\n{shown}{more}"
        )

    def _refuse_as_pytest_did(self) -> None:
        """One of this machine's workers found the command line wrong while it collected,
        before the build had a manifest: its pytest's verdict is this run's (another
        machine's is its own: it may have another checkout)."""
        supervisor = self.supervisor
        if supervisor is None or self.manifest is not None:
            return
        for ending in self.problems.endings.values():
            if supervisor.runs(ending.worker):
                raise SessionEnded(ending)

    def abort_without_workers(self) -> None:
        assert self.supervisor is not None
        self.drain()  # what the last worker said before it ended
        self._refuse_as_pytest_did()
        if self.supervisor.too_many_failures():
            lines = [
                f"conveyor: more than {self.supervisor.max_worker_failures} worker(s) failed "
                "outside any test (--max-worker-failures); the build was aborted."
            ]
            self.queue.stop("too many worker failures")
            self.supervisor.shutdown(terminate=True)
        else:
            lines = ["conveyor: every worker stopped before the build could finish."]
        lines += self.problems.refused
        for failure in self.supervisor.failures[-3:]:
            lines.append(f"worker {failure.worker} {failure.cause}; its last output:")
            lines.append(failure.output_tail or "(no output)")
        raise BuildAborted("\n".join(lines))

    # -- Ctrl-C -------------------------------------------------------------------------------

    def interrupted(self, say: Callable[[str], None]) -> bool:
        """The person at the terminal interrupted the build. On a shared queue this machine
        leaves and the build goes on elsewhere (True: it did); with nobody else holding a
        test it is stopped, to be resumed. Alone, running tests finish and report first; a
        second interrupt stops them at once."""
        supervisor = self.supervisor
        with interrupts.held():  # a second Ctrl-C here would leave the build half stopped
            stopped = self._stop_or_leave(say)
        if stopped is not None:
            return stopped
        try:
            self.wait_for_local_workers()
        except KeyboardInterrupt:
            interrupts.acted_on()
            if supervisor is not None:
                supervisor.shutdown(terminate=True)
        with interrupts.held():
            self.drain()
        return False

    def _stop_or_leave(self, say: Callable[[str], None]) -> bool | None:
        """What `interrupted` does before running tests are waited for: None when they are
        to be waited for, else whether this machine left a build that goes on elsewhere."""
        supervisor = self.supervisor
        if self.settings.shared and supervisor is not None:
            supervisor.leave("this machine was interrupted; its tests go back")
            left = self.others_are_working()
            if left:
                say(
                    f"conveyor: leaving the build{interrupts.received()}: this machine's "
                    "workers stopped, running tests included, and their tests went back to "
                    "the queue for the other machines"
                )
            else:
                self.queue.stop("interrupted")
                say(
                    f"conveyor: stopping the build{interrupts.received()}: this machine's "
                    "workers stopped, running tests included, and no other machine was "
                    "working on it"
                )
            self.drain()
            return left
        if supervisor is not None and not self.queue.status().populated:
            # No test is queued yet, so none is running: the workers stop now, before they
            # queue the suite and run all of it (a stop needs a build to mark).
            say(
                f"conveyor: stopping{interrupts.received()}; no test had been queued yet, so "
                "none will run"
            )
            supervisor.shutdown(terminate=True)
            self.queue.stop("interrupted")  # one may have queued the tests meanwhile
            self.drain()
            return False
        self.queue.stop("interrupted")
        say(
            f"conveyor: stopping{interrupts.received()}; running tests finish first "
            "(interrupt again to stop now)"
        )
        return None


def interrupted_while_starting(
    queue: Queue, supervisor: Supervisor, build: str, *, shared: bool
) -> None:
    """Ctrl-C, or CI cancelling the job, before the controller had wired its report (its
    pytest session not started or not configured yet): the workers, started first, may already
    be running tests. As during the build, a machine on a shared queue leaves and hands its
    tests back; alone, the build is stopped once running tests have finished. Says so on
    stderr, there being no report to say it in."""
    interrupts.acted_on()
    finished = queue.status()
    if finished.populated and finished.done >= finished.total:
        # As the session ended (its report being written, the workers leaving): nothing is
        # left to stop or hand back, only the workers' own teardown.
        supervisor.shutdown(terminate=True)
        print(
            f"\nconveyor: interrupted as the session ended: all {finished.total} test(s) had "
            "a result, but the report was cut short; run the build again for its report.",
            file=sys.stderr,
        )
        return
    follower = BuildFollower(
        queue, supervisor, FollowSettings(build, shared=shared), BuildProblems(), {}, ()
    )
    left = follower.interrupted(lambda line: print(line, file=sys.stderr))
    status = queue.status()
    if not status.populated:
        print(
            "conveyor: interrupted while starting, before any test was queued: no test ran.",
            file=sys.stderr,
        )
        return
    without_result = max(0, status.total - status.done)
    if left:
        print(
            f"conveyor: interrupted while starting: {without_result} test(s) have no result "
            "yet: this machine handed its tests back; the build goes on on the other machines "
            "(run the same command again to rejoin it).",
            file=sys.stderr,
        )
        return
    how = how_to_resume(shared)
    print(
        f"conveyor: interrupted while starting: {without_result} test(s) have no result because "
        f"the build was stopped ({how}).",
        file=sys.stderr,
    )
