"""Accounting is by set: every collected test has exactly one final result, and a result for a
test nobody collected is rejected, so it can never stand in for a missing one."""

from __future__ import annotations

import sys
import uuid
from typing import Any

import pytest
import redis

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


def test_a_test_id_written_into_the_queue_is_not_run(
    pytester: pytest.Pytester, redis_server: Any
) -> None:
    """Whoever can write to Redis can add an id to a build's pending set: a pytest worker runs
    only tests it collected itself, and the build cannot pass with the stranger in it."""
    pytester.makepyfile(test_x="def test_a(): pass\ndef test_b(): pass")
    build = f"inject-{uuid.uuid4().hex[:8]}"
    queue = open_queue(str(redis_server.url), build)
    queue.populate("elsewhere", UNITS, {"collected": 2, "selected": 2})
    queue.close()
    client = redis.Redis.from_url(str(redis_server.url))
    client.zadd(f"conveyor:{{{build}}}:pending", {"test_x.py::test_injected": -5})
    client.close()
    result = pytester.run(
        sys.executable, "-m", "conveyor", "run", "-n", "1", "-p", "no:cacheprovider",
        "--queue", str(redis_server.url), "--build", build, timeout=120,
    )  # fmt: skip
    assert result.ret == 3, result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*was handed 'test_x.py::test_injected', which it did not collect; it was not run*",
            "*a result for 'test_x.py::test_injected' * was rejected*",
            "*2 passed*",
        ]
    )


@pytest.mark.parametrize("verbosity", ["default", "-v"])
def test_the_tests_without_a_result_are_all_listed_under_v(
    pytester: pytest.Pytester, verbosity: str
) -> None:
    """A stopped build lists the tests it left without a result: the first 20, and under -v
    every one (a first user could not read the rest even under -vv)."""
    pytester.makepyfile(
        test_a_first="def test_fails():\n    assert False\n",
        test_b_rest="\n".join(f"def test_{i:02d}():\n    pass\n" for i in range(25)),
    )
    args = ["-v"] if verbosity == "-v" else []
    result = pytester.run(
        sys.executable, "-m", "conveyor", "run", "-n", "1", "-x", "-p", "no:cacheprovider",
        "-p", "no:randomly", *args, timeout=120,
    )  # fmt: skip
    output = result.stdout.str()
    assert result.ret == 1, output
    listed = [line for line in result.stdout.lines if line.startswith("  test_b_rest.py::")]
    if verbosity == "-v":
        assert len(listed) == 25, output
        assert "-v lists them all" not in output
    else:
        assert len(listed) == 20, output
        result.stdout.fnmatch_lines(["  ... and 5 more (-v lists them all)"])
