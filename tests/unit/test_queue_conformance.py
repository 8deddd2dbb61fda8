"""One contract, every backend: each test runs against a real SQLite file and a real Redis."""

from __future__ import annotations

import itertools
import multiprocessing
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from conveyor.errors import BuildStateLost, QueueError
from conveyor.queue import Queue, open_queue
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

BACKENDS = ["sqlite", "redis", "redis-cluster"]

QueueFactory = Callable[..., Queue]


@pytest.fixture(params=BACKENDS)
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'queue.db'}"
    if request.param == "redis-cluster":
        return str(request.getfixturevalue("redis_cluster").url)
    server = request.getfixturevalue("redis_server")
    return str(server.url)


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
def make_queue(queue_url: str, build_id: str, clock: Callable[[], float]) -> QueueFactory:
    opened: list[Queue] = []

    def make(lease_ttl_s: float = 30.0) -> Queue:
        queue = open_queue(queue_url, build_id, lease_ttl_s=lease_ttl_s, clock=clock)
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
    queue = open_queue(url, build)
    barrier.wait()  # type: ignore[attr-defined]
    out.put((name, queue.populate(name, units(50), {"leader": name})))  # type: ignore[attr-defined]
    queue.close()


def test_populate_race_between_processes_has_one_winner(queue_url: str, build_id: str) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(6), ctx.Queue()
    procs = [
        ctx.Process(target=_populate_race, args=(queue_url, build_id, f"gw{i}", barrier, out))
        for i in range(6)
    ]
    for proc in procs:
        proc.start()
    outcomes = dict(out.get(timeout=60) for _ in procs)
    for proc in procs:
        proc.join(60)
    winners = [name for name, won in outcomes.items() if won]
    assert len(winners) == 1
    queue = open_queue(queue_url, build_id)
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
    queue = open_queue(url, build)
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
    queue = open_queue(queue_url, build_id)
    queue.populate("gw0", everything, {})
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_race_worker, args=(queue_url, build_id, f"gw{i}", out))
        for i in range(8)
    ]
    for proc in procs:
        proc.start()
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
