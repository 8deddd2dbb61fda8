"""The leases one worker runs, in order, and the promise behind pytest's `nextitem`.

pytest learns which test comes next at the running test's teardown and keeps set up exactly
the collectors (module, class) that test shares. So the test named there must be the test
this worker runs next, on every path: `peek()` reserves it (only when asked, so a worker never
holds a second test while a slow one runs) and from then on it is *promised*. A hand-back
returns every unstarted lease except the promised one; a stop returns them all and ends the
stream, and pytest's own session finish then tears the rest of the setup state down.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Final

from conveyor.queue import Queue
from conveyor.queue.protocol import EXHAUSTED, LEASED, WAIT, Lease
from conveyor.trace import event

trace = event("leases")

WAIT_POLL_S = 0.05
# A worker that found nothing to steal tries again after 1, 2, 4 ... idle polls, at most this
# many apart (0.8 s): a steal scans the others' reservations, and idle workers trying it at every
# poll kept Redis busy for minutes on a suite whose one large class, kept whole on one worker,
# nobody could take a part of (idna: 575 s on Redis 2x2 against 48 s on SQLite).
STEAL_BACKOFF_MAX_POLLS = 16
# A steal takes about half of the busiest worker's unstarted leases, at most this many.
STEAL_MAX_UNITS = 64


class _Unpromised:
    """Nothing has been promised yet for the test after the running one."""


UNPROMISED: Final = _Unpromised()


class LeaseStream:
    """Yields this worker's leases in the order it runs them."""

    def __init__(
        self,
        queue: Queue,
        worker: str,
        *,
        batch: Callable[[int], int],
        on_reserved: Callable[[tuple[Lease, ...]], None] = lambda leases: None,
        check: Callable[[], None] = lambda: None,
        stopped: Callable[[], bool] = lambda: False,
        idle: Callable[[], bool] = lambda: False,
        poll_s: float = WAIT_POLL_S,
        claim_ahead: Callable[[Sequence[str]], int] = lambda upcoming: 1,
        steal: bool = True,
        whole: str = "class",
    ) -> None:
        """`batch(pending)` says how many units to ask for; `on_reserved` sees every
        reservation; `check` raises when the worker must not go on (a failed heartbeat);
        `stopped` says the build was stopped; `idle` runs while the queue says wait (to flush
        results others may be waiting on; True when it stored some, which may have finished
        the build: the queue is then asked again at once, not after a poll);
        `claim_ahead(upcoming)` says how many of the leases in hand, in running order, to
        claim once; `steal` lets a worker with nothing left take work from the busiest one;
        `whole` is what the queue keeps on one worker (`Queue.reserve`)."""
        self._queue = queue
        self._worker = worker
        self._batch = batch
        self._on_reserved = on_reserved
        self._check = check
        self._stopped = stopped
        self._idle = idle
        self._poll_s = poll_s
        self._steal_skip = 0  # idle polls left before the next try to steal
        self._steal_backoff = 1
        self._claim_ahead = claim_ahead
        self._steal = steal
        self._whole = whole
        self._claimed: set[str] = set()  # leases in hand the queue knows as started
        self._hand: deque[Lease] = deque()
        self._running: Lease | None = None
        # The heartbeat thread reads what this worker holds while the main thread changes it.
        self._lock = threading.Lock()
        # The id of the reservation being asked for, kept until it is answered: a retry after a
        # lost reply gets the same reservation back instead of a second one.
        self._request_id: str | None = None
        self._exhausted = False
        self._pending = queue.status().pending
        self._promise: Lease | _Unpromised | None = UNPROMISED
        self._deferred: BaseException | None = None

    def __iter__(self) -> Iterator[Lease]:
        while not self._exhausted or self._hand:
            self.raise_deferred()
            if self._next_claimed(block=True) is None:
                return
            self._promise = UNPROMISED
            with self._lock:
                lease = self._running = self._hand.popleft()
            self._claimed.discard(lease.unit)
            try:
                yield lease
            finally:
                with self._lock:
                    self._running = None

    def held(self) -> list[str]:
        """The units this worker holds leases on, as far as it knows: the running one and the
        reserved ones not started yet. Safe to call from another thread (the heartbeat)."""
        with self._lock:
            running = [self._running.unit] if self._running is not None else []
            return running + [lease.unit for lease in self._hand]

    @property
    def promised(self) -> Lease | _Unpromised | None:
        """What pytest was told comes next: a lease, None (nothing: all was torn down), or
        UNPROMISED (pytest did not ask, e.g. after `-x` it passes None itself)."""
        return self._promise

    def peek(self) -> Lease | None:
        """The lease that runs next, reserved now if the worker holds none; promised from here
        on. A queue error is kept for `raise_deferred` (raising here would turn it into the
        running test's teardown error) and the answer is then None: tear everything down."""
        if isinstance(self._promise, _Unpromised):
            upcoming = None
            if self._deferred is None:
                try:
                    upcoming = self._next_claimed(block=False)
                except Exception as exc:  # re-raised by raise_deferred, outside the test
                    self._deferred = exc
            self._promise = upcoming
            trace("promised next: %s", self._promise.unit if self._promise else None)
        return self._promise

    def raise_deferred(self) -> None:
        if self._deferred is not None:
            error, self._deferred = self._deferred, None
            raise error

    def unstarted(self) -> list[str]:
        """The units this worker holds and has not started, in the order it would run them."""
        with self._lock:
            return [lease.unit for lease in self._hand]

    def hand_back(self, reason: str, keep: int = 0) -> list[str]:
        """Return the unstarted leases to the front of the queue, keeping the first `keep`
        of them and the promised one."""
        keep = max(keep, 1 if isinstance(self._promise, Lease) else 0)
        unstarted = [lease.unit for lease in list(self._hand)[keep:]]
        if not unstarted:
            return []
        with self._lock:
            while len(self._hand) > keep:
                self._claimed.discard(self._hand.pop().unit)
        trace("hand back %d unstarted (%s), keeping %d", len(unstarted), reason, keep)
        return self._queue.hand_back(self._worker, unstarted, reason)

    def stop(self, reason: str) -> list[str]:
        """Return every unstarted lease, the promised one too, and end the stream: no test
        runs after this in the session, whose finish tears down what is still set up."""
        unstarted = [lease.unit for lease in self._hand]
        with self._lock:
            self._hand.clear()
        self._claimed.clear()
        self._exhausted = True
        trace("stop: %d unstarted returned (%s)", len(unstarted), reason)
        return self._queue.hand_back(self._worker, unstarted, reason) if unstarted else []

    def _next_claimed(self, block: bool) -> Lease | None:
        """The lease that runs next, claimed; reserved (or stolen) first if the hand is empty.
        None when there is none now (`block` False) or none will come."""
        while True:
            if not self._hand:
                self._refill(block)
                if not self._hand:
                    return None
            if self._hand[0].unit in self._claimed:
                return self._hand[0]
            self._claim_front()

    def _claim_front(self) -> None:
        """Claim the first leases in hand; drop those the queue no longer gives this worker
        (stolen by an idle worker, or expired and taken by another)."""
        upcoming = [lease.unit for lease in self._hand]
        wanted = upcoming[: max(1, self._claim_ahead(upcoming))]
        held = set(self._queue.claim(self._worker, wanted))
        self._claimed.update(held)
        lost = [unit for unit in wanted if unit not in held]
        if lost:
            trace("not ours any more, not run: %s", lost)
            with self._lock:
                self._hand = deque(lease for lease in self._hand if lease.unit not in lost)

    def _steal_due(self) -> bool:
        if self._steal_skip > 0:
            self._steal_skip -= 1
            return False
        return True

    def _after_steal(self, *, took: bool) -> None:
        """Back off after a steal that found nothing (see STEAL_BACKOFF_MAX_POLLS)."""
        if took:
            self._steal_backoff, self._steal_skip = 1, 0
        else:
            self._steal_backoff = min(self._steal_backoff * 2, STEAL_BACKOFF_MAX_POLLS)
            self._steal_skip = self._steal_backoff

    def _refill(self, block: bool) -> None:
        while not self._exhausted:
            self._check()
            if self._stopped():
                self._exhausted = True
                return
            if self._request_id is None:
                self._request_id = uuid.uuid4().hex
            reservation = self._queue.reserve(
                self._worker,
                self._batch(self._pending),
                self._request_id,
                whole=self._whole,
            )
            if reservation.state == WAIT and self._steal and self._steal_due():
                # Nothing to lease, but others may hold unstarted work: take part of it.
                reservation = self._queue.steal(
                    self._worker,
                    STEAL_MAX_UNITS,
                    self._request_id,
                    whole=self._whole,
                )
                self._after_steal(took=reservation.state == LEASED)
            self._request_id = None  # answered: the next reservation is a new one
            self._pending = reservation.pending
            if reservation.state == LEASED:
                with self._lock:
                    self._hand.extend(reservation.leases)
                self._on_reserved(reservation.leases)
                return
            if reservation.state == EXHAUSTED:
                self._exhausted = True
                return
            if not block:
                return
            if self._idle():
                continue
            time.sleep(self._poll_s)
