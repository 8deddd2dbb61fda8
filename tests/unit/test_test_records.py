"""What a worker's tests record for the controller: junitxml's suite properties and test
attributes (conveyor.junit_records) and live log records (conveyor.live_log)."""

from __future__ import annotations

import io
import logging
from typing import Any

from conveyor import live_log
from conveyor.junit_records import JunitRecords, JunitRecordsReplay
from conveyor.live_log import LiveLogRecorder, LiveLogReplay


class _Writer:
    """Stands in for pytest's LogXML on the controller's side (what the replay calls)."""

    def __init__(self) -> None:
        self.properties: list[tuple[str, str]] = []
        self.attributes: dict[str, dict[str, str]] = {}

    def add_global_property(self, name: str, value: str) -> None:
        self.properties.append((name, value))

    def node_reporter(self, report: Any) -> Any:
        attributes = self.attributes.setdefault(report, {})

        class _Reporter:
            def add_attribute(self, name: str, value: str) -> None:
                attributes[name] = value

        return _Reporter()


def test_a_suite_property_is_written_as_often_as_the_one_worker_that_recorded_it_most() -> None:
    """Each worker's session fixture records a suite property once: written once. A test that
    records one on every run is written as often as one worker recorded it."""
    writer = _Writer()
    replay = JunitRecordsReplay(writer)
    for worker in ("gw0", "gw1", "gw0"):
        recorded = JunitRecords("xunit1")
        recorded.add_global_property("ARCH", "x86")
        replay.replay(recorded.take(), "a.py::t", worker)
    assert writer.properties == [("ARCH", "x86"), ("ARCH", "x86")]


def test_a_tests_attributes_go_to_its_own_testcase_and_are_taken_once() -> None:
    records = JunitRecords("xunit1")
    records.node_reporter("any id").add_attribute("assertions", 3)
    taken = records.take()
    assert taken == {"properties": [], "attributes": [["assertions", "3"]]}
    assert records.take() is None  # nothing more for the next test
    writer = _Writer()
    JunitRecordsReplay(writer).replay(taken, "a.py::t", "gw0")
    assert writer.attributes == {"a.py::t": {"assertions": "3"}}


class _LiveHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """pytest's live handler as the replay uses it: set_when, then records."""

    def __init__(self) -> None:
        super().__init__(io.StringIO())
        self.when: list[str | None] = []

    def set_when(self, when: str | None) -> None:
        self.when.append(when)


class _Report:
    def __init__(self, when: str) -> None:
        self.when = when


def test_live_records_come_back_under_their_phase_and_a_flood_is_cut(monkeypatch: Any) -> None:
    monkeypatch.setattr(live_log, "MAX_RECORDS", 3)
    recorder = LiveLogRecorder()
    logger = logging.getLogger("conveyor-test-live")
    logger.propagate = False
    logger.addHandler(recorder)
    try:
        recorder.set_when("setup")
        logger.warning("set up %s", "x")
        recorder.set_when("call")
        for n in range(4):
            logger.warning("call %d", n)
    finally:
        logger.removeHandler(recorder)
    taken = recorder.take()
    assert taken is not None and taken["left_out"] == 2
    handler = _LiveHandler()
    replay = LiveLogReplay(handler)
    for when in ("setup", "call", "teardown"):
        replay.before(_Report(when), taken)
    stream = handler.stream.getvalue().splitlines()
    assert stream == [
        "set up x",
        "call 0",
        "call 1",
        (
            "2 more live log record(s) of this test were left out (too many to carry with its "
            "result)"
        ),
    ]
    assert handler.when == ["setup", "call", "teardown"]
