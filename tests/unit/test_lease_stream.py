"""LeaseStream on real queues: the promised lease is the next one run, whatever happens."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import pytest
from conftest import FakeClock

from conveyor.errors import BuildStateLost, QueueUnavailable
from conveyor.lease_stream import UNPROMISED, LeaseStream
from conveyor.queue import Queue, open_queue
from conveyor.queue.protocol import EVENT_LEASES_RETURNED, EventKind

UNITS = [f"test_m.py::test_{i}" for i in range(6)]


@pytest.fixture(params=["sqlite", "redis"])
def queue(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Queue:
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path / 'queue.db'}"
    else:
        url = str(request.getfixturevalue("redis_server").url)
    opened = open_queue(url, f"build-{tmp_path.name}", lease_ttl_s=30.0, clock=clock)
    opened.populate("gw0", UNITS, {})
    request.addfinalizer(opened.close)
    return opened


def stream_of(queue: Queue, worker: str = "gw0", batch: int = 1) -> LeaseStream:
    return LeaseStream(queue, worker, batch=lambda pending: batch, poll_s=0.0)


def test_the_promised_lease_survives_a_hand_back(queue: Queue) -> None:
    stream = stream_of(queue, batch=3)
    leases = iter(stream)
    assert next(leases).unit == UNITS[0]
    promised = stream.peek()
    assert promised is not None and promised.unit == UNITS[1]
    assert stream.hand_back("slow run handed back") == [UNITS[2]]
    assert next(leases).unit == UNITS[1]
    assert stream.promised is UNPROMISED  # a new test runs: nothing promised after it yet


def test_a_hand_back_without_a_promise_returns_everything_unstarted(queue: Queue) -> None:
    stream = stream_of(queue, batch=3)
    leases = iter(stream)
    next(leases)
    assert stream.hand_back("slow run handed back") == UNITS[1:3]
    assert next(leases).unit == UNITS[1]  # back at the front, in order


def test_stop_returns_the_promised_lease_too_and_ends_the_stream(queue: Queue) -> None:
    stream = stream_of(queue, batch=2)
    leases = iter(stream)
    next(leases)
    stream.peek()
    assert stream.stop("stopped") == [UNITS[1]]
    assert list(leases) == []
    returned = [e for e in queue.events(0) if e.kind == EVENT_LEASES_RETURNED]
    assert returned[-1].data["requeued"] == [UNITS[1]]


def test_a_lost_lease_still_runs_here_as_promised(queue: Queue, clock: FakeClock) -> None:
    """A promised lease that expired and went to another worker is run anyway: its second
    result is rejected as a duplicate, which is cheaper than breaking the setup state."""
    stream = stream_of(queue)
    leases = iter(stream)
    next(leases)
    promised = stream.peek()
    assert promised is not None
    clock.advance(60)
    other = queue.reserve("gw1", 1)
    assert other.leases[0].unit == promised.unit
    assert next(leases) == promised


def test_a_queue_error_while_peeking_promises_nothing_and_surfaces_after_the_test(
    queue: Queue, tmp_path: Path
) -> None:
    calls = {"n": 0}

    def failing_check() -> None:
        calls["n"] += 1
        if calls["n"] > 1:
            raise BuildStateLost("the build vanished")

    stream = LeaseStream(queue, "gw0", batch=lambda pending: 1, check=failing_check)
    leases = iter(stream)
    next(leases)
    assert stream.peek() is None  # pytest tears everything down; the test is not blamed
    with pytest.raises(BuildStateLost):
        stream.raise_deferred()


def test_peeking_twice_reserves_once(queue: Queue) -> None:
    stream = stream_of(queue)
    leases = iter(stream)
    next(leases)
    first = stream.peek()
    assert stream.peek() == first
    assert queue.status().leased == 2


def test_held_names_the_running_lease_and_the_unstarted_ones(queue: Queue) -> None:
    """What the heartbeat renews: exactly the leases this worker knows it holds."""
    stream = stream_of(queue, batch=3)
    assert stream.held() == []
    leases = iter(stream)
    assert next(leases).unit == UNITS[0]
    assert stream.held() == UNITS[0:3]
    stream.peek()
    stream.hand_back("slow run handed back")
    assert stream.held() == UNITS[0:2]  # the running and the promised one
    assert next(leases).unit == UNITS[1]
    assert stream.held() == [UNITS[1]]
    stream.stop("stopped")
    assert stream.held() == [UNITS[1]]  # still running; nothing unstarted is held
    assert list(leases) == []
    assert stream.held() == []


def test_a_failed_reserve_is_retried_under_the_same_request_id(queue: Queue) -> None:
    """A reserve whose reply never came is asked again as the same reservation, so the leases
    the first call granted come back instead of leaking beside new ones."""

    class LostReply:
        """The queue, except that the first reserve is applied and its reply lost."""

        def __init__(self, inner: Queue) -> None:
            self.inner, self.lost = inner, False

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

        def reserve(
            self, worker: str, max_units: int, request_id: str | None = None, **options: str
        ) -> object:
            reservation = self.inner.reserve(worker, max_units, request_id, **options)
            if not self.lost:
                self.lost = True
                raise QueueUnavailable("the reply was lost")
            return reservation

    stream = LeaseStream(LostReply(queue), "gw0", batch=lambda pending: 2)  # type: ignore[arg-type]
    assert stream.peek() is None  # the error is kept for after the test
    with pytest.raises(QueueUnavailable):
        stream.raise_deferred()
    ran = []
    for lease in stream:
        ran.append(lease.unit)
        queue.complete("gw0", [(lease.unit, {})])
    assert ran == UNITS  # the first two once, then the rest
    assert [lease.unit for lease in queue.reservations("gw0")] == UNITS


def test_an_idle_worker_steals_the_unstarted_tail_and_nothing_runs_twice(queue: Queue) -> None:
    """gw0 holds all six units and has claimed the running one and the next; gw1, with
    nothing pending, takes the back half of the rest. gw0 drops what it lost when it comes
    to claim it, and every unit runs exactly once."""
    busy = LeaseStream(
        queue, "gw0", batch=lambda pending: 6, poll_s=0.0, claim_ahead=lambda upcoming: 2
    )
    mine = iter(busy)
    ran = {"gw0": [next(mine).unit]}
    promised = busy.peek()
    assert promised is not None and promised.unit == UNITS[1]
    idle = LeaseStream(queue, "gw1", batch=lambda pending: 1, poll_s=0.0)
    ran["gw1"] = [lease.unit for lease in islice(idle, 2)]
    assert ran["gw1"] == UNITS[4:6]  # half of the four unclaimed, from the back
    ran["gw0"] += [lease.unit for lease in islice(mine, 3)]
    assert ran["gw0"] == UNITS[0:4]  # the promised unit included
    for worker, units in ran.items():
        queue.complete(worker, [(unit, {"nodeid": unit}) for unit in units])
    assert list(mine) == []  # UNITS[4:6] are gw1's now: dropped, not run a second time
    stolen = [e for e in queue.events(0) if e.kind == EventKind.STOLEN]
    assert [(e.worker, e.data["units"], e.data["from"]) for e in stolen] == [
        ("gw1", UNITS[4:6], "gw0")
    ]
    assert queue.status().finished


def test_claimed_leases_are_never_stolen(queue: Queue) -> None:
    busy = LeaseStream(
        queue, "gw0", batch=lambda pending: 6, poll_s=0.0, claim_ahead=lambda upcoming: 6
    )
    mine = iter(busy)
    next(mine)
    thief = queue.steal("gw1", 10)
    assert not thief.leases  # everything gw0 holds is claimed: nothing to take
    assert [lease.unit for lease in islice(mine, 5)] == UNITS[1:]


def test_without_stealing_an_idle_worker_waits(queue: Queue) -> None:
    busy = LeaseStream(queue, "gw0", batch=lambda pending: 6, poll_s=0.0)
    next(iter(busy))
    idle = LeaseStream(queue, "gw1", batch=lambda pending: 1, steal=False)
    assert idle.peek() is None  # nothing pending, nothing taken from gw0
    assert queue.reservations("gw0") and not queue.reservations("gw1")


def test_an_idle_worker_that_finds_nothing_to_steal_tries_less_often(queue: Queue) -> None:
    """Each steal scans the others' reservations: an idle worker that found nothing to take
    tries again after 1, 2, 4 ... polls (at most 16), while it still asks for pending work at
    every poll. Polling both every 50 ms kept Redis busy for minutes on a real suite."""

    class CountingSteals:
        """The queue, counting the calls made to reserve and to steal."""

        def __init__(self, inner: Queue) -> None:
            self.inner, self.reserves, self.steals = inner, 0, 0

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

        def reserve(self, *args: object, **options: object) -> object:
            self.reserves += 1
            return self.inner.reserve(*args, **options)  # type: ignore[arg-type]

        def steal(self, *args: object, **options: object) -> object:
            self.steals += 1
            return self.inner.steal(*args, **options)  # type: ignore[arg-type]

    busy = LeaseStream(
        queue, "gw0", batch=lambda pending: 6, poll_s=0.0, claim_ahead=lambda upcoming: 6
    )
    next(iter(busy))  # gw0 holds and has claimed everything: nothing can be stolen
    counting = CountingSteals(queue)
    idle = LeaseStream(
        counting,  # type: ignore[arg-type]
        "gw1",
        batch=lambda pending: 1,
        poll_s=0.0,
        stopped=lambda: counting.reserves >= 40,  # 40 idle polls, then the stream ends
    )
    assert list(idle) == []
    assert counting.reserves == 40
    assert counting.steals == 5  # polls 1, 4, 9, 18 and 35


def test_results_stored_while_waiting_are_followed_by_an_immediate_ask(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker told to wait stores the results it holds; that may finish the build, and the
    worker then learns it at once instead of after a poll (every build's end waited one)."""
    slept: list[float] = []
    monkeypatch.setattr("conveyor.lease_stream.time.sleep", slept.append)
    stored: list[bool] = []

    def store_results() -> bool:
        if stored:
            return False
        queue.complete("gw0", [(unit, {"reports": []}) for unit in UNITS[:-1]])
        queue.complete("gw1", [(UNITS[-1], {"reports": []})])
        stored.append(True)
        return True

    stream = LeaseStream(
        queue, "gw0", batch=lambda pending: 5, poll_s=30.0, idle=store_results, steal=False
    )
    leases = iter(stream)
    ran = [next(leases).unit]
    assert next(iter(stream_of(queue, "gw1"))).unit == UNITS[-1]  # gw1 holds the last one
    ran += [lease.unit for lease in leases]
    assert ran == UNITS[:-1]
    assert stored == [True]
    assert slept == []
