"""The SQLite file under the embedded queue: opened safely, and used one transaction at a time.

WAL mode lets the controller read the event stream while workers write, and every write is one
short `BEGIN IMMEDIATE` transaction, so concurrent workers serialise on the write lock instead of
failing with "database is locked". No sqlite3 error leaves this module: each becomes a
QueueUnavailable that says the file is not a usable conveyor queue.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from conveyor.errors import QueueError, QueueUnavailable, QueueURLError

BUSY_TIMEOUT_S = 60.0
# The write lock's calls as they were at import: a test may patch `fcntl.flock` while it runs
# (filelock's own tests make it fail), and the worker asks the queue for its next test at that
# test's teardown, with the patch still in place.
_flock = fcntl.flock
_LOCK_EX = fcntl.LOCK_EX
_LOCK_UN = fcntl.LOCK_UN
# How the queue's own files are opened: read-write, created if need be, never through a link.
PRIVATE_FILE = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
FIX = "Use a fresh queue path (--queue sqlite:///<writable path>)."


def _schema() -> str:
    return resources.files("conveyor.queue").joinpath("sqlite_schema.sql").read_text("utf-8")


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


def _refuse_other_owners(path: Path, display_url: str) -> None:
    """The queue's files must be this user's: a file another user planted (a shared /tmp)
    could be read, changed or locked by them."""
    me = os.geteuid()
    for file in (path, *(Path(f"{path}{end}") for end in ("-wal", "-shm", ".lock"))):
        try:
            owners = {os.lstat(file).st_uid}
            if file.is_symlink():
                owners.add(file.stat().st_uid)
        except OSError:
            continue  # absent (or a dangling link, which opening refuses)
        other = next((uid for uid in owners if uid != me), None)
        if other is not None:
            raise QueueURLError(
                f"cannot open the queue {display_url}: {file} belongs to another user "
                f"(uid {other}), and a queue file is never shared with another user. Pass "
                "--queue sqlite:///<a path of your own>."
            )


def _check_directory(path: Path, display_url: str) -> None:
    if not path.parent.is_dir():
        raise QueueURLError(
            f"cannot open the queue {display_url}: the directory {path.parent} does not "
            "exist. Create it, or pass --queue sqlite:///<writable path>."
        )
    if path.is_dir():
        raise QueueURLError(
            f"cannot open the queue {display_url}: it is a directory, not a writable "
            "file. Pass --queue sqlite:///<writable path>/queue.db."
        )


def _create_private(path: Path, display_url: str) -> None:
    """Create the file 0600 before SQLite would create it 0644: the queue holds the build's
    test ids and output. SQLite gives its -wal and -shm files the same mode."""
    try:
        os.close(os.open(path, PRIVATE_FILE | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise QueueUnavailable(
            f"cannot open the queue {display_url}: {exc.strerror}. {FIX}"
        ) from None


def _prepare(conn: sqlite3.Connection) -> None:
    """Switch to WAL and create the schema. Switching the journal mode does not wait on the
    busy timeout, so processes opening a new file together retry here."""
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


def _end_transaction(conn: sqlite3.Connection) -> None:
    """Roll back whatever transaction is open: a read has nothing to keep, and a write that
    did not reach COMMIT must leave nothing behind."""
    if conn.in_transaction:
        # Should this fail too, the error that brought us here is the one worth reporting.
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


class SQLiteFile:
    """One queue file: a connection shared by this process's threads under a lock, and a lock
    file that hands the write lock from process to process the moment it is free."""

    def __init__(self, path: Path, display_url: str) -> None:
        self.path = path
        self.display_url = display_url
        self._lock = threading.Lock()
        # Each thread's latest write transaction, to finish if an interrupt abandoned it.
        self._writes: dict[int, weakref.ref[Generator[Any, None, None]]] = {}
        self._conn = self._connect()
        try:
            self._lock_fd = os.open(f"{path}.lock", PRIVATE_FILE, 0o600)
        except OSError as exc:
            self._conn.close()
            raise QueueUnavailable(
                f"cannot open the queue {display_url}: cannot open its lock file "
                f"{path}.lock ({exc.strerror}); use a fresh queue path "
                "(--queue sqlite:///<writable path>)."
            ) from None

    def _connect(self) -> sqlite3.Connection:
        _check_directory(self.path, self.display_url)
        _refuse_other_owners(self.path, self.display_url)
        _create_private(self.path, self.display_url)
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
                f"cannot open the queue {self.display_url}: {exc}. {FIX}"
            ) from None
        try:
            self._check_schema(conn)
            _prepare(conn)
        except (sqlite3.Error, OSError) as exc:
            conn.close()
            raise self.unusable(exc) from None
        except QueueError:
            conn.close()
            raise
        return conn

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        """Tables that exist with another shape belong to some other program (CREATE TABLE IF
        NOT EXISTS would keep them as they are, and every operation would fail on them)."""
        for table, expected in _expected_columns().items():
            found = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
            if found and found != expected:
                raise self.unusable(
                    f"its table {table!r} has the columns {found}, not conveyor's {expected}"
                )

    def unusable(self, cause: object) -> QueueUnavailable:
        return QueueUnavailable(
            f"the queue {self.display_url} cannot be used: {cause}. It is not a conveyor queue "
            "(another program's file, a damaged file, or one written by another version of "
            "conveyor). Use a fresh queue path (--queue sqlite:///<new file>)."
        )

    def write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One short write transaction; BEGIN IMMEDIATE takes the lock up front, so it never
        has to be upgraded (and fail) halfway through."""
        self._finish_abandoned_write()
        transaction = self._write_transaction()
        self._writes[threading.get_ident()] = weakref.ref(transaction.gen)
        return transaction

    def _finish_abandoned_write(self) -> None:
        """A Ctrl-C that lands inside contextlib, between `with` and the generator below,
        leaves the generator paused at its yield, holding the lock, the file lock and the
        transaction for as long as the exception lives, and the controller uses the queue
        while it handles that very exception. This thread's next call closes it first, which
        runs its own cleanup (a thread's earlier write is always over by its next call)."""
        abandoned = self._writes.pop(threading.get_ident(), None)
        generator = abandoned() if abandoned is not None else None
        if generator is not None and inspect.getgeneratorstate(generator) == inspect.GEN_SUSPENDED:
            generator.close()

    @contextmanager
    def _write_transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        with self._lock:
            # Every step sits inside the try: a Ctrl-C lands between any two bytecodes, and one
            # that came just after BEGIN or flock() returned must not leave the transaction open
            # (the next BEGIN would fail) or the file lock held (every worker would wait on it).
            try:
                # SQLite's own busy handler polls with growing sleeps (up to 100 ms) while
                # another process writes; a blocking file lock hands over the moment it is free.
                _flock(self._lock_fd, _LOCK_EX)
                _end_transaction(conn)
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                _end_transaction(conn)
                # The one boundary for writes: no sqlite3 error leaves this backend.
                raise self.unusable(exc) from None
            except BaseException:
                _end_transaction(conn)
                raise
            finally:
                _flock(self._lock_fd, _LOCK_UN)  # a no-op where it was never taken

    def read(self, *queries: tuple[str, Sequence[Any]]) -> list[list[Any]]:
        """The rows of each query, read together in one snapshot."""
        self._finish_abandoned_write()
        conn = self._conn
        with self._lock:
            try:
                _end_transaction(conn)
                if len(queries) == 1:
                    return [conn.execute(*queries[0]).fetchall()]
                try:
                    conn.execute("BEGIN")
                    return [conn.execute(*query).fetchall() for query in queries]
                finally:
                    _end_transaction(conn)
            except sqlite3.Error as exc:
                raise self.unusable(exc) from None

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            os.close(self._lock_fd)
