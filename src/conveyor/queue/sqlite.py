"""The embedded queue: one SQLite file shared by every process of a build on one machine.

WAL mode lets the controller read the event stream while workers write, and every operation is
one short `BEGIN IMMEDIATE` transaction, so concurrent workers serialise on the write lock
instead of failing with "database is locked".
"""

from __future__ import annotations

import fcntl
import functools
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from conveyor.errors import BuildStateLost, QueueError, QueueUnavailable, QueueURLError
from conveyor.queue.protocol import (
    ALREADY_DONE,
    EVENT_DUPLICATE_REJECTED,
    EVENT_FINISHED,
    EVENT_LEASE_EXPIRED,
    EVENT_LEASED,
    EVENT_LEASES_RETURNED,
    EVENT_POPULATED,
    EVENT_REQUEUED,
    EVENT_RESULT,
    EVENT_RESUMED,
    EVENT_STOPPED,
    EVENT_UNIT_CRASHED,
    EVENT_WORKER_JOINED,
    EXHAUSTED,
    JSON,
    LEASED,
    REQUEUE_REFUSED,
    REQUEUED,
    WAIT,
    BuildStatus,
    Event,
    Lease,
    Manifest,
    Released,
    Reservation,
    collection_digest,
    dumps,
    release_event_kind,
)

BUSY_TIMEOUT_S = 60.0
# How the queue's own files are opened: read-write, created if need be, never through a link.
PRIVATE_FILE = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
DEFAULT_MAX_UNIT_CRASHES = 2


def _schema() -> str:
    return resources.files("conveyor.queue").joinpath("sqlite_schema.sql").read_text("utf-8")


def _dumps(data: Mapping[str, Any]) -> str:
    return dumps(data)


def _to_sqlite(value: Any) -> Any:
    """A str SQLite cannot store as text (a lone surrogate: a test file whose name is not
    UTF-8, which Python decodes with surrogate escapes) becomes a BLOB of its bytes. No UTF-8
    text ever equals a BLOB, so such ids stay distinct, and _from_sqlite turns them back."""
    if type(value) is str and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogatepass")
    return value


def _from_sqlite(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> tuple[Any, ...]:
    """Every row as a tuple, with BLOBs (the schema declares none) turned back into the str
    that _to_sqlite stored."""
    if bytes not in map(type, row):
        return row
    return tuple(
        value.decode("utf-8", "surrogatepass") if type(value) is bytes else value for value in row
    )


class _Connection(sqlite3.Connection):
    """A connection that stores and returns any str, even one SQLite cannot hold as UTF-8 text
    (see _to_sqlite), so that every operation of the queue works on any test id."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.row_factory = _from_sqlite

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        return super().execute(sql, tuple(map(_to_sqlite, parameters)))

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> sqlite3.Cursor:
        return super().executemany(
            sql, (tuple(map(_to_sqlite, parameters)) for parameters in seq_of_parameters)
        )


@functools.cache
def _expected_columns() -> dict[str, list[str]]:
    """Each table of the schema and its columns, from the schema itself."""
    reference = sqlite3.connect(":memory:")
    try:
        reference.executescript(_schema())
        tables = reference.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
        return {
            table: [row[1] for row in reference.execute(f"PRAGMA table_info({table})")]
            for (table,) in tables
        }
    finally:
        reference.close()


class SQLiteQueue:
    """Queue backend on a SQLite file; safe for many processes and threads on one machine."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        build: str,
        *,
        lease_ttl_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.build = build
        self.lease_ttl_s = lease_ttl_s
        self.display_url = f"sqlite://{path}"
        self._clock = clock
        # One connection per queue object; the heartbeat thread shares it under this lock.
        self._lock = threading.Lock()
        self._conn = self._connect()
        try:
            self._lock_fd = os.open(f"{self.path}.lock", PRIVATE_FILE, 0o600)
        except OSError as exc:
            self._conn.close()
            raise QueueUnavailable(
                f"cannot open the queue {self.display_url}: cannot open its lock file "
                f"{self.path}.lock ({exc.strerror}); use a fresh queue path "
                "(--queue sqlite:///<writable path>)."
            ) from None

    # -- connection -----------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        directory = self.path.parent
        if not directory.is_dir():
            raise QueueURLError(
                f"cannot open the queue {self.display_url}: the directory {directory} does not "
                "exist. Create it, or pass --queue sqlite:///<writable path>."
            )
        if self.path.is_dir():
            raise QueueURLError(
                f"cannot open the queue {self.display_url}: it is a directory, not a writable "
                "file. Pass --queue sqlite:///<writable path>/queue.db."
            )
        self._refuse_other_owners()
        try:
            # Created here, 0600, before SQLite would create it 0644: the queue holds the
            # build's test ids and output. SQLite gives its -wal and -shm files the same mode.
            os.close(os.open(self.path, PRIVATE_FILE | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        except OSError as exc:
            raise QueueUnavailable(
                f"cannot open the queue {self.display_url}: {exc.strerror}. Use a fresh queue "
                "path (--queue sqlite:///<writable path>)."
            ) from None
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=False,
                factory=_Connection,
            )
        except (sqlite3.Error, OSError) as exc:
            raise QueueUnavailable(
                f"cannot open the queue {self.display_url}: {exc}. Use a fresh queue path "
                "(--queue sqlite:///<writable path>)."
            ) from None
        try:
            self._check_schema(conn)
            self._prepare(conn)
        except (sqlite3.Error, OSError) as exc:
            conn.close()
            raise self._unusable(exc) from None
        except QueueError:
            conn.close()
            raise
        return conn

    def _refuse_other_owners(self) -> None:
        """The queue's files must be this user's: a file another user planted (a shared /tmp)
        could be read, changed or locked by them."""
        me = os.geteuid()
        for path in (self.path, *(Path(f"{self.path}{end}") for end in ("-wal", "-shm", ".lock"))):
            try:
                owners = {os.lstat(path).st_uid}
                if path.is_symlink():
                    owners.add(path.stat().st_uid)
            except OSError:
                continue  # absent (or a dangling link, which opening refuses)
            other = next((uid for uid in owners if uid != me), None)
            if other is not None:
                raise QueueURLError(
                    f"cannot open the queue {self.display_url}: {path} belongs to another user "
                    f"(uid {other}), and a queue file is never shared with another user. Pass "
                    "--queue sqlite:///<a path of your own>."
                )

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        """Tables that exist with another shape belong to some other program (CREATE TABLE IF
        NOT EXISTS would keep them as they are, and every operation would fail on them)."""
        for table, expected in _expected_columns().items():
            found = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
            if found and found != expected:
                raise self._unusable(
                    f"its table {table!r} has the columns {found}, not conveyor's {expected}"
                )

    def _unusable(self, cause: object) -> QueueUnavailable:
        return QueueUnavailable(
            f"the queue {self.display_url} cannot be used: {cause}. It is not a conveyor queue "
            "(another program's file, a damaged file, or one written by another version of "
            "conveyor). Use a fresh queue path (--queue sqlite:///<new file>)."
        )

    @staticmethod
    def _prepare(conn: sqlite3.Connection) -> None:
        """Switch to WAL and create the schema. Switching the journal mode does not wait on
        the busy timeout, so processes opening a new file together retry here."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript("BEGIN IMMEDIATE;" + _schema() + "COMMIT;")
                return
            except sqlite3.OperationalError as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                locked = "locked" in str(exc) or "busy" in str(exc)
                if not locked or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction; BEGIN IMMEDIATE takes the lock up front, so it never
        has to be upgraded (and fail) halfway through."""
        conn = self._conn
        with self._lock:
            # SQLite's own busy handler polls with growing sleeps (up to 100 ms) while another
            # process writes; a blocking file lock hands over the moment it is free.
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                # The one boundary for writes: no sqlite3 error leaves this backend.
                raise self._unusable(exc) from None
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._unusable(exc) from None

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            os.close(self._lock_fd)

    # -- helpers used inside a transaction ------------------------------------------------

    def _emit(
        self,
        conn: sqlite3.Connection,
        kind: str,
        worker: str | None = None,
        unit: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        conn.execute(
            "INSERT INTO events (build, kind, worker, unit, data, ts) VALUES (?, ?, ?, ?, ?, ?)",
            (self.build, kind, worker, unit, _dumps(data or {}), self._clock()),
        )

    def _counters(self, conn: sqlite3.Connection) -> tuple[int, int, int, int, str | None]:
        row = conn.execute(
            "SELECT total, pending, leased, done, stop_reason FROM builds WHERE build = ?",
            (self.build,),
        ).fetchone()
        if row is None:
            raise BuildStateLost(
                f"build {self.build!r} is not in the queue {self.display_url} (was the file "
                "deleted or replaced?). Start the build again."
            )
        return row  # type: ignore[no-any-return]

    def _adjust(
        self, conn: sqlite3.Connection, *, pending: int = 0, leased: int = 0, done: int = 0
    ) -> None:
        conn.execute(
            "UPDATE builds SET pending = pending + ?, leased = leased + ?, done = done + ? "
            "WHERE build = ?",
            (pending, leased, done, self.build),
        )

    def _maybe_finish(self, conn: sqlite3.Connection) -> None:
        total, _pending, leased, done, stop_reason = self._counters(conn)
        if done >= total or (stop_reason is not None and leased == 0):
            cur = conn.execute(
                "UPDATE builds SET finished_at = ? WHERE build = ? AND finished_at IS NULL",
                (self._clock(), self.build),
            )
            if cur.rowcount:
                self._emit(conn, EVENT_FINISHED, data={"done": done, "total": total})

    def _front_of_queue(self, conn: sqlite3.Connection) -> float:
        (lowest,) = conn.execute(
            "SELECT MIN(queue_order) FROM units WHERE build = ? AND state = 'pending'",
            (self.build,),
        ).fetchone()
        return (lowest if lowest is not None else 0.0) - 1.0

    # -- protocol -------------------------------------------------------------------------

    def populate(self, leader: str, units: Sequence[str], meta: Mapping[str, Any]) -> bool:
        unique = list(dict.fromkeys(units))
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM builds WHERE build = ?", (self.build,)).fetchone():
                return False
            conn.execute(
                "INSERT INTO builds (build, leader, digest, meta, total, pending, "
                "max_unit_crashes, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self.build,
                    leader,
                    collection_digest(unique),
                    _dumps(meta),
                    len(unique),
                    len(unique),
                    int(meta.get("max_unit_crashes", DEFAULT_MAX_UNIT_CRASHES)),
                    self._clock(),
                ),
            )
            conn.executemany(
                "INSERT INTO units (build, unit, position, state, queue_order) "
                "VALUES (?, ?, ?, 'pending', ?)",
                ((self.build, unit, i, float(i)) for i, unit in enumerate(unique)),
            )
            self._emit(conn, EVENT_POPULATED, leader, data={"total": len(unique)})
            self._maybe_finish(conn)
        return True

    def manifest(self) -> Manifest | None:
        rows = self._read(
            "SELECT leader, digest, total, meta FROM builds WHERE build = ?", (self.build,)
        )
        if not rows:
            return None
        leader, digest, total, meta = rows[0]
        try:
            return Manifest(leader=leader, digest=digest, total=total, meta=json.loads(meta))
        except ValueError:
            raise QueueError(
                f"the manifest of build {self.build!r} in {self.display_url} is not valid JSON; "
                "the file was written by something else. Use a fresh queue path."
            ) from None

    def units(self) -> list[str]:
        rows = self._read("SELECT unit FROM units WHERE build = ? ORDER BY position", (self.build,))
        return [unit for (unit,) in rows]

    def join(self, worker: str, info: Mapping[str, Any]) -> None:
        now = self._clock()
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO workers (build, worker, info, joined_at, last_seen) "
                "VALUES (?, ?, ?, ?, ?)",
                (self.build, worker, _dumps(info), now, now),
            )
            self._emit(conn, EVENT_WORKER_JOINED, worker, data=dict(info))

    def _reclaim_expired(self, conn: sqlite3.Connection, now: float) -> None:
        expired = conn.execute(
            # INDEXED BY: without statistics SQLite would scan the build's whole primary key.
            "SELECT unit, worker, attempt, crashes FROM units INDEXED BY units_by_state "
            "WHERE build = ? AND state = 'leased' AND deadline < ?",
            (self.build, now),
        ).fetchall()
        for unit, worker, attempt, crashes in expired:
            conn.execute(
                "UPDATE units SET state = 'pending', worker = NULL, deadline = NULL, "
                "queue_order = ? WHERE build = ? AND unit = ?",
                (self._front_of_queue(conn), self.build, unit),
            )
            self._adjust(conn, pending=1, leased=-1)
            self._emit(
                conn, EVENT_LEASE_EXPIRED, worker, unit, {"attempt": attempt, "crashes": crashes}
            )

    def reserve(self, worker: str, max_units: int, request_id: str | None = None) -> Reservation:
        now = self._clock()
        with self._write() as conn:
            _total, _pending, _leased, _done, stop_reason = self._counters(conn)
            if request_id is not None:
                row = conn.execute(
                    "SELECT reply FROM reserve_requests "
                    "WHERE build = ? AND worker = ? AND request_id = ?",
                    (self.build, worker, request_id),
                ).fetchone()
                if row is not None:  # a retry: the same reservation again, nothing more
                    reply = json.loads(row[0])
                    leased_again = tuple(Lease(unit, attempt) for unit, attempt in reply["leases"])
                    return Reservation(LEASED, leased_again, reply["pending"])
            if stop_reason is not None:
                return Reservation(EXHAUSTED)
            self._reclaim_expired(conn, now)
            rows = conn.execute(
                "SELECT unit, attempt FROM units WHERE build = ? AND state = 'pending' "
                "ORDER BY queue_order LIMIT ?",
                (self.build, max(1, max_units)),
            ).fetchall()
            leases = tuple(Lease(unit, attempt + 1) for unit, attempt in rows)
            if leases:
                deadline = now + self.lease_ttl_s
                conn.executemany(
                    "UPDATE units SET state = 'leased', worker = ?, deadline = ?, "
                    "attempt = attempt + 1 WHERE build = ? AND unit = ?",
                    ((worker, deadline, self.build, lease.unit) for lease in leases),
                )
                conn.executemany(
                    "INSERT INTO reservations (build, worker, unit, attempt, ts) "
                    "VALUES (?, ?, ?, ?, ?)",
                    ((self.build, worker, lease.unit, lease.attempt, now) for lease in leases),
                )
                self._adjust(conn, pending=-len(leases), leased=len(leases))
                # One event per reservation, not per unit: the record stays complete cheaply.
                self._emit(conn, EVENT_LEASED, worker, data={"units": [x.unit for x in leases]})
                conn.execute(
                    "UPDATE workers SET last_seen = ? WHERE build = ? AND worker = ?",
                    (now, self.build, worker),
                )
            total, pending, leased, done, _ = self._counters(conn)
            if leases and request_id is not None:
                reply = {"leases": [[x.unit, x.attempt] for x in leases], "pending": pending}
                conn.execute(
                    "INSERT OR REPLACE INTO reserve_requests (build, worker, request_id, reply) "
                    "VALUES (?, ?, ?, ?)",
                    (self.build, worker, request_id, _dumps(reply)),
                )
        if leases:
            return Reservation(LEASED, leases, pending)
        if done >= total or leased == 0:
            return Reservation(EXHAUSTED)
        return Reservation(WAIT)

    def heartbeat(self, worker: str, units: Sequence[str]) -> int:
        now = self._clock()
        held = 0
        with self._write() as conn:
            self._counters(conn)  # a build that is gone is lost, not renewed in silence
            for unit in dict.fromkeys(units):
                cur = conn.execute(
                    "UPDATE units SET deadline = ? "
                    "WHERE build = ? AND unit = ? AND worker = ? AND state = 'leased'",
                    (now + self.lease_ttl_s, self.build, unit, worker),
                )
                held += cur.rowcount
            conn.execute(
                "UPDATE workers SET last_seen = ? WHERE build = ? AND worker = ?",
                (now, self.build, worker),
            )
        return held

    def complete(self, worker: str, results: Sequence[tuple[str, JSON]]) -> list[bool]:
        accepted: list[bool] = []
        with self._write() as conn:
            self._counters(conn)
            for unit, payload in results:
                row = conn.execute(
                    "SELECT state, attempt FROM units WHERE build = ? AND unit = ?",
                    (self.build, unit),
                ).fetchone()
                if row is None:
                    raise QueueError(
                        f"worker {worker!r} completed {unit!r}, which is not in build "
                        f"{self.build!r}; its collection does not match the manifest."
                    )
                state, attempt = row
                if state == "done":
                    late_attempt = payload.get("attempt", attempt)
                    self._emit(
                        conn, EVENT_DUPLICATE_REJECTED, worker, unit, {"attempt": late_attempt}
                    )
                    accepted.append(False)
                    continue
                conn.execute(
                    "UPDATE units SET state = 'done', worker = ?, deadline = NULL "
                    "WHERE build = ? AND unit = ?",
                    (worker, self.build, unit),
                )
                if state == "leased":
                    self._adjust(conn, leased=-1, done=1)
                else:
                    self._adjust(conn, pending=-1, done=1)
                self._emit(conn, EVENT_RESULT, worker, unit, payload)
                accepted.append(True)
            self._maybe_finish(conn)
        return accepted

    def requeue(
        self, worker: str, unit: str, payload: JSON, *, max_requeues: int, tolerance: float
    ) -> str:
        with self._write() as conn:
            total, _pending, _leased, _done, _stop = self._counters(conn)
            row = conn.execute(
                "SELECT state, requeues FROM units WHERE build = ? AND unit = ?",
                (self.build, unit),
            ).fetchone()
            if row is None:
                raise QueueError(
                    f"worker {worker!r} requeued {unit!r}, which is not in build {self.build!r}."
                )
            state, unit_requeues = row
            if state == "done":
                self._emit(
                    conn,
                    EVENT_DUPLICATE_REJECTED,
                    worker,
                    unit,
                    {"attempt": payload.get("attempt")},
                )
                return ALREADY_DONE
            (build_requeues,) = conn.execute(
                "SELECT requeues FROM builds WHERE build = ?", (self.build,)
            ).fetchone()
            budget = math.ceil(total * tolerance) if tolerance >= 0 else None
            if unit_requeues >= max_requeues or (budget is not None and build_requeues >= budget):
                return REQUEUE_REFUSED
            conn.execute(
                "UPDATE units SET state = 'pending', worker = NULL, deadline = NULL, "
                "requeues = requeues + 1, queue_order = ? WHERE build = ? AND unit = ?",
                (float(total + build_requeues + 1), self.build, unit),
            )
            conn.execute("UPDATE builds SET requeues = requeues + 1 WHERE build = ?", (self.build,))
            if state == "leased":
                self._adjust(conn, pending=1, leased=-1)
            self._emit(conn, EVENT_REQUEUED, worker, unit, payload)
            self._maybe_finish(conn)
            return REQUEUED

    def release(self, worker: str, cause: Mapping[str, Any]) -> list[Released]:
        """Take back a dead worker's leases. Only `cause["culprit"]` (the unit it was running,
        when known) is charged a crash; the units it merely held go back untouched."""
        culprit = cause.get("culprit")
        released: list[Released] = []
        with self._write() as conn:
            (limit,) = conn.execute(
                "SELECT max_unit_crashes FROM builds WHERE build = ?", (self.build,)
            ).fetchone() or (DEFAULT_MAX_UNIT_CRASHES,)
            held = conn.execute(
                "SELECT unit, attempt, crashes FROM units INDEXED BY units_by_worker "
                "WHERE build = ? AND worker = ? AND state = 'leased'",
                (self.build, worker),
            ).fetchall()
            for unit, attempt, crashes in held:
                if unit == culprit:
                    crashes += 1
                finalised = crashes >= limit or (unit == culprit and bool(cause.get("final")))
                if finalised:
                    conn.execute(
                        "UPDATE units SET state = 'done', crashes = ?, deadline = NULL "
                        "WHERE build = ? AND unit = ?",
                        (crashes, self.build, unit),
                    )
                    self._adjust(conn, leased=-1, done=1)
                    self._emit(
                        conn,
                        EVENT_UNIT_CRASHED,
                        worker,
                        unit,
                        {"attempt": attempt, "crashes": crashes, "cause": dict(cause)},
                    )
                else:
                    conn.execute(
                        "UPDATE units SET state = 'pending', worker = NULL, deadline = NULL, "
                        "crashes = ?, queue_order = ? WHERE build = ? AND unit = ?",
                        (crashes, self._front_of_queue(conn), self.build, unit),
                    )
                    self._adjust(conn, pending=1, leased=-1)
                released.append(Released(unit, attempt, crashes, finalised))
            self._emit(
                conn,
                release_event_kind(cause),
                worker,
                data={
                    "cause": dict(cause),
                    "requeued": [r.unit for r in released if not r.finalised],
                },
            )
            self._maybe_finish(conn)
        return released

    def hand_back(self, worker: str, units: Sequence[str], reason: str) -> list[str]:
        with self._write() as conn:
            self._counters(conn)
            held = {
                unit
                for (unit,) in conn.execute(
                    "SELECT unit FROM units INDEXED BY units_by_worker "
                    "WHERE build = ? AND worker = ? AND state = 'leased'",
                    (self.build, worker),
                )
            }
            returned = [unit for unit in units if unit in held]
            # The first unit returned goes first: lowest - n .. lowest - 1 keep the given order.
            front = self._front_of_queue(conn) + 1 - len(returned)
            conn.executemany(
                "UPDATE units SET state = 'pending', worker = NULL, deadline = NULL, "
                "queue_order = ? WHERE build = ? AND unit = ?",
                ((front + index, self.build, unit) for index, unit in enumerate(returned)),
            )
            self._adjust(conn, pending=len(returned), leased=-len(returned))
            cause = {"reason": reason, "orderly": True}
            self._emit(
                conn, EVENT_LEASES_RETURNED, worker, data={"cause": cause, "requeued": returned}
            )
            self._maybe_finish(conn)  # a stopped build ends when its last lease comes back
        return returned

    def publish(self, kind: str, worker: str | None, data: Mapping[str, Any]) -> None:
        with self._write() as conn:
            self._emit(conn, kind, worker, data=data)

    def events(self, after: int, limit: int = 1000) -> list[Event]:
        rows = self._read(
            "SELECT seq, kind, worker, unit, data, ts FROM events "
            "WHERE build = ? AND seq > ? ORDER BY seq LIMIT ?",
            (self.build, after, limit),
        )
        events = []
        for seq, kind, worker, unit, data, ts in rows:
            try:
                payload = json.loads(data)
            except ValueError:
                payload = {"error": "event data is not valid JSON", "raw": data[:200]}
                kind = "malformed"
            events.append(Event(seq, kind, worker, unit, payload, ts))
        return events

    def stop(self, reason: str) -> None:
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE builds SET stop_reason = ? WHERE build = ? AND stop_reason IS NULL",
                (reason, self.build),
            )
            if cur.rowcount:
                self._emit(conn, EVENT_STOPPED, data={"reason": reason})
                self._maybe_finish(conn)

    def resume(self, reason: str) -> bool:
        with self._write() as conn:
            total, pending, leased, _done, stop_reason = self._counters(conn)
            if stop_reason is None or pending + leased == 0:
                return False
            conn.execute(
                "UPDATE builds SET stop_reason = NULL, finished_at = NULL WHERE build = ?",
                (self.build,),
            )
            self._emit(
                conn,
                EVENT_RESUMED,
                data={
                    "reason": reason,
                    "stopped": stop_reason,
                    "left": pending + leased,
                    "total": total,
                },
            )
        return True

    def status(self) -> BuildStatus:
        rows = self._read(
            "SELECT total, pending, leased, done, stop_reason FROM builds WHERE build = ?",
            (self.build,),
        )
        if not rows:
            return BuildStatus(populated=False)
        total, pending, leased, done, stop_reason = rows[0]
        workers = self._read(
            "SELECT worker FROM workers WHERE build = ? ORDER BY joined_at", (self.build,)
        )
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
        """The order in which `worker` was handed its units (for replay and bisect)."""
        rows = self._read(
            "SELECT unit, attempt FROM reservations WHERE build = ? AND worker = ? ORDER BY rowid",
            (self.build, worker),
        )
        return [Lease(unit, attempt) for unit, attempt in rows]
