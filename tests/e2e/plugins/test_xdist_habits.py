"""pytest-xdist habits: -n/--dist in addopts, `pytest -n` without xdist, worker_id."""

from __future__ import annotations

import sys

import pytest
from helpers import junit_outcomes, run_conveyor, run_plain


def test_xdist_options_in_addopts_are_conveyors(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\naddopts = -n auto --dist loadfile\n")
    pytester.makepyfile(
        test_w="""
        def test_worker(worker_id):
            assert worker_id.startswith("gw")

        def test_other():
            pass
        """
    )
    ours = run_conveyor(pytester, "-n", "2")
    assert ours.ret == 0, ours.stdout.str() + ours.stderr.str()
    assert "bringing up nodes" not in ours.stdout.str()  # xdist started no session
    ours.stdout.fnmatch_lines(["*2 passed*"])


def test_worker_id_fixtures_raise_no_deprecation_warning(pytester: pytest.Pytester) -> None:
    """conveyor's own `worker_id`/`testrun_uid` (used when xdist is absent) in plain runs and
    under conveyor, with warnings as errors."""
    pytester.makepyfile(
        test_ids="""
        def test_ids(worker_id, testrun_uid):
            assert worker_id
        """
    )
    plain = run_plain(pytester, "-W", "error", "-p", "no:xdist")
    assert plain.ret == 0, plain.stdout.str()
    ours = run_conveyor(pytester, "-n", "2", "-W", "error", "-p", "no:xdist")
    assert ours.ret == 0, ours.stdout.str() + ours.stderr.str()


def test_pytest_n_without_xdist_runs_on_conveyor(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As without pytest-xdist installed (the suite's environment has it).
    monkeypatch.setenv(
        "PYTEST_ADDOPTS", "-p no:xdist -p no:xdist.looponfail -p no:randomly -p no:benchmark"
    )
    pytester.makepyfile(
        test_n="""
        import os

        def test_in_a_worker(worker_id):
            assert os.environ["CONVEYOR_WORKER"].startswith("gw")
            assert worker_id.startswith("gw")

        def test_fails():
            assert 0
        """
    )
    result = run_plain(pytester, "-n", "2", "--dist", "loadfile", "--junitxml=out.xml")
    assert result.ret == 1, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["conveyor: 2 workers*", "*1 failed, 1 passed*"])
    assert junit_outcomes(pytester.path / "out.xml") == {
        ("test_n", "test_in_a_worker"): [("passed",)],
        ("test_n", "test_fails"): [("failure",)],
    }
    in_process = run_plain(pytester, "-n", "0")
    assert in_process.ret == 1 and "conveyor:" not in in_process.stdout.str()


def test_a_report_of_a_finished_build_with_xdist_turned_off(pytester: pytest.Pytester) -> None:
    """The controller calls xdist's hooks (a worker joined, a worker is down) whether or not
    it published input for the workers: the specifications are there in every controller."""
    pytester.makepyfile(test_one="def test_one(): pass")
    queue = ["--queue", f"sqlite://{pytester.path / 'q.db'}", "--build", "R1", "-p", "no:xdist"]
    assert run_conveyor(pytester, "-n", "1", *queue).ret == 0
    report = pytester.run(
        sys.executable, "-m", "conveyor", "report", *queue, "-p", "no:cacheprovider", timeout=120
    )
    assert report.ret == 0, report.stdout.str() + report.stderr.str()
    assert "INTERNALERROR" not in report.stdout.str()
    report.stdout.fnmatch_lines(["*1 passed*"])


NODE_COLLECTION_CONFTEST = """
import pytest

seen = {}

@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    seen[node.gateway.id] = list(ids)
    ids.reverse()  # a list of this node's own: another node's must not change

def pytest_terminal_summary(terminalreporter):
    for worker in sorted(seen):
        terminalreporter.write_line(f"NODE {worker} collected " + " ".join(seen[worker]))
"""


@pytest.mark.parametrize("runner", ["xdist", "conveyor"])
def test_plugins_hear_what_each_worker_collected(pytester: pytest.Pytester, runner: str) -> None:
    """pytest-xdist tells the controller's plugins, for each worker, which tests it collected
    (pytest-sugar's progress counts them; conftests compare them with what ran); the
    controller, which collects nothing itself, told them nothing."""
    pytester.makeconftest(NODE_COLLECTION_CONFTEST)
    pytester.makepyfile(
        test_b="def test_b1(): pass\ndef test_b2(): pass\ndef test_skip_me(): pass\n",
        test_a="def test_a1(): pass\n",
    )
    args = ("-n", "2", "-k", "not skip_me")
    run = run_plain if runner == "xdist" else run_conveyor
    result = run(pytester, *args)
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    ids = "test_a.py::test_a1 test_b.py::test_b1 test_b.py::test_b2"
    result.stdout.fnmatch_lines([f"NODE gw0 collected {ids}", f"NODE gw1 collected {ids}"])


def test_xdist_markers_are_declared_in_workers(pytester: pytest.Pytester) -> None:
    """Workers run with pytest-xdist turned off, which left its `xdist_group` marker
    undeclared: under --strict-markers every module using it failed to collect, where plain
    pytest (xdist installed) passes."""
    pytester.makepyfile(
        test_grouped="""
        import pytest

        @pytest.mark.xdist_group(name="db")
        def test_in_a_group():
            pass
        """
    )
    args = ("--strict-markers", "-W", "error::pytest.PytestUnknownMarkWarning")
    plain = run_plain(pytester, *args)
    assert plain.ret == 0, plain.stdout.str()
    ours = run_conveyor(pytester, "-n", "2", *args)
    assert ours.ret == 0, ours.stdout.str() + ours.stderr.str()
    ours.assert_outcomes(passed=1)
