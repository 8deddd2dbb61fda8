"""What pytest's --junitxml fixtures record in a worker, carried to the controller's file.

pytest makes its junitxml writer (LogXML) in the controller only, so in a worker
`record_testsuite_property` and `record_xml_attribute` found none and recorded nothing: a
suite property or a test's attribute that plain pytest writes was missing from the file
(pytest-xdist loses them too), and the warnings those fixtures give under the xunit2 family
were never given. A worker stands this in for LogXML (conveyor.compat.stand_in_for_junitxml);
what a test records goes with its result, and the controller adds it to its own file
(`JunitRecordsReplay`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from conveyor.queue.protocol import JSON


class _TestAttributes:
    """What `record_xml_attribute` calls on the node reporter of the running test."""

    def __init__(self, attributes: list[list[str]]) -> None:
        self._attributes = attributes

    def add_attribute(self, name: object, value: object) -> None:
        self._attributes.append([str(name), str(value)])


class JunitRecords:
    """A worker's stand-in for LogXML: the `family` the fixtures' warnings name, and what
    they record while a test runs (`take` after each test)."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._properties: list[list[str]] = []
        self._attributes: list[list[str]] = []

    def add_global_property(self, name: str, value: object) -> None:
        self._properties.append([str(name), str(value)])

    def node_reporter(self, report: object) -> _TestAttributes:
        # One test runs at a time in a worker: what it records is the running test's.
        return _TestAttributes(self._attributes)

    def take(self) -> JSON | None:
        """What the test that just ran recorded, for its result; None when nothing."""
        if not (self._properties or self._attributes):
            return None
        taken = {"properties": self._properties, "attributes": self._attributes}
        self._properties, self._attributes = [], []
        return taken


class JunitRecordsReplay:
    """The controller's side: a test's attributes onto its <testcase>, and the suite's
    properties once each. Every worker runs session fixtures of its own, so each records a
    session fixture's properties once: a property is written as many times as the one worker
    that recorded it most, which for the usual session fixture is once, as in a plain run."""

    def __init__(self, xml: Any) -> None:
        self._xml = xml
        self._written: Counter[tuple[str, str]] = Counter()
        self._by_worker: dict[str, Counter[tuple[str, str]]] = {}

    def replay(self, recorded: object, report: Any, worker: str) -> None:
        if not isinstance(recorded, dict):
            return
        reporter = self._xml.node_reporter(report)
        for name, value in _pairs(recorded.get("attributes")):
            reporter.add_attribute(name, value)
        seen = self._by_worker.setdefault(worker, Counter())
        for pair in _pairs(recorded.get("properties")):
            seen[pair] += 1
            if seen[pair] > self._written[pair]:
                self._written[pair] += 1
                self._xml.add_global_property(*pair)


def _pairs(raw: object) -> list[tuple[str, str]]:
    if not isinstance(raw, list):
        return []
    return [
        (str(item[0]), str(item[1]))
        for item in raw
        if isinstance(item, list | tuple) and len(item) == 2
    ]
