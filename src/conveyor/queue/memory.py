"""The in-memory queue: the executable specification of the queue's semantics.

Plain Python under one lock, written for reading rather than speed: what each operation does
is what SQLite's transactions and Redis's Lua scripts must do too, and the conformance suite
(tests/unit/test_queue_conformance.py) holds them to it, event for event. It serves one process
only (no URL names it), so it is for tests and for reading, not for builds.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from conveyor.errors import BuildStateLost
from conveyor.queue import forward, stealing
from conveyor.queue.memory_state import Build, Store, Unit
from conveyor.queue.messages import not_in_build
from conveyor.queue.protocol import (
    EVENTS_PAGE,
    JSON,
    LEASE_TTL_S,
    MAX_UNIT_CRASHES,
    BuildStatus,
    Event,
    EventKind,
    Lease,
    Manifest,
    Queue,
    Released,
    RequeueAnswer,
    Reservation,
    ReservationState,
    collection_digest,
    culprit_of,
    dumps,
    release_event_kind,
)
from conveyor.scheduling import check_whole, through_group_end

DEFAULT_STORE = Store()


class MemoryQueue(Queue):
    """One build in a `Store`; queue objects on the same store and build share it, as processes
    share a SQLite file or a Redis. Longer than the other classes on purpose: it is the
    executable specification of the queue, and every verb reads best beside the others."""

    def __init__(
        self,
        build: str,
        *,
        store: Store = DEFAULT_STORE,
        lease_ttl_s: float = LEASE_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.build = build
        self.display_url = "memory://"
        self.lease_ttl_s = lease_ttl_s
        self._store = store
        self._clock = clock
        # From the first sight of the build on, a missing build means it was lost.
        self._seen_populated = False

    # -- the build, under the store's lock --------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[Build | None]:
        with self._store.lock:
            build = self._store.builds.get(self.build)
            if build is not None:
                self._seen_populated = True
            yield build

    @contextmanager
    def _populated(self) -> Iterator[Build]:
        """The build, which must exist: an operation on a build nobody populated (or one that
        was lost) raises instead of acting on nothing in silence."""
        with self._locked() as build:
            if build is None:
                raise self._lost()
            yield build

    @contextmanager
    def _if_seen(self) -> Iterator[Build | None]:
        """The build, or None before it was populated; once seen, it must still exist."""
        with self._locked() as build:
            if build is None and self._seen_populated:
                raise self._lost()
            yield build

    def _lost(self) -> BuildStateLost:
        return BuildStateLost(f"build {self.build!r} is not in the memory queue")

    def _emit(
        self,
        kind: str,
        worker: str | None = None,
        unit: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        """Append an event; its data goes through JSON as it would in any other backend."""
        stream = self._store.streams.setdefault(self.build, [])
        seq = self._store.next_seq()
        payload = json.loads(dumps(data or {}))
        stream.append(Event(seq, kind, worker, unit, payload, self._clock()))

    def _maybe_finish(self, build: Build) -> None:
        """`finished` exactly once: every unit done, or stopped and the last lease back."""
        done, leased = build.count("done"), build.count("leased")
        stopped_and_drained = build.stop_reason is not None and leased == 0
        if build.finished_at is None and (done >= build.total or stopped_and_drained):
            build.finished_at = self._clock()
            self._emit(EventKind.FINISHED, data={"done": done, "total": build.total})

    # -- protocol ------------------------------------------------------------------------

    def populate(self, leader: str, units: Sequence[str], meta: Mapping[str, Any]) -> bool:
        unique = list(dict.fromkeys(units))
        with self._locked() as found:
            self._seen_populated = True
            if found is not None:
                return False
            build = Build(
                manifest=Manifest(leader, collection_digest(unique), len(unique), dict(meta)),
                units={unit: Unit(order=float(i)) for i, unit in enumerate(unique)},
                max_unit_crashes=int(meta.get("max_unit_crashes", MAX_UNIT_CRASHES)),
                ranks=forward.ranks(unique, meta),
            )
            self._store.builds[self.build] = build
            self._emit(EventKind.POPULATED, leader, data={"total": len(unique)})
            self._maybe_finish(build)
        return True

    def manifest(self) -> Manifest | None:
        with self._locked() as build:
            return None if build is None else build.manifest

    def units(self) -> list[str]:
        with self._if_seen() as build:
            return [] if build is None else list(build.units)

    def join(self, worker: str, info: Mapping[str, Any]) -> None:
        with self._if_seen():
            self._store.workers.setdefault(self.build, {})[worker] = self._clock()
            self._seen(worker)
            self._emit(EventKind.WORKER_JOINED, worker, data=info)

    def reserve(
        self,
        worker: str,
        max_units: int,
        request_id: str | None = None,
        *,
        whole: str = "class",
    ) -> Reservation:
        check_whole(whole)  # before anything changes
        with self._populated() as build:
            answer = self._before_leasing(build, worker, request_id)
            if answer is None:
                answer = self._lease_pending(build, worker, max_units, request_id, whole)
            return answer or self._nothing_to_lease(build)

    def steal(
        self,
        thief: str,
        max_units: int,
        request_id: str | None = None,
        *,
        whole: str = "class",
    ) -> Reservation:
        check_whole(whole)
        with self._populated() as build:
            answer = self._before_leasing(build, thief, request_id)
            if answer is None:
                answer = self._lease_pending(build, thief, max_units, request_id, whole)
            if answer is None:
                answer = self._steal(build, thief, max_units, request_id, whole)
            return answer or self._nothing_to_lease(build)

    def _before_leasing(
        self, build: Build, worker: str, request_id: str | None
    ) -> Reservation | None:
        """What reserve and steal do first: a retried request gets its reply again (even after
        a stop: the worker holds those leases), a stopped build leases nothing, and expired
        leases come back to the front of the queue (see `Build.to_front_of_a_gone_worker`)."""
        last = build.requests.get(worker)
        if request_id is not None and last is not None and last[0] == request_id:
            return last[1]
        if build.stop_reason is not None:
            return Reservation(ReservationState.EXHAUSTED)
        now = self._clock()
        expired = [u for u in build.held() if build.units[u].deadline < now]
        for unit in expired:
            state = build.units[unit]
            holder = state.worker
            self._emit(EventKind.LEASE_EXPIRED, holder, unit, state.crash_record())
        build.to_front_of_a_gone_worker(expired)
        return None

    def _lease_pending(
        self,
        build: Build,
        worker: str,
        max_units: int,
        request_id: str | None,
        whole: str,
    ) -> Reservation | None:
        picked = self._pending_to_lease(build, worker, max_units, whole)
        if not picked:
            return None
        self._seen(worker)
        deadline = self._clock() + self.lease_ttl_s
        leases = tuple(build.grant(unit, worker, deadline, new_attempt=True) for unit in picked)
        self._emit(EventKind.LEASED, worker, data={"units": picked})
        return build.remember(worker, request_id, leases)

    def _pending_to_lease(self, build: Build, worker: str, max_units: int, whole: str) -> list[str]:
        """The front of the queue (`through_group_end`), passing over units behind `worker`
        in a split module; [] when it must wait for another worker to run them
        (queue/forward.py)."""
        front = build.pending()
        if not build.ranks:
            return through_group_end(front, max_units, whole)
        marks = build.marks.get(worker, {})
        picked = forward.choose(front, max_units, whole, build.ranks.get, marks)
        if picked is not None:
            return picked
        first = front[0]
        since = self._clock() - self.lease_ttl_s
        seen = self._store.last_seen.get(self.build, {})
        if forward.others_could_run(first, build.ranks[first], worker, build.marks, seen, since):
            return []
        return through_group_end(front, max_units, whole)

    def _seen(self, worker: str) -> None:
        """Note that `worker` (one that joined) is alive now."""
        if worker in self._store.workers.get(self.build, {}):
            self._store.last_seen.setdefault(self.build, {})[worker] = self._clock()

    def _steal(
        self, build: Build, thief: str, max_units: int, request_id: str | None, whole: str
    ) -> Reservation | None:
        held_by: dict[str, list[stealing.Held]] = {}
        for unit in build.held():
            state = build.units[unit]
            assert state.worker is not None
            held_by.setdefault(state.worker, []).append(stealing.Held(unit, state.claimed))
        planned = stealing.plan(held_by, thief, max_units, whole, build.behind(thief))
        if planned is None:
            return None
        victim, taken = planned
        deadline = self._clock() + self.lease_ttl_s
        leases = tuple(build.grant(unit, thief, deadline, new_attempt=False) for unit in taken)
        build.units[taken[0]].claimed = True  # the thief runs it at once: no one steals it back
        for lease in leases:
            build.reservations[victim].remove(lease)  # the victim never started it
        self._emit(EventKind.STOLEN, thief, data={"units": taken, "from": victim})
        self._seen(thief)
        return build.remember(thief, request_id, leases)

    @staticmethod
    def _nothing_to_lease(build: Build) -> Reservation:
        """Nothing to lease: WAIT while a lease is out (its unit may come back) or units are
        pending (behind this worker, for another to run), else done."""
        if build.count("leased") or build.count("pending"):
            return Reservation(ReservationState.WAIT)
        return Reservation(ReservationState.EXHAUSTED)

    def heartbeat(self, worker: str, units: Sequence[str]) -> int:
        return len(self._renew(worker, units, claim=False))

    def claim(self, worker: str, units: Sequence[str]) -> list[str]:
        return self._renew(worker, units, claim=True)

    def _renew(self, worker: str, units: Sequence[str], *, claim: bool) -> list[str]:
        with self._populated() as build:
            held = [unit for unit in dict.fromkeys(units) if build.holds(worker, unit)]
            self._seen(worker)
            for unit in held:
                build.units[unit].deadline = self._clock() + self.lease_ttl_s
                build.units[unit].claimed |= claim
            return held

    def complete(self, worker: str, results: Sequence[tuple[str, JSON]]) -> list[bool]:
        with self._populated() as build:
            for unit, _ in results:  # nothing is written when any unit is a stranger
                if unit not in build.units:
                    raise not_in_build(worker, "completed", unit, self.build)
            accepted = []
            for unit, payload in results:
                state = build.units[unit]
                if state.state == "done":
                    late = payload.get("attempt")
                    number = isinstance(late, (int, float)) and not isinstance(late, bool)
                    attempt = late if number else state.attempt
                    self._emit(EventKind.DUPLICATE_REJECTED, worker, unit, {"attempt": attempt})
                    accepted.append(False)
                    continue
                build.finish(unit, worker)
                self._emit(EventKind.RESULT, worker, unit, payload)
                accepted.append(True)
            self._maybe_finish(build)
            return accepted

    def requeue(
        self, worker: str, unit: str, payload: JSON, *, max_requeues: int, tolerance: float
    ) -> RequeueAnswer:
        with self._populated() as build:
            state = build.units.get(unit)
            if state is None:
                raise not_in_build(worker, "requeued", unit, self.build)
            if state.state == "done":
                rejected = {"attempt": payload.get("attempt")}
                self._emit(EventKind.DUPLICATE_REJECTED, worker, unit, rejected)
                return RequeueAnswer.ALREADY_DONE
            budget = math.ceil(build.total * tolerance) if tolerance >= 0 else None
            if state.requeues >= max_requeues or (budget is not None and build.requeues >= budget):
                return RequeueAnswer.REFUSED
            # Behind every unit pending now: populate numbered them 0 .. total - 1, returned
            # units sit below 0, and each requeue goes one further back.
            build.requeues += 1
            build.to_back(unit, float(build.total + build.requeues))
            state.requeues += 1
            self._emit(EventKind.REQUEUED, worker, unit, payload)
            self._maybe_finish(build)
            return RequeueAnswer.REQUEUED

    def release(self, worker: str, cause: Mapping[str, Any]) -> list[Released]:
        culprit = culprit_of(cause)
        with self._populated() as build:
            released, requeued = [], []
            for unit in build.held(worker):
                state = build.units[unit]
                state.crashes += unit == culprit
                finalised = state.crashes >= build.max_unit_crashes or (
                    unit == culprit and bool(cause.get("final"))
                )
                if finalised:
                    build.finish(unit, state.worker)
                    self._emit(EventKind.UNIT_CRASHED, worker, unit, state.crash_record(cause))
                else:
                    requeued.append(unit)
                released.append(Released(unit, state.attempt, state.crashes, finalised))
            build.to_front_of_a_gone_worker(requeued)
            if not cause.get("orderly"):
                # Gone: it runs nothing more, and a worker started under its id starts afresh.
                build.marks.pop(worker, None)
                self._store.last_seen.get(self.build, {}).pop(worker, None)
            data = {"cause": dict(cause), "requeued": requeued}
            self._emit(release_event_kind(cause), worker, data=data)
            self._maybe_finish(build)
            return released

    def hand_back(self, worker: str, units: Sequence[str], reason: str) -> list[str]:
        with self._populated() as build:
            returned = [unit for unit in dict.fromkeys(units) if build.holds(worker, unit)]
            build.to_front(returned)
            marks = build.marks.get(worker, {})
            marks.update(forward.lowered(marks, returned, build.ranks.get))
            data = {"cause": {"reason": reason, "orderly": True}, "requeued": returned}
            self._emit(EventKind.LEASES_RETURNED, worker, data=data)
            self._maybe_finish(build)  # a stopped build ends when its last lease comes back
            return returned

    def publish(self, kind: str, worker: str | None, data: Mapping[str, Any]) -> None:
        with self._if_seen():
            self._emit(kind, worker, data=data)

    def events(self, after: int, limit: int = EVENTS_PAGE) -> list[Event]:
        with self._if_seen():
            newer = [e for e in self._store.streams.get(self.build, []) if e.seq > after]
            return newer if limit < 0 else newer[:limit]

    def stop(self, reason: str) -> None:
        with self._if_seen() as build:
            if build is None or build.stop_reason is not None:
                return
            build.stop_reason = reason
            self._emit(EventKind.STOPPED, data={"reason": reason})
            self._maybe_finish(build)

    def resume(self, reason: str) -> bool:
        with self._populated() as build:
            left = build.count("pending") + build.count("leased")
            stopped = build.stop_reason
            if stopped is None or left == 0:
                return False
            build.stop_reason = build.finished_at = None
            build.marks.clear()  # new processes resume it: none has run anything yet
            data = {"reason": reason, "stopped": stopped, "left": left, "total": build.total}
            self._emit(EventKind.RESUMED, data=data)
            return True

    def status(self) -> BuildStatus:
        with self._if_seen() as build:
            if build is None:
                return BuildStatus(populated=False)
            joined = self._store.workers.get(self.build, {})
            pending, leased = build.count("pending"), build.count("leased")
            return BuildStatus(
                populated=True,
                total=build.total,
                done=build.total - pending - leased,
                pending=pending,
                leased=leased,
                stop_reason=build.stop_reason,
                workers=tuple(sorted(joined, key=lambda worker: (joined[worker], worker))),
            )

    def reservations(self, worker: str) -> list[Lease]:
        with self._locked() as build:
            return [] if build is None else list(build.reservations.get(worker, []))

    def close(self) -> None:
        """Nothing to close: the store outlives its queue objects."""
