"""--dist file, scope and group (pytest-xdist's loadfile, loadscope and loadgroup): a file, a
scope or an xdist_group runs whole on one worker in collection order, on a first run without
history and after one with it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import assert_same_verdict, communicate_or_dump_stacks, wait_until

# Each test writes down the worker that ran it. The first test of each file is slow enough that,
# under the default grouping, its worker hands the rest of its run back; the last one passes
# only when every earlier test of its file ran before it in the same process, as in a plain run.
ORDER_DEPENDENT_FILE = """
import json
import os
import time

SEEN = []


def record(name, worker_id):
    with open(os.path.join(os.environ["RAN_DIR"], name), "w") as out:
        json.dump(worker_id, out)
    SEEN.append(name)


def test_00_slow(worker_id):
    record("{module}::test_00_slow", worker_id)
    time.sleep(0.7)


{middle}


def test_99_saw_every_earlier_test(worker_id):
    record("{module}::test_99", worker_id)
    assert len(SEEN) == {count}, SEEN
"""

MIDDLE_TEST = """
def test_{index:02d}(worker_id):
    record("{module}::test_{index:02d}", worker_id)
"""


def order_dependent_suite(pytester: pytest.Pytester, files: int = 3, middle: int = 10) -> None:
    for number in range(files):
        module = f"test_file{number}"
        tests = "".join(MIDDLE_TEST.format(index=i, module=module) for i in range(1, middle + 1))
        source = ORDER_DEPENDENT_FILE.format(module=module, middle=tests, count=middle + 2)
        pytester.makepyfile(**{module: source})


@pytest.fixture
def ran(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folder each test writes the worker that ran it into (RAN_DIR)."""
    folder = pytester.mkdir("ran")
    monkeypatch.setenv("RAN_DIR", str(folder))
    return folder


def conveyor_run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """`conveyor run -n 3 -p no:randomly ARGS`, pytest's cache (timing history) left on."""
    return pytester.run(
        sys.executable, "-m", "conveyor", "run", "-n", "3", "-p", "no:randomly", *args, timeout=300
    )


def workers_by_file(ran: Path) -> dict[str, set[str]]:
    by_file: dict[str, set[str]] = {}
    for record in ran.iterdir():
        by_file.setdefault(record.name.split("::")[0], set()).add(json.loads(record.read_text()))
    return by_file


@pytest.mark.parametrize("dist", ["loadfile", "file"])
def test_a_file_runs_whole_on_one_worker(pytester: pytest.Pytester, ran: Path, dist: str) -> None:
    order_dependent_suite(pytester)
    plain = pytester.run(sys.executable, "-m", "pytest", "-p", "no:randomly", timeout=300)
    plain.assert_outcomes(passed=36)
    for record in ran.iterdir():
        record.unlink()
    for first in (True, False):  # a first run, then one planned from its timing history
        ours = conveyor_run(pytester, "--dist", dist)
        assert ours.ret == 0, ours.stdout.str() + ours.stderr.str()
        ours.assert_outcomes(passed=36)
        planned = "timing history knows 36 of 36" in ours.stdout.str()
        assert planned is not first, ours.stdout.str()
        by_file = workers_by_file(ran)
        assert len(by_file) == 3 and all(len(workers) == 1 for workers in by_file.values())
        for record in ran.iterdir():
            record.unlink()


def test_the_default_grouping_spreads_a_slow_file_over_the_workers(
    pytester: pytest.Pytester, ran: Path
) -> None:
    """What --dist file is for: without history the default grouping hands the rest of a file
    back once its first test turns out slow, and the file's last test sees it."""
    order_dependent_suite(pytester)
    result = conveyor_run(pytester, "-p", "no:cacheprovider")
    assert result.ret == 1, result.stdout.str()
    assert any(len(workers) > 1 for workers in workers_by_file(ran).values())


@pytest.mark.parametrize("where", ["addopts", "PYTEST_ADDOPTS"])
def test_a_dist_mode_in_pytests_own_options_is_honoured(
    pytester: pytest.Pytester, ran: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A project that runs pytest-xdist with `--dist loadfile` in its addopts needs its files
    whole: conveyor ignored that --dist and shared a slow file's tests, and its last test
    failed where plain pytest and xdist pass."""
    order_dependent_suite(pytester)
    if where == "addopts":
        pytester.makeini("[pytest]\naddopts = --dist loadfile\n")
    else:
        monkeypatch.setenv("PYTEST_ADDOPTS", "--dist=loadfile")
    result = conveyor_run(pytester, "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=36)
    assert all(len(workers) == 1 for workers in workers_by_file(ran).values())


def test_conveyors_own_dist_wins_over_pytests(pytester: pytest.Pytester, ran: Path) -> None:
    pytester.makeini("[pytest]\naddopts = --dist loadfile\n")
    order_dependent_suite(pytester)
    result = conveyor_run(pytester, "-p", "no:cacheprovider", "--dist", "module")
    assert result.ret == 1, result.stdout.str()
    assert any(len(workers) > 1 for workers in workers_by_file(ran).values())


GROUPED_FILE = """
import json
import os
import time

import pytest


def record(name, worker_id):
    # The process: two machines' workers may both be gw0.
    with open(os.path.join(os.environ["RAN_DIR"], name), "w") as out:
        json.dump(os.getpid(), out)


@pytest.mark.xdist_group("db")
def test_db_slow(worker_id):
    record("db::{module}::slow", worker_id)
    time.sleep(0.4)


@pytest.mark.xdist_group(name="web")
class TestWeb:
    @pytest.mark.parametrize("n", range(3))
    def test_page(self, worker_id, n):
        record(f"web::{module}::page{{n}}", worker_id)


@pytest.mark.parametrize("n", range(4))
def test_free(worker_id, n):
    record(f"free::{module}::{{n}}", worker_id)


@pytest.mark.xdist_group("db")
def test_db_quick(worker_id):
    record("db::{module}::quick", worker_id)
"""


def grouped_suite(pytester: pytest.Pytester) -> None:
    for number in range(3):
        pytester.makepyfile(**{f"test_g{number}": GROUPED_FILE.format(module=number)})


def processes_by_group(ran: Path) -> dict[str, set[int]]:
    """The worker processes that ran each group's tests ("free": those outside groups); the
    records are removed."""
    by_group: dict[str, set[int]] = {}
    for record in ran.iterdir():
        by_group.setdefault(record.name.split("::")[0], set()).add(json.loads(record.read_text()))
        record.unlink()
    return by_group


@pytest.mark.parametrize(
    ("how", "fork"),
    [("--dist loadgroup", False), ("--dist group", True), ("addopts", False)],
)
def test_an_xdist_group_runs_whole_on_one_worker(
    pytester: pytest.Pytester, ran: Path, how: str, fork: bool
) -> None:
    """pytest-xdist's --dist loadgroup: the tests of one xdist_group mark, from any file, run
    on one worker; the others are shared out one by one. It was refused."""
    grouped_suite(pytester)
    args = ["--fork-workers"] if fork else []
    if how == "addopts":
        pytester.makeini("[pytest]\naddopts = -n 2 --dist loadgroup\n")
    else:
        args += how.split()
    for first in (True, False):  # a first run, then one planned from its timing history
        ours = conveyor_run(pytester, *args)
        assert ours.ret == 0, ours.stdout.str() + ours.stderr.str()
        ours.assert_outcomes(passed=3 * 9)
        assert ("timing history knows 27 of 27" in ours.stdout.str()) is not first
        by_group = processes_by_group(ran)
        assert len(by_group["db"]) == 1 and len(by_group["web"]) == 1, by_group
    plain = pytester.run(sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:xdist")
    plain.assert_outcomes(passed=3 * 9)


def test_a_machine_joining_a_loadgroup_build_keeps_its_groups(
    pytester: pytest.Pytester, ran: Path
) -> None:
    """Another machine's `conveyor worker` given no --dist follows the build's leader: its
    units are named by their groups as the leader's are, so it joins instead of being refused
    for a different collection, and no group is cut."""
    grouped_suite(pytester)
    queue = ("--queue", f"sqlite://{pytester.path / 'q.db'}", "--build", "G1")

    def start(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "conveyor", *args, "-p", "no:randomly", *queue],
            cwd=pytester.path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    leader = start("run", "-n", "1", "--dist", "loadgroup", "-p", "no:cacheprovider")
    wait_until(lambda: any(ran.iterdir()), "the leader ran no test")
    joiner = start("worker", "-n", "2")
    joined_output = communicate_or_dump_stacks(joiner, 180)
    output = communicate_or_dump_stacks(leader, 180)
    assert leader.returncode == 0, output
    assert joiner.returncode == 0, joined_output
    assert "refused" not in joined_output, joined_output
    assert "27 passed" in output.splitlines()[-1], output
    by_group = processes_by_group(ran)
    assert len(by_group["db"]) == 1 and len(by_group["web"]) == 1, by_group


LOADSCOPE_SUITE = """
import json
import os


def record(name, worker_id):
    with open(os.path.join(os.environ["RAN_DIR"], name), "w") as out:
        json.dump(worker_id, out)


def test_before(worker_id):
    record("test_scope::functions::before", worker_id)


class TestOne:
    {class_tests}


def test_after(worker_id):
    record("test_scope::functions::after", worker_id)
"""


def test_loadscope_keeps_a_class_and_a_modules_functions_each_on_one_worker(
    pytester: pytest.Pytester, ran: Path
) -> None:
    class_tests = "\n    ".join(
        f"def test_{i}(self, worker_id):\n        record('test_scope::TestOne::{i}', worker_id)\n"
        for i in range(8)
    )
    pytester.makepyfile(test_scope=LOADSCOPE_SUITE.format(class_tests=class_tests))
    plain, _ = assert_same_verdict(pytester, "-p", "no:randomly", "--dist", "loadscope")
    assert plain.ret == 0
    scopes: dict[str, set[str]] = {}
    for record in ran.iterdir():
        scope = record.name.rsplit("::", 1)[0]
        scopes.setdefault(scope, set()).add(json.loads(record.read_text()))
    assert sorted(scopes) == ["test_scope::TestOne", "test_scope::functions"]
    assert all(len(workers) == 1 for workers in scopes.values()), scopes
