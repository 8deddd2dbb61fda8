"""The one heartbeat thread of a worker (pytest workers and the `conveyor.api` session alike).

It renews only the leases `held()` names: a lease the worker never learnt of (its reserve's
reply was lost) expires and goes back to the queue instead of staying held forever. A pytest
worker also ends itself when its supervisor has gone: an orphan would hold leases nobody
watches.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence

from conveyor.errors import QueueError
from conveyor.queue import Queue
from conveyor.vocabulary import EXIT_ORPHANED


def interval_for(lease_ttl_s: float) -> float:
    """Three renewals per lease lifetime: two can be lost before a lease expires."""
    return max(0.05, min(5.0, lease_ttl_s / 3))


class Heartbeat(threading.Thread):
    def __init__(
        self,
        queue: Queue,
        worker_id: str,
        lease_ttl_s: float,
        held: Callable[[], Sequence[str]] = lambda: (),
        supervisor_pid: int | None = None,
    ) -> None:
        super().__init__(name="conveyor-heartbeat", daemon=True)
        self.queue = queue
        self.worker_id = worker_id
        self.held = held
        self.supervisor_pid = supervisor_pid
        self.interval_s = interval_for(lease_ttl_s)
        self.error: QueueError | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            if self.supervisor_pid and os.getppid() != self.supervisor_pid:
                os._exit(EXIT_ORPHANED)
            try:
                self.queue.heartbeat(self.worker_id, self.held())
            except QueueError as exc:
                self.error = exc
                return

    def check(self) -> None:
        """Raise the error that stopped the heartbeat: the worker must not go on without it."""
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self._stop_event.set()
