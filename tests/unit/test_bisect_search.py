"""The search of `conveyor bisect`, over a runner that decides from the tests it is given
which earlier tests make the victim fail (the end-to-end tests run real replays)."""

from __future__ import annotations

import pytest

from conveyor.bisect import FAILS_ALONE, FOUND, FOUND_SEVERAL, INCONCLUSIVE, Runner, bisect

BEFORE = [f"t{i:03d}" for i in range(100)]


def failing_when(*needed: str, flaky: bool = False) -> tuple[list[list[str]], Runner]:
    """A runner under which the victim fails when every `needed` test ran before it, in
    that order (never, if `flaky`); and the list of what it was asked to run."""
    asked: list[list[str]] = []

    def run(tests: list[str]) -> bool | None:
        asked.append(tests)
        earlier = tests[:-1]
        positions = [earlier.index(test) for test in needed if test in earlier]
        return len(positions) == len(needed) and positions == sorted(positions) and not flaky

    return asked, run


@pytest.mark.parametrize("culprit", ["t000", "t042", "t099"])
def test_one_polluting_test_is_found_in_a_binary_search(culprit: str) -> None:
    _, run = failing_when(culprit)
    result = bisect(BEFORE, "victim", run)
    assert (result.verdict, result.culprit) == (FOUND, culprit)
    assert result.runs <= 10  # alone, 7 halvings, the confirmation (+1 for the last test)


def test_two_tests_needed_together_are_both_found_in_their_order() -> None:
    asked, run = failing_when("t013", "t071")
    result = bisect(BEFORE, "victim", run)
    assert (result.verdict, result.culprits) == (FOUND_SEVERAL, ["t013", "t071"])
    assert result.runs <= 18
    assert all(tests[-1] == "victim" for tests in asked)
    assert all(tests[:-1] == sorted(tests[:-1]) for tests in asked)  # the recorded order


def test_three_tests_needed_together_are_all_found() -> None:
    _, run = failing_when("t002", "t050", "t098")
    result = bisect(BEFORE, "victim", run)
    assert (result.verdict, result.culprits) == (FOUND_SEVERAL, ["t002", "t050", "t098"])


def test_the_search_stops_at_its_run_limit_with_tests_that_still_make_it_fail() -> None:
    _, run = failing_when("t013", "t071")
    result = bisect(BEFORE, "victim", run, max_runs=10)
    assert result.verdict == FOUND_SEVERAL
    assert {"t013", "t071"} <= set(result.culprits) and len(result.culprits) > 2
    assert "stopped after 10 runs" in " ".join(result.log)


def test_a_failure_the_earlier_tests_do_not_reproduce_is_inconclusive() -> None:
    _, run = failing_when("t013", flaky=True)
    result = bisect(BEFORE, "victim", run)
    assert result.verdict == INCONCLUSIVE
    assert "the earlier tests do not make it fail in this order" in " ".join(result.log)


def test_a_test_that_fails_alone_needs_no_search() -> None:
    result = bisect(BEFORE, "victim", lambda tests: True)
    assert (result.verdict, result.runs) == (FAILS_ALONE, 1)
