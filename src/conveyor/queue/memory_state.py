"""The state of the in-memory queue (queue/memory.py): a build's units and leases as plain
objects, with the few moves every operation is made of."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from conveyor.queue import forward
from conveyor.queue.protocol import JSON, Event, Lease, Manifest, Reservation, ReservationState
from conveyor.scheduling import back_to_front_order, whole_of


@dataclass
class Unit:
    """One unit: pending (in `order`, lowest first), leased (to `worker` until `deadline`;
    `lease_seq` orders every worker's leases as they were granted) or done."""

    order: float
    state: str = "pending"
    worker: str | None = None
    deadline: float = 0.0
    attempt: int = 0  # times leased so far; a steal is not a new attempt
    crashes: int = 0  # times it took its worker down
    requeues: int = 0  # failed attempts sent back for a retry
    claimed: bool = False  # its worker started it (or promised it): it cannot be stolen
    lease_seq: int = 0

    def crash_record(self, cause: Mapping[str, Any] | None = None) -> JSON:
        record: JSON = {"attempt": self.attempt, "crashes": self.crashes}
        if cause is not None:
            record["cause"] = dict(cause)
        return record


@dataclass
class Build:
    manifest: Manifest
    units: dict[str, Unit]  # in manifest order
    max_unit_crashes: int
    stop_reason: str | None = None
    finished_at: float | None = None
    requeues: int = 0  # failed attempts sent back, build-wide
    leases_granted: int = 0
    reservations: dict[str, list[Lease]] = field(default_factory=dict)
    # A split module's units -> collection rank, and each worker's highest rank leased in
    # each such module (queue/forward.py: a worker goes forward through a split module).
    ranks: dict[str, int] = field(default_factory=dict)
    marks: dict[str, dict[str, int]] = field(default_factory=dict)
    # Each worker's last request that leased units: (request id, reply).
    requests: dict[str, tuple[str | None, Reservation]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.manifest.total

    def count(self, state: str) -> int:
        return sum(unit.state == state for unit in self.units.values())

    def pending(self) -> list[str]:
        """Pending units in serving order."""
        waiting = [name for name, unit in self.units.items() if unit.state == "pending"]
        return sorted(waiting, key=lambda name: self.units[name].order)

    def held(self, worker: str | None = None) -> list[str]:
        """Leased units (of `worker`, or anyone's) in the order they were granted."""
        leased = [
            name
            for name, unit in self.units.items()
            if unit.state == "leased" and worker in (None, unit.worker)
        ]
        return sorted(leased, key=lambda name: self.units[name].lease_seq)

    def holds(self, worker: str, name: str) -> bool:
        unit = self.units.get(name)
        return unit is not None and unit.state == "leased" and unit.worker == worker

    def grant(self, name: str, worker: str, deadline: float, *, new_attempt: bool) -> Lease:
        """Lease `name` to `worker`, at the end of its reservation order."""
        unit = self.units[name]
        self.leases_granted += 1
        unit.attempt += new_attempt
        unit.state, unit.worker, unit.deadline = "leased", worker, deadline
        unit.claimed, unit.lease_seq = False, self.leases_granted
        lease = Lease(name, unit.attempt)
        self.reservations.setdefault(worker, []).append(lease)
        forward.marked(self.marks.setdefault(worker, {}), [name], self.ranks.get)
        return lease

    def behind(self, worker: str) -> Callable[[str], bool]:
        """Whether a unit lies behind `worker` in its split module (queue/forward.py)."""
        return forward.behind(self.ranks.get, self.marks.get(worker, {}))

    def remember(
        self, worker: str, request_id: str | None, leases: tuple[Lease, ...]
    ) -> Reservation:
        """The reply to a request that leased units, kept for its retry."""
        reply = Reservation(ReservationState.LEASED, leases, self.count("pending"))
        self.requests[worker] = (request_id, reply)
        return reply

    def _unlease(self, name: str, state: str, order: float) -> None:
        unit = self.units[name]
        unit.state, unit.order = state, order
        unit.deadline, unit.claimed = 0.0, False
        if state == "pending":
            unit.worker = None

    def to_front(self, names: list[str]) -> None:
        """Back to the front of the queue, served in the given order, before anything else."""
        orders = [unit.order for unit in self.units.values() if unit.state == "pending"]
        front = min(orders, default=0.0) - len(names)
        for index, name in enumerate(names):
            self._unlease(name, "pending", front + index)

    def to_front_of_a_gone_worker(self, names: list[str]) -> None:
        """A gone worker's leases (expired, released), given in the order they were leased,
        back to the front in `scheduling.back_to_front_order`: the most recently leased first,
        what the build keeps whole in its own order."""
        self.to_front(back_to_front_order(names, whole_of(self.manifest.meta)))

    def to_back(self, name: str, order: float) -> None:
        self._unlease(name, "pending", order)

    def finish(self, name: str, worker: str | None) -> None:
        self._unlease(name, "done", self.units[name].order)
        self.units[name].worker = worker


class Store:
    """Every build of one in-memory "server"; queue objects made on one store share it."""

    def __init__(self) -> None:
        # Reentrant: a Ctrl-C inside contextlib can leave an operation's generator paused
        # with the lock held while the exception is handled, and the thread that handles
        # it must still get in (tests/unit/test_queue_conformance.py).
        self.lock = threading.RLock()
        self.builds: dict[str, Build] = {}
        self.streams: dict[str, list[Event]] = {}
        self.workers: dict[str, dict[str, float]] = {}  # build -> worker -> joined at
        # build -> worker -> when it last joined, leased, claimed or heartbeat; a released
        # (dead) worker is dropped
        self.last_seen: dict[str, dict[str, float]] = {}
        self._seq = itertools.count(1)

    def next_seq(self) -> int:
        return next(self._seq)

    def forget(self, build: str) -> None:
        """Lose everything of `build`, as a flushed Redis or a replaced SQLite file would."""
        with self.lock:
            for table in (self.builds, self.streams, self.workers, self.last_seen):
                table.pop(build, None)
