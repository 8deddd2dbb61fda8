"""The queue seam: the verbs every backend implements, and the plain data they exchange.

A build's life: one worker `populate`s the manifest (leader election), every worker `reserve`s
units under a lease, keeps its leases alive with `heartbeat`, and `complete`s each unit (first
result wins). A supervisor that sees a worker die `release`s its leases at once; otherwise they
expire and the next `reserve` anywhere reclaims them. The controller follows the build through
`events` and can `stop` it (`-x`, Ctrl-C). Payloads are JSON-compatible dicts, never pickles.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

JSON = dict[str, Any]


class ResultPayload(TypedDict, total=False):
    """What a worker stores for one test (or one command-mode unit): its reports, serialised
    by pytest's own `pytest_report_to_serializable`, and when and where it ran."""

    nodeid: str
    location: list[Any]
    reports: list[JSON]
    warnings: list[JSON]
    attempt: int
    started: float
    duration: float
    cases: list[JSON]  # command mode: one entry per JUnit test case


class CrashCause(TypedDict, total=False):
    """Why a worker's leases were released: written by the supervisor, read by the queue (the
    culprit is charged a crash; `final` finalises it), the report and the timeline."""

    reason: str
    returncode: int | None
    culprit: str | None
    output_tail: str
    worker: str
    timeout: bool
    log: str | None
    final: bool
    orderly: bool


# Event kinds written to a build's stream. The controller dispatches on these names.
EVENT_POPULATED = "populated"
EVENT_WORKER_JOINED = "worker_joined"
EVENT_LEASED = "leased"
EVENT_WORKER_LEFT = "worker_left"
EVENT_RESULT = "result"
EVENT_DUPLICATE_REJECTED = "duplicate_rejected"
EVENT_LEASE_EXPIRED = "lease_expired"
EVENT_WORKER_LOST = "worker_lost"
EVENT_LEASES_RETURNED = "leases_returned"
EVENT_UNIT_CRASHED = "unit_crashed"
EVENT_REQUEUED = "requeued"
EVENT_STOPPED = "stopped"
EVENT_RESUMED = "resumed"
EVENT_WORKER_INPUT = "worker_input"  # plugins' part of workerinput, from a controller
EVENT_WORKER_OUTPUT = "worker_output"  # a worker's config.workeroutput, at its end
EVENT_FINISHED = "finished"


def release_event_kind(cause: Mapping[str, Any]) -> str:
    """A release is a lost worker, unless the cause says it is `orderly`: a live worker
    handing back tests it had not started (the build stopped, a slow run without history)."""
    return EVENT_LEASES_RETURNED if cause.get("orderly") else EVENT_WORKER_LOST


def _json_fallback(value: object) -> object:
    """What JSON cannot carry as it is (a datetime in `record_property`, bytes, a set) travels
    as its str, as pytest's own --junitxml writes it: a report must never fail on the way."""
    return str(value)


def dumps(data: Mapping[str, Any]) -> str:
    """The one JSON encoding of everything a backend stores."""
    return json.dumps(data, separators=(",", ":"), default=_json_fallback)


def collection_digest(units: Iterable[str]) -> str:
    """Digest of the *set* of units: workers may legitimately collect in different orders."""
    hasher = hashlib.sha256()
    for unit in sorted(units):
        hasher.update(unit.encode("utf-8", "surrogatepass"))
        hasher.update(b"\0")
    return hasher.hexdigest()


@dataclass(frozen=True)
class Manifest:
    """What the leader published: how many units, their digest, and build-wide settings."""

    leader: str
    digest: str
    total: int
    meta: JSON


@dataclass(frozen=True)
class Lease:
    """One unit handed to one worker; `attempt` counts how often it has been leased."""

    unit: str
    attempt: int


# Reservation states.
LEASED = "leased"
WAIT = "wait"  # nothing pending now, but leases are outstanding and may come back
EXHAUSTED = "exhausted"  # every unit has a final result, or the build was stopped


@dataclass(frozen=True)
class Reservation:
    state: str
    leases: tuple[Lease, ...] = ()
    pending: int = 0


# Answers of `requeue`.
REQUEUED = "requeued"  # back at the end of the queue for another attempt
REQUEUE_REFUSED = "refused"  # a retry budget is spent: complete the unit with this result
ALREADY_DONE = "done"  # the unit already has its final result: drop this one


@dataclass(frozen=True)
class Event:
    seq: int
    kind: str
    worker: str | None
    unit: str | None
    data: JSON
    ts: float


@dataclass(frozen=True)
class BuildStatus:
    """Counts at one instant; `finished` is true once nothing more can happen in the build."""

    populated: bool
    total: int = 0
    done: int = 0
    pending: int = 0
    leased: int = 0
    stop_reason: str | None = None
    workers: tuple[str, ...] = field(default=())

    @property
    def finished(self) -> bool:
        if not self.populated:
            return False
        if self.done >= self.total:
            return True
        return self.stop_reason is not None and self.leased == 0


@dataclass(frozen=True)
class Released:
    """A unit taken back from a dead worker: requeued, or finalised because it keeps crashing."""

    unit: str
    attempt: int
    crashes: int
    finalised: bool


class Queue(Protocol):
    """The interface every backend implements; every method is one atomic operation."""

    display_url: str

    def populate(self, leader: str, units: Sequence[str], meta: Mapping[str, Any]) -> bool:
        """Publish the manifest unless one exists; True when this caller became the leader."""
        ...

    def manifest(self) -> Manifest | None:
        """The published manifest, or None while no worker has finished collecting."""
        ...

    def units(self) -> list[str]:
        """Every unit of the manifest in its published order (for diffs and accounting)."""
        ...

    def join(self, worker: str, info: Mapping[str, Any]) -> None:
        """Record that a worker is alive and what it is (host, pid)."""
        ...

    def reserve(self, worker: str, max_units: int, request_id: str | None = None) -> Reservation:
        """Reclaim expired leases, then lease up to `max_units` units to `worker`.

        Idempotent: `request_id` names one logical reservation, and a retry with the same id
        (its reply was lost: a dropped connection, a socket timeout) returns the same
        reservation instead of leasing more, so a lost reply leaks no lease. The caller makes
        a new id for each reservation it means and reuses it only to retry that one. None: a
        fresh id for this call (a backend's own retries of the call still reuse it)."""
        ...

    def heartbeat(self, worker: str, units: Sequence[str]) -> int:
        """Extend the leases of `units` that `worker` holds: the units the worker knows it
        holds (running, reserved but not started, finished but not yet completed). A lease the
        worker does not name is left to expire. Returns how many of `units` it still holds."""
        ...

    def complete(self, worker: str, results: Sequence[tuple[str, JSON]]) -> list[bool]:
        """Store final results, first one wins; a False entry means a late duplicate."""
        ...

    def requeue(
        self, worker: str, unit: str, payload: JSON, *, max_requeues: int, tolerance: float
    ) -> str:
        """Send a failed attempt back to the end of the queue for a retry, if the unit has had
        fewer than `max_requeues` and the build fewer than ceil(total * `tolerance`) requeues
        (a negative tolerance means no build-wide cap). Answers REQUEUED, REQUEUE_REFUSED or
        ALREADY_DONE; a requeued attempt is written to the stream as EVENT_REQUEUED."""
        ...

    def release(self, worker: str, cause: Mapping[str, Any]) -> list[Released]:
        """Return a dead worker's leases at once (or finalise units that crash too often).
        With `cause["final"]` the culprit is finalised at once (a hard timeout)."""
        ...

    def hand_back(self, worker: str, units: Sequence[str], reason: str) -> list[str]:
        """A live worker returns units it holds but has not started to the front of the queue,
        first unit first; its other leases stay its own. Units it does not hold are skipped.
        Returns the units returned, written to the stream as EVENT_LEASES_RETURNED."""
        ...

    def publish(self, kind: str, worker: str | None, data: Mapping[str, Any]) -> None:
        """Append a free-form event (worker errors, collection reports) to the stream."""
        ...

    def events(self, after: int, limit: int = 1000) -> list[Event]:
        """Events with a sequence number above `after`, oldest first."""
        ...

    def stop(self, reason: str) -> None:
        """Stop handing out units; leases already held still complete."""
        ...

    def resume(self, reason: str) -> bool:
        """Clear a stop while tests are left, so the build runs what is left (its results so
        far stay); written to the stream as EVENT_RESUMED. False when the build was not
        stopped or nothing is left."""
        ...

    def status(self) -> BuildStatus: ...

    def reservations(self, worker: str) -> list[Lease]:
        """The order in which `worker` was handed its units (for replay and bisect)."""
        ...

    def close(self) -> None: ...
