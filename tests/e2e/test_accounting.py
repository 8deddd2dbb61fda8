"""Accounting is by set: every collected test has exactly one final result, and a result for a
test nobody collected is rejected, so it can never stand in for a missing one."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from conveyor.queue import open_queue

UNITS = ["test_x.py::test_a", "test_x.py::test_b"]


def passed_payload(nodeid: str) -> dict[str, Any]:
    reports = []
    for when in ("setup", "call", "teardown"):
        report = pytest.TestReport(nodeid, ("test_x.py", 0, nodeid), {}, "passed", None, when)
        reports.append({**report._to_json(), "$report_type": "TestReport"})
    return {"nodeid": nodeid, "location": ["test_x.py", 0, nodeid], "reports": reports}


def test_a_result_for_an_uncollected_test_never_hides_a_missing_one(
    pytester: pytest.Pytester,
) -> None:
    url = f"sqlite://{pytester.path / 'q.db'}"
    queue = open_queue(url, "B5")
    queue.populate("gw0", UNITS, {"collected": 2, "selected": 2})
    leases = queue.reserve("gw0", 2).leases
    assert [lease.unit for lease in leases] == UNITS
    # test_b's slot carries a result for test_c, which nobody collected.
    queue.complete("gw0", [(UNITS[0], passed_payload(UNITS[0]))])
    queue.complete("gw0", [(UNITS[1], passed_payload("test_x.py::test_c"))])
    queue.close()
    result = pytester.run(
        sys.executable, "-m", "conveyor", "report", "--queue", url, "--build", "B5", timeout=120
    )
    assert result.ret == 3, result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*a result for 'test_x.py::test_c' from worker gw0 was rejected: no worker of this "
            "build collected that test.",
            "*1 test(s) have no result*",
            "*test_x.py::test_b",
            "*1 passed*",
        ]
    )
