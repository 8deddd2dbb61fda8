"""In a large build the controller keeps stubs, not whole reports, of passed tests (its memory
grows with the failures, not with the build), and nothing the summary or a plugin reads of
them changes. Small builds keep pytest's own objects."""

from __future__ import annotations

import re

import pytest
from helpers import assert_same_verdict, run_conveyor

from conveyor.compat import SLIM_FROM_TESTS

SUITE = f"""
import time
import pytest

@pytest.mark.parametrize("i", range({SLIM_FROM_TESTS}))
def test_many(i):
    pass

def test_quick():
    print("said by a passing test")

def test_slow():
    time.sleep(0.3)

def test_fails():
    assert False
"""

# What the controller's terminal holds for passed tests, and what a plugin attached to their
# reports in the workers (as hypothesis does with its statistics), read as hypothesis reads it.
CONFTEST = """
import gc
import pytest

@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if not item.name.startswith("test_many"):  # most reports have nothing attached
        report.__dict__["plugin_note"] = "noted " + item.name
    return report

def pytest_terminal_summary(terminalreporter):
    passed = terminalreporter.stats.get("passed", [])
    kinds = sorted({type(r).__name__ for r in passed})
    # As hypothesis reads its statistics: every report's __dict__, no questions asked.
    notes = {r.__dict__.get("plugin_note") for reports in terminalreporter.stats.values()
             for r in reports}
    terminalreporter.write_line("passed held as: " + ",".join(kinds))
    terminalreporter.write_line(f"notes kept: {'noted test_quick' in notes}")
    # pytest 9 parses each report's id into a NodeId, and keeps some for the session.
    node_ids = sum(type(o).__name__ == "NodeId" for o in gc.get_objects())
    terminalreporter.write_line(f"node ids held: {node_ids} for {len(passed)} passed")
    records = sum(type(o).__name__ == "_Seen" for o in gc.get_objects())
    terminalreporter.write_line(f"build memory records: {records}")
    try:
        from _pytest.subtests import failed_subtests_key
    except ImportError:
        return
    ledger = terminalreporter.config.stash[failed_subtests_key]
    terminalreporter.write_line(f"subtest ledger entries: {len(ledger)}")
"""


def held_as(output: str) -> str:
    found = re.search(r"passed held as: (\S*)", output)
    assert found, output
    return found.group(1)


def test_passed_reports_become_stubs_with_the_same_summary(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_mem=SUITE)
    pytester.makeconftest(CONFTEST)
    plain, ours = assert_same_verdict(pytester, "--durations=2", workers=2)
    assert held_as(plain.stdout.str()) == "TestReport"
    # The conftest attaches a note to some reports: their stubs keep it in a __dict__.
    assert held_as(ours.stdout.str()) == "PassedStub,PassedStubWithExtras"
    ours.stdout.fnmatch_lines(["notes kept: True"])  # a plugin's data on the report stays
    # --durations reads duration, phase and id of what the terminal kept.
    ours.stdout.re_match_lines([r"0\.\d\ds call\s+test_mem.py::test_slow"])


@pytest.mark.skipif(
    not hasattr(pytest.TestReport, "id"), reason="pytest < 9 has no structured node ids"
)
def test_the_phases_of_a_test_share_one_parsed_id(pytester: pytest.Pytester) -> None:
    """Each report rebuilt from JSON parsed its own id, and pytest keeps the setup's (its
    progress set) and the call's (its subtests ledger) for the session: two a test, about a
    quarter of a kilobyte each, where one does."""
    pytester.makepyfile(test_mem=SUITE)
    pytester.makeconftest(CONFTEST)
    ours = run_conveyor(pytester, "-n", "2")
    found = re.search(r"node ids held: (\d+) for (\d+) passed", ours.stdout.str())
    assert found, ours.stdout.str()
    held, passed = int(found.group(1)), int(found.group(2))
    assert passed > SLIM_FROM_TESTS
    assert held < passed * 1.1, f"{held} node ids for {passed} tests"


@pytest.mark.skipif(
    not hasattr(pytest.TestReport, "id"), reason="pytest < 9 has no subtests of its own"
)
def test_the_subtests_ledger_does_not_grow_with_the_build(pytester: pytest.Pytester) -> None:
    """pytest 9 adds every test whose call report's status it looks up to a count of failed
    subtests, a zero in the controller that lasts the session."""
    pytester.makepyfile(test_mem=SUITE)
    pytester.makeconftest(CONFTEST)
    ours = run_conveyor(pytester, "-n", "2")
    ours.stdout.fnmatch_lines(["subtest ledger entries: 0"])


def test_the_build_memory_keeps_a_record_only_of_tests_that_did_not_pass_cleanly(
    pytester: pytest.Pytester,
) -> None:
    """The build memory (flaky tests, quarantine, setup times, the build's cost) kept a
    record of ten fields for every test: at a million tests, over 150 MB. A test that passed
    at once is now its setup time in a dict; the cost is summed per worker as results come."""
    pytester.makepyfile(test_mem=SUITE)
    pytester.makeconftest(CONFTEST)
    ours = run_conveyor(pytester, "-n", "2")
    found = re.search(r"build memory records: (\d+)", ours.stdout.str())
    assert found, ours.stdout.str()
    assert int(found.group(1)) == 1  # test_fails


@pytest.mark.parametrize("chars", ["-rA", "-rP"])
def test_the_output_of_passed_tests_is_kept_when_asked_for(
    pytester: pytest.Pytester, chars: str
) -> None:
    pytester.makepyfile(test_mem=SUITE)
    pytester.makeconftest(CONFTEST)
    ours = run_conveyor(pytester, "-n", "2", chars)
    assert held_as(ours.stdout.str()) == "TestReport"
    ours.stdout.fnmatch_lines(["*PASSES*", "*said by a passing test*"])


def test_a_small_build_keeps_pytests_own_reports(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_small="def test_a():\n    pass\n")
    pytester.makeconftest(CONFTEST)
    ours = run_conveyor(pytester, "-n", "2")
    assert held_as(ours.stdout.str()) == "TestReport"
