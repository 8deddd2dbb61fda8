"""What the controller keeps of a passed test's report: only what the summary and plugins read."""

from __future__ import annotations

import sys

from _pytest.reports import TestReport

from conveyor.compat import PassedStub

SENT = {
    "nodeid": "test_m.py::test_a",
    "location": ["test_m.py", 3, "test_a"],
    "keywords": {"test_a": 1, "test_m.py": 1},
    "outcome": "passed",
    "longrepr": None,
    "when": "call",
    "user_properties": [],
    "sections": [],
    "duration": 0.03,
    "start": 1.0,
    "stop": 1.03,
    "$report_type": "TestReport",
}


def test_a_stub_of_a_plain_report_has_no_attributes_of_its_own() -> None:
    """The serialisation's "$report_type" marker left on the report gave every stub a
    __dict__: at 100,000 tests, three a test, tens of megabytes. The start and stop times,
    which nothing reads once the hooks have seen the report, cost two floats a stub: at a
    million tests, 150 MB."""
    report = TestReport._from_json(dict(SENT))
    stub = PassedStub.of(report, report)
    assert type(stub).__basicsize__ == object.__basicsize__ + 4 * 8  # four slots, no more
    # Plugins read every report's __dict__ (hypothesis, at the summary): an empty one, shared.
    assert vars(stub) == {} and stub.__dict__.get("hypothesis-statistics") is None
    assert vars(stub) is vars(PassedStub.of(report, report))
    assert not hasattr(stub, "start") and not hasattr(stub, "stop")
    assert (stub.nodeid, stub.when, stub.duration) == ("test_m.py::test_a", "call", 0.03)
    assert stub.location is report.location
    assert stub.when is sys.intern("call")  # one string for every report's phase


def test_what_a_plugin_attached_to_the_report_stays_on_the_stub() -> None:
    report = TestReport._from_json(dict(SENT))
    report.__dict__["hypothesis_statistics"] = {"runs": 100}
    stub = PassedStub.of(report, report)
    assert vars(stub) == {"hypothesis_statistics": {"runs": 100}}
    assert (stub.nodeid, stub.when, stub.duration) == ("test_m.py::test_a", "call", 0.03)
