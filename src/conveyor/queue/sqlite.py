"""The embedded queue: one SQLite file shared by every process of a build on one machine.

Every operation is one short transaction on the file (`sqlite_file.SQLiteFile`), made of the
moves of `sqlite_build.BuildTx` and `sqlite_leases.Leases`; queue/memory.py is the
specification they follow.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conveyor.queue import forward, stealing
from conveyor.queue.messages import NOT_JSON, invalid_manifest, malformed
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
    culprit_of,
    dumps,
    release_event_kind,
)
from conveyor.queue.sqlite_build import BuildTx, lost
from conveyor.queue.sqlite_file import SQLiteFile
from conveyor.queue.sqlite_leases import MARKS_SQL, Leases, held_back
from conveyor.scheduling import check_whole

# Kept importable under their old names.
DEFAULT_MAX_UNIT_CRASHES = MAX_UNIT_CRASHES
__all__ = ["DEFAULT_MAX_UNIT_CRASHES", "SQLiteQueue"]

EVENTS_SQL = (
    "SELECT seq, kind, worker, unit, data, ts FROM events "
    "WHERE build = ? AND seq > ? ORDER BY seq LIMIT ?"
)
STATUS_SQL = "SELECT total, pending, leased, done, stop_reason FROM builds WHERE build = ?"
WORKERS_SQL = "SELECT worker FROM workers WHERE build = ? ORDER BY joined_at, worker"
# What an idle worker's reserve or steal reads before it takes the write lock.
IDLE_COUNTERS_SQL = "SELECT pending, leased, stop_reason FROM builds WHERE build = ?"
EXPIRED_SQL = (
    "SELECT 1 FROM units INDEXED BY units_by_state WHERE build = ? AND state = 'leased' "
    "AND deadline < ? LIMIT 1"
)
RETRIED_SQL = "SELECT 1 FROM reserve_requests WHERE build = ? AND worker = ? AND request_id = ?"
# Unclaimed leases of other workers: without one there is nothing to steal.
STEALABLE_SQL = (
    "SELECT COUNT(*) FROM units INDEXED BY units_by_state WHERE build = ? AND state = 'leased' "
    "AND claimed = 0 AND worker != ?"
)
HELD_SQL = (  # every lease, in the order granted, with its rank in a split module (or NULL)
    "SELECT u.unit, u.worker, u.claimed, r.rank FROM units AS u INDEXED BY units_by_state "
    "LEFT JOIN forward_ranks AS r ON r.build = u.build AND r.unit = u.unit "
    "WHERE u.build = ? AND u.state = 'leased' ORDER BY u.lease_seq"
)
RESERVATIONS_SQL = (
    "SELECT unit, attempt FROM reservations WHERE build = ? AND worker = ? ORDER BY rowid"
)


class SQLiteQueue(Queue):
    """Queue backend on a SQLite file; safe for many processes and threads on one machine."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        build: str,
        *,
        lease_ttl_s: float = LEASE_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.build = build
        self.lease_ttl_s = lease_ttl_s
        self.display_url = f"sqlite://{path}"
        self._clock = clock
        self._file = SQLiteFile(self.path, self.display_url)
        # From the first sight of the build on, a missing build means it was lost.
        self._seen_populated = False

    @contextmanager
    def _tx(self, *, need_build: bool = True) -> Iterator[BuildTx]:
        """One write transaction on the build; `need_build`: it must exist (BuildStateLost)."""
        with self._file.write() as conn:
            tx = BuildTx(conn, self.build, self._clock(), self.display_url)
            if need_build:
                tx.counters()
                self._seen_populated = True
            yield tx

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Rows of one query; once the build was seen, its absence is a loss, not "no rows"."""
        if not self._seen_populated:
            return self._file.read((sql, params))[0]
        exists = ("SELECT 1 FROM builds WHERE build = ?", (self.build,))
        rows, found = self._file.read((sql, params), exists)
        if not found:
            raise lost(self.build, self.display_url)
        return rows

    def close(self) -> None:
        self._file.close()

    # -- protocol -------------------------------------------------------------------------

    def populate(self, leader: str, units: Sequence[str], meta: Mapping[str, Any]) -> bool:
        with self._tx(need_build=False) as tx:
            self._seen_populated = True
            if tx.exists():
                return False
            tx.create(leader, list(dict.fromkeys(units)), meta)
            tx.maybe_finish()
        return True

    def manifest(self) -> Manifest | None:
        sql = (
            "SELECT leader, digest, total, meta FROM builds JOIN build_meta USING (build) "
            "WHERE build = ?"
        )
        rows = self._file.read((sql, (self.build,)))[0]
        if not rows:
            return None
        self._seen_populated = True
        leader, digest, total, meta = rows[0]
        try:
            return Manifest(leader=leader, digest=digest, total=total, meta=json.loads(meta))
        except ValueError:
            raise invalid_manifest(
                self.build, self.display_url, "Use a fresh queue path."
            ) from None

    def units(self) -> list[str]:
        rows = self._read("SELECT unit FROM units WHERE build = ? ORDER BY position", (self.build,))
        return [unit for (unit,) in rows]

    def join(self, worker: str, info: Mapping[str, Any]) -> None:
        with self._tx(need_build=self._seen_populated) as tx:
            tx.conn.execute(
                "INSERT OR REPLACE INTO workers (build, worker, info, joined_at, last_seen) "
                "VALUES (?, ?, ?, ?, ?)",
                (self.build, worker, dumps(info), tx.now, tx.now),
            )
            tx.emit(EventKind.WORKER_JOINED, worker, data=info)

    def reserve(
        self,
        worker: str,
        max_units: int,
        request_id: str | None = None,
        *,
        whole: str = "class",
    ) -> Reservation:
        return self._lease(worker, max_units, request_id, steal=False, whole=whole)

    def steal(
        self,
        thief: str,
        max_units: int,
        request_id: str | None = None,
        *,
        whole: str = "class",
    ) -> Reservation:
        return self._lease(thief, max_units, request_id, steal=True, whole=whole)

    def _lease(
        self,
        worker: str,
        max_units: int,
        request_id: str | None,
        *,
        steal: bool,
        whole: str,
    ) -> Reservation:
        """reserve and steal: see MemoryQueue, which they follow step by step."""
        check_whole(whole)
        if self._nothing_to_lease(
            worker, request_id, steal=steal, max_units=max_units, whole=whole
        ):
            return Reservation(ReservationState.WAIT)
        with self._tx() as tx:
            again = tx.recall(worker, request_id)
            if again is not None:
                return again
            if tx.counters().stop_reason is not None:
                return Reservation(ReservationState.EXHAUSTED)
            book = Leases(tx)
            book.reclaim_expired()
            deadline = tx.now + self.lease_ttl_s
            since = tx.now - self.lease_ttl_s  # a worker seen since is alive
            leases = book.lease_pending(worker, max_units, deadline, whole, since)
            if not leases and steal:
                leases = book.steal(worker, max_units, deadline, whole)
            if leases:
                return tx.remember(worker, request_id, leases)
            counters = tx.counters()
            if counters.leased or counters.pending:  # pending: behind it, for another worker
                return Reservation(ReservationState.WAIT)
            return Reservation(ReservationState.EXHAUSTED)

    def _nothing_to_lease(
        self, worker: str, request_id: str | None, *, steal: bool, max_units: int, whole: str
    ) -> bool:
        """Whether a reserve (or steal) would certainly answer WAIT, told from reads alone,
        without the write lock. Idle workers ask every 50 ms; each write transaction
        (and a steal's look at every lease held) kept the lock from the busy worker's claims,
        which then waited tens of milliseconds each: a first run of idna's suite, its 6,000
        tests of one class on one worker, took 74 s instead of 18. Anything the write path
        would act on (a pending unit, an expired lease, a stop, a retried request, something
        to steal) sends the request there."""
        # The counters alone first: while units are pending (most of a build) that one row
        # is all a reserve pays for the check.
        counters = self._file.read((IDLE_COUNTERS_SQL, (self.build,)))[0]
        if not counters:
            return False
        pending, leased, stop_reason = counters[0]
        if stop_reason is not None:
            return False
        if pending:
            # Units pending, all behind this worker in a split module, for another worker to
            # run (queue/forward.py): to this worker it is as if nothing were pending.
            since = self._clock() - self.lease_ttl_s
            if not held_back(self._read_rows, self.build, worker, since):
                return False
        elif not leased:
            return False
        expired, retried, stealable = self._file.read(
            (EXPIRED_SQL, (self.build, self._clock())),
            (RETRIED_SQL, (self.build, worker, request_id or "")),
            (STEALABLE_SQL if steal else "SELECT 0", (self.build, worker) if steal else ()),
        )
        if expired or retried:
            return False
        if not steal or not stealable[0][0]:
            return True
        held, marks = self._file.read((HELD_SQL, (self.build,)), (MARKS_SQL, (self.build, worker)))
        held_by: dict[str, list[stealing.Held]] = {}
        ranks: dict[str, int] = {}
        for unit, holder, claimed, rank in held:
            held_by.setdefault(holder, []).append(stealing.Held(unit, bool(claimed)))
            if rank is not None:
                ranks[unit] = rank
        behind = forward.behind(ranks.get, dict(marks))
        return stealing.plan(held_by, worker, max_units, whole, behind) is None

    def _read_rows(self, sql: str, params: Sequence[Any]) -> list[Any]:
        return self._file.read((sql, params))[0]

    def heartbeat(self, worker: str, units: Sequence[str]) -> int:
        return len(self._renew(worker, units, claim=False))

    def claim(self, worker: str, units: Sequence[str]) -> list[str]:
        return self._renew(worker, units, claim=True)

    def _renew(self, worker: str, units: Sequence[str], *, claim: bool) -> list[str]:
        with self._tx() as tx:
            book = Leases(tx)
            held = book.holds(worker, units)
            book.renew(held, tx.now + self.lease_ttl_s, claim=claim)
            tx.seen(worker)
        return held

    def complete(self, worker: str, results: Sequence[tuple[str, JSON]]) -> list[bool]:
        accepted: list[bool] = []
        with self._tx() as tx:
            for unit, payload in results:
                state, attempt, _ = tx.unit(worker, "completed", unit)
                accepted.append(state != "done")
                if state != "done":
                    tx.finish(worker, unit, state)
                    tx.emit(EventKind.RESULT, worker, unit, payload)
                    continue
                late = payload.get("attempt")
                number = isinstance(late, (int, float)) and not isinstance(late, bool)
                data = {"attempt": late if number else attempt}
                tx.emit(EventKind.DUPLICATE_REJECTED, worker, unit, data)
            tx.maybe_finish()
        return accepted

    def requeue(
        self, worker: str, unit: str, payload: JSON, *, max_requeues: int, tolerance: float
    ) -> RequeueAnswer:
        with self._tx() as tx:
            count = tx.counters()
            state, _, unit_requeues = tx.unit(worker, "requeued", unit)
            if state == "done":
                rejected = {"attempt": payload.get("attempt")}
                tx.emit(EventKind.DUPLICATE_REJECTED, worker, unit, rejected)
                return RequeueAnswer.ALREADY_DONE
            budget = math.ceil(count.total * tolerance) if tolerance >= 0 else None
            if unit_requeues >= max_requeues or (budget is not None and count.requeues >= budget):
                return RequeueAnswer.REFUSED
            # Behind every unit pending now: populate numbered them 0 .. total - 1, returned
            # units sit below 0, and each requeue goes one further back.
            tx.send_back(unit, state, float(count.total + count.requeues + 1))
            tx.emit(EventKind.REQUEUED, worker, unit, payload)
            tx.maybe_finish()
            return RequeueAnswer.REQUEUED

    def release(self, worker: str, cause: Mapping[str, Any]) -> list[Released]:
        culprit = culprit_of(cause)
        released: list[Released] = []
        with self._tx() as tx:
            limit = tx.counters().max_unit_crashes
            book = Leases(tx)
            for lease in book.held(worker):
                crashes = lease.crashes + (lease.unit == culprit)
                final = lease.unit == culprit and bool(cause.get("final"))
                finalised = final or crashes >= limit
                released.append(Released(lease.unit, lease.attempt, crashes, finalised))
                tx.charge(released[-1], worker, cause)
            requeued = [r.unit for r in released if not r.finalised]
            book.to_front_of_a_gone_worker(requeued)
            if not cause.get("orderly"):
                tx.gone(worker)
            data = {"cause": dict(cause), "requeued": requeued}
            tx.emit(release_event_kind(cause), worker, data=data)
            tx.maybe_finish()
        return released

    def hand_back(self, worker: str, units: Sequence[str], reason: str) -> list[str]:
        with self._tx() as tx:
            book = Leases(tx)
            returned = book.holds(worker, units)
            book.to_front(returned)
            book.lower_marks(worker, returned)
            cause = {"reason": reason, "orderly": True}
            tx.emit(EventKind.LEASES_RETURNED, worker, data={"cause": cause, "requeued": returned})
            tx.maybe_finish()  # a stopped build ends when its last lease comes back
        return returned

    def publish(self, kind: str, worker: str | None, data: Mapping[str, Any]) -> None:
        with self._tx(need_build=self._seen_populated) as tx:
            tx.emit(kind, worker, data=data)

    def events(self, after: int, limit: int = EVENTS_PAGE) -> list[Event]:
        rows = self._read(EVENTS_SQL, (self.build, after, limit))
        return [_event(*row) for row in rows]

    def stop(self, reason: str) -> None:
        with self._tx(need_build=self._seen_populated) as tx:
            if tx.exists() and tx.set_stop(reason):
                tx.emit(EventKind.STOPPED, data={"reason": reason})
                tx.maybe_finish()

    def resume(self, reason: str) -> bool:
        with self._tx() as tx:
            count = tx.counters()
            left = count.pending + count.leased
            if count.stop_reason is None or left == 0:
                return False
            tx.set_stop(None)
            tx.forget_marks()  # new processes resume it: none has run anything yet
            data = {"reason": reason, "stopped": count.stop_reason, "left": left}
            tx.emit(EventKind.RESUMED, data={**data, "total": count.total})
        return True

    def status(self) -> BuildStatus:
        counts, workers = self._file.read((STATUS_SQL, (self.build,)), (WORKERS_SQL, (self.build,)))
        if not counts:
            if self._seen_populated:
                raise lost(self.build, self.display_url)
            return BuildStatus(populated=False)
        self._seen_populated = True
        total, pending, leased, done, stop_reason = counts[0]
        joined = tuple(w for (w,) in workers)
        return BuildStatus(True, total, done, pending, leased, stop_reason, joined)

    def reservations(self, worker: str) -> list[Lease]:
        (rows,) = self._file.read((RESERVATIONS_SQL, (self.build, worker)))
        return [Lease(unit, attempt) for unit, attempt in rows]


def _event(
    seq: int, kind: str, worker: str | None, unit: str | None, data: str, ts: float
) -> Event:
    try:
        return Event(seq, kind, worker, unit, json.loads(data), ts)
    except ValueError:
        return malformed(seq, worker, unit, NOT_JSON, data, ts)
