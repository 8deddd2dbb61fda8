"""The embedded queue: one SQLite file shared by every process of a build on one machine.

Every operation is one short transaction on the file (`sqlite_file.SQLiteFile`), made of the
moves of `sqlite_build.BuildTx`; queue/memory.py is the specification they follow.
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

from conveyor.queue.messages import NOT_JSON, invalid_manifest, malformed, not_in_build
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
from conveyor.queue.sqlite_build import BuildTx, lost
from conveyor.queue.sqlite_file import SQLiteFile

# Kept importable under their old names.
DEFAULT_MAX_UNIT_CRASHES = MAX_UNIT_CRASHES
__all__ = ["DEFAULT_MAX_UNIT_CRASHES", "SQLiteQueue"]


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
        unique = list(dict.fromkeys(units))
        with self._tx(need_build=False) as tx:
            self._seen_populated = True
            if tx.exists():
                return False
            crashes = int(meta.get("max_unit_crashes", MAX_UNIT_CRASHES))
            tx.conn.execute(
                "INSERT INTO builds (build, leader, digest, meta, total, pending, "
                "max_unit_crashes, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self.build,
                    leader,
                    collection_digest(unique),
                    dumps(meta),
                    len(unique),
                    len(unique),
                    crashes,
                    tx.now,
                ),
            )
            tx.conn.executemany(
                "INSERT INTO units (build, unit, position, state, queue_order) "
                "VALUES (?, ?, ?, 'pending', ?)",
                ((self.build, unit, i, float(i)) for i, unit in enumerate(unique)),
            )
            tx.emit(EventKind.POPULATED, leader, data={"total": len(unique)})
            tx.maybe_finish()
        return True

    def manifest(self) -> Manifest | None:
        sql = "SELECT leader, digest, total, meta FROM builds WHERE build = ?"
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

    def reserve(self, worker: str, max_units: int, request_id: str | None = None) -> Reservation:
        return self._lease(worker, max_units, request_id, steal=False)

    def steal(self, thief: str, max_units: int, request_id: str | None = None) -> Reservation:
        return self._lease(thief, max_units, request_id, steal=True)

    def _lease(
        self, worker: str, max_units: int, request_id: str | None, *, steal: bool
    ) -> Reservation:
        """reserve and steal: see MemoryQueue, which they follow step by step."""
        with self._tx() as tx:
            again = tx.recall(worker, request_id)
            if again is not None:
                return again
            if tx.counters().stop_reason is not None:
                return Reservation(ReservationState.EXHAUSTED)
            tx.reclaim_expired()
            deadline = tx.now + self.lease_ttl_s
            leases = tx.lease_pending(worker, max_units, deadline)
            if not leases and steal:
                leases = tx.steal(worker, max_units, deadline)
            if leases:
                return tx.remember(worker, request_id, leases)
            if tx.counters().leased:
                return Reservation(ReservationState.WAIT)
            return Reservation(ReservationState.EXHAUSTED)

    def heartbeat(self, worker: str, units: Sequence[str]) -> int:
        return len(self._renew(worker, units, claim=False))

    def claim(self, worker: str, units: Sequence[str]) -> list[str]:
        return self._renew(worker, units, claim=True)

    def _renew(self, worker: str, units: Sequence[str], *, claim: bool) -> list[str]:
        with self._tx() as tx:
            held = tx.holds(worker, units)
            tx.renew(held, tx.now + self.lease_ttl_s, claim=claim)
            tx.seen(worker)
        return held

    def complete(self, worker: str, results: Sequence[tuple[str, JSON]]) -> list[bool]:
        accepted: list[bool] = []
        with self._tx() as tx:
            for unit, payload in results:
                sql = "SELECT state, attempt FROM units WHERE build = ? AND unit = ?"
                row = tx.conn.execute(sql, (self.build, unit)).fetchone()
                if row is None:
                    raise not_in_build(worker, "completed", unit, self.build)
                state, attempt = row
                accepted.append(state != "done")
                if state == "done":
                    late = payload.get("attempt")
                    number = isinstance(late, (int, float)) and not isinstance(late, bool)
                    data = {"attempt": late if number else attempt}
                    tx.emit(EventKind.DUPLICATE_REJECTED, worker, unit, data)
                    continue
                tx.unlease(unit, "done")
                tx.conn.execute(
                    "UPDATE units SET worker = ? WHERE build = ? AND unit = ?",
                    (worker, self.build, unit),
                )
                if state == "leased":
                    tx.adjust(leased=-1, done=1)
                else:  # its lease expired and nobody took it yet: this result is still first
                    tx.adjust(pending=-1, done=1)
                tx.emit(EventKind.RESULT, worker, unit, payload)
            tx.maybe_finish()
        return accepted

    def requeue(
        self, worker: str, unit: str, payload: JSON, *, max_requeues: int, tolerance: float
    ) -> RequeueAnswer:
        with self._tx() as tx:
            count = tx.counters()
            sql = "SELECT state, requeues FROM units WHERE build = ? AND unit = ?"
            row = tx.conn.execute(sql, (self.build, unit)).fetchone()
            if row is None:
                raise not_in_build(worker, "requeued", unit, self.build)
            state, unit_requeues = row
            if state == "done":
                rejected = {"attempt": payload.get("attempt")}
                tx.emit(EventKind.DUPLICATE_REJECTED, worker, unit, rejected)
                return RequeueAnswer.ALREADY_DONE
            budget = math.ceil(count.total * tolerance) if tolerance >= 0 else None
            if unit_requeues >= max_requeues or (budget is not None and count.requeues >= budget):
                return RequeueAnswer.REFUSED
            # Behind every unit pending now: populate numbered them 0 .. total - 1, returned
            # units sit below 0, and each requeue goes one further back.
            tx.unlease(unit, "pending", float(count.total + count.requeues + 1))
            tx.conn.execute(
                "UPDATE units SET requeues = requeues + 1 WHERE build = ? AND unit = ?",
                (self.build, unit),
            )
            tx.conn.execute(
                "UPDATE builds SET requeues = requeues + 1 WHERE build = ?", (self.build,)
            )
            if state == "leased":
                tx.adjust(pending=1, leased=-1)
            tx.emit(EventKind.REQUEUED, worker, unit, payload)
            tx.maybe_finish()
            return RequeueAnswer.REQUEUED

    def release(self, worker: str, cause: Mapping[str, Any]) -> list[Released]:
        culprit = culprit_of(cause)
        released: list[Released] = []
        with self._tx() as tx:
            limit = tx.counters().max_unit_crashes
            for lease in tx.held(worker):
                crashes = lease.crashes + (lease.unit == culprit)
                final = lease.unit == culprit and bool(cause.get("final"))
                released.append(
                    Released(lease.unit, lease.attempt, crashes, final or crashes >= limit)
                )
                tx.conn.execute(
                    "UPDATE units SET crashes = ? WHERE build = ? AND unit = ?",
                    (crashes, self.build, lease.unit),
                )
                if released[-1].finalised:
                    tx.unlease(lease.unit, "done")
                    tx.adjust(leased=-1, done=1)
                    data = {"attempt": lease.attempt, "crashes": crashes, "cause": dict(cause)}
                    tx.emit(EventKind.UNIT_CRASHED, worker, lease.unit, data)
            requeued = [r.unit for r in released if not r.finalised]
            tx.to_front_of_a_gone_worker(requeued)
            data = {"cause": dict(cause), "requeued": requeued}
            tx.emit(release_event_kind(cause), worker, data=data)
            tx.maybe_finish()
        return released

    def hand_back(self, worker: str, units: Sequence[str], reason: str) -> list[str]:
        with self._tx() as tx:
            returned = tx.holds(worker, units)
            tx.to_front(returned)
            cause = {"reason": reason, "orderly": True}
            tx.emit(EventKind.LEASES_RETURNED, worker, data={"cause": cause, "requeued": returned})
            tx.maybe_finish()  # a stopped build ends when its last lease comes back
        return returned

    def publish(self, kind: str, worker: str | None, data: Mapping[str, Any]) -> None:
        with self._tx(need_build=self._seen_populated) as tx:
            tx.emit(kind, worker, data=data)

    def events(self, after: int, limit: int = EVENTS_PAGE) -> list[Event]:
        rows = self._read(
            "SELECT seq, kind, worker, unit, data, ts FROM events "
            "WHERE build = ? AND seq > ? ORDER BY seq LIMIT ?",
            (self.build, after, limit),
        )
        events = []
        for seq, kind, worker, unit, data, ts in rows:
            try:
                events.append(Event(seq, kind, worker, unit, json.loads(data), ts))
            except ValueError:
                events.append(malformed(seq, worker, unit, NOT_JSON, data, ts))
        return events

    def stop(self, reason: str) -> None:
        with self._tx(need_build=self._seen_populated) as tx:
            cur = tx.conn.execute(
                "UPDATE builds SET stop_reason = ? WHERE build = ? AND stop_reason IS NULL",
                (reason, self.build),
            )
            if cur.rowcount:
                tx.emit(EventKind.STOPPED, data={"reason": reason})
                tx.maybe_finish()

    def resume(self, reason: str) -> bool:
        with self._tx() as tx:
            count = tx.counters()
            left = count.pending + count.leased
            if count.stop_reason is None or left == 0:
                return False
            tx.conn.execute(
                "UPDATE builds SET stop_reason = NULL, finished_at = NULL WHERE build = ?",
                (self.build,),
            )
            data = {"reason": reason, "stopped": count.stop_reason, "left": left}
            tx.emit(EventKind.RESUMED, data={**data, "total": count.total})
        return True

    def status(self) -> BuildStatus:
        counts, workers = self._file.read(
            (
                "SELECT total, pending, leased, done, stop_reason FROM builds WHERE build = ?",
                (self.build,),
            ),
            (
                "SELECT worker FROM workers WHERE build = ? ORDER BY joined_at, worker",
                (self.build,),
            ),
        )
        if not counts:
            if self._seen_populated:
                raise lost(self.build, self.display_url)
            return BuildStatus(populated=False)
        self._seen_populated = True
        total, pending, leased, done, stop_reason = counts[0]
        return BuildStatus(
            populated=True,
            total=total,
            done=done,
            pending=pending,
            leased=leased,
            stop_reason=stop_reason,
            workers=tuple(w for (w,) in workers),
        )

    def reservations(self, worker: str) -> list[Lease]:
        rows = self._file.read(
            (
                "SELECT unit, attempt FROM reservations WHERE build = ? AND worker = ? "
                "ORDER BY rowid",
                (self.build, worker),
            )
        )[0]
        return [Lease(unit, attempt) for unit, attempt in rows]
