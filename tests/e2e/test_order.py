"""Order inside a worker's run: classes that depend on an earlier class of their module, and
failures and the short summary in collection order, whatever order the tests were served in."""

from __future__ import annotations

import json
import sys
from xml.etree import ElementTree

import pytest
from helpers import junit_outcomes

# TestLater only passes after TestEarlier switched the mode on in the same process, as in a
# plain run. Timing history makes TestLater the slowest piece of a module long enough to split.
ORDER_DEPENDENT = """
import time
import unittest

MODE = {"on": False}


class TestEarlier(unittest.TestCase):
    def test_switch_on(self):
        MODE["on"] = True


class TestMiddle(unittest.TestCase):
    def test_m0(self):
        time.sleep(0.05)

    def test_m1(self):
        time.sleep(0.05)


class TestLater(unittest.TestCase):
    def test_l0(self):
        assert MODE["on"]

    def test_l1(self):
        assert MODE["on"]

    def test_l2(self):
        assert MODE["on"]
"""


def conveyor(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.run(sys.executable, "-m", "conveyor", "run", *args, timeout=300)


def import_history(pytester: pytest.Pytester, durations: dict[str, float]) -> None:
    path = pytester.path / ".test_durations"
    path.write_text(json.dumps(durations))
    result = pytester.run(sys.executable, "-m", "conveyor", "history", "import", str(path))
    assert result.ret == 0, result.stderr.str()


def test_a_split_module_keeps_its_classes_in_collection_order(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_modes=ORDER_DEPENDENT, test_other="def test_other(): pass")
    prefix = "test_modes.py::"
    import_history(
        pytester,
        {
            f"{prefix}TestEarlier::test_switch_on": 0.1,
            f"{prefix}TestMiddle::test_m0": 2.0,
            f"{prefix}TestMiddle::test_m1": 2.0,
            f"{prefix}TestLater::test_l0": 3.0,
            f"{prefix}TestLater::test_l1": 3.0,
            f"{prefix}TestLater::test_l2": 3.0,
            "test_other.py::test_other": 0.1,
        },
    )
    # One worker runs every range, so served order alone decides whether TestLater passes.
    result = conveyor(pytester, "-n", "1", "--junitxml=out.xml", "-v")
    assert result.ret == 0, result.stdout.str()
    ran = [line.split(" ")[0] for line in result.outlines if " PASSED" in line]
    assert ran.index(f"{prefix}TestEarlier::test_switch_on") < ran.index(
        f"{prefix}TestLater::test_l0"
    )
    outcomes = junit_outcomes(pytester.path / "out.xml")
    assert set(map(tuple, outcomes.values())) == {(("passed",),)} and len(outcomes) == 7


def test_failures_are_summarised_in_collection_order_with_history(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_a="def test_a1(): assert 0\ndef test_a2(): assert 0",
        test_b="def test_b1(): assert 0",
        test_c="def test_c1(): assert 0",
    )
    # History serves test_c first and test_a last.
    import_history(
        pytester,
        {
            "test_a.py::test_a1": 0.1,
            "test_a.py::test_a2": 0.1,
            "test_b.py::test_b1": 1.0,
            "test_c.py::test_c1": 3.0,
        },
    )
    result = conveyor(pytester, "-n", "1", "-rf")
    assert result.ret == 1
    failed = [line for line in result.outlines if line.startswith("FAILED ")]
    assert [line.split(" ")[1] for line in failed] == [
        "test_a.py::test_a1",
        "test_a.py::test_a2",
        "test_b.py::test_b1",
        "test_c.py::test_c1",
    ]
    headers = [line.strip("_ ") for line in result.outlines if line.startswith("____")]
    assert headers == ["test_a1", "test_a2", "test_b1", "test_c1"]


BIG_CLASS = """
import os
import pathlib
import time
import unittest

LOG = pathlib.Path({log!r})


class TestBig(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with LOG.open("a") as handle:
            handle.write(f"setUpClass {{os.getpid()}}\\n")

{methods}

def test_after_the_class():
    pass
"""


@pytest.mark.parametrize("slow_first", [False, True], ids=["plain", "slow-first"])
def test_a_class_longer_than_a_batch_runs_whole_on_one_worker(
    pytester: pytest.Pytester, slow_first: bool
) -> None:
    """A reservation never ends inside a class, and a slow run handed back keeps the rest of
    its class: setUpClass runs once, on one worker, for all 45 tests."""
    log = pytester.path / "classes.log"
    methods = "\n".join(
        f"    def test_{i:02d}(self):\n        time.sleep({0.6 if slow_first and i == 0 else 0})"
        for i in range(45)
    )
    pytester.makepyfile(test_big=BIG_CLASS.format(log=str(log), methods=methods))
    for run in range(2):  # the first run without timing history, the second with it
        log.unlink(missing_ok=True)
        result = conveyor(pytester, "-n", "2")
        assert result.ret == 0, result.stdout.str()
        result.stdout.fnmatch_lines(["*46 passed*"])
        assert len(log.read_text().splitlines()) == 1, (run, log.read_text())


# test_z_polluter, slow, leaves a module behind that test_a_state must not see: collection
# order (plain pytest's) passes; the polluter first fails test_a_state.
POLLUTED = {
    "test_a_state": (
        "import sys\n\ndef test_uses_state():\n    assert 'polluted' not in sys.modules\n"
    ),
    "test_z_polluter": (
        "import sys, time\n\n"
        "def test_slow_polluter():\n    time.sleep(0.3)\n    sys.modules['polluted'] = sys\n"
    ),
}


def test_one_worker_alone_runs_in_collection_order_with_history(
    pytester: pytest.Pytester,
) -> None:
    """A lone worker gains nothing from slowest first: its build takes as long in any order.
    It served the slow polluter first on the second run, which failed where plain pytest
    (and the first run) passed."""
    pytester.makepyfile(**POLLUTED)
    for run in ("first", "with history"):
        result = pytester.run(sys.executable, "-m", "conveyor", "run", "-n", "1", timeout=120)
        assert result.ret == 0, (run, result.stdout.str())
        result.assert_outcomes(passed=2)


@pytest.mark.parametrize("where", ["command line", "environment"])
def test_one_worker_keeps_slowest_first_when_asked_for(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """--order slowest, set on the command line or in the environment, is served as asked
    with one worker too: with history the slow polluter runs first and its victim fails."""
    pytester.makepyfile(**POLLUTED)
    args = ["--order", "slowest"] if where == "command line" else []
    if where == "environment":
        monkeypatch.setenv("CONVEYOR_ORDER", "slowest")
    command = (sys.executable, "-m", "conveyor", "run", "-n", "1", *args)
    first = pytester.run(*command, timeout=120)
    first.assert_outcomes(passed=2)
    second = pytester.run(*command, timeout=120)
    assert second.ret == 1, second.stdout.str()
    second.assert_outcomes(passed=1, failed=1)


def test_a_failure_in_a_reordered_build_says_how_to_find_what_it_depends_on(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test that passed in an earlier build of the same code and fails in a build served
    out of collection order is named, with the bisect command for this build's queue: it
    may depend on what ran before it. With one test named, the command names it (it said
    `--failing TEST_ID`)."""
    monkeypatch.setenv("GITHUB_SHA", "0123abc")  # the code's identity, as a CI gives it
    pytester.makepyfile(**POLLUTED)
    queue = f"sqlite://{pytester.path / 'q.db'}"
    run = ("run", "-n", "1", "--order", "random", "--queue", queue)
    passing = pytester.run(sys.executable, "-m", "conveyor", *run, "--seed", "0", "--build", "O0")
    assert passing.ret == 0, passing.stdout.str()
    assert "out of collection order" not in passing.stdout.str()
    failing = pytester.run(sys.executable, "-m", "conveyor", *run, "--seed", "1", "--build", "O1")
    assert failing.ret == 1, failing.stdout.str()
    failing.stdout.fnmatch_lines(
        [
            "conveyor: 1 test(s) passed in an earlier build of this same code and failed in "
            "this one, which ran its tests out of collection order (--order random): "
            "test_a_state.py::test_uses_state. Such a test depends on what ran before it in "
            f"its worker (`conveyor bisect --queue {queue} --build O1 --failing "
            "test_a_state.py::test_uses_state` finds the test it depends on; --order "
            "collected keeps collection order), on what another worker did meanwhile (a "
            "file, port or database they share; -n 1 rules that out), or is flaky "
            "(`conveyor flaky`)."
        ]
    )
    bisect = pytester.run(
        *(sys.executable, "-m", "conveyor", "bisect", "--queue", queue, "--build", "O1"),
        *("--failing", "test_a_state.py::test_uses_state"),
        timeout=120,
    )
    bisect.stdout.fnmatch_lines(["*test_z_polluter.py::test_slow_polluter*"])


def test_a_failure_that_failed_before_too_gets_no_hint_about_order(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hint followed every red build served slowest first, real failures included: a
    test that fails in every build of the code says nothing about order."""
    monkeypatch.setenv("GITHUB_SHA", "0123abc")
    pytester.makepyfile(
        test_slow="import time\n\ndef test_slow():\n    time.sleep(0.3)\n",
        test_broken="def test_broken():\n    assert 0\n",
    )
    for build in ("first", "with history"):
        result = pytester.run(sys.executable, "-m", "conveyor", "run", "-n", "2", timeout=120)
        assert result.ret == 1, (build, result.stdout.str())
        assert "collection order" not in result.stdout.str(), (build, result.stdout.str())


@pytest.mark.parametrize("continue_on_errors", [False, True])
def test_a_collection_error_alone_gets_no_hint_about_order(
    pytester: pytest.Pytester, continue_on_errors: bool
) -> None:
    """A module that fails to import is not a test that depends on what ran before it: the
    order hint counted collection errors as failed tests."""
    pytester.makepyfile(
        test_broken="import not_a_module_anywhere\n",
        test_fine="def test_one(): pass\ndef test_two(): pass\n",
    )
    extra = ("--continue-on-collection-errors",) if continue_on_errors else ()
    result = pytester.run(
        *(sys.executable, "-m", "conveyor", "run", "-n", "2", "-p", "no:cacheprovider"),
        *("--order", "random", "--seed", "1", *extra),
        timeout=120,
    )
    assert result.ret in (1, 2), result.stdout.str()
    result.stdout.fnmatch_lines(["*ModuleNotFoundError*not_a_module_anywhere*"])
    assert "out of collection order" not in result.stdout.str()


@pytest.mark.parametrize("first", ["--ff", "--nf"])
def test_pytests_own_first_options_are_served_first(pytester: pytest.Pytester, first: str) -> None:
    """--ff (last failures first) and --nf (new tests first) reorder pytest's collection;
    slowest first from timing history served that order anyway, so `-x --ff` reached the test
    that failed last time only after every slow test."""
    pytester.makepyfile(
        test_a_slow="import time\n"
        + "".join(f"def test_slow_{i}():\n    time.sleep(0.4)\n" for i in range(6)),
    )
    run = (sys.executable, "-m", "conveyor", "run", "-n", "2", "-p", "no:randomly")
    assert pytester.run(*run, timeout=120).ret == 0  # timing history, and the known ids
    pytester.makepyfile(test_b_quick="def test_fails():\n    assert 0\n")
    if first == "--ff":
        assert pytester.run(*run, "--lf", timeout=120).ret == 1  # the failure is remembered
    result = pytester.run(*run, "-x", first, "-v", timeout=120)
    assert result.ret == 1, result.stdout.str()
    ran = [line for line in result.stdout.lines if " PASSED" in line or " FAILED" in line]
    assert ran and "test_b_quick.py::test_fails" in ran[0], result.stdout.str()


def test_junitxml_lists_testcases_in_collection_order(pytester: pytest.Pytester) -> None:
    """Plain pytest writes <testcase> elements in collection order; a build's results arrive
    in completion order, and the file listed them so: two runs' files did not compare line by
    line. Served in a shuffled order, with a --junitprefix, the file keeps collection order."""
    pytester.makepyfile(
        test_a="def test_a1(): pass\ndef test_a2(): assert 0\n",
        test_b="import pytest\n\n@pytest.mark.parametrize('n', range(6))\ndef test_b(n): pass\n",
        test_c="class TestC:\n    def test_c1(self): pass\n    def test_c2(self): pass\n",
    )
    common = ("-p", "no:randomly", "-p", "no:cacheprovider", "--junitprefix=pre")
    plain = pytester.run(sys.executable, "-m", "pytest", *common, "--junitxml=plain.xml")
    assert plain.ret == 1
    ours = pytester.run(
        *(sys.executable, "-m", "conveyor", "run", "-n", "2", *common),
        *("--order", "random", "--seed", "3", "--junitxml=ours.xml"),
        timeout=120,
    )
    assert ours.ret == 1, ours.stdout.str()

    def cases(name: str) -> list[tuple[str | None, str | None]]:
        root = ElementTree.parse(pytester.path / name)
        return [(case.get("classname"), case.get("name")) for case in root.iter("testcase")]

    assert cases("ours.xml") == cases("plain.xml")
    assert cases("plain.xml")[0] == ("pre.test_a", "test_a1")
