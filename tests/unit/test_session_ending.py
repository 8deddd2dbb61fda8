"""A worker's session ending crosses the queue as JSON: it comes back as it was sent, and
anything else in a `session_ended` event is ignored rather than trusted."""

from __future__ import annotations

import pytest

from conveyor.queue.protocol import Event
from conveyor.session_ending import SessionEnding
from conveyor.vocabulary import EVENT_SESSION_ENDED


def _event(worker: str | None, data: dict[str, object]) -> Event:
    return Event(seq=1, kind=EVENT_SESSION_ENDED, worker=worker, unit=None, data=data, ts=0.0)


def _exit_exception(message: str, returncode: int | None) -> BaseException:
    with pytest.raises(pytest.exit.Exception) as info:
        pytest.exit(message, returncode=returncode)
    return info.value


@pytest.mark.parametrize(
    ("ending", "kind", "messages", "returncode"),
    [
        (pytest.UsageError("file or directory not found: nope.py"), "usage_error", None, None),
        (_exit_exception("stop here", 7), "exit", ("stop here",), 7),
        (_exit_exception("no code", None), "exit", ("no code",), None),
        (KeyboardInterrupt(), "interrupt", ("KeyboardInterrupt",), None),
    ],
)
def test_an_ending_comes_back_from_its_event_as_it_was_sent(
    ending: BaseException, kind: str, messages: tuple[str, ...] | None, returncode: int | None
) -> None:
    sent = SessionEnding.of("gw1", "test_a.py::test_x", ending)
    assert sent.kind == kind
    assert sent.messages == (messages or ("file or directory not found: nope.py",))
    assert sent.returncode == returncode
    assert SessionEnding.from_event(_event("gw1", sent.data)) == sent


@pytest.mark.parametrize(
    ("worker", "data"),
    [
        (None, {"kind": "exit", "messages": ["x"]}),  # no worker
        ("gw0", {"kind": "explode", "messages": ["x"]}),  # unknown kind
        ("gw0", {"kind": "exit", "messages": "x"}),  # not a list
        ("gw0", {"kind": "exit"}),  # an older worker's shape
        ("gw0", {}),
    ],
)
def test_garbage_in_a_session_ended_event_is_not_taken_for_an_ending(
    worker: str | None, data: dict[str, object]
) -> None:
    assert SessionEnding.from_event(_event(worker, data)) is None


def test_only_an_integer_is_taken_for_a_return_code() -> None:
    for code in (True, "3", 2.5):
        data = {"kind": "exit", "messages": ["x"], "returncode": code}
        ending = SessionEnding.from_event(_event("gw0", data))
        assert ending is not None and ending.returncode is None


def test_how_many_tests_were_collected_when_it_ended_comes_back_too() -> None:
    sent = SessionEnding.of("gw0", None, pytest.UsageError("bad -k"), collected=2000)
    assert SessionEnding.from_event(_event("gw0", sent.data)) == sent
    assert sent.collected == 2000
