"""The controller's read side of the queue, without pytest, on a real SQLite queue."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.build_follower import EVENTS_PAGE, BuildFollower, FollowSettings
from conveyor.errors import BuildAborted, BuildStateLost
from conveyor.problems import BuildProblems
from conveyor.queue import Queue, open_queue
from conveyor.queue.protocol import EVENT_FINISHED, EVENT_RESULT, Event, Manifest

UNITS = [f"test_m.py::test_{i}" for i in range(3)]


@pytest.fixture
def queue(tmp_path: Path) -> Queue:
    return open_queue(f"sqlite://{tmp_path / 'q.db'}", "b1")


def follower(
    queue: Queue, seen: list[Event], reported: set[str] | None = None, **settings: float
) -> BuildFollower:
    def finished(event: Event) -> None:
        made.finished = True

    handlers = {"note": seen.append, EVENT_RESULT: seen.append, EVENT_FINISHED: finished}
    made = BuildFollower(
        queue,
        None,
        FollowSettings("b1", **settings),  # type: ignore[arg-type]
        BuildProblems(),
        handlers,
        reported if reported is not None else set(),
    )
    return made


def test_drain_dispatches_every_event_once_in_order_across_pages(queue: Queue) -> None:
    count = EVENTS_PAGE + 5
    for index in range(count):
        queue.publish("note", None, {"index": index})
    seen: list[Event] = []
    follow = follower(queue, seen)
    assert follow.drain() == count
    assert [event.data["index"] for event in seen] == list(range(count))
    assert follow.drain() == 0  # nothing twice
    assert len(follow.all_events()) == count


def test_follow_returns_when_the_build_finishes_and_passes_a_stop_on_once(queue: Queue) -> None:
    queue.populate("w1", UNITS, {"nonce": "n1"})
    leases = queue.reserve("w1", len(UNITS)).leases
    queue.complete("w1", [(lease.unit, {"nodeid": lease.unit}) for lease in leases])
    seen: list[Event] = []
    follow = follower(queue, seen)
    follow.wait_for_manifest()
    asked: list[int] = []

    def stop_reason() -> str | None:
        asked.append(1)
        return "-x"

    follow.follow(on_progress=lambda: None, stop_reason=stop_reason)
    assert [event.unit for event in seen] == [lease.unit for lease in leases]
    assert queue.status().stop_reason == "-x"


def test_no_manifest_in_time_aborts_with_a_message(queue: Queue) -> None:
    follow = follower(queue, [], start_timeout_s=0.1)
    with pytest.raises(BuildAborted, match="no worker finished collecting within"):
        follow.wait_for_manifest()


def test_a_build_started_again_under_the_same_id_is_a_lost_build(queue: Queue) -> None:
    queue.populate("w1", UNITS, {"nonce": "n1"})
    follow = follower(queue, [])
    follow.wait_for_manifest()
    follow.check_same_build()  # the same build: nothing to say
    follow.manifest = Manifest("w0", "digest", len(UNITS), {"nonce": "an earlier build"})
    with pytest.raises(BuildStateLost, match="vanished from the queue"):
        follow.check_same_build()


def test_a_stalled_build_names_the_tests_without_a_result(queue: Queue) -> None:
    queue.populate("w1", UNITS, {})
    follow = follower(queue, [], reported={UNITS[0]}, stall_timeout_s=0.0)
    with pytest.raises(BuildAborted, match="2 test\\(s\\) have no result") as raised:
        follow.abort_stalled()
    assert UNITS[1] in str(raised.value) and UNITS[0] not in str(raised.value)
    assert follow.problems.missing == UNITS[1:]


def test_no_start_within_the_start_timeout_aborts(queue: Queue) -> None:
    queue.populate("w1", UNITS, {})
    follow = follower(queue, [], start_timeout_s=0.0)
    with pytest.raises(BuildAborted, match="no worker has taken a test"):
        follow.check_started()
    follow.reported = {UNITS[0]}
    follow.check_started()  # a result came: started
