"""The controller keeps stubs, not whole reports, of passed tests (its memory grows with the
failures, not with the build), and nothing the summary reads of them changes."""

from __future__ import annotations

import re

import pytest
from helpers import assert_same_verdict, run_conveyor

SUITE = """
import time

def test_quick():
    print("said by a passing test")

def test_slow():
    time.sleep(0.3)

def test_fails():
    assert False

class TestKept:
    def test_a(self):
        pass
"""

# What the controller's terminal holds for passed tests, as a plugin would see it.
CONFTEST = """
def pytest_terminal_summary(terminalreporter):
    kinds = sorted({type(r).__name__ for r in terminalreporter.stats.get("passed", [])})
    terminalreporter.write_line("passed held as: " + ",".join(kinds))
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
    assert held_as(ours.stdout.str()) == "PassedStub"
    # --durations reads duration, phase and id of what the terminal kept.
    ours.stdout.re_match_lines([r"0\.\d\ds call\s+test_mem.py::test_slow"])


@pytest.mark.parametrize("chars", ["-rA", "-rP"])
def test_the_output_of_passed_tests_is_kept_when_asked_for(
    pytester: pytest.Pytester, chars: str
) -> None:
    pytester.makepyfile(test_mem=SUITE)
    pytester.makeconftest(CONFTEST)
    ours = run_conveyor(pytester, "-n", "2", chars)
    assert held_as(ours.stdout.str()) == "TestReport"
    ours.stdout.fnmatch_lines(["*PASSES*", "*said by a passing test*"])
