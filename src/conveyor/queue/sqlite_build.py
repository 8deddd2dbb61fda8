"""One build inside one SQLite write transaction: its counters, its event stream, and the moves
of leases that the embedded queue's operations are made of (queue/memory.py says what each
move means; this is the same in SQL).

The counters on `builds` are kept in step with `units` by every move, so reserve never counts
rows; the one way to move units out of a lease is `unlease`, so no move forgets a column.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from conveyor.errors import BuildStateLost
from conveyor.queue import stealing
from conveyor.queue.protocol import (
    EventKind,
    Lease,
    Reservation,
    ReservationState,
    dumps,
)


class Counters(NamedTuple):
    total: int
    pending: int
    leased: int
    done: int
    stop_reason: str | None
    requeues: int
    max_unit_crashes: int


class HeldLease(NamedTuple):
    unit: str
    worker: str
    attempt: int
    crashes: int
    claimed: bool


class BuildTx:
    """The build `build` as seen by the open transaction on `conn`, at the instant `now`."""

    def __init__(self, conn: sqlite3.Connection, build: str, now: float, display_url: str):
        self.conn = conn
        self.build = build
        self.now = now
        self.display_url = display_url

    def exists(self) -> bool:
        sql = "SELECT 1 FROM builds WHERE build = ?"
        return self.conn.execute(sql, (self.build,)).fetchone() is not None

    def counters(self) -> Counters:
        row = self.conn.execute(
            "SELECT total, pending, leased, done, stop_reason, requeues, max_unit_crashes "
            "FROM builds WHERE build = ?",
            (self.build,),
        ).fetchone()
        if row is None:
            raise lost(self.build, self.display_url)
        return Counters(*row)

    def adjust(self, *, pending: int = 0, leased: int = 0, done: int = 0) -> None:
        self.conn.execute(
            "UPDATE builds SET pending = pending + ?, leased = leased + ?, done = done + ? "
            "WHERE build = ?",
            (pending, leased, done, self.build),
        )

    def emit(
        self,
        kind: str,
        worker: str | None = None,
        unit: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        self.conn.execute(
            "INSERT INTO events (build, kind, worker, unit, data, ts) VALUES (?, ?, ?, ?, ?, ?)",
            (self.build, kind, worker, unit, dumps(data or {}), self.now),
        )

    def maybe_finish(self) -> None:
        """`finished` exactly once: every unit done, or stopped and the last lease back."""
        count = self.counters()
        if count.done >= count.total or (count.stop_reason is not None and count.leased == 0):
            cur = self.conn.execute(
                "UPDATE builds SET finished_at = ? WHERE build = ? AND finished_at IS NULL",
                (self.now, self.build),
            )
            if cur.rowcount:
                self.emit(EventKind.FINISHED, data={"done": count.done, "total": count.total})

    def seen(self, worker: str) -> None:
        self.conn.execute(
            "UPDATE workers SET last_seen = ? WHERE build = ? AND worker = ?",
            (self.now, self.build, worker),
        )

    # -- leases ----------------------------------------------------------------------------

    def held(self, worker: str | None = None) -> list[HeldLease]:
        """Leases (of `worker`, or everyone's) in the order they were granted."""
        sql = (
            "SELECT unit, worker, attempt, crashes, claimed FROM units INDEXED BY units_by_state "
            "WHERE build = ? AND state = 'leased'"
        )
        rows = self.conn.execute(sql + " ORDER BY lease_seq", (self.build,)).fetchall()
        return [HeldLease(*row) for row in rows if worker in (None, row[1])]

    def holds(self, worker: str, units: Sequence[str]) -> list[str]:
        """The units of `units` that `worker` holds, in their order, once each."""
        held = []
        for unit in dict.fromkeys(units):
            row = self.conn.execute(
                "SELECT 1 FROM units WHERE build = ? AND unit = ? AND worker = ? "
                "AND state = 'leased'",
                (self.build, unit, worker),
            ).fetchone()
            if row is not None:
                held.append(unit)
        return held

    def renew(self, units: Sequence[str], deadline: float, *, claim: bool) -> None:
        self.conn.executemany(
            "UPDATE units SET deadline = ?, claimed = MAX(claimed, ?) WHERE build = ? AND unit = ?",
            ((deadline, int(claim), self.build, unit) for unit in units),
        )

    def unlease(self, unit: str, state: str, order: float | None = None) -> None:
        """Take `unit` out of its lease, into `state` (at `order` in the queue if pending)."""
        self.conn.execute(
            "UPDATE units SET state = ?, deadline = NULL, claimed = 0, "
            "worker = CASE WHEN ? = 'pending' THEN NULL ELSE worker END, "
            "queue_order = COALESCE(?, queue_order) WHERE build = ? AND unit = ?",
            (state, state, order, self.build, unit),
        )

    def to_front(self, units: Sequence[str]) -> None:
        """Leased units back in front of everything pending, served in the given order."""
        (lowest,) = self.conn.execute(
            "SELECT MIN(queue_order) FROM units WHERE build = ? AND state = 'pending'",
            (self.build,),
        ).fetchone()
        front = (lowest if lowest is not None else 0.0) - len(units)
        for index, unit in enumerate(units):
            self.unlease(unit, "pending", front + index)
        self.adjust(pending=len(units), leased=-len(units))

    def to_front_of_a_gone_worker(self, units: Sequence[str]) -> None:
        """Leases of a worker that went away, in lease order: the most recent served first
        (see memory_state.Build.to_front_of_a_gone_worker)."""
        self.to_front(units[::-1])

    def reclaim_expired(self) -> None:
        """Leases past their deadline come back first (`to_front_of_a_gone_worker`)."""
        expired = self.conn.execute(
            # INDEXED BY: without statistics SQLite would scan the build's whole primary key.
            "SELECT unit, worker, attempt, crashes FROM units INDEXED BY units_by_state "
            "WHERE build = ? AND state = 'leased' AND deadline < ? ORDER BY lease_seq",
            (self.build, self.now),
        ).fetchall()
        for unit, worker, attempt, crashes in expired:
            data = {"attempt": attempt, "crashes": crashes}
            self.emit(EventKind.LEASE_EXPIRED, worker, unit, data)
        self.to_front_of_a_gone_worker([unit for unit, *_ in expired])

    def grant(
        self, worker: str, units: Sequence[str], deadline: float, *, new: bool
    ) -> list[Lease]:
        """Lease `units` to `worker`, at the end of its reservation order; `new`: a new
        attempt (a steal moves a lease without making one)."""
        (granted,) = self.conn.execute(
            "SELECT leases_granted FROM builds WHERE build = ?", (self.build,)
        ).fetchone()
        self.conn.execute(
            "UPDATE builds SET leases_granted = ? WHERE build = ?",
            (granted + len(units), self.build),
        )
        leases = []
        for index, unit in enumerate(units):
            self.conn.execute(
                "UPDATE units SET state = 'leased', worker = ?, deadline = ?, claimed = 0, "
                "attempt = attempt + ?, lease_seq = ? WHERE build = ? AND unit = ?",
                (worker, deadline, int(new), granted + index + 1, self.build, unit),
            )
            sql = "SELECT attempt FROM units WHERE build = ? AND unit = ?"
            (attempt,) = self.conn.execute(sql, (self.build, unit)).fetchone()
            leases.append(Lease(unit, attempt))
        self.conn.executemany(
            "INSERT INTO reservations (build, worker, unit, attempt, ts) VALUES (?, ?, ?, ?, ?)",
            ((self.build, worker, x.unit, x.attempt, self.now) for x in leases),
        )
        self.seen(worker)
        return leases

    def lease_pending(self, worker: str, max_units: int, deadline: float) -> list[Lease]:
        rows = self.conn.execute(
            "SELECT unit FROM units WHERE build = ? AND state = 'pending' "
            "ORDER BY queue_order LIMIT ?",
            (self.build, max(1, max_units)),
        ).fetchall()
        picked = [unit for (unit,) in rows]
        if not picked:
            return []
        leases = self.grant(worker, picked, deadline, new=True)
        self.adjust(pending=-len(leases), leased=len(leases))
        # One event per reservation, not per unit: the record stays complete cheaply.
        self.emit(EventKind.LEASED, worker, data={"units": picked})
        return leases

    def steal(self, thief: str, max_units: int, deadline: float) -> list[Lease]:
        held_by: dict[str, list[stealing.Held]] = {}
        for lease in self.held():
            held_by.setdefault(lease.worker, []).append(stealing.Held(lease.unit, lease.claimed))
        planned = stealing.plan(held_by, thief, max_units)
        if planned is None:
            return []
        victim, taken = planned
        leases = self.grant(thief, taken, deadline, new=False)
        self.conn.executemany(  # the victim never started them: they leave its order
            "DELETE FROM reservations WHERE rowid = (SELECT MIN(rowid) FROM reservations "
            "WHERE build = ? AND worker = ? AND unit = ? AND attempt = ?)",
            ((self.build, victim, x.unit, x.attempt) for x in leases),
        )
        self.emit(EventKind.STOLEN, thief, data={"units": taken, "from": victim})
        return leases

    # -- requests that leased units ----------------------------------------------------------

    def recall(self, worker: str, request_id: str | None) -> Reservation | None:
        """The reply to `worker`'s last request that leased units, if this is its retry."""
        if request_id is None:
            return None
        row = self.conn.execute(
            "SELECT reply FROM reserve_requests WHERE build = ? AND worker = ? AND request_id = ?",
            (self.build, worker, request_id),
        ).fetchone()
        if row is None:
            return None
        reply = json.loads(row[0])
        leases = tuple(Lease(unit, attempt) for unit, attempt in reply["leases"])
        return Reservation(ReservationState.LEASED, leases, reply["pending"])

    def remember(self, worker: str, request_id: str | None, leases: list[Lease]) -> Reservation:
        pending = self.counters().pending
        reply = {"leases": [[x.unit, x.attempt] for x in leases], "pending": pending}
        self.conn.execute(
            "INSERT OR REPLACE INTO reserve_requests (build, worker, request_id, reply) "
            "VALUES (?, ?, ?, ?)",
            (self.build, worker, request_id or uuid.uuid4().hex, dumps(reply)),
        )
        return Reservation(ReservationState.LEASED, tuple(leases), pending)


def lost(build: str, display_url: str) -> BuildStateLost:
    return BuildStateLost(
        f"build {build!r} is not in the queue {display_url} (was the file deleted or "
        "replaced?). Start the build again."
    )
