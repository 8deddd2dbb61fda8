"""The real-suite bench's check of a difference: plain pytest, given the order the worker ran,
either fails the test too (the suite's own order dependence, with the test that causes it) or
passes it (nothing but conveyor explains the difference). Real conveyor builds on a SQLite
file and real plain pytest replays."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from helpers import run_conveyor, run_plain

from bench.realsuites_junit import Difference, read_cases
from bench.realsuites_verify import explain, junit_key, plain_replayer

LEAKY_SUITE = """
    import pytest
    from shared import leaked

    def test_independent():
        pass

    def test_leaves_state_behind():
        leaked.append(1)

    class TestReader:
        @pytest.mark.parametrize("n", [1, 2])
        def test_reads_state(self, n):
            assert not leaked, "state left by an earlier test"
"""


def _suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(shared="leaked: list[int] = []\n", test_leaky=LEAKY_SUITE)


def test_junit_key_is_the_name_pytests_junitxml_gives(pytester: pytest.Pytester) -> None:
    _suite(pytester)
    pytester.mkpydir("pkg")
    pytester.path.joinpath("pkg", "test_deep.py").write_text("def test_deep():\n    pass\n")
    run_plain(pytester, "--junitxml=plain.xml")
    nodeids = [
        "test_leaky.py::test_independent",
        "test_leaky.py::test_leaves_state_behind",
        "test_leaky.py::TestReader::test_reads_state[1]",
        "test_leaky.py::TestReader::test_reads_state[2]",
        "pkg/test_deep.py::test_deep",
    ]
    assert sorted(junit_key(nodeid) for nodeid in nodeids) == sorted(
        read_cases(pytester.path / "plain.xml")
    )


def test_a_failure_plain_pytest_repeats_in_the_workers_order_is_the_suites_own(
    pytester: pytest.Pytester,
) -> None:
    _suite(pytester)
    url = f"sqlite:///{pytester.path / 'queue.db'}"
    ran = run_conveyor(pytester, "-n", "1", "--queue", url, "--build", "b1", "-p", "no:randomly")
    assert ran.ret == 1  # the leak shows on one worker, as it does in plain pytest's order
    victim = "test_leaky.py::TestReader::test_reads_state[2]"
    found = [
        # the failure the leak caused
        Difference(junit_key(victim), "passed", "failed", "AssertionError"),
        # a test that passes in any order, claimed failed: what a wrong verdict looks like
        Difference(junit_key("test_leaky.py::test_independent"), "passed", "failed", ""),
        # not a failure of conveyor's: not checked
        Difference(junit_key("test_leaky.py::test_leaves_state_behind"), "failed", "passed", ""),
    ]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    replay = plain_replayer(Path(sys.executable), pytester.path, ["-p", "no:randomly"], env)

    verdicts = {verdict.test: verdict for verdict in explain(found, url, "b1", replay)}

    assert set(verdicts) == {junit_key(victim), junit_key("test_leaky.py::test_independent")}
    suites_own = verdicts[junit_key(victim)]
    assert suites_own.reproduced is True
    assert "after the 3 tests" in suites_own.detail
    assert "after test_leaky.py::test_leaves_state_behind alone it fails" in suites_own.detail
    ours = verdicts[junit_key("test_leaky.py::test_independent")]
    assert ours.reproduced is False
    assert "NOT reproduced by plain pytest" in ours.line()
