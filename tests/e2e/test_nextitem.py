"""The `nextitem` promise: the test pytest is told comes next is the test the worker runs next,
on every path that changes a worker's plan, so pytest never finds a collector of another test
still set up ("previous item was not torn down properly") and no class or module fixture stays
alive for a test that will not come."""

from __future__ import annotations

import pytest
from helpers import junit_outcomes, run_conveyor

# Class fixtures, a module fixture and a unittest class with setUpClass, each test checking
# that no other class's resources are alive while it runs.
SUITE = """
import os
import time
import unittest

import pytest

ALIVE = set()


def _check(owner):
    others = ALIVE - {owner, "module"}
    assert not others, f"{owner} runs while {sorted(others)} are still set up"


@pytest.fixture(scope="module", autouse=True)
def module_resource():
    ALIVE.add("module")
    yield
    ALIVE.discard("module")


@pytest.fixture(scope="class")
def resource(request):
    name = request.cls.__name__
    ALIVE.add(name)
    yield
    ALIVE.discard(name)


def _behave(name):
    if os.environ.get("SLOW_TEST") == name:
        time.sleep(float(os.environ.get("SLOW_S", "0.7")))
    if os.environ.get("HANG_TEST") == name:
        time.sleep(3600)
    flaky = os.environ.get("FLAKY_TEST")
    if flaky == name:
        marker = os.path.join(os.environ["MARKER_DIR"], name)
        if not os.path.exists(marker):
            open(marker, "w").close()
            raise AssertionError("fails on its first attempt")
    if os.environ.get("FAILING_TEST") == name:
        raise AssertionError("fails every time")


class TestAlpha:
    @pytest.mark.parametrize("n", range(4))
    def test_a(self, resource, n):
        _check("TestAlpha")
        _behave(f"a{n}")


class TestBeta:
    @pytest.mark.parametrize("n", range(4))
    def test_b(self, resource, n):
        _check("TestBeta")
        _behave(f"b{n}")


class TestGamma(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        ALIVE.add("TestGamma")

    @classmethod
    def tearDownClass(cls):
        ALIVE.discard("TestGamma")

    def test_c0(self):
        _check("TestGamma")
        _behave("c0")

    def test_c1(self):
        _check("TestGamma")
        _behave("c1")

    def test_c2(self):
        _check("TestGamma")
        _behave("c2")


class TestDelta:
    @pytest.mark.parametrize("n", range(3))
    def test_d(self, resource, n):
        _check("TestDelta")
        _behave(f"d{n}")
"""
TOTAL = 14
SETUP_STATE_ERROR = "*previous item was not torn down properly*"


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makepyfile(test_scopes=SUITE)
    monkeypatch.setenv("MARKER_DIR", str(pytester.path))
    for name in ("SLOW_TEST", "HANG_TEST", "FLAKY_TEST", "FAILING_TEST"):
        monkeypatch.delenv(name, raising=False)
    return pytester


def outcomes(pytester: pytest.Pytester) -> dict[str, list[tuple[str, ...]]]:
    return {name: value for (_, name), value in junit_outcomes(pytester.path / "out.xml").items()}


def assert_no_setup_state_error(result: pytest.RunResult) -> None:
    text = result.stdout.str() + result.stderr.str()
    assert "previous item was not torn down properly" not in text, text
    assert "are still set up" not in text, text


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_slow_run_handed_back_keeps_the_promised_test(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    """Without history a test slower than the hand-back threshold returns the rest of its run;
    the test already named as next stays with the worker, the others keep their order."""
    monkeypatch.setenv("SLOW_TEST", "a1")
    result = run_conveyor(suite, "-n", workers, "--junitxml=out.xml")
    assert_no_setup_state_error(result)
    assert result.ret == 0, result.stdout.str()
    assert set(map(tuple, outcomes(suite).values())) == {(("passed",),)}
    assert len(outcomes(suite)) == TOTAL


def test_slow_tests_in_every_class_hand_back_repeatedly(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLOW_TEST", "b0")
    monkeypatch.setenv("SLOW_S", "0.6")
    first = run_conveyor(suite, "-n", "2", "--junitxml=out.xml")
    assert_no_setup_state_error(first)
    monkeypatch.setenv("SLOW_TEST", "c1")
    second = run_conveyor(suite, "-n", "3", "--junitxml=out.xml")
    assert_no_setup_state_error(second)
    assert first.ret == second.ret == 0


def test_a_retried_test_does_not_break_the_run_it_belonged_to(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLAKY_TEST", "a2")
    result = run_conveyor(suite, "-n", "1", "--max-requeues", "1", "--junitxml=out.xml")
    assert_no_setup_state_error(result)
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*14 passed*1 rerun*"])


@pytest.mark.parametrize("stop", ["-x", "--maxfail=1"])
def test_a_stopped_build_tears_down_without_running_the_promised_test(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, stop: str
) -> None:
    monkeypatch.setenv("FAILING_TEST", "b1")
    result = run_conveyor(suite, "-n", "1", stop, "--junitxml=out.xml")
    assert_no_setup_state_error(result)
    assert result.ret == 1
    found = outcomes(suite)
    assert found["test_b[1]"] == [("failure",)]
    # Collection order on one worker: nothing after the failure ran.
    assert "test_b[2]" not in found and "test_c0" not in found


def test_a_hard_timeout_replaces_the_worker_and_the_rest_still_runs(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HANG_TEST", "b2")
    result = run_conveyor(suite, "-n", "1", "--test-timeout", "2", "--junitxml=out.xml")
    assert_no_setup_state_error(result)
    assert result.ret == 1
    found = outcomes(suite)
    assert found.pop("test_b[2]") == [("failure",)]
    assert set(map(tuple, found.values())) == {(("passed",),)} and len(found) == TOTAL - 1
