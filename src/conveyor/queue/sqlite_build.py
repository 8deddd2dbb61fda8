"""One build inside one SQLite write transaction: its counters, its event stream, and the moves
of leases that the embedded queue's operations are made of (queue/memory.py says what each
move means; this is the same in SQL).

The counters on `builds` are kept in step with `units` by every move, so reserve never counts
rows; the one way to move units out of a lease is `unlease`, so no move forgets a column.
Lease moves are in sqlite_leases.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from conveyor.errors import BuildStateLost
from conveyor.queue import forward
from conveyor.queue.messages import not_in_build
from conveyor.queue.protocol import (
    MAX_UNIT_CRASHES,
    EventKind,
    Lease,
    Released,
    Reservation,
    ReservationState,
    collection_digest,
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

    def create(self, leader: str, units: Sequence[str], meta: Mapping[str, Any]) -> None:
        """Publish the manifest: every unit pending, in manifest order."""
        crashes = int(meta.get("max_unit_crashes", MAX_UNIT_CRASHES))
        digest, total = collection_digest(units), len(units)
        self.conn.execute(
            "INSERT INTO builds (build, leader, digest, total, pending, "
            "max_unit_crashes, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (self.build, leader, digest, total, total, crashes, self.now),
        )
        sql = "INSERT INTO build_meta (build, meta) VALUES (?, ?)"
        self.conn.execute(sql, (self.build, dumps(meta)))
        self.conn.executemany(
            "INSERT INTO units (build, unit, position, state, queue_order) "
            "VALUES (?, ?, ?, 'pending', ?)",
            ((self.build, unit, i, float(i)) for i, unit in enumerate(units)),
        )
        self.conn.executemany(
            "INSERT INTO forward_ranks (build, unit, rank) VALUES (?, ?, ?)",
            ((self.build, unit, rank) for unit, rank in forward.ranks(units, meta).items()),
        )
        self.emit(EventKind.POPULATED, leader, data={"total": total})

    def unit(self, worker: str, verb: str, unit: str) -> tuple[str, int, int]:
        """(state, attempt, requeues) of a unit a worker named; a stranger is refused."""
        sql = "SELECT state, attempt, requeues FROM units WHERE build = ? AND unit = ?"
        row = self.conn.execute(sql, (self.build, unit)).fetchone()
        if row is None:
            raise not_in_build(worker, verb, unit, self.build)
        return row  # type: ignore[no-any-return]

    def finish(self, worker: str, unit: str, state: str) -> None:
        """`unit` (pending or leased) is done, with `worker`'s result."""
        self.unlease(unit, "done")
        sql = "UPDATE units SET worker = ? WHERE build = ? AND unit = ?"
        self.conn.execute(sql, (worker, self.build, unit))
        # Pending: its lease expired and nobody took it yet; this result is still the first.
        self.adjust(done=1, leased=-(state == "leased"), pending=-(state == "pending"))

    def send_back(self, unit: str, state: str, order: float) -> None:
        """A failed attempt of `unit` to the queue at `order`, for another try."""
        self.unlease(unit, "pending", order)
        sql = "UPDATE units SET requeues = requeues + 1 WHERE build = ? AND unit = ?"
        self.conn.execute(sql, (self.build, unit))
        sql = "UPDATE builds SET requeues = requeues + 1 WHERE build = ?"
        self.conn.execute(sql, (self.build,))
        if state == "leased":
            self.adjust(pending=1, leased=-1)

    def charge(self, released: Released, worker: str, cause: Mapping[str, Any]) -> None:
        """Record a released unit's crash count; a finalised one is done, as a crash."""
        sql = "UPDATE units SET crashes = ? WHERE build = ? AND unit = ?"
        self.conn.execute(sql, (released.crashes, self.build, released.unit))
        if released.finalised:
            self.unlease(released.unit, "done")
            self.adjust(leased=-1, done=1)
            data = {"attempt": released.attempt, "crashes": released.crashes, "cause": dict(cause)}
            self.emit(EventKind.UNIT_CRASHED, worker, released.unit, data)

    def set_stop(self, reason: str | None) -> bool:
        """Stop the build (the first reason wins: False when it was stopped already), or with
        None resume it, which also makes it finish anew."""
        if reason is None:
            sql = "UPDATE builds SET stop_reason = NULL, finished_at = NULL WHERE build = ?"
            return self.conn.execute(sql, (self.build,)).rowcount > 0
        sql = "UPDATE builds SET stop_reason = ? WHERE build = ? AND stop_reason IS NULL"
        return self.conn.execute(sql, (reason, self.build)).rowcount > 0

    def unlease(self, unit: str, state: str, order: float | None = None) -> None:
        """Take `unit` out of its lease, into `state` (at `order` in the queue if pending)."""
        self.conn.execute(
            "UPDATE units SET state = ?, deadline = NULL, claimed = 0, "
            "worker = CASE WHEN ? = 'pending' THEN NULL ELSE worker END, "
            "queue_order = COALESCE(?, queue_order) WHERE build = ? AND unit = ?",
            (state, state, order, self.build, unit),
        )

    def seen(self, worker: str) -> None:
        self.conn.execute(
            "UPDATE workers SET last_seen = ? WHERE build = ? AND worker = ?",
            (self.now, self.build, worker),
        )

    def forget_marks(self) -> None:
        """Every worker's marks go (queue/forward.py)."""
        self.conn.execute("DELETE FROM forward_marks WHERE build = ?", (self.build,))

    def gone(self, worker: str) -> None:
        """`worker` died: it runs nothing more (never seen since), and a process started under
        its id starts afresh in every split module (queue/forward.py)."""
        sql = "UPDATE workers SET last_seen = 0 WHERE build = ? AND worker = ?"
        self.conn.execute(sql, (self.build, worker))
        sql = "DELETE FROM forward_marks WHERE build = ? AND worker = ?"
        self.conn.execute(sql, (self.build, worker))

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
