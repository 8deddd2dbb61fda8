"""The SQLite queue file as a shared object on disk: private to its owner, never someone
else's, and a file conveyor did not write is refused with a message (exit code 3)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import conveyor_process as conveyor

from conveyor.errors import QueueError, QueueUnavailable
from conveyor.queue import open_queue
from conveyor.queue.protocol import ReservationState
from conveyor.queue.sqlite import SQLiteQueue

NOBODY = 65534


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    (tmp_path / "test_ok.py").write_text("def test_a(): pass\ndef test_b(): pass\n")
    return tmp_path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_queue_files_are_private_to_their_owner(suite: Path) -> None:
    old_umask = os.umask(0o022)  # the usual umask, which would leave a new file 0644
    try:
        queue = open_queue(f"sqlite://{suite / 'q.db'}", "b1")
        queue.populate("w1", ["t1"], {})
        files = [suite / name for name in ("q.db", "q.db-wal", "q.db-shm", "q.db.lock")]
        assert all(path.exists() for path in files)
        assert {path.name: mode(path) for path in files} == {path.name: 0o600 for path in files}
        queue.close()
    finally:
        os.umask(old_umask)
    done = conveyor(suite, "run", "-n", "2", "--queue", f"sqlite://{suite / 'run.db'}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert mode(suite / "run.db") == 0o600
    assert mode(suite / "run.db.lock") == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
@pytest.mark.parametrize("which", ["q.db", "q.db.lock", "q.db-wal"])
def test_a_queue_file_of_another_user_is_refused(suite: Path, which: str) -> None:
    queue = open_queue(f"sqlite://{suite / 'q.db'}", "b1")
    queue.close()
    (suite / which).touch()
    os.chown(suite / which, NOBODY, NOBODY)
    with pytest.raises(QueueUnavailable, match=f"{which} belongs to another user"):
        open_queue(f"sqlite://{suite / 'q.db'}", "b1")
    done = conveyor(suite, "run", "-n", "1", "--queue", f"sqlite://{suite / 'q.db'}")
    assert done.returncode == 4, done.stdout + done.stderr
    assert f"{suite / which} belongs to another user (uid {NOBODY})" in done.stderr
    assert "Traceback" not in done.stderr


def foreign_builds_table(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE builds (name TEXT PRIMARY KEY, owner TEXT)")
        conn.execute("INSERT INTO builds VALUES ('b1', 'someone')")
    conn.close()


def invalid_manifest(path: Path) -> None:
    queue = SQLiteQueue(path, "b1")
    queue.populate("w1", ["test_ok.py::test_a", "test_ok.py::test_b"], {})
    queue.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE build_meta SET meta = '{not json'")
    conn.close()


def earlier_versions_builds_table(path: Path) -> None:
    """The builds table as conveyor 0.1 wrote it, with the leader's meta among the counters."""
    SQLiteQueue(path, "b0").close()
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE builds ADD COLUMN meta TEXT NOT NULL DEFAULT '{}'")
    conn.close()


def not_sqlite(path: Path) -> None:
    path.write_text("this is a text file, not a database\n" * 100)


@pytest.mark.parametrize(
    "make", [foreign_builds_table, invalid_manifest, earlier_versions_builds_table, not_sqlite]
)
def test_a_file_conveyor_did_not_write_is_refused_with_exit_code_3(suite: Path, make) -> None:
    path = suite / "foreign.db"
    make(path)
    os.chmod(path, 0o600)
    url = f"sqlite://{path}"
    for command in (
        ["run", "-n", "1", "--queue", url, "--build", "b1"],
        ["report", "--queue", url, "--build", "b1"],
    ):
        done = conveyor(suite, *command)
        assert done.returncode == 3, [*command, done.stdout + done.stderr]
        assert "Traceback" not in done.stdout + done.stderr
        assert "INTERNALERROR" not in done.stdout
        assert f"sqlite://{path}" in done.stdout + done.stderr
        assert "fresh queue path" in done.stdout + done.stderr


def test_every_sqlite_error_is_a_queue_error(suite: Path) -> None:
    """Tables replaced under an open queue: every operation raises conveyor's QueueError."""
    path = suite / "q.db"
    queue = SQLiteQueue(path, "b1")
    queue.populate("w1", ["t1", "t2"], {})
    with sqlite3.connect(path) as conn:
        for table in ("builds", "units", "events", "workers", "reservations"):
            conn.execute(f"DROP TABLE {table}")
            conn.execute(f"CREATE TABLE {table} (something_else TEXT)")
    conn.close()
    for call in (
        queue.manifest,
        queue.status,
        queue.units,
        lambda: queue.populate("w1", ["t1"], {}),
        lambda: queue.join("w1", {}),
        lambda: queue.stop("because"),
        lambda: queue.events(0),
        lambda: queue.publish("note", None, {}),
        lambda: queue.complete("w1", [("t1", {})]),
        lambda: queue.reservations("w1"),
    ):
        with pytest.raises(QueueError, match="not a conveyor queue"):
            call()
    queue.close()
    with pytest.raises(QueueError, match="its table 'builds' has the columns"):
        SQLiteQueue(path, "b1")


def answers_while_another_writes(
    path: Path, queue: SQLiteQueue, worker: str
) -> list[tuple[ReservationState, ReservationState]]:
    """`worker`'s (reserve, steal) answers while another process holds the queue's write lock
    for as long as it likes: [] when the asks waited for the lock (given up after 30 s)."""
    answers: list[tuple[ReservationState, ReservationState]] = []

    def ask() -> None:
        answers.append((queue.reserve(worker, 4).state, queue.steal(worker, 64).state))

    lock = os.open(f"{path}.lock", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        asking = threading.Thread(target=ask, daemon=True)
        asking.start()
        asking.join(timeout=30)
        return list(answers)
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)


def test_an_idle_worker_is_told_to_wait_without_taking_the_write_lock(tmp_path: Path) -> None:
    """Idle workers ask every 50 ms. Each ask was a write transaction (and a steal's look at
    every lease), holding the lock the busy worker needs for each test it claims: a first run
    of idna's suite (6,000 tests of one class, which no steal may split) took 74 s instead of
    18. The answer WAIT is now read from a snapshot, and only a request the write path would
    act on waits for the lock."""
    path = tmp_path / "q.db"
    units = [f"test_m.py::TestBig::test_{i}" for i in range(20)]
    busy = SQLiteQueue(path, "b")
    idle = SQLiteQueue(path, "b")
    busy.populate("leader", units, {})
    assert len(busy.reserve("busy", 20).leases) == 20
    busy.claim("busy", units[:2])  # running the class: no steal may split it now
    answers = answers_while_another_writes(path, idle, "idle")
    assert answers == [(ReservationState.WAIT, ReservationState.WAIT)]
    # Work to act on still goes through the write path: units handed back are leased.
    assert busy.hand_back("busy", units[10:], "test") == units[10:]
    assert idle.reserve("idle", 4).state is ReservationState.LEASED
    busy.close()
    idle.close()


def test_a_worker_behind_every_stealable_lease_is_told_to_wait_without_the_write_lock(
    tmp_path: Path,
) -> None:
    """A steal never takes what lies behind the thief (queue/forward.py); the snapshot check
    did not know that, and a worker that had run a split module's last range went for the
    write lock every 50 ms while another worker held the module's earlier tests."""
    path = tmp_path / "q.db"
    module = [f"t.py::test_{i}" for i in range(6)]
    served = [*module[4:], *module[:4]]  # the last range first, as history serves it
    meta = {
        "range_starts": [module[4], module[0], module[2]],
        "collection_order": [module.index(unit) for unit in served],
        "whole": "class",
    }
    ahead = SQLiteQueue(path, "b")
    behind = SQLiteQueue(path, "b")
    ahead.populate("gw0", served, meta)
    for worker in ("gw0", "gw1"):
        ahead.join(worker, {})
    assert [lease.unit for lease in ahead.reserve("gw1", 2).leases] == module[4:]
    ahead.complete("gw1", [(unit, {"outcome": "passed"}) for unit in module[4:]])
    assert len(behind.reserve("gw0", 2).leases) + len(behind.reserve("gw0", 2).leases) == 4
    behind.claim("gw0", module[:1])  # gw0 runs the module forward; gw1 would go back
    answers = answers_while_another_writes(path, ahead, "gw1")
    assert answers == [(ReservationState.WAIT, ReservationState.WAIT)]
    # A thief the leases do not lie behind still steals them, through the write path.
    ahead.join("gw2", {})
    assert [lease.unit for lease in ahead.steal("gw2", 64).leases] == module[2:4]
    ahead.close()
    behind.close()


def test_a_large_manifest_meta_is_kept_apart_from_the_counters(tmp_path: Path) -> None:
    """With timing history the leader's meta holds every test's place in collection order:
    7 MB at a million tests. It sat in the row of counters that every reserve, claim and
    complete reads and updates, so every operation walked megabytes of overflow pages: a
    million-test build ran 90 tests a second, and a worker waiting on the other's write
    overran the automatic timeout of a test that passes at once. The row stays small now."""
    path = tmp_path / "q.db"
    units = [f"t.py::test_{i}" for i in range(50_000)]
    queue = SQLiteQueue(path, "b")
    queue.populate("gw0", units, {"collection_order": list(range(len(units)))[::-1]})
    queue.join("gw0", {})
    (lease,) = queue.reserve("gw0", 1).leases
    queue.claim("gw0", [lease.unit])
    queue.complete("gw0", [(lease.unit, {"outcome": "passed"})])
    with contextlib.closing(sqlite3.connect(path)) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(builds)")]
        lengths = " + ".join(f"coalesce(length({column}), 0)" for column in columns)
        (row_bytes,) = conn.execute(f"SELECT {lengths} FROM builds").fetchone()
    assert row_bytes < 1000
    manifest = queue.manifest()
    assert manifest is not None and manifest.meta["collection_order"][0] == len(units) - 1
    assert queue.status().done == 1
    queue.close()


ABANDONED_WRITE = """
import contextlib, sys
from conveyor.queue.sqlite import SQLiteQueue

queue = SQLiteQueue(sys.argv[1], "b")
queue.populate("leader", ["t1", "t2"], {})
# Where CPython may raise a Ctrl-C: as contextlib's __enter__ returns (the generator already
# holds the lock), or as its __exit__ is entered (before the generator is resumed).
manager = contextlib._GeneratorContextManager
target = {"enter": manager.__enter__, "exit": manager.__exit__}[sys.argv[2]].__code__
event = {"enter": "return", "exit": "call"}[sys.argv[2]]

def tracer(frame, what, arg):
    if frame.f_code is target and what == event:
        sys.settrace(None)
        raise KeyboardInterrupt
    return tracer if frame.f_code is target else None

sys.settrace(tracer)
try:
    queue.publish("note", None, {})
except KeyboardInterrupt:
    sys.settrace(None)
    # What the controller does while it handles the interrupt: stop the build.
    assert queue.status().populated
    queue.stop("interrupted")
    print("stopped while the interrupt was handled")
"""


@pytest.mark.parametrize("where", ["enter", "exit"])
def test_a_ctrl_c_inside_contextlib_does_not_hang_the_next_queue_call(
    tmp_path: Path, where: str
) -> None:
    """An interrupt that lands in contextlib's own frames leaves the write's generator paused
    with the lock, the file lock and the transaction held, for as long as the exception
    lives; the controller's next queue call, made while it handles that exception, waited on
    the lock forever."""
    script = tmp_path / "abandon.py"
    script.write_text(ABANDONED_WRITE)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "q.db"), where],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stopped while the interrupt was handled" in done.stdout
    assert SQLiteQueue(tmp_path / "q.db", "b").status().stop_reason == "interrupted"
