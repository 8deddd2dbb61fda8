"""Results waiting to be stored: sent in batches (at most FLUSH_MAX_RESULTS, or after
FLUSH_INTERVAL_S), so tiny tests cost one queue round trip per batch, not per test."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from conveyor.queue import Queue
from conveyor.queue.protocol import JSON, Lease
from conveyor.vocabulary import EVENT_WORKER_ERROR

FLUSH_MAX_RESULTS = 64
FLUSH_INTERVAL_S = 0.1


class ResultOutbox:
    def __init__(self, queue: Queue, worker_id: str, on_stopped: Callable[[], None]) -> None:
        self.queue = queue
        self.worker_id = worker_id
        self.on_stopped = on_stopped  # the build was stopped: run nothing more
        self._waiting: list[tuple[str, JSON]] = []
        self._sending: list[tuple[str, JSON]] = []  # the batch `complete` is storing now
        self._last_flush = time.monotonic()

    def add(self, unit: str, payload: JSON) -> None:
        self._waiting.append((unit, payload))

    def held(self) -> list[str]:
        """Units finished but not yet stored: their leases are still this worker's. Read by
        the heartbeat thread; list() copies are atomic under the GIL."""
        return [unit for unit, _ in [*list(self._waiting), *list(self._sending)]]

    def flush(self, force: bool = False) -> bool:
        """Store the waiting results when a batch is due (or `force`); True if it did."""
        if not self._waiting:
            return False
        due = time.monotonic() - self._last_flush >= FLUSH_INTERVAL_S
        if not (force or due or len(self._waiting) >= FLUSH_MAX_RESULTS):
            return False
        batch = self._sending = self._waiting
        self._waiting = []
        try:
            self.queue.complete(self.worker_id, batch)
        finally:
            self._sending = []
        self._last_flush = time.monotonic()
        if self.queue.status().stop_reason is not None:
            self.on_stopped()
        return True


def refuse_uncollected(queue: Queue, worker_id: str, lease: Lease, outbox: ResultOutbox) -> None:
    """A unit this worker did not collect came out of the queue: something other than a
    worker of this build wrote it there. It is not run; it is logged, reported as an error
    of the build, and completed (the controller rejects the result) so the build ends."""
    message = (
        f"worker {worker_id} was handed {lease.unit!r}, which it did not collect; it was not "
        "run. A worker runs only tests it collected itself: something other than a conveyor "
        "worker of this build wrote this one into the queue."
    )
    print(f"conveyor: {message}", file=sys.stderr, flush=True)
    queue.publish(EVENT_WORKER_ERROR, worker_id, {"message": message})
    payload = {"nodeid": lease.unit, "location": [lease.unit, None, lease.unit]}
    outbox.add(lease.unit, {**payload, "reports": [], "attempt": lease.attempt})
    outbox.flush(force=True)
