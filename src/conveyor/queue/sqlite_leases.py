"""A build's leases inside one SQLite write transaction: who holds what, in which order, and
the moves of reserve, steal, claim, expiry and hand-back (queue/memory.py says what each means;
this is the same in SQL)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

from conveyor.queue import forward, stealing
from conveyor.queue.protocol import EventKind, Lease
from conveyor.queue.sqlite_build import BuildTx
from conveyor.scheduling import back_to_front_order, through_group_end, whole_of

# Pending units in serving order, each with its rank in a split module (or NULL).
FRONT_SQL = (
    "SELECT u.unit, r.rank FROM units AS u INDEXED BY units_by_state "
    "LEFT JOIN forward_ranks AS r ON r.build = u.build AND r.unit = u.unit "
    "WHERE u.build = ? AND u.state = 'pending' ORDER BY u.queue_order"
)
MARKS_SQL = "SELECT module, rank FROM forward_marks WHERE build = ? AND worker = ?"
MODULE_MARKS_SQL = "SELECT worker, rank FROM forward_marks WHERE build = ? AND module = ?"
LAST_SEEN_SQL = "SELECT worker, last_seen FROM workers WHERE build = ?"
Rows = Callable[[str, Sequence[Any]], list[Any]]


def held_back(rows: Rows, build: str, worker: str, since: float) -> bool:
    """Whether `worker`'s reserve must wait (queue/forward.py): every unit among the first
    forward.SCAN pending lies behind it, and another worker seen since `since` could run the
    front one forward. `rows` runs a query: in a write transaction, or in a read snapshot
    (an idle worker's check before it takes the write lock)."""
    front = rows(FRONT_SQL + " LIMIT 1", (build,))  # most reserves: the front is not behind
    if not front or front[0][1] is None:
        return False
    marks = dict(rows(MARKS_SQL, (build, worker)))

    def behind(row: Sequence[Any]) -> bool:  # a row of FRONT_SQL: (unit, rank)
        return forward.is_behind(row[1], marks.get(forward.file_of(row[0])))

    if not behind(front[0]):
        return False
    window = rows(FRONT_SQL + " LIMIT ?", (build, forward.SCAN))
    if not window or not all(map(behind, window)):
        return False
    first, rank = window[0]
    module = forward.file_of(first)
    marks_of = {other: {module: mark} for other, mark in rows(MODULE_MARKS_SQL, (build, module))}
    last_seen = dict(rows(LAST_SEEN_SQL, (build,)))
    return forward.others_could_run(first, rank, worker, marks_of, last_seen, since)


class HeldLease(NamedTuple):
    unit: str
    worker: str
    attempt: int
    crashes: int
    claimed: bool


class Leases:
    """The leases of the build `tx` is a transaction on."""

    def __init__(self, tx: BuildTx) -> None:
        self.tx = tx

    def held(self, worker: str | None = None) -> list[HeldLease]:
        """Leases (of `worker`, or everyone's) in the order they were granted."""
        sql = (
            "SELECT unit, worker, attempt, crashes, claimed FROM units INDEXED BY units_by_state "
            "WHERE build = ? AND state = 'leased'"
        )
        rows = self.tx.conn.execute(sql + " ORDER BY lease_seq", (self.tx.build,)).fetchall()
        return [HeldLease(*row) for row in rows if worker in (None, row[1])]

    def holds(self, worker: str, units: Sequence[str]) -> list[str]:
        """The units of `units` that `worker` holds, in their order, once each."""
        held = []
        for unit in dict.fromkeys(units):
            row = self.tx.conn.execute(
                "SELECT 1 FROM units WHERE build = ? AND unit = ? AND worker = ? "
                "AND state = 'leased'",
                (self.tx.build, unit, worker),
            ).fetchone()
            if row is not None:
                held.append(unit)
        return held

    def renew(self, units: Sequence[str], deadline: float, *, claim: bool) -> None:
        self.tx.conn.executemany(
            "UPDATE units SET deadline = ?, claimed = MAX(claimed, ?) WHERE build = ? AND unit = ?",
            ((deadline, int(claim), self.tx.build, unit) for unit in units),
        )

    def to_front(self, units: Sequence[str]) -> None:
        """Leased units back in front of everything pending, served in the given order."""
        (lowest,) = self.tx.conn.execute(
            "SELECT MIN(queue_order) FROM units WHERE build = ? AND state = 'pending'",
            (self.tx.build,),
        ).fetchone()
        front = (lowest if lowest is not None else 0.0) - len(units)
        for index, unit in enumerate(units):
            self.tx.unlease(unit, "pending", front + index)
        self.tx.adjust(pending=len(units), leased=-len(units))

    def to_front_of_a_gone_worker(self, units: Sequence[str]) -> None:
        """Leases of a worker that went away, in lease order, back in
        `scheduling.back_to_front_order` (see memory_state.Build.to_front_of_a_gone_worker)."""
        if not units:
            return  # nothing expired: most reserves (no query for the queue's front)
        whole = "none"
        if len(units) > 1:  # one unit has no order to keep: the meta is not read for it
            sql = "SELECT meta FROM build_meta WHERE build = ?"
            (meta,) = self.tx.conn.execute(sql, (self.tx.build,)).fetchone()
            with contextlib.suppress(ValueError):
                whole = whole_of(json.loads(meta))
        self.to_front(back_to_front_order(units, whole))

    def reclaim_expired(self) -> None:
        """Leases past their deadline come back first (`to_front_of_a_gone_worker`)."""
        expired = self.tx.conn.execute(
            # INDEXED BY: without statistics SQLite would scan the build's whole primary key.
            "SELECT unit, worker, attempt, crashes FROM units INDEXED BY units_by_state "
            "WHERE build = ? AND state = 'leased' AND deadline < ? ORDER BY lease_seq",
            (self.tx.build, self.tx.now),
        ).fetchall()
        for unit, worker, attempt, crashes in expired:
            data = {"attempt": attempt, "crashes": crashes}
            self.tx.emit(EventKind.LEASE_EXPIRED, worker, unit, data)
        self.to_front_of_a_gone_worker([unit for unit, *_ in expired])

    def grant(
        self, worker: str, units: Sequence[str], deadline: float, *, new: bool
    ) -> list[Lease]:
        """Lease `units` to `worker`, at the end of its reservation order; `new`: a new
        attempt (a steal moves a lease without making one)."""
        (granted,) = self.tx.conn.execute(
            "SELECT leases_granted FROM builds WHERE build = ?", (self.tx.build,)
        ).fetchone()
        self.tx.conn.execute(
            "UPDATE builds SET leases_granted = ? WHERE build = ?",
            (granted + len(units), self.tx.build),
        )
        leases = []
        for index, unit in enumerate(units):
            self.tx.conn.execute(
                "UPDATE units SET state = 'leased', worker = ?, deadline = ?, claimed = 0, "
                "attempt = attempt + ?, lease_seq = ? WHERE build = ? AND unit = ?",
                (worker, deadline, int(new), granted + index + 1, self.tx.build, unit),
            )
            sql = "SELECT attempt FROM units WHERE build = ? AND unit = ?"
            (attempt,) = self.tx.conn.execute(sql, (self.tx.build, unit)).fetchone()
            leases.append(Lease(unit, attempt))
        self.tx.conn.executemany(
            "INSERT INTO reservations (build, worker, unit, attempt, ts) VALUES (?, ?, ?, ?, ?)",
            ((self.tx.build, worker, x.unit, x.attempt, self.tx.now) for x in leases),
        )
        self.tx.seen(worker)
        self._mark(worker, units)
        return leases

    def lease_pending(
        self, worker: str, max_units: int, deadline: float, whole: str, since: float
    ) -> list[Lease]:
        """Lease from the front of the queue (see MemoryQueue._pending_to_lease); `since`:
        a worker seen since then is alive."""
        picked = self._pending_to_lease(worker, max_units, whole, since)
        if not picked:
            return []
        leases = self.grant(worker, picked, deadline, new=True)
        self.tx.adjust(pending=-len(leases), leased=len(leases))
        # One event per reservation, not per unit: the record stays complete cheaply.
        self.tx.emit(EventKind.LEASED, worker, data={"units": picked})
        return leases

    def _pending_to_lease(self, worker: str, max_units: int, whole: str, since: float) -> list[str]:
        """See MemoryQueue._pending_to_lease."""
        if held_back(self._rows, self.tx.build, worker, since):
            return []
        ranks: dict[str, int | None] = {}

        def front() -> Iterator[str]:
            # The cursor walks the index lazily: only the rows looked at are read.
            with contextlib.closing(self.tx.conn.execute(FRONT_SQL, (self.tx.build,))) as cursor:
                for unit, rank in cursor:
                    ranks[unit] = rank
                    yield unit

        picked = forward.choose(front(), max_units, whole, ranks.get, self.marks(worker))
        if picked is None:  # every unit looked at lies behind it, and no one else could run them
            return through_group_end(front(), max_units, whole)
        return picked

    def _rows(self, sql: str, params: Sequence[Any]) -> list[Any]:
        return self.tx.conn.execute(sql, params).fetchall()

    def rank_of(self, unit: str) -> int | None:
        row = self.tx.conn.execute(
            "SELECT rank FROM forward_ranks WHERE build = ? AND unit = ?", (self.tx.build, unit)
        ).fetchone()
        return None if row is None else int(row[0])

    def marks(self, worker: str) -> dict[str, int]:
        """`worker`'s highest rank leased in each split module."""
        return dict(self._rows(MARKS_SQL, (self.tx.build, worker)))

    def lower_marks(self, worker: str, units: Sequence[str]) -> None:
        """`worker` handed `units` back unstarted (forward.lowered)."""
        lowered = forward.lowered(self.marks(worker), units, self.rank_of)
        self.tx.conn.executemany(
            "UPDATE forward_marks SET rank = ? WHERE build = ? AND worker = ? AND module = ?",
            ((rank, self.tx.build, worker, module) for module, rank in lowered.items()),
        )

    def _mark(self, worker: str, units: Sequence[str]) -> None:
        raised: dict[str, int] = {}
        forward.marked(raised, units, self.rank_of)
        self.tx.conn.executemany(
            "INSERT INTO forward_marks (build, worker, module, rank) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (build, worker, module) DO UPDATE SET rank = MAX(rank, excluded.rank)",
            ((self.tx.build, worker, module, rank) for module, rank in raised.items()),
        )

    def steal(self, thief: str, max_units: int, deadline: float, whole: str) -> list[Lease]:
        held_by: dict[str, list[stealing.Held]] = {}
        for lease in self.held():
            held_by.setdefault(lease.worker, []).append(stealing.Held(lease.unit, lease.claimed))
        behind = forward.behind(self.rank_of, self.marks(thief))
        planned = stealing.plan(held_by, thief, max_units, whole, behind)
        if planned is None:
            return []
        victim, taken = planned
        leases = self.grant(thief, taken, deadline, new=False)
        self.tx.conn.execute(  # the thief runs the first at once: no one steals it back
            "UPDATE units SET claimed = 1 WHERE build = ? AND unit = ?", (self.tx.build, taken[0])
        )
        self.tx.conn.executemany(  # the victim never started them: they leave its order
            "DELETE FROM reservations WHERE rowid = (SELECT MIN(rowid) FROM reservations "
            "WHERE build = ? AND worker = ? AND unit = ? AND attempt = ?)",
            ((self.tx.build, victim, x.unit, x.attempt) for x in leases),
        )
        self.tx.emit(EventKind.STOLEN, thief, data={"units": taken, "from": victim})
        return leases
