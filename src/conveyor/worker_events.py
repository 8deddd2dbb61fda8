"""What the controller makes of events about workers: xdist's node protocol (a worker joined,
sent its output, went down) and the problems the summary lists (refused, failed, lost)."""

from __future__ import annotations

import time
from collections.abc import Callable

from conveyor.build_follower import POLL_MAX_S, BuildFollower
from conveyor.problems import BuildProblems
from conveyor.queue.protocol import (
    EVENT_LEASE_EXPIRED,
    EVENT_WORKER_JOINED,
    EVENT_WORKER_LOST,
    EVENT_WORKER_OUTPUT,
    Event,
)
from conveyor.session_ending import SessionEnding
from conveyor.supervisor import Supervisor
from conveyor.vocabulary import (
    EVENT_SESSION_ENDED,
    EVENT_WORKER_ERROR,
    EVENT_WORKER_REFUSED,
)
from conveyor.xdist_compat import ControllerNodes

OUTPUT_WAIT_S = 30.0  # how long the report waits for workers' output (coverage data, ...)
LEASE_EXPIRED_CAUSE = "its lease expired: the worker stopped renewing it (its machine died or hung)"


class WorkerEvents:
    def __init__(self, nodes: ControllerNodes, problems: BuildProblems) -> None:
        self.nodes = nodes
        self.problems = problems

    def handlers(self) -> dict[str, Callable[[Event], None]]:
        return {
            EVENT_WORKER_JOINED: self.on_joined,
            EVENT_WORKER_OUTPUT: self.on_output,
            EVENT_WORKER_REFUSED: self.on_refused,
            EVENT_WORKER_ERROR: self.on_error,
            EVENT_SESSION_ENDED: self.on_session_ended,
            EVENT_WORKER_LOST: self.on_lost,
            EVENT_LEASE_EXPIRED: self.on_lease_expired,
        }

    def on_joined(self, event: Event) -> None:
        if event.worker:
            self.nodes.joined(event.worker)

    def on_output(self, event: Event) -> None:
        if event.worker:
            self.nodes.output(event.worker, event.data)

    def on_refused(self, event: Event) -> None:
        self.problems.refused.append(str(event.data.get("message", "a worker was refused")))

    def on_error(self, event: Event) -> None:
        self.problems.errors.append(str(event.data.get("message", "a worker failed")))

    def on_session_ended(self, event: Event) -> None:
        ending = SessionEnding.from_event(event)
        if ending is not None:
            self.problems.endings.setdefault(ending.worker, ending)

    def on_lease_expired(self, event: Event) -> None:
        """A worker that stopped renewing its lease is most likely gone (a machine killed
        outright says nothing else, and the report waited OUTPUT_WAIT_S for it after the last
        result): its output is not waited for. It may only have stalled, so what it sends
        before the report is still taken."""
        if event.worker:
            self.nodes.give_up(event.worker, LEASE_EXPIRED_CAUSE)

    def on_lost(self, event: Event) -> None:
        cause = event.data.get("cause", {})
        requeued = event.data.get("requeued", [])
        if event.worker:
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

    def await_outputs(
        self,
        follower: BuildFollower,
        supervisor: Supervisor | None,
        finished_at_start: bool,
        all_local: bool,
    ) -> None:
        """Plugins read each worker's output (coverage data, ...) before the summary: wait
        (bounded) for every worker that joined to send it, to leave, or to be lost."""
        if not self.nodes.wants_output():
            return
        # A build that had finished before this controller started (a report of it, a
        # replay): whatever its workers sent is in the stream already; nothing more comes.
        deadline = time.monotonic() + (0.0 if finished_at_start else OUTPUT_WAIT_S)
        while self.nodes.awaiting() and time.monotonic() < deadline:
            if supervisor is not None and supervisor.alive() == 0:
                follower.drain()
                if all_local:
                    break  # every worker is local, and all have said what they will say
            time.sleep(POLL_MAX_S)
            follower.drain()
        for worker in sorted(self.nodes.not_down()):
            cause = self.nodes.given_up.get(worker, "the worker sent no output before the report")
            self.nodes.lost(worker, cause)
