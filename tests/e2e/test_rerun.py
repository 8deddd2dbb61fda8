"""Running a build id again: a stopped build is resumed, never replayed as green; a finished
build is replayed only for the same collection from the same code; workers of other code are
refused."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree

import pytest
from helpers import communicate_or_dump_stacks, junit_outcomes

from conveyor.queue import open_queue

SLOW_SUITE = """
import pathlib, time

def test_first():
    pathlib.Path({started!r}).write_text("yes")

""" + "".join(f"def test_{i}():\n    time.sleep({{sleep}})\n\n" for i in range(30))


def conveyor(cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "conveyor", *args, "-p", "no:cacheprovider"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    output = communicate_or_dump_stacks(process, 300)
    return process.returncode, output


def wait_for(path: Path) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.fixture
def slow_suite(pytester: pytest.Pytester) -> Path:
    started = pytester.path / "started"
    pytester.makepyfile(test_slow=SLOW_SUITE.format(started=str(started), sleep=0.1))
    return started


@pytest.fixture
def slower_suite(pytester: pytest.Pytester) -> Path:
    """The same 31 tests, long enough (6 s on one of two machines) that a machine cancelled
    0.5 s after the first test started is cancelled before the other has finished the build,
    however loaded the computer."""
    started = pytester.path / "started"
    pytester.makepyfile(test_slow=SLOW_SUITE.format(started=str(started), sleep=0.4))
    return started


def test_a_stopped_build_is_never_green_and_running_it_again_resumes_it(
    pytester: pytest.Pytester, slow_suite: Path
) -> None:
    queue = f"sqlite://{pytester.path / 'q.db'}"
    run = ("run", "-n", "1", "--queue", queue, "--build", "B1")
    first = conveyor(pytester.path, *run, "--junitxml=first.xml")
    wait_for(slow_suite)
    time.sleep(0.5)
    first.send_signal(signal.SIGTERM)
    code, output = finish(first)
    assert code == 2, output
    assert "have no result because the build was stopped" in output
    assert "stopping the build (SIGTERM): this machine's workers stopped, running tests" in output

    code, output = finish(conveyor(pytester.path, "report", "--queue", queue, "--build", "B1"))
    assert code == 2, output  # tests never ran: not green, whoever reports
    assert re.search(r"passed, \d+ not run in ", output.splitlines()[-1]), output

    code, output = finish(conveyor(pytester.path, *run, "--junitxml=again.xml"))
    assert code == 0, output
    assert "resuming it" in output
    assert "31 passed" in output.splitlines()[-1]
    # The stopped run was this machine's, not another machine's: this process ran part.
    assert re.search(
        r"this process \([^)]*\) ran \d+ of the 31 test\(s\) with a result \(1 other process "
        r"on this machine ran",
        output,
    ), output
    outcomes = junit_outcomes(pytester.path / "again.xml")
    assert len(outcomes) == 31 and set(map(tuple, outcomes.values())) == {(("passed",),)}


def test_a_machine_cancelled_in_a_shared_build_leaves_it_to_the_others(
    pytester: pytest.Pytester, slower_suite: Path
) -> None:
    queue = f"sqlite://{pytester.path / 'q.db'}"
    run = ("run", "-n", "1", "--queue", queue, "--build", "B3")
    cancelled = conveyor(pytester.path, *run, "--node-id", "a")
    other = conveyor(pytester.path, *run, "--node-id", "b", "--junitxml=other.xml")
    wait_for(slower_suite)
    time.sleep(0.5)
    cancelled.send_signal(signal.SIGTERM)
    code, output = finish(cancelled)
    assert code == 2, output
    assert "the build goes on on the other machines" in output
    assert "leaving the build (SIGTERM): this machine's workers stopped" in output
    code, output = finish(other)
    assert code == 0, output
    outcomes = junit_outcomes(pytester.path / "other.xml")
    assert len(outcomes) == 31 and set(map(tuple, outcomes.values())) == {(("passed",),)}
    # Each machine reports the whole build, and says which part of it was its own.
    ran_here = re.search(r"this machine \(b[^)]*\) ran (\d+) of the 31 test\(s\)", output)
    assert ran_here, output
    where = ElementTree.parse(pytester.path / "other.xml").iter("property")
    ran_on_a = sum(
        1 for p in where if p.get("name") == "conveyor_worker" and p.get("value", "")[0] == "a"
    )
    assert int(ran_here.group(1)) == 31 - ran_on_a


@pytest.mark.parametrize("change", ["new-test", "same-ids-other-code"])
def test_a_finished_build_is_not_replayed_for_another_collection_or_code(
    pytester: pytest.Pytester, change: str
) -> None:
    pytester.makepyfile(test_one="def test_one(): pass")
    run = ("run", "-n", "1", "--queue", f"sqlite://{pytester.path / 'q.db'}", "--build", "B2")
    code, output = finish(conveyor(pytester.path, *run))
    assert code == 0, output
    if change == "new-test":
        pytester.makepyfile(test_one="def test_one(): assert 0\ndef test_two(): pass")
    else:
        pytester.makepyfile(test_one="def test_one(): assert 0")
    code, output = finish(conveyor(pytester.path, *run))
    assert code == 3, output
    assert "does not collect the same tests from the same code" in output
    assert "passed" not in output.splitlines()[-1]
    # The same collection from the same code is replayed from the queue, saying so, with no
    # estimate of a time that nothing takes.
    pytester.makepyfile(test_one="def test_one(): pass")
    code, output = finish(conveyor(pytester.path, *run))
    assert code == 0, output
    assert "build B2 has finished: its stored results are reported and no test runs" in output
    assert "estimated" not in output, output


def test_a_worker_with_other_code_is_refused(pytester: pytest.Pytester) -> None:
    """Two checkouts with the same test ids but different code join one build."""
    here = pytester.mkdir("here")
    there = pytester.mkdir("there")
    (here / "test_m.py").write_text("import time\ndef test_a(): time.sleep(1.5)\n")
    (there / "test_m.py").write_text("import time\ndef test_a(): time.sleep(1.5); assert 0\n")
    queue = f"sqlite://{pytester.path / 'q.db'}"
    run = ("run", "-n", "1", "--queue", queue, "--build", "B4")
    first = conveyor(here, *run, "--node-id", "here")
    time.sleep(1.0)
    code, output = finish(conveyor(there, *run, "--node-id", "there"))
    finish(first)
    assert code != 0, output
    assert "from other code (test modules or conftest files with other contents)" in output


def test_a_machine_whose_workers_are_refused_still_reports_the_whole_build(
    pytester: pytest.Pytester,
) -> None:
    here = pytester.mkdir("here")
    there = pytester.mkdir("there")
    slow = "import time\n" + "".join(f"def test_{i}():\n    time.sleep(0.2)\n" for i in range(15))
    for folder in (here, there):
        (folder / "test_m.py").write_text(slow)
    (there / "test_extra.py").write_text("def test_only_there(): pass\n")
    queue = f"sqlite://{pytester.path / 'q.db'}"
    run = ("run", "-n", "1", "--queue", queue, "--build", "B6")
    working = conveyor(here, *run, "--node-id", "here")
    time.sleep(1.5)
    refused = conveyor(there, *run, "--node-id", "there")
    code, output = finish(refused)
    finish(working)
    assert code == 3, output
    assert "every worker stopped" not in output, output
    assert "collected a different set of tests" in output
    assert "15 passed" in output.splitlines()[-1], output


# The controller is slow to start (as on a loaded CI machine): importing its conftest, or in
# pytest_configure before conveyor's own, it waits for a file, while the workers, which start
# first, already run tests.
SLOW_CONTROLLER_CONFTEST = """
import os, pathlib, time

def hold():
    if os.environ.get("CONVEYOR_WORKER"):
        return
    pathlib.Path({configuring!r}).write_text("yes")
    deadline = time.monotonic() + 60
    while not pathlib.Path({go_on!r}).exists() and time.monotonic() < deadline:
        # In an exec() of source text, where importing a module spends its time when it
        # defines dataclasses or named tuples.
        exec("time.sleep(0.05)")

if {where!r} == "import":
    hold()

def pytest_configure(config):
    if {where!r} == "configure":
        hold()
"""


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("where", ["import", "configure"])
def test_an_interrupt_while_the_controller_starts_stops_or_leaves_the_build(
    pytester: pytest.Pytester, slow_suite: Path, shared: bool, where: str
) -> None:
    """The workers start before the controller's own pytest session: an interrupt that comes
    while it is still starting is handled as one during the build, never as a bare error.
    Shared: another machine's worker holds a test at that moment, so the build goes on there;
    alone, the build is stopped and the same command resumes it."""
    configuring, go_on = pytester.path / "configuring", pytester.path / "go-on"
    pytester.makeconftest(
        SLOW_CONTROLLER_CONFTEST.format(configuring=str(configuring), go_on=str(go_on), where=where)
    )
    # Enough work left at the interrupt, however slow the machine: the build is not over.
    pytester.makepyfile(
        test_later="import time\n"
        + "".join(f"def test_{i}():\n    time.sleep(0.5)\n" for i in range(10))
    )
    queue = f"sqlite://{pytester.path / 'q.db'}"
    run = ("run", "-n", "1", "--queue", queue, "--build", "B5")
    first = conveyor(pytester.path, *run, "--node-id", "a")
    if shared:
        other = conveyor(pytester.path, *run, "--node-id", "b", "--junitxml=other.xml")
    wait_for(slow_suite)  # a worker runs tests; the controllers are still in their conftest
    wait_for(configuring)
    if shared:
        wait_for_leases(queue, "B5", 2)  # both machines' workers hold a test
    first.send_signal(signal.SIGTERM)
    code, output = finish(first)
    go_on.write_text("yes")  # from here controllers start normally
    assert code == 2, output
    if shared:
        assert "interrupted while starting" in output, output
        assert "goes on on the other machines" in output, output
        code, output = finish(other)
        assert code == 0, output
        outcomes = junit_outcomes(pytester.path / "other.xml")
        assert len(outcomes) == 41 and set(map(tuple, outcomes.values())) == {(("passed",),)}
    else:
        assert "have no result because the build was stopped" in output, output
        code, output = finish(conveyor(pytester.path, *run, "--junitxml=again.xml"))
        assert code == 0, output
        assert "resuming it" in output and "41 passed" in output.splitlines()[-1], output


def wait_for_leases(url: str, build: str, count: int) -> None:
    queue = open_queue(url, build)
    try:
        deadline = time.monotonic() + 60
        while queue.status().leased < count:
            assert time.monotonic() < deadline, f"never {count} leases held at once"
            time.sleep(0.02)
    finally:
        queue.close()
