"""One contract, every backend: each test runs against the in-memory reference queue, a real
SQLite file, a real Redis and a real Redis Cluster, and the scripted scenario at the end holds
every backend to the reference event for event."""

from __future__ import annotations

import gc
import itertools
import multiprocessing
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import redis
import redis.cluster

from conveyor.errors import BuildStateLost, QueueError
from conveyor.queue import Queue, open_queue
from conveyor.queue.memory import MemoryQueue
from conveyor.queue.memory_state import Store
from conveyor.queue.protocol import (
    ALREADY_DONE,
    EVENT_DUPLICATE_REJECTED,
    EVENT_FINISHED,
    EVENT_LEASE_EXPIRED,
    EVENT_LEASED,
    EVENT_LEASES_RETURNED,
    EVENT_REQUEUED,
    EVENT_RESULT,
    EVENT_UNIT_CRASHED,
    EVENT_WORKER_LOST,
    EXHAUSTED,
    LEASED,
    REQUEUE_REFUSED,
    REQUEUED,
    WAIT,
    collection_digest,
)

BACKENDS = ["memory", "sqlite", "redis", "redis-cluster"]
# The in-memory queues of this process, by URL: threads of one test share them.
MEMORY_STORES: dict[str, Store] = {}

QueueFactory = Callable[..., Queue]


@pytest.fixture(params=BACKENDS)
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "memory":
        url = f"memory://{uuid.uuid4().hex}"
        MEMORY_STORES[url] = Store()
        yield url
        del MEMORY_STORES[url]
    elif request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'queue.db'}"
    elif request.param == "redis-cluster":
        yield str(request.getfixturevalue("redis_cluster").url)
    else:
        yield str(request.getfixturevalue("redis_server").url)


def connect(url: str, build: str, **options: Any) -> Queue:
    """`open_queue`, which knows no memory:// URL (a memory queue serves one process only)."""
    if url.startswith("memory://"):
        return MemoryQueue(build, store=MEMORY_STORES[url], **options)
    return open_queue(url, build, **options)


def lose_build(url: str, build: str) -> None:
    """Make the build vanish under its open queues: a flushed Redis, rows deleted from SQLite."""
    if url.startswith("memory://"):
        MEMORY_STORES[url].forget(build)
    elif url.startswith("sqlite://"):
        with sqlite3.connect(url.removeprefix("sqlite://")) as conn:
            tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            for (table,) in list(tables):
                if table != "sqlite_sequence":
                    conn.execute(f"DELETE FROM {table} WHERE build = ?", (build,))
        conn.close()
    else:
        client: Any
        if url.startswith("redis+cluster://"):
            client = redis.cluster.RedisCluster.from_url(url.replace("+cluster", "", 1))
        else:
            client = redis.Redis.from_url(url)
        for key in list(client.scan_iter(match=f"conveyor:{{{build}}}:*")):
            client.delete(key)
        client.close()


class Spawner:
    """Concurrent workers: processes on the real backends, threads on the in-memory one (which
    lives in one process), with the barrier and result queue that go with them."""

    def __init__(self, url: str) -> None:
        self.threads = url.startswith("memory://")
        self.context = multiprocessing.get_context("fork")

    def barrier(self, parties: int) -> Any:
        return threading.Barrier(parties) if self.threads else self.context.Barrier(parties)

    def queue(self) -> Any:
        import queue

        return queue.Queue() if self.threads else self.context.Queue()

    def start(self, target: Callable[..., None], *args: object) -> Any:
        runner: Any = threading.Thread if self.threads else self.context.Process
        started = runner(target=target, args=args)
        started.start()
        return started


_builds_made = itertools.count()


@pytest.fixture
def build_id(request: pytest.FixtureRequest) -> str:
    """A fresh build id; on the cluster, the builds of successive tests take turns among the
    masters, the one named in the URL and the others (which a plain client gets MOVED from)."""
    backend = getattr(request.node, "callspec", None)
    if backend is None or backend.params.get("queue_url") != "redis-cluster":
        return f"build-{uuid.uuid4().hex[:12]}"
    cluster = request.getfixturevalue("redis_cluster")
    return cluster.build_on(cluster.ports[next(_builds_made) % len(cluster.ports)])


@pytest.fixture
def make_queue(queue_url: str, build_id: str, clock: Callable[[], float]) -> Iterator[QueueFactory]:
    opened: list[Queue] = []

    def make(lease_ttl_s: float = 30.0) -> Queue:
        queue = connect(queue_url, build_id, lease_ttl_s=lease_ttl_s, clock=clock)
        opened.append(queue)
        return queue

    yield make
    for queue in opened:
        queue.close()


def units(n: int) -> list[str]:
    return [f"tests/test_mod.py::test_{i}" for i in range(n)]


def result(outcome: str = "passed") -> dict[str, str]:
    return {"outcome": outcome}


def test_populate_elects_exactly_one_leader(make_queue: QueueFactory) -> None:
    first, second = make_queue(), make_queue()
    assert first.manifest() is None
    assert first.populate("gw0", units(3), {"seed": 1}) is True
    assert second.populate("gw1", list(reversed(units(3))), {"seed": 2}) is False
    manifest = second.manifest()
    assert manifest is not None
    assert manifest.leader == "gw0"
    assert manifest.total == 3
    assert manifest.meta == {"seed": 1}
    assert manifest.digest == collection_digest(reversed(units(3)))
    assert second.units() == units(3)


def _populate_race(url: str, build: str, name: str, barrier: object, out: object) -> None:
    queue = connect(url, build)
    barrier.wait()  # type: ignore[attr-defined]
    out.put((name, queue.populate(name, units(50), {"leader": name})))  # type: ignore[attr-defined]
    queue.close()


def test_populate_race_between_processes_has_one_winner(queue_url: str, build_id: str) -> None:
    spawn = Spawner(queue_url)
    barrier, out = spawn.barrier(6), spawn.queue()
    procs = [
        spawn.start(_populate_race, queue_url, build_id, f"gw{i}", barrier, out) for i in range(6)
    ]
    outcomes = dict(out.get(timeout=60) for _ in procs)
    for proc in procs:
        proc.join(60)
    winners = [name for name, won in outcomes.items() if won]
    assert len(winners) == 1
    queue = connect(queue_url, build_id)
    manifest = queue.manifest()
    assert manifest is not None and manifest.leader == winners[0]
    assert manifest.meta == {"leader": winners[0]}
    queue.close()


def test_reserve_hands_out_units_in_order_then_waits_then_exhausts(
    make_queue: QueueFactory,
) -> None:
    queue = make_queue()
    queue.populate("gw0", units(3), {})
    first = queue.reserve("gw0", 2)
    assert first.state == LEASED
    assert [(lease.unit, lease.attempt) for lease in first.leases] == [
        (units(3)[0], 1),
        (units(3)[1], 1),
    ]
    assert first.pending == 1
    second = queue.reserve("gw1", 5)
    assert [lease.unit for lease in second.leases] == [units(3)[2]]
    assert queue.reserve("gw1", 1).state == WAIT
    queue.complete("gw0", [(units(3)[0], result()), (units(3)[1], result())])
    assert queue.reserve("gw0", 1).state == WAIT
    queue.complete("gw1", [(units(3)[2], result())])
    assert queue.reserve("gw0", 1).state == EXHAUSTED
    status = queue.status()
    assert (status.total, status.done, status.pending, status.leased) == (3, 3, 0, 0)
    assert status.finished


def test_first_result_wins_and_late_duplicate_is_rejected(
    make_queue: QueueFactory, clock: object
) -> None:
    queue = make_queue(lease_ttl_s=10)
    queue.populate("gw0", units(1), {})
    queue.reserve("gw0", 1)
    clock.advance(11)  # type: ignore[attr-defined]
    again = queue.reserve("gw1", 1)
    assert [(lease.unit, lease.attempt) for lease in again.leases] == [(units(1)[0], 2)]
    assert queue.complete("gw1", [(units(1)[0], result("passed"))]) == [True]
    assert queue.complete("gw0", [(units(1)[0], result("failed"))]) == [False]
    kinds = [(event.kind, event.worker) for event in queue.events(0)]
    assert (EVENT_LEASE_EXPIRED, "gw0") in kinds
    assert (EVENT_RESULT, "gw1") in kinds
    assert (EVENT_DUPLICATE_REJECTED, "gw0") in kinds
    results = [event for event in queue.events(0) if event.kind == EVENT_RESULT]
    assert [event.data for event in results] == [result("passed")]
    assert queue.status().done == 1


def test_expired_lease_comes_back_first_with_attempt_plus_one(
    make_queue: QueueFactory, clock: object
) -> None:
    queue = make_queue(lease_ttl_s=30)
    queue.populate("gw0", units(3), {})
    held = queue.reserve("gw0", 1).leases[0]
    clock.advance(29)  # type: ignore[attr-defined]
    assert queue.reserve("gw1", 1).leases[0].unit == units(3)[1]
    clock.advance(2)  # type: ignore[attr-defined]
    back = queue.reserve("gw1", 1).leases[0]
    assert (back.unit, back.attempt) == (held.unit, 2)


def test_heartbeat_keeps_a_live_workers_leases(make_queue: QueueFactory, clock: object) -> None:
    queue = make_queue(lease_ttl_s=30)
    queue.populate("gw0", units(2), {})
    queue.reserve("gw0", 2)
    for _ in range(5):
        clock.advance(20)  # type: ignore[attr-defined]
        assert queue.heartbeat("gw0", units(2)) == 2
    assert queue.reserve("gw1", 1).state == WAIT
    queue.complete("gw0", [(units(2)[0], result())])
    assert queue.heartbeat("gw0", units(2)) == 1


def test_heartbeat_extends_only_the_leases_the_worker_names(
    make_queue: QueueFactory, clock: object
) -> None:
    """A lease the worker does not know it holds (its reserve's reply was lost) is not renewed
    with the others: it expires and comes back instead of being held forever."""
    queue = make_queue(lease_ttl_s=30)
    queue.populate("gw0", units(3), {})
    known, unknown = (lease.unit for lease in queue.reserve("gw0", 2).leases)
    other = queue.reserve("gw1", 1).leases[0].unit
    for _ in range(2):
        clock.advance(20)  # type: ignore[attr-defined]
        # Units it does not hold (another worker's, one outside the build) count for nothing.
        assert queue.heartbeat("gw0", [known, other, "tests/elsewhere.py::test_x"]) == 1
        assert queue.heartbeat("gw1", [other]) == 1
    back = queue.reserve("gw2", 3)
    assert [(lease.unit, lease.attempt) for lease in back.leases] == [(unknown, 2)]
    assert queue.heartbeat("gw0", [known, unknown]) == 1  # it is gw2's now
    expired = [event.unit for event in queue.events(0) if event.kind == EVENT_LEASE_EXPIRED]
    assert expired == [unknown]


def test_a_retried_reserve_returns_the_same_reservation_and_leases_nothing_more(
    make_queue: QueueFactory,
) -> None:
    """reserve is idempotent per request id: the retry after a lost reply gets the leases the
    first call granted, so none of them leaks; a new id is a new reservation."""
    queue, other_process = make_queue(), make_queue()
    queue.populate("gw0", units(5), {})
    first = queue.reserve("gw0", 2, "request-1")
    assert [(lease.unit, lease.attempt) for lease in first.leases] == [
        (units(5)[0], 1),
        (units(5)[1], 1),
    ]
    assert first.pending == 3
    # The same id again, from this object or any other (a reconnected client): same answer.
    assert queue.reserve("gw0", 2, "request-1") == first
    assert other_process.reserve("gw0", 4, "request-1") == first
    status = queue.status()
    assert (status.leased, status.pending) == (2, 3)
    assert queue.reservations("gw0") == list(first.leases)
    # Another worker using the same id is another reservation.
    assert [lease.unit for lease in queue.reserve("gw1", 1, "request-1").leases] == [units(5)[2]]
    second = queue.reserve("gw0", 2, "request-2")
    assert [lease.unit for lease in second.leases] == units(5)[3:5]
    assert queue.reserve("gw0", 2, "request-2") == second
    leased = [event for event in queue.events(0) if event.kind == EVENT_LEASED]
    assert [(event.worker, event.data["units"]) for event in leased] == [
        ("gw0", units(5)[0:2]),
        ("gw1", units(5)[2:3]),
        ("gw0", units(5)[3:5]),
    ]


def test_a_retried_reserve_is_answered_even_after_the_build_was_stopped(
    make_queue: QueueFactory,
) -> None:
    """The retry must tell the worker what it holds, or nobody runs those units until their
    leases expire; a stop in between changes nothing about a reservation already made."""
    queue = make_queue()
    queue.populate("gw0", units(3), {})
    first = queue.reserve("gw0", 2, "request-1")
    queue.stop("-x")
    assert queue.reserve("gw0", 2, "request-1") == first
    assert queue.reserve("gw0", 2, "request-2").state == EXHAUSTED
    queue.complete("gw0", [(lease.unit, result()) for lease in first.leases])
    assert queue.status().finished


def test_reserve_without_a_request_id_is_a_new_reservation_each_time(
    make_queue: QueueFactory,
) -> None:
    queue = make_queue()
    queue.populate("gw0", units(3), {})
    assert [lease.unit for lease in queue.reserve("gw0", 1).leases] == units(3)[:1]
    assert [lease.unit for lease in queue.reserve("gw0", 1).leases] == units(3)[1:2]
    assert [lease.unit for lease in queue.reserve("gw0", 1, None).leases] == units(3)[2:]


def test_release_returns_a_dead_workers_leases_at_once(make_queue: QueueFactory) -> None:
    queue = make_queue()
    queue.populate("gw0", units(4), {"max_unit_crashes": 2})
    queue.reserve("gw0", 2)
    released = queue.release("gw0", {"reason": "killed by SIGKILL", "culprit": units(4)[0]})
    assert [(r.unit, r.crashes, r.finalised) for r in released] == [
        (units(4)[0], 1, False),
        (units(4)[1], 0, False),
    ]
    again = queue.reserve("gw1", 4)
    assert [(lease.unit, lease.attempt) for lease in again.leases[:2]] in (
        [(units(4)[0], 2), (units(4)[1], 2)],
        [(units(4)[1], 2), (units(4)[0], 2)],
    )
    assert {lease.unit for lease in again.leases} == set(units(4))
    assert any(event.kind == EVENT_WORKER_LOST for event in queue.events(0))


def test_unit_that_keeps_killing_workers_is_finalised(make_queue: QueueFactory) -> None:
    queue = make_queue()
    queue.populate("gw0", units(1), {"max_unit_crashes": 2})
    crasher = units(1)[0]
    queue.reserve("gw0", 1)
    assert not queue.release("gw0", {"signal": "SIGSEGV", "culprit": crasher})[0].finalised
    queue.reserve("gw1", 1)
    (released,) = queue.release("gw1", {"signal": "SIGSEGV", "culprit": crasher})
    assert released.finalised and released.crashes == 2
    crashed = [event for event in queue.events(0) if event.kind == EVENT_UNIT_CRASHED]
    assert [(event.unit, event.data["cause"]["signal"]) for event in crashed] == [
        (crasher, "SIGSEGV")
    ]
    assert queue.status().finished
    assert queue.reserve("gw2", 1).state == EXHAUSTED


def test_stop_ends_reservations_and_finishes_once_leases_drain(make_queue: QueueFactory) -> None:
    queue = make_queue()
    queue.populate("gw0", units(5), {})
    queue.reserve("gw0", 1)
    queue.stop("stopping after 1 failures")
    queue.stop("a second reason is ignored")
    assert queue.reserve("gw1", 1).state == EXHAUSTED
    status = queue.status()
    assert status.stop_reason == "stopping after 1 failures"
    assert not status.finished
    queue.complete("gw0", [(units(5)[0], result())])
    assert queue.status().finished
    finished = [event for event in queue.events(0) if event.kind == EVENT_FINISHED]
    assert len(finished) == 1


def test_empty_build_is_finished_at_once(make_queue: QueueFactory) -> None:
    queue = make_queue()
    queue.populate("gw0", [], {})
    assert queue.status().finished
    assert queue.reserve("gw0", 1).state == EXHAUSTED


def test_events_are_ordered_and_paged(make_queue: QueueFactory) -> None:
    queue = make_queue()
    queue.populate("gw0", units(3), {})
    queue.join("gw0", {"host": "here", "pid": 1})
    for index, unit in enumerate(units(3)):
        queue.reserve("gw0", 1)
        queue.publish("note", "gw0", {"index": index})
        queue.complete("gw0", [(unit, result())])
    everything = queue.events(0)
    assert [event.seq for event in everything] == sorted(event.seq for event in everything)
    first_page = queue.events(0, limit=2)
    rest = queue.events(first_page[-1].seq)
    assert first_page + rest == everything
    notes = [event.data["index"] for event in everything if event.kind == "note"]
    assert notes == [0, 1, 2]
    assert queue.status().workers == ("gw0",)


def test_completing_a_unit_outside_the_manifest_is_an_error(make_queue: QueueFactory) -> None:
    queue = make_queue()
    queue.populate("gw0", units(1), {})
    with pytest.raises(QueueError, match="not in build"):
        queue.complete("gw0", [("tests/other.py::test_x", result())])


def test_reserving_from_a_build_that_does_not_exist_says_state_lost(
    make_queue: QueueFactory,
) -> None:
    queue = make_queue()
    with pytest.raises(BuildStateLost):
        queue.reserve("gw0", 1)


def _race_worker(url: str, build: str, name: str, out: object) -> None:
    queue = connect(url, build)
    mine: list[str] = []
    while True:
        reservation = queue.reserve(name, 7)
        if reservation.state == EXHAUSTED:
            break
        if reservation.state == WAIT:
            continue
        batch = [(lease.unit, {"by": name}) for lease in reservation.leases]
        accepted = queue.complete(name, batch)
        mine.extend(unit for (unit, _), ok in zip(batch, accepted, strict=True) if ok)
    out.put(mine)  # type: ignore[attr-defined]
    queue.close()


def test_racing_processes_lose_nothing_and_duplicate_nothing(queue_url: str, build_id: str) -> None:
    everything = units(5000)
    queue = connect(queue_url, build_id)
    queue.populate("gw0", everything, {})
    spawn = Spawner(queue_url)
    out = spawn.queue()
    procs = [spawn.start(_race_worker, queue_url, build_id, f"gw{i}", out) for i in range(8)]
    completed = [unit for _ in procs for unit in out.get(timeout=300)]
    for proc in procs:
        proc.join(60)
    assert len(completed) == len(everything)
    assert sorted(completed) == sorted(everything)
    results = []
    cursor = 0
    while page := queue.events(cursor, limit=2000):
        results.extend(event.unit for event in page if event.kind == EVENT_RESULT)
        cursor = page[-1].seq
    assert sorted(results) == sorted(everything)
    status = queue.status()
    assert (status.done, status.pending, status.leased) == (5000, 0, 0)
    queue.close()


def test_requeue_sends_a_failed_attempt_to_the_back_within_the_unit_budget(
    make_queue: QueueFactory,
) -> None:
    queue = make_queue()
    queue.populate("gw0", units(3), {})
    flaky = queue.reserve("gw0", 1).leases[0].unit
    answer = queue.requeue("gw0", flaky, {"attempt": 1}, max_requeues=1, tolerance=-1)
    assert answer == REQUEUED
    order = [lease.unit for lease in queue.reserve("gw1", 3).leases]
    assert order == [units(3)[1], units(3)[2], flaky]
    again = queue.requeue("gw1", flaky, {"attempt": 2}, max_requeues=1, tolerance=-1)
    assert again == REQUEUE_REFUSED
    queue.complete("gw1", [(unit, result()) for unit in order])
    assert queue.status().finished
    requeued = [event for event in queue.events(0) if event.kind == EVENT_REQUEUED]
    assert [(event.worker, event.unit, event.data) for event in requeued] == [
        ("gw0", flaky, {"attempt": 1})
    ]
    assert queue.requeue("gw1", flaky, {}, max_requeues=5, tolerance=-1) == ALREADY_DONE


def test_requeue_tolerance_caps_retries_build_wide(make_queue: QueueFactory) -> None:
    queue = make_queue()
    queue.populate("gw0", units(10), {})
    leases = queue.reserve("gw0", 10).leases
    answers = [
        queue.requeue("gw0", lease.unit, {}, max_requeues=3, tolerance=0.2) for lease in leases
    ]
    assert answers.count(REQUEUED) == 2
    assert answers.count(REQUEUE_REFUSED) == 8


def test_final_release_finalises_the_culprit_at_once(make_queue: QueueFactory) -> None:
    queue = make_queue()
    queue.populate("gw0", units(2), {"max_unit_crashes": 5})
    hung, bystander = units(2)
    queue.reserve("gw0", 2)
    released = queue.release("gw0", {"culprit": hung, "final": True, "reason": "timeout"})
    assert {(r.unit, r.finalised) for r in released} == {(hung, True), (bystander, False)}
    assert [lease.unit for lease in queue.reserve("gw1", 2).leases] == [bystander]


def test_an_orderly_hand_back_is_not_recorded_as_a_lost_worker(make_queue: QueueFactory) -> None:
    queue = make_queue()
    queue.populate("gw0", units(3), {})
    queue.reserve("gw0", 3)
    released = queue.release("gw0", {"reason": "stopped", "orderly": True})
    assert {r.unit for r in released} == set(units(3))
    kinds = [event.kind for event in queue.events(0)]
    assert EVENT_LEASES_RETURNED in kinds and EVENT_WORKER_LOST not in kinds
    assert {lease.unit for lease in queue.reserve("gw1", 3).leases} == set(units(3))


def test_hand_back_returns_unstarted_units_in_order_and_keeps_the_rest(
    make_queue: QueueFactory,
) -> None:
    """A worker that promised pytest its next test keeps that lease and returns the others,
    which are served next in the order the worker would have run them."""
    queue = make_queue()
    queue.populate("gw0", units(6), {})
    held = [lease.unit for lease in queue.reserve("gw0", 5).leases]
    running, promised, *unstarted = held
    returned = queue.hand_back("gw0", [*unstarted, units(6)[5]], "slow run handed back")
    assert returned == unstarted  # the unit it never held is skipped
    assert [lease.unit for lease in queue.reserve("gw1", 4).leases] == [*unstarted, units(6)[5]]
    assert queue.heartbeat("gw0", held) == 2  # the running and the promised unit stay its own
    assert queue.complete("gw0", [(running, result()), (promised, result())]) == [True, True]
    returned_events = [e for e in queue.events(0) if e.kind == EVENT_LEASES_RETURNED]
    assert [e.data["requeued"] for e in returned_events] == [unstarted]
    assert EVENT_WORKER_LOST not in {event.kind for event in queue.events(0)}


def test_a_stopped_build_finishes_when_its_last_lease_is_handed_back(
    make_queue: QueueFactory,
) -> None:
    queue = make_queue()
    queue.populate("gw0", units(3), {})
    queue.reserve("gw0", 3)
    queue.stop("-x")
    assert not queue.status().finished
    queue.hand_back("gw0", units(3), "the build was stopped")
    assert queue.status().finished
    assert [e.kind for e in queue.events(0)].count(EVENT_FINISHED) == 1


def test_a_stopped_build_resumes_with_what_is_left(make_queue: QueueFactory) -> None:
    queue = make_queue()
    queue.populate("gw0", units(3), {})
    (lease,) = queue.reserve("gw0", 1).leases
    queue.complete("gw0", [(lease.unit, result())])
    queue.stop("interrupted")
    assert queue.status().finished and queue.reserve("gw0", 1).state == EXHAUSTED
    assert queue.resume("run again")
    assert not queue.status().finished and queue.status().stop_reason is None
    rest = queue.reserve("gw1", 5)
    assert [x.unit for x in rest.leases] == units(3)[1:]
    queue.complete("gw1", [(x.unit, result()) for x in rest.leases])
    assert queue.status().finished
    kinds = [event.kind for event in queue.events(0)]
    assert kinds.count(EVENT_FINISHED) == 2 and "resumed" in kinds
    assert not queue.resume("nothing left")  # a finished build is never resumed


def test_a_build_that_was_not_stopped_is_not_resumed(make_queue: QueueFactory) -> None:
    queue = make_queue()
    queue.populate("gw0", units(2), {})
    assert not queue.resume("run again")


@pytest.mark.parametrize(
    "operation",
    [
        lambda queue: queue.heartbeat("gw0", ["tests/test_x.py::test_0"]),
        lambda queue: queue.release("gw0", {"reason": "killed"}),
        lambda queue: queue.hand_back("gw0", ["tests/test_x.py::test_0"], "slow"),
    ],
    ids=["heartbeat", "release", "hand_back"],
)
def test_operations_on_a_build_that_does_not_exist_say_state_lost(
    make_queue: QueueFactory, operation: Callable[[Queue], object]
) -> None:
    """Every backend notices a missing build in every operation that needs one, instead of
    renewing or releasing nothing in silence."""
    with pytest.raises(BuildStateLost):
        operation(make_queue())


# -- a lost build is noticed by every operation -----------------------------------------------

EVERY_OPERATION: dict[str, Callable[[Queue], object]] = {
    "join": lambda queue: queue.join("gw1", {"host": "here"}),
    "publish": lambda queue: queue.publish("note", "gw0", {}),
    "stop": lambda queue: queue.stop("because"),
    "events": lambda queue: queue.events(0),
    "status": lambda queue: queue.status(),
    "units": lambda queue: queue.units(),
    "reserve": lambda queue: queue.reserve("gw0", 1),
    "steal": lambda queue: queue.steal("gw1", 1),
    "heartbeat": lambda queue: queue.heartbeat("gw0", units(1)),
    "claim": lambda queue: queue.claim("gw0", units(1)),
    "complete": lambda queue: queue.complete("gw0", [(units(1)[0], result())]),
    "requeue": lambda queue: queue.requeue("gw0", units(1)[0], {}, max_requeues=1, tolerance=-1),
    "release": lambda queue: queue.release("gw0", {"reason": "killed"}),
    "hand_back": lambda queue: queue.hand_back("gw0", units(1), "slow"),
    "resume": lambda queue: queue.resume("again"),
}


@pytest.mark.parametrize("operation", list(EVERY_OPERATION))
def test_a_build_lost_after_it_was_seen_is_noticed_by_every_operation(
    make_queue: QueueFactory, queue_url: str, build_id: str, operation: str
) -> None:
    """Once a queue object has seen its build, no operation acts on a vanished one in silence
    (a join would re-create a worker of a build nobody runs, a status would say "not started")."""
    queue = make_queue()
    queue.populate("gw0", units(2), {})
    queue.reserve("gw0", 1)
    lose_build(queue_url, build_id)
    with pytest.raises(BuildStateLost):
        EVERY_OPERATION[operation](queue)


@pytest.mark.parametrize("operation", ["join", "publish", "stop", "events", "status", "units"])
def test_operations_before_the_build_exists_are_not_a_loss(
    make_queue: QueueFactory, operation: str
) -> None:
    """Workers join and publish while the leader still collects: no build yet is no loss."""
    EVERY_OPERATION[operation](make_queue())


@pytest.mark.parametrize("operation", ["steal", "claim", "resume", "complete", "requeue"])
def test_operations_that_need_a_build_say_state_lost_without_one(
    make_queue: QueueFactory, operation: str
) -> None:
    with pytest.raises(BuildStateLost):
        EVERY_OPERATION[operation](make_queue())


# -- known drifts, pinned ------------------------------------------------------------------


def test_a_unit_named_twice_in_a_hand_back_is_returned_once(make_queue: QueueFactory) -> None:
    queue = make_queue()
    queue.populate("gw0", units(3), {})
    queue.reserve("gw0", 3)
    assert queue.hand_back("gw0", [units(3)[1], units(3)[1]], "slow") == [units(3)[1]]
    status = queue.status()
    assert (status.pending, status.leased, status.done) == (1, 2, 0)
    returned = [e.data["requeued"] for e in queue.events(0) if e.kind == EVENT_LEASES_RETURNED]
    assert returned == [[units(3)[1]]]


@pytest.mark.parametrize(
    ("late", "recorded"),
    [({"attempt": 7}, 7), ({"attempt": None}, 1), ({"attempt": "2"}, 1), ({}, 1)],
)
def test_a_late_duplicate_names_its_own_attempt_only_when_it_is_a_number(
    make_queue: QueueFactory, late: dict[str, object], recorded: int
) -> None:
    queue = make_queue()
    queue.populate("gw0", units(1), {})
    queue.reserve("gw0", 1)
    queue.complete("gw0", [(units(1)[0], result())])
    assert queue.complete("gw1", [(units(1)[0], late)]) == [False]
    (rejected,) = [e for e in queue.events(0) if e.kind == EVENT_DUPLICATE_REJECTED]
    assert (rejected.worker, rejected.data) == ("gw1", {"attempt": recorded})


def test_expired_leases_come_back_the_most_recently_leased_first(
    make_queue: QueueFactory, clock: Any
) -> None:
    """Deadlines differ from the serving order once a heartbeat renews one; the units still
    return to the front by the order they were leased, the most recent first (the one a worker
    started first is the likeliest to have hung it)."""
    queue = make_queue(lease_ttl_s=30)
    queue.populate("gw0", units(4), {})
    first, second = (lease.unit for lease in queue.reserve("gw0", 2).leases)
    third = queue.reserve("gw1", 1).leases[0].unit
    clock.advance(10)
    queue.heartbeat("gw0", [first])  # first now expires last
    clock.advance(31)
    again = queue.reserve("gw2", 4)
    assert [lease.unit for lease in again.leases] == [third, second, first, units(4)[3]]
    expired = [e.unit for e in queue.events(0) if e.kind == EVENT_LEASE_EXPIRED]
    assert expired == [first, second, third]


def test_release_answers_in_reservation_order_and_charges_only_a_named_culprit(
    make_queue: QueueFactory,
) -> None:
    queue = make_queue()
    # Reserved one at a time from a manifest whose names sort the other way round.
    names = [f"tests/test_mod.py::test_{letter}" for letter in "dcba"]
    queue.populate("gw0", names, {"max_unit_crashes": 1})
    for _ in names:
        queue.reserve("gw0", 1)
    for culprit in (3, None, "", "tests/elsewhere.py::test_x"):
        released = queue.release("gw0", {"culprit": culprit, "reason": "killed"})
        assert [(r.unit, r.crashes, r.finalised) for r in released] == [
            (name, 0, False) for name in names
        ]
        lost = [e for e in queue.events(0) if e.kind == EVENT_WORKER_LOST][-1]
        assert lost.data == {"cause": {"culprit": culprit, "reason": "killed"}, "requeued": names}
        assert [lease.unit for lease in queue.reserve("gw0", 4).leases] == names[::-1]
        names.reverse()  # the order gw0 holds them in now
    assert queue.status().done == 0


# -- claim and steal ---------------------------------------------------------------------------


def unit_ids(reservation: Any) -> list[str]:
    return [lease.unit for lease in reservation.leases]


def test_claim_answers_the_units_still_held_once_each_and_renews_them(
    make_queue: QueueFactory, clock: Any
) -> None:
    queue = make_queue(lease_ttl_s=30)
    queue.populate("gw0", units(4), {})
    mine = unit_ids(queue.reserve("gw0", 2))
    theirs = unit_ids(queue.reserve("gw1", 1))
    asked = [mine[1], theirs[0], mine[1], "tests/elsewhere.py::test_x", mine[0]]
    assert queue.claim("gw0", asked) == [mine[1], mine[0]]
    assert queue.claim("gw0", asked) == [mine[1], mine[0]]  # idempotent
    clock.advance(20)
    assert queue.claim("gw0", [mine[0]]) == [mine[0]]
    clock.advance(20)  # mine[0] renewed 20 s ago; mine[1] and theirs expired
    assert unit_ids(queue.reserve("gw2", 5)) == [*theirs, mine[1], units(4)[3]]
    assert queue.claim("gw0", mine) == [mine[0]]
    queue.complete("gw0", [(mine[0], result())])
    assert queue.claim("gw0", mine) == []


def test_steal_serves_pending_units_first_like_reserve(make_queue: QueueFactory) -> None:
    queue = make_queue()
    queue.populate("gw0", units(4), {})
    queue.reserve("gw0", 2)
    stolen = queue.steal("gw1", 5)
    assert (stolen.state, unit_ids(stolen), stolen.pending) == (LEASED, units(4)[2:], 0)
    assert [e.kind for e in queue.events(0)].count("stolen") == 0


def test_steal_takes_the_tail_half_of_the_busiest_workers_unclaimed_leases(
    make_queue: QueueFactory,
) -> None:
    queue = make_queue()
    queue.populate("gw0", units(12), {})
    queue.reserve("gw0", 3)
    big = unit_ids(queue.reserve("gw1", 7))
    queue.reserve("gw2", 2)
    queue.claim("gw1", big[:2])  # 5 unclaimed: the thief takes the last 3
    stolen = queue.steal("gw3", 10, "steal-1")
    assert (stolen.state, stolen.pending) == (LEASED, 0)
    assert [(x.unit, x.attempt) for x in stolen.leases] == [(unit, 1) for unit in big[4:]]
    assert queue.steal("gw3", 10, "steal-1") == stolen  # a retry: the same steal again
    assert queue.claim("gw1", big) == big[:4]
    assert queue.heartbeat("gw1", big) == 4
    assert queue.claim("gw3", big) == big[4:]
    assert [x.unit for x in queue.reservations("gw1")] == big[:4]
    assert [x.unit for x in queue.reservations("gw3")] == big[4:]
    (event,) = [e for e in queue.events(0) if e.kind == "stolen"]
    assert (event.worker, event.unit) == ("gw3", None)
    assert event.data == {"units": big[4:], "from": "gw1"}
    status = queue.status()
    assert (status.pending, status.leased, status.done) == (0, 12, 0)


def test_what_a_thief_runs_first_is_never_stolen_back(make_queue: QueueFactory) -> None:
    """Idle workers would otherwise pass a last unstarted test between them, each stealing it
    from the other before it could claim it."""
    queue = make_queue()
    queue.populate("gw0", units(3), {})
    held = unit_ids(queue.reserve("gw0", 3))
    queue.claim("gw0", held[:2])
    assert unit_ids(queue.steal("gw1", 10)) == held[2:]
    again = queue.steal("gw2", 10)
    assert (again.state, again.leases) == (WAIT, ())
    assert queue.claim("gw1", held[2:]) == held[2:]


def test_steal_takes_at_most_max_units_and_never_a_claimed_lease(
    make_queue: QueueFactory,
) -> None:
    queue = make_queue()
    queue.populate("gw0", units(9), {})
    held = unit_ids(queue.reserve("gw0", 9))
    assert unit_ids(queue.steal("gw1", 2)) == held[7:]
    queue.claim("gw0", held[:7])
    assert unit_ids(queue.steal("gw2", 5)) == held[8:]  # half of gw1's two
    queue.claim("gw1", held[7:8])
    queue.claim("gw2", held[8:])
    stolen = queue.steal("gw3", 5)
    assert (stolen.state, stolen.leases) == (WAIT, ())


def test_steal_picks_the_most_unclaimed_then_the_smallest_worker_id(
    make_queue: QueueFactory,
) -> None:
    queue = make_queue()
    queue.populate("gw0", units(6), {})
    queue.reserve("gw2", 2)
    queue.reserve("gw1", 2)
    queue.reserve("gw3", 2)
    queue.claim("gw3", units(6)[4:5])
    first = queue.steal("gw9", 1)
    assert unit_ids(first) == [units(6)[3]]  # gw1 and gw2 hold two each: gw1 goes first
    assert unit_ids(queue.steal("gw9", 1)) == [units(6)[1]]  # now gw2 holds the most


def test_a_victims_late_result_for_a_stolen_unit_is_a_duplicate(make_queue: QueueFactory) -> None:
    queue = make_queue()
    queue.populate("gw0", units(2), {})
    queue.reserve("gw0", 2)
    (taken,) = unit_ids(queue.steal("gw1", 1))
    assert queue.complete("gw1", [(taken, result("passed"))]) == [True]
    assert queue.complete("gw0", [(taken, result("failed"))]) == [False]
    results = [(e.worker, e.data) for e in queue.events(0) if e.kind == EVENT_RESULT]
    assert results == [("gw1", result("passed"))]


def test_nothing_to_steal_answers_like_reserve(make_queue: QueueFactory) -> None:
    queue = make_queue()
    queue.populate("gw0", units(2), {})
    queue.reserve("gw0", 2)
    queue.claim("gw0", units(2))
    assert queue.steal("gw1", 4).state == WAIT
    assert queue.steal("gw0", 4).state == WAIT  # a worker never steals from itself
    queue.complete("gw0", [(unit, result()) for unit in units(2)])
    assert queue.steal("gw1", 4).state == EXHAUSTED


def test_a_stopped_build_has_nothing_to_steal(make_queue: QueueFactory) -> None:
    queue = make_queue()
    queue.populate("gw0", units(4), {})
    queue.reserve("gw0", 4)
    queue.stop("-x")
    assert queue.steal("gw1", 4).state == EXHAUSTED


def test_steal_reclaims_expired_leases_first(make_queue: QueueFactory, clock: Any) -> None:
    queue = make_queue(lease_ttl_s=30)
    queue.populate("gw0", units(3), {})
    queue.reserve("gw0", 3)
    clock.advance(31)
    stolen = queue.steal("gw1", 5)
    assert [(x.unit, x.attempt) for x in stolen.leases] == [(unit, 2) for unit in units(3)[::-1]]


def test_stolen_leases_expire_on_their_new_deadline(make_queue: QueueFactory, clock: Any) -> None:
    queue = make_queue(lease_ttl_s=30)
    queue.populate("gw0", units(2), {})
    queue.reserve("gw0", 2)
    clock.advance(20)
    (taken,) = unit_ids(queue.steal("gw1", 1))
    clock.advance(20)  # gw0's lease expired, the stolen one has 10 s left
    assert [(x.unit, x.attempt) for x in queue.reserve("gw2", 2).leases] == [(units(2)[0], 2)]
    assert queue.claim("gw1", [taken]) == [taken]


CLASSY = [
    "tests/test_a.py::test_plain",
    "tests/test_a.py::TestOne::test_1",
    "tests/test_a.py::TestOne::test_2",
    "tests/test_a.py::TestOne::test_3",
    "tests/test_a.py::TestTwo::test_1",
    "tests/test_a.py::TestTwo::test_2",
    "tests/test_b.py::test_x",
    "tests/test_b.py::test_y",
]


@pytest.mark.parametrize(
    ("held", "claimed", "max_units", "expected"),
    [
        # 6 unclaimed: target 3 (TestTwo::test_2, b::test_x, b::test_y) cuts TestTwo: later.
        (CLASSY[1:], 1, 10, CLASSY[6:]),
        # The target (TestOne::test_3) and all later cuts are inside TestOne: earlier.
        (CLASSY[:4], 0, 10, CLASSY[1:4]),
        # ...but never more than max_units: TestTwo whole would be 2, TestOne's start is 5 away.
        (CLASSY[1:6], 1, 1, []),
        # The first unclaimed unit continues the class of the claimed one before it.
        (CLASSY[1:4], 1, 10, []),
        (CLASSY[4:6], 0, 10, CLASSY[4:6]),
    ],
    ids=["later", "earlier", "capped", "claimed-class", "whole-class"],
)
def test_steal_never_cuts_inside_a_class_when_it_can_help_it(
    make_queue: QueueFactory,
    held: list[str],
    claimed: int,
    max_units: int,
    expected: list[str],
) -> None:
    queue = make_queue()
    queue.populate("gw0", held, {})
    queue.reserve("gw0", len(held))
    queue.claim("gw0", held[:claimed])
    stolen = queue.steal("gw1", max_units)
    assert unit_ids(stolen) == expected
    assert stolen.state == (LEASED if expected else WAIT)


def test_a_reservation_never_ends_inside_a_class(make_queue: QueueFactory) -> None:
    """A worker sizes its reservation from an old view of the queue, so only the queue can
    keep a class on one worker: asked for one test, it leases the rest of that test's class."""
    queue = make_queue()
    queue.populate("gw0", CLASSY, {})
    assert unit_ids(queue.reserve("gw0", 2)) == CLASSY[:4]  # through TestOne's end
    assert unit_ids(queue.reserve("gw1", 1)) == CLASSY[4:6]  # TestTwo, whole
    assert unit_ids(queue.reserve("gw2", 1)) == CLASSY[6:7]  # outside a class: exactly one
    assert unit_ids(queue.steal("gw3", 1)) == CLASSY[7:]


@pytest.mark.parametrize(
    ("whole", "expected"),
    [
        # Without a mode in the meta (a build not of pytest's), every unit is its own group.
        (None, [*CLASSY[6:][::-1], *CLASSY[:6][::-1]]),
        ("none", [*CLASSY[6:][::-1], *CLASSY[:6][::-1]]),
        # The most recent group first, each class in its own order.
        ("class", [CLASSY[7], CLASSY[6], *CLASSY[4:6], *CLASSY[1:4], CLASSY[0]]),
        ("file", [*CLASSY[6:], *CLASSY[:6]]),
        ("all", CLASSY),  # an order-dependent suite: its order, whole
    ],
)
def test_a_gone_workers_leases_come_back_with_what_is_kept_whole_in_its_order(
    make_queue: QueueFactory, clock: Any, whole: str | None, expected: list[str]
) -> None:
    """A worker that died holding a class (or file) must not leave it to run backwards on the
    next worker: tests of a class may depend on the ones before them. (The queue's order is
    read by fresh workers, one reservation each: under "class" it keeps each worker going
    forward through a module, so one worker would pass over units behind it.)"""
    queue = make_queue(lease_ttl_s=5)
    queue.populate("gw0", CLASSY, {} if whole is None else {"whole": whole})
    queue.reserve("gw0", len(CLASSY), whole="none")
    clock.advance(10)  # gw0 died: its leases come back to the front
    served: list[str] = []
    for fresh in itertools.count(1):
        reservation = unit_ids(queue.reserve(f"new{fresh}", 1))
        if not reservation:
            break
        served += reservation
    assert served == expected


def test_a_released_class_comes_back_in_its_own_order(make_queue: QueueFactory) -> None:
    queue = make_queue()
    queue.populate("gw0", CLASSY, {"whole": "class"})
    queue.reserve("gw0", 4)
    queue.claim("gw0", CLASSY[:2])
    queue.release("gw0", {"culprit": CLASSY[1], "reason": "killed", "signal": 9})
    assert unit_ids(queue.reserve("gw1", 1)) == CLASSY[1:4]


def test_steal_leases_pending_units_through_their_class_end(make_queue: QueueFactory) -> None:
    queue = make_queue()
    queue.populate("gw0", CLASSY, {})
    queue.reserve("gw0", 1)
    assert unit_ids(queue.steal("gw1", 1)) == CLASSY[1:4]


def test_with_nothing_kept_whole_a_reservation_takes_exactly_what_was_asked(
    make_queue: QueueFactory,
) -> None:
    """--dist test (pytest-xdist's load) spreads a class's tests over the workers."""
    queue = make_queue()
    queue.populate("gw0", CLASSY, {})
    assert unit_ids(queue.reserve("gw0", 2, whole="none")) == CLASSY[:2]
    assert unit_ids(queue.reserve("gw1", 1, whole="none")) == CLASSY[2:3]
    assert unit_ids(queue.steal("gw2", 1, whole="none")) == CLASSY[3:4]


def test_with_nothing_kept_whole_a_steal_cuts_inside_a_class(make_queue: QueueFactory) -> None:
    """--dist test: an idle worker takes the tail of a victim whose unstarted tests are all of
    one class (SQLite's lock-free check for 'nothing to steal' applied the class rule)."""
    queue = make_queue()
    held = [f"t.py::C::t{i}" for i in range(4)]
    queue.populate("gw0", held, {"whole": "none"})
    queue.reserve("gw0", 4, whole="none")
    queue.claim("gw0", held[:1])
    assert unit_ids(queue.steal("gw1", 8, whole="none")) == held[2:]


def test_an_unknown_mode_of_what_is_kept_whole_is_refused_and_changes_nothing(
    make_queue: QueueFactory, clock: Any
) -> None:
    queue = make_queue(lease_ttl_s=5)
    queue.populate("gw0", CLASSY, {})
    queue.reserve("gw0", 1)
    clock.advance(10)  # an expired lease a valid call would reclaim
    for call in (queue.reserve, queue.steal):
        with pytest.raises(ValueError, match="unknown mode 'clas'"):
            call("gw1", 1, whole="clas")
    assert queue.status().leased == 1


@pytest.mark.parametrize(
    ("whole", "asked", "expected"),
    [
        ("file", 1, CLASSY[:6]),  # all of tests/test_a.py
        ("scope", 1, CLASSY[:1]),  # test_plain is its module's only test outside a class
        ("scope", 2, CLASSY[:4]),  # through TestOne's end
        ("class", 1, CLASSY[:1]),
    ],
)
def test_a_reservation_never_ends_inside_what_is_kept_whole(
    make_queue: QueueFactory, whole: str, asked: int, expected: list[str]
) -> None:
    """--dist file and scope (pytest-xdist's loadfile, loadscope) keep a file or a scope on one
    worker, whatever size the worker asked for."""
    queue = make_queue()
    queue.populate("gw0", CLASSY, {})
    assert unit_ids(queue.reserve("gw0", asked, whole=whole)) == expected


def test_a_steal_never_cuts_a_file_kept_whole(make_queue: QueueFactory) -> None:
    queue = make_queue()
    queue.populate("gw0", CLASSY, {})
    queue.reserve("gw0", len(CLASSY), whole="file")
    queue.claim("gw0", CLASSY[:1])
    assert unit_ids(queue.steal("gw1", 10, whole="file")) == CLASSY[6:]  # test_b.py, whole
    queue.reserve("gw2", 1, whole="file")
    assert queue.steal("gw3", 10, whole="file").state == WAIT  # test_a.py is never cut


# Units as a worker names them under --dist loadgroup (conveyor.unit_names): a group's tests
# from two files, contiguous as the plan serves them, then tests outside any group.
GROUPED = [
    "tests/test_a.py::test_db (xdist_group db)",
    "tests/test_b.py::TestQ::test_db[x (y)] (xdist_group db)",
    "tests/test_b.py::test_db_too (xdist_group db)",
    "tests/test_a.py::test_free",
    "tests/test_b.py::TestQ::test_free",
    "tests/test_c.py::test_web[a (xdist_group b)] (xdist_group web)",
    "tests/test_c.py::test_web_too (xdist_group web)",
]


def test_an_xdist_group_is_reserved_and_stolen_whole(make_queue: QueueFactory) -> None:
    """--dist group (pytest-xdist's loadgroup): a reservation takes a group's every test,
    whatever size was asked for; a test outside any group goes alone, even beside its class;
    and a steal never cuts a group."""
    queue = make_queue()
    queue.populate("gw0", GROUPED, {"whole": "group"})
    assert unit_ids(queue.reserve("gw0", 1, whole="group")) == GROUPED[:3]
    assert unit_ids(queue.reserve("gw1", 1, whole="group")) == GROUPED[3:4]
    assert unit_ids(queue.reserve("gw1", 2, whole="group")) == GROUPED[4:7]
    queue.claim("gw0", GROUPED[:1])
    queue.claim("gw1", GROUPED[3:5])
    assert unit_ids(queue.steal("gw2", 10, whole="group")) == GROUPED[5:]  # web, whole
    assert queue.steal("gw3", 10, whole="group").state == WAIT  # db is never cut


def test_a_build_kept_whole_goes_to_one_worker_in_its_order(make_queue: QueueFactory) -> None:
    """An order-dependent suite (conveyor.ordered_suite): the first reservation takes every
    test in the published order, and no other worker can take any of them."""
    queue = make_queue()
    queue.populate("gw0", CLASSY, {"whole": "all"})
    assert unit_ids(queue.reserve("gw0", 1, whole="all")) == CLASSY
    queue.claim("gw0", CLASSY[:1])
    assert queue.steal("gw1", 10, whole="all").state == WAIT
    assert queue.reserve("gw2", 1, whole="all").state == WAIT


def test_a_victim_whose_every_cut_splits_a_class_is_passed_over(make_queue: QueueFactory) -> None:
    queue = make_queue()
    queue.populate("gw0", [*CLASSY[1:4], *CLASSY[6:]], {})
    queue.reserve("gw0", 3)  # TestOne, its first test started
    queue.claim("gw0", CLASSY[1:2])
    queue.reserve("gw1", 2)
    queue.claim("gw1", CLASSY[6:7])
    assert unit_ids(queue.steal("gw2", 10)) == CLASSY[7:]  # gw0 holds more, all of one class


# -- one scripted build, every backend alike -----------------------------------------------------


def _scenario(queue: Queue, clock: Any) -> list[object]:
    """A build with every operation in it; what each call answered and the status after it."""
    seen: list[object] = []

    def note(answer: object) -> None:
        status = queue.status()
        counts = (status.total, status.done, status.pending, status.leased, status.stop_reason)
        seen.append((answer, counts, status.workers, status.finished))

    names = [*CLASSY, *units(6)]
    note(queue.join("gw0", {"host": "a", "pid": 1}))
    note(queue.join("gw1", {"host": "b", "pid": 2}))
    note(queue.populate("gw0", names, {"max_unit_crashes": 2, "seed": 3}))
    note(queue.populate("gw1", names, {}))
    note(queue.reserve("gw0", 4, "r1"))
    note(queue.reserve("gw0", 4, "r1"))
    note(queue.reserve("gw1", 3, "r2"))
    note(queue.claim("gw0", names[:2]))
    note(queue.heartbeat("gw1", names[4:7]))
    note(queue.complete("gw0", [(names[0], {"outcome": "passed", "attempt": 1})]))
    note(queue.requeue("gw1", names[5], {"attempt": 1}, max_requeues=1, tolerance=-1))
    note(queue.publish("note", "gw1", {"text": "hello"}))
    clock.advance(10)
    note(queue.reserve("gw2", 5))
    note(queue.steal("gw3", 4, "s1"))
    note(queue.steal("gw3", 4, "s1"))
    clock.advance(25)
    note(queue.heartbeat("gw0", names[:4]))
    note(queue.reserve("gw3", 2))
    note(queue.release("gw1", {"culprit": names[4], "reason": "killed", "signal": 9}))
    note(queue.hand_back("gw0", names[2:4], "slow"))
    note(queue.reserve("gw0", 20))
    note(queue.steal("gw1", 20))
    note(queue.claim("gw0", names))
    note(queue.steal("gw1", 20))
    note(queue.complete("gw0", [(n, {"outcome": "passed"}) for n in names[1:3]]))
    note(queue.complete("gw0", [(names[1], {"outcome": "failed"})]))
    note(queue.requeue("gw0", names[1], {"attempt": 2}, max_requeues=3, tolerance=-1))
    note(queue.stop("-x"))
    note(queue.reserve("gw1", 1))
    note(queue.release("gw3", {"culprit": None, "reason": "gone", "orderly": True}))
    note(queue.resume("again"))
    for worker in ("gw0", "gw1", "gw2", "gw3"):
        note(queue.release(worker, {"reason": "stopped", "orderly": True}))
    while (reservation := queue.reserve("gw1", 3)).state == LEASED:
        note(reservation)
        note(queue.complete("gw1", [(x.unit, {"outcome": "passed"}) for x in reservation.leases]))
    note(reservation)
    note([queue.reservations(worker) for worker in ("gw0", "gw1", "gw2", "gw3")])
    note(queue.units())
    return seen


def _stream(queue: Queue) -> list[tuple[str, str | None, str | None, object]]:
    return [(e.kind, e.worker, e.unit, e.data) for e in queue.iter_events(page=7)]


def test_every_backend_runs_a_build_exactly_like_the_reference(
    make_queue: QueueFactory, build_id: str, clock: Any
) -> None:
    """The same calls on the in-memory reference and on this backend: the same answers, the
    same counts after each, the same event stream (but for sequence numbers and times)."""
    reference_clock = type(clock)(clock.now)
    reference = MemoryQueue(build_id, store=Store(), clock=reference_clock, lease_ttl_s=30)
    queue = make_queue(lease_ttl_s=30)
    expected = _scenario(reference, reference_clock)
    observed = _scenario(queue, clock)
    for step, (want, got) in enumerate(zip(expected, observed, strict=True)):
        assert got == want, f"step {step}"
    assert _stream(queue) == _stream(reference)


# redis-py leaves the socket of a connect that an interrupt cut short for the collector to close.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_ctrl_c_between_two_statements_leaves_the_queue_usable(queue_url: str) -> None:
    """Ctrl-C raises KeyboardInterrupt wherever the main thread is. On SQLite, one that came
    right after BEGIN returned left the transaction open, and the controller's next look at the
    queue (to stop the build) failed with "cannot start a transaction within a transaction" and
    an INTERNALERROR; one right after flock() would have kept every worker waiting. Interrupts
    are fired here into reads and writes until hundreds have landed; the queue must stay
    usable for this connection and for another one."""
    queue = connect(queue_url, "b")
    queue.populate("leader", [f"t{i}" for i in range(50)], {})
    main = threading.get_ident()
    armed = False

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if armed:  # only inside the loop below, never in pytest's own code
            raise KeyboardInterrupt

    stop = threading.Event()

    def pester() -> None:
        while not stop.wait(0.0003):
            signal.pthread_kill(main, signal.SIGUSR1)

    def stuck(signum: int, frame: FrameType | None) -> None:
        raise AssertionError("the queue hung while an interrupt was handled: a lock was held")

    previous = signal.signal(signal.SIGUSR1, interrupt)
    previous_alarm = signal.signal(signal.SIGALRM, stuck)
    pesterer = threading.Thread(target=pester, daemon=True)
    interrupted = 0
    # Finalisers of earlier tests' garbage run wherever a collection starts, and an interrupt
    # landing in one would be raised into pytest's unraisable hook instead.
    gc.collect()
    gc.disable()
    pesterer.start()
    try:
        deadline = time.monotonic() + 20
        while interrupted < 500 and time.monotonic() < deadline:
            try:
                armed = True
                queue.status()
                queue.publish("note", None, {})
                armed = False
            except KeyboardInterrupt:
                armed = False
                interrupted += 1
                # As the controller does: look at the queue while the interrupt is handled.
                signal.setitimer(signal.ITIMER_REAL, 20)
                try:
                    queue.status()
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        armed = False
        stop.set()
        pesterer.join()
        gc.enable()
        signal.signal(signal.SIGUSR1, previous)
        signal.signal(signal.SIGALRM, previous_alarm)
    assert interrupted >= 100
    assert queue.status().populated
    queue.publish("note", None, {"after": True})
    writes: list[object] = []

    def write_elsewhere() -> None:
        other = connect(queue_url, "b")
        other.publish("note", None, {"elsewhere": True})
        writes.append(other.status().populated)
        other.close()

    elsewhere = threading.Thread(target=write_elsewhere, daemon=True)
    elsewhere.start()
    elsewhere.join(timeout=30)
    assert writes == [True], "another connection could not write: a lock was left held"
    queue.close()


# A split module: t.py's six tests in collection order, served as three ranges slowest first
# (the leader's meta names the range starts and ranks the served units), then u.py whole.
SPLIT = [f"t.py::test_{i}" for i in range(6)]
OTHER = [f"u.py::test_{i}" for i in range(4)]


def split_build(queue: Queue, served: list[str], workers: tuple[str, ...] = ("gw0", "gw1")) -> None:
    collected = SPLIT + OTHER
    starts = [unit for unit in served if unit.startswith("t.py") and int(unit[-1]) % 2 == 0]
    meta = {
        "range_starts": starts,
        "collection_order": [collected.index(unit) for unit in served],
        "whole": "class",
    }
    queue.populate("gw0", served, meta)
    for worker in workers:
        queue.join(worker, {})


def run_all(queue: Queue, worker: str, reservation: Any) -> list[str]:
    ran = unit_ids(reservation)
    queue.complete(worker, [(unit, result()) for unit in ran])
    return ran


SLOWEST_RANGE_FIRST = [*SPLIT[4:], *SPLIT[:4], *OTHER]


def test_a_worker_passes_over_ranges_behind_one_it_ran(make_queue: QueueFactory) -> None:
    """A split module's ranges come slowest first; a worker that ran a later range never runs
    an earlier one while another worker can: its tests of the module stay in collection order
    (a worker that went back failed pyparsing's tests)."""
    queue = make_queue()
    split_build(queue, SLOWEST_RANGE_FIRST)
    assert run_all(queue, "gw0", queue.reserve("gw0", 2)) == SPLIT[4:]
    assert unit_ids(queue.reserve("gw0", 2)) == OTHER[:2]  # t.py's earlier ranges passed over
    assert unit_ids(queue.reserve("gw1", 2)) == SPLIT[:2]
    assert unit_ids(queue.reserve("gw1", 2)) == SPLIT[2:4]  # forward: fine


def test_a_reservation_holds_one_range_at_most(make_queue: QueueFactory) -> None:
    """A worker sizes its reservation by the range it last saw at the front of the queue; the
    front has moved on since, and a range must not come with the next ones (slow tests in a
    row on one worker), nor a later range with an earlier one."""
    queue = make_queue()
    split_build(queue, SLOWEST_RANGE_FIRST[:6])
    assert unit_ids(queue.reserve("gw0", 4)) == SPLIT[4:]
    assert unit_ids(queue.reserve("gw1", 8)) == SPLIT[:2]
    assert unit_ids(queue.reserve("gw1", 8)) == SPLIT[2:4]


def test_a_worker_behind_everything_pending_waits_for_one_that_can_go_forward(
    make_queue: QueueFactory,
) -> None:
    queue = make_queue()
    split_build(queue, SLOWEST_RANGE_FIRST[:6])  # t.py only
    run_all(queue, "gw0", queue.reserve("gw0", 2))
    assert queue.reserve("gw0", 2).state == WAIT  # not exhausted: four are pending
    assert queue.steal("gw0", 8).state == WAIT
    assert queue.status().pending == 4
    assert unit_ids(queue.reserve("gw1", 4)) == SPLIT[:2]


@pytest.mark.parametrize("why", ["alone", "others_past_it", "others_silent", "others_released"])
def test_a_worker_behind_everything_pending_runs_it_when_no_other_could(
    make_queue: QueueFactory, clock: Any, why: str
) -> None:
    """Nothing is ever stuck: with no other live worker that could run the front forward (none
    joined, all past it too, none seen within a lease's lifetime, or released), the worker
    behind takes it."""
    queue = make_queue(lease_ttl_s=5)
    served = [*SPLIT[4:], *SPLIT[2:4], *SPLIT[:2]]
    split_build(queue, served, workers=("gw0",) if why == "alone" else ("gw0", "gw1"))
    run_all(queue, "gw0", queue.reserve("gw0", 2))
    if why == "others_past_it":
        run_all(queue, "gw1", queue.reserve("gw1", 2))  # t.py's middle range
    elif why == "others_silent":
        clock.advance(10)
    elif why == "others_released":
        queue.release("gw1", {"signal": 9})
    expected = SPLIT[:2] if why == "others_past_it" else SPLIT[2:4]
    assert unit_ids(queue.reserve("gw0", 2)) == expected


def test_a_steal_never_takes_what_lies_behind_the_thief(make_queue: QueueFactory) -> None:
    queue = make_queue()
    split_build(queue, SLOWEST_RANGE_FIRST[:6], workers=("gw0", "gw1", "gw2"))
    run_all(queue, "gw1", queue.reserve("gw1", 2))  # t.py's last range
    queue.reserve("gw0", 2)
    queue.reserve("gw0", 2)
    queue.claim("gw0", SPLIT[:1])
    assert queue.steal("gw1", 8).state == WAIT  # gw0's tail lies behind gw1
    assert unit_ids(queue.steal("gw2", 8)) == SPLIT[2:4]


def test_a_worker_started_under_a_dead_ones_id_is_not_held_to_its_ranges(
    make_queue: QueueFactory,
) -> None:
    """The supervisor starts a new process under a dead worker's id: it has run nothing."""
    queue = make_queue()
    split_build(queue, SLOWEST_RANGE_FIRST)
    run_all(queue, "gw0", queue.reserve("gw0", 2))
    queue.release("gw0", {"signal": 9})
    assert unit_ids(queue.reserve("gw0", 2)) == SPLIT[:2]


def test_a_build_without_split_modules_serves_strictly_from_the_front(
    make_queue: QueueFactory,
) -> None:
    """No ranges (a first run, --dist file, units that are not pytest's): no rank, no mark;
    a returned unit is served first to whoever asks."""
    queue = make_queue()
    queue.populate("gw0", SPLIT, {"range_starts": "garbage", "collection_order": [1]})
    queue.reserve("gw0", 6, whole="none")
    queue.hand_back("gw0", SPLIT[1:], "slow")
    assert unit_ids(queue.reserve("gw0", 1, whole="none")) == SPLIT[1:2]


def test_without_history_a_steal_never_sends_the_thief_back_in_a_module(
    make_queue: QueueFactory,
) -> None:
    """A first run (no ranges) of a build that keeps classes whole ranks every unit: a worker
    done with a module's later tests does not steal its earlier ones from another's backlog
    (a real suite's later tests left state that failed its earlier ones), while a worker that
    has not been in the module may."""
    queue = make_queue()
    queue.populate("gw0", SPLIT, {"whole": "class"})
    for worker in ("gw0", "gw1", "gw2"):
        queue.join(worker, {})
    assert unit_ids(queue.reserve("gw0", 4)) == SPLIT[:4]
    run_all(queue, "gw1", queue.reserve("gw1", 2))
    queue.claim("gw0", SPLIT[:1])
    assert queue.steal("gw1", 8).state == WAIT
    assert unit_ids(queue.steal("gw2", 8)) == SPLIT[2:4]


def test_a_steal_ends_before_a_tail_behind_the_thief(make_queue: QueueFactory) -> None:
    """The victim's last leases are a module the thief has gone past, and before them lie
    tests it has not reached: it takes those (a build otherwise ended with the thief idle
    while the victim drained both), and the victim keeps the rest in its order."""
    queue = make_queue()
    queue.populate("gw0", SPLIT + OTHER, {"whole": "class"})
    for worker in ("gw0", "gw1"):
        queue.join(worker, {})
    run_all(queue, "gw1", queue.reserve("gw1", 2))  # t.py's first two
    assert unit_ids(queue.reserve("gw0", 6)) == [*SPLIT[2:], *OTHER[:2]]
    queue.claim("gw0", SPLIT[2:3])
    run_all(queue, "gw1", queue.reserve("gw1", 2))  # u.py's last two: gw1 is past OTHER[:2]
    assert unit_ids(queue.steal("gw1", 8)) == SPLIT[3:]
    assert queue.claim("gw0", [SPLIT[3], OTHER[0]]) == [OTHER[0]]


def test_units_handed_back_go_back_to_their_worker_not_to_one_past_them(
    make_queue: QueueFactory,
) -> None:
    """A first run: gw0 hands back the rest of a run that turned out slow; gw1, already past
    those tests, must not run them behind its own (it would if no live worker could run them
    forward): gw0, which never ran them, still can, and takes them."""
    queue = make_queue()
    queue.populate("gw0", SPLIT, {"whole": "class"})
    for worker in ("gw0", "gw1"):
        queue.join(worker, {})
    assert unit_ids(queue.reserve("gw0", 4)) == SPLIT[:4]
    run_all(queue, "gw1", queue.reserve("gw1", 2))  # t.py's last two
    queue.claim("gw0", SPLIT[:1])
    assert queue.hand_back("gw0", SPLIT[1:4], "slow run handed back") == SPLIT[1:4]
    assert queue.reserve("gw1", 4).state == WAIT
    queue.complete("gw0", [(SPLIT[0], result())])
    assert unit_ids(queue.reserve("gw0", 4)) == SPLIT[1:4]


def test_a_shuffled_build_ranks_nothing(make_queue: QueueFactory) -> None:
    """`--order random` (every unit its own range) asks for no order: a worker past a unit
    still steals it."""
    queue = make_queue()
    queue.populate("gw0", SPLIT, {"whole": "class", "range_starts": SPLIT})
    for worker in ("gw0", "gw1"):
        queue.join(worker, {})
    assert unit_ids(queue.reserve("gw0", 4)) == SPLIT[:4]
    run_all(queue, "gw1", queue.reserve("gw1", 2))
    queue.claim("gw0", SPLIT[:1])
    assert unit_ids(queue.steal("gw1", 8)) == SPLIT[2:4]


def test_a_resumed_build_holds_no_worker_to_what_ran_before_the_stop(
    make_queue: QueueFactory,
) -> None:
    """New processes resume a stopped build under the old ids: they have run nothing."""
    queue = make_queue()
    split_build(queue, SLOWEST_RANGE_FIRST[:6])
    run_all(queue, "gw0", queue.reserve("gw0", 2))
    queue.stop("interrupted")
    assert queue.resume("conveyor run --resume")
    assert unit_ids(queue.reserve("gw0", 2)) == SPLIT[:2]
