"""The queue's vocabulary: StrEnum members that are their plain strings wherever one is used
(dict keys both ways, equality, JSON, formatting), on Python 3.10's fallback too; and the one
paging loop over a build's events."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from conveyor.queue.memory import MemoryQueue
from conveyor.queue.memory_state import Store
from conveyor.queue.protocol import (
    EVENT_RESULT,
    EXHAUSTED,
    REQUEUE_REFUSED,
    EventKind,
    QueueEnum,
    RequeueAnswer,
    ReservationState,
    _FallbackStrEnum,
)


class FallbackKind(_FallbackStrEnum):
    """What Python 3.10 gets: the fallback base with QueueEnum's hashing and equality."""

    __hash__ = QueueEnum.__hash__
    __eq__ = QueueEnum.__eq__
    __ne__ = QueueEnum.__ne__

    RESULT = "result"


@pytest.mark.parametrize("member", [EventKind.RESULT, FallbackKind.RESULT])
def test_a_member_is_its_string_in_every_use(member: str) -> None:
    assert {member: 1}["result"] == 1
    assert {"result": 1}[member] == 1
    assert member == "result" and "result" == member and member != "results"  # noqa: SIM300
    assert hash(member) == hash("result")
    assert str(member) == f"{member}" == "result" and f"{member:>7}" == " result"
    assert json.dumps({member: member}) == '{"result": "result"}'
    assert member in {"result"} and "result" in {member}


def test_old_names_are_the_enum_members() -> None:
    assert EVENT_RESULT is EventKind.RESULT
    assert EXHAUSTED is ReservationState.EXHAUSTED
    assert REQUEUE_REFUSED is RequeueAnswer.REFUSED == "refused"
    assert ReservationState("wait") is ReservationState.WAIT


def test_a_handler_table_keyed_by_kind_serves_plain_strings_read_back() -> None:
    handlers: dict[str, Callable[[], str]] = {EventKind.RESULT: lambda: "handled"}
    assert handlers["result"]() == "handled"


def test_iter_events_pages_through_the_whole_stream() -> None:
    queue = MemoryQueue("b", store=Store())
    queue.populate("gw0", ["t::a", "t::b"], {})
    for index in range(10):
        queue.publish("note", "gw0", {"index": index})
    seen = list(queue.iter_events(page=3))
    assert [e.seq for e in seen] == [e.seq for e in queue.events(0, limit=-1)]
    assert [e.data["index"] for e in seen if e.kind == "note"] == list(range(10))
    assert list(queue.iter_events(after=seen[-1].seq)) == []
    assert [e.seq for e in queue.iter_events(after=seen[4].seq, page=2)] == [
        e.seq for e in seen[5:]
    ]
