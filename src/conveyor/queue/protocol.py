"""The queue seam: the verbs every backend implements, and the plain data they exchange.

A build's life: one worker `populate`s the manifest (leader election), every worker `reserve`s
units under a lease, keeps its leases alive with `heartbeat`, `claim`s each before it starts it,
and `complete`s each unit (first result wins). An idle worker may `steal` unclaimed leases from
the busiest one. A supervisor that sees a worker die `release`s its leases at once; otherwise
they expire and the next `reserve` anywhere reclaims them. The controller follows the build
through `events` and can `stop` it (`-x`, Ctrl-C). Payloads are JSON-compatible dicts, never
pickles. `queue/memory.py` is the executable specification every backend is held to.
"""

from __future__ import annotations

import enum
import hashlib
import json
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

JSON = dict[str, Any]

# Defaults every backend and every caller share.
LEASE_TTL_S = 30.0  # a lease not renewed for this long expires and its unit comes back
MAX_UNIT_CRASHES = 2  # a unit that took down this many workers is finalised as a failure
EVENTS_PAGE = 1000  # events read per round trip


class _FallbackStrEnum(str, enum.Enum):
    """`enum.StrEnum` for Python 3.10: members are their value wherever a str is expected."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return str(self.value).__format__(spec)


if sys.version_info >= (3, 11):
    _StrEnumBase = enum.StrEnum
else:  # pragma: no cover - exercised on Python 3.10
    _StrEnumBase = _FallbackStrEnum


class QueueEnum(_StrEnumBase):
    """A word of the queue's vocabulary that is also the plain string stored and sent.

    Members hash and compare as their value, both ways: `{EventKind.RESULT: f}["result"]`
    finds `f` and `{"result": f}[EventKind.RESULT]` too. (An Enum hashes by its *name*
    unless told otherwise, and a kind read back from a backend is a plain str.)"""

    __hash__ = str.__hash__
    __eq__ = str.__eq__
    __ne__ = str.__ne__


class ReservationState(QueueEnum):
    """What `reserve` and `steal` answer."""

    LEASED = "leased"
    # nothing to lease now: leases are outstanding and may come back, or what is pending lies
    # behind this worker in a split module, for another to run (queue/forward.py)
    WAIT = "wait"
    EXHAUSTED = "exhausted"  # every unit has a final result, or the build was stopped


class RequeueAnswer(QueueEnum):
    """What `requeue` answers."""

    REQUEUED = "requeued"  # back at the end of the queue for another attempt
    REFUSED = "refused"  # a retry budget is spent: complete the unit with this result
    ALREADY_DONE = "done"  # the unit already has its final result: drop this one


class EventKind(QueueEnum):
    """Kinds of the events the queue itself writes (and the controller dispatches on).
    `publish` may write other kinds; an event's `kind` is therefore a plain str."""

    POPULATED = "populated"
    WORKER_JOINED = "worker_joined"
    LEASED = "leased"
    STOLEN = "stolen"  # leases moved from a busy worker to an idle one
    WORKER_LEFT = "worker_left"
    RESULT = "result"
    DUPLICATE_REJECTED = "duplicate_rejected"
    LEASE_EXPIRED = "lease_expired"
    WORKER_LOST = "worker_lost"
    LEASES_RETURNED = "leases_returned"
    UNIT_CRASHED = "unit_crashed"
    REQUEUED = "requeued"
    STOPPED = "stopped"
    RESUMED = "resumed"
    WORKER_INPUT = "worker_input"  # plugins' part of workerinput, from a controller
    WORKER_OUTPUT = "worker_output"  # a worker's config.workeroutput, at its end
    FINISHED = "finished"
    MALFORMED = "malformed"  # an entry conveyor did not write, reported instead of raised on


# The names of conveyor 0.1, kept: every module that imports them keeps working.
LEASED = ReservationState.LEASED
WAIT = ReservationState.WAIT
EXHAUSTED = ReservationState.EXHAUSTED
REQUEUED = RequeueAnswer.REQUEUED
REQUEUE_REFUSED = RequeueAnswer.REFUSED
ALREADY_DONE = RequeueAnswer.ALREADY_DONE
EVENT_POPULATED = EventKind.POPULATED
EVENT_WORKER_JOINED = EventKind.WORKER_JOINED
EVENT_LEASED = EventKind.LEASED
EVENT_STOLEN = EventKind.STOLEN
EVENT_WORKER_LEFT = EventKind.WORKER_LEFT
EVENT_RESULT = EventKind.RESULT
EVENT_DUPLICATE_REJECTED = EventKind.DUPLICATE_REJECTED
EVENT_LEASE_EXPIRED = EventKind.LEASE_EXPIRED
EVENT_WORKER_LOST = EventKind.WORKER_LOST
EVENT_LEASES_RETURNED = EventKind.LEASES_RETURNED
EVENT_UNIT_CRASHED = EventKind.UNIT_CRASHED
EVENT_REQUEUED = EventKind.REQUEUED
EVENT_STOPPED = EventKind.STOPPED
EVENT_RESUMED = EventKind.RESUMED
EVENT_WORKER_INPUT = EventKind.WORKER_INPUT
EVENT_WORKER_OUTPUT = EventKind.WORKER_OUTPUT
EVENT_FINISHED = EventKind.FINISHED
EVENT_MALFORMED = EventKind.MALFORMED


class ResultPayload(TypedDict, total=False):
    """What a worker stores for one test (or one command-mode unit): its reports, serialised
    by pytest's own `pytest_report_to_serializable`, and when and where it ran."""

    nodeid: str  # the unit's name: the test's id, unless it was collected twice
    location: list[Any]
    reports: list[JSON]
    warnings: list[JSON]
    attempt: int
    started: float
    duration: float
    cases: list[JSON]  # command mode: one entry per JUnit test case
    junit: JSON  # what the test recorded for --junitxml (conveyor.junit_records)
    live_log: JSON  # its live log records, with live logging on (conveyor.live_log)
    captured: list[int]  # which reports were logged while the test's output was captured


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


def release_event_kind(cause: Mapping[str, Any]) -> EventKind:
    """A release is a lost worker, unless the cause says it is `orderly`: a live worker
    handing back tests it had not started (the build stopped, a slow run without history)."""
    return EventKind.LEASES_RETURNED if cause.get("orderly") else EventKind.WORKER_LOST


def culprit_of(cause: Mapping[str, Any]) -> str | None:
    """The unit a release charges a crash: `cause["culprit"]` when it is a unit id (a str);
    anything else (absent, None, a number) charges nothing."""
    culprit = cause.get("culprit")
    return culprit if isinstance(culprit, str) else None


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


@dataclass(frozen=True)
class Reservation:
    state: ReservationState
    leases: tuple[Lease, ...] = ()
    pending: int = 0


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
    """The interface every backend implements; every method is one atomic operation.

    A backend subclasses it explicitly to inherit `iter_events`."""

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

    def reserve(
        self,
        worker: str,
        max_units: int,
        request_id: str | None = None,
        *,
        whole: str = "class",
    ) -> Reservation:
        """Reclaim expired leases (back to the front of the queue like released ones), then
        lease up to `max_units` units to `worker` from the front of the queue.

        A reservation never ends inside what `whole` keeps on one worker
        (`scheduling.whole_key`): "class" (the default) a class's tests ("path::Class::test"),
        "file" a file's (pytest-xdist's loadfile), "scope" a class's or a module's tests
        outside classes (loadscope); while the next pending unit belongs with the last one
        taken, it is taken too (`scheduling.through_group_end`). The worker sizes its
        reservation from what the last reply said was pending, which other workers have
        changed since, so only the queue can keep a group on one worker. "none" (`--dist
        test`, pytest-xdist's load, and units that are not pytest's): exactly up to
        `max_units`.

        A worker goes forward through a split module, never back (`queue.forward`): the
        reservation passes over pending units ranked below the worker's mark in their module
        (looking at most `forward.SCAN` units in), holds at most one range of a split module,
        and stops before a unit behind the worker. When every unit it looks at is behind:
        WAIT while another live worker could run the front one forward, else the front is
        leased anyway. EXHAUSTED only when nothing is pending and nothing leased.

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

    def claim(self, worker: str, units: Sequence[str]) -> list[str]:
        """Mark leases `worker` holds as started (it runs them now, or promised one to pytest
        as `nextitem`), so that no `steal` can take them, and renew them like `heartbeat`.

        Returns the units of `units` (in their order, once each) that the worker still holds;
        one stolen, expired and reclaimed, completed, or never held is absent, and the worker
        must not run it. Idempotent, and one round trip: it is called about once per test."""
        ...

    def steal(
        self,
        thief: str,
        max_units: int,
        request_id: str | None = None,
        *,
        whole: str = "class",
    ) -> Reservation:
        """An idle worker takes unstarted leases from the busiest worker.

        Like `reserve` first (a retried `request_id` gets its reply again, a stopped build
        answers EXHAUSTED, expired leases are reclaimed) and, while anything is pending, it
        leases pending units exactly as `reserve` would (`whole` too): pending units are
        served first. With nothing pending, the victim is the other worker holding the most
        unclaimed leases (ties: the smallest worker id). The thief gets a suffix of the
        victim's unclaimed leases in the victim's reservation order, about half of them
        (rounded up) and at most `max_units`, cut where nothing `whole` keeps together is
        split (see `queue.stealing.cut`) and never taking a unit that lies behind the thief
        (`queue.forward`); when the suffix's last units lie behind it, the steal ends before
        them instead. A victim whose every cut would split or go back is passed over for the
        next. The leases keep their
        attempt (a steal is no new attempt) and get a fresh deadline; the first is claimed for
        the thief, which runs it at once, so that no idle worker steals it back. They move
        from the victim's `reservations` to the end of the thief's. One EVENT_STOLEN event
        names them and the victim, who learns of it only through `claim` and `heartbeat`; its
        later `complete` of a stolen unit is a late duplicate. With nothing to steal: WAIT
        while leases are out, else EXHAUSTED."""
        ...

    def complete(self, worker: str, results: Sequence[tuple[str, JSON]]) -> list[bool]:
        """Store final results, first one wins; a False entry means a late duplicate."""
        ...

    def requeue(
        self, worker: str, unit: str, payload: JSON, *, max_requeues: int, tolerance: float
    ) -> RequeueAnswer:
        """Send a failed attempt back to the end of the queue for a retry, if the unit has had
        fewer than `max_requeues` and the build fewer than ceil(total * `tolerance`) requeues
        (a negative tolerance means no build-wide cap). Answers REQUEUED, REQUEUE_REFUSED or
        ALREADY_DONE; a requeued attempt is written to the stream as EVENT_REQUEUED."""
        ...

    def release(self, worker: str, cause: Mapping[str, Any]) -> list[Released]:
        """Return a dead worker's leases at once (or finalise units that crash too often),
        answered in the order they were leased; they go back to the front of the queue, the
        most recently leased first (the first is the likeliest to have killed the worker).
        Only `culprit_of(cause)` is charged a crash; with `cause["final"]` the culprit is
        finalised at once (a hard timeout)."""
        ...

    def hand_back(self, worker: str, units: Sequence[str], reason: str) -> list[str]:
        """A live worker returns units it holds but has not started to the front of the queue,
        first unit first; its other leases stay its own. Units it does not hold are skipped.
        Returns the units returned, written to the stream as EVENT_LEASES_RETURNED."""
        ...

    def publish(self, kind: str, worker: str | None, data: Mapping[str, Any]) -> None:
        """Append a free-form event (worker errors, collection reports) to the stream."""
        ...

    def events(self, after: int, limit: int = EVENTS_PAGE) -> list[Event]:
        """Events with a sequence number above `after`, oldest first (a negative limit: all)."""
        ...

    def iter_events(self, after: int = 0, page: int = EVENTS_PAGE) -> Iterator[Event]:
        """Every event above `after`, oldest first, read `page` at a time, until the stream
        has nothing more; it does not wait for events still to come."""
        while batch := self.events(after, page):
            yield from batch
            after = batch[-1].seq

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
        """The order in which `worker` was handed its units (for replay and bisect): stolen
        units are the thief's, at the point it took them, and no longer the victim's."""
        ...

    def close(self) -> None: ...
