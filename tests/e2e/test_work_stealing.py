"""Work stealing in real builds: a worker that runs dry takes unstarted tests from one that
holds a run of them, tests that change hands never send a worker back in a module, and the
verdict stays plain pytest's."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_conveyor

from conveyor.queue import open_queue
from conveyor.queue.protocol import EVENT_RESULT, Event, EventKind


def build_events(pytester: pytest.Pytester, tmp_path: Path, passed: int) -> list[Event]:
    """Run the build on two workers (its queue a SQLite file), check that every test passed,
    and return the queue's events."""
    url = f"sqlite://{tmp_path / 'queue.db'}"
    result = run_conveyor(pytester, "-n", "2", "--queue", url, "--build", "b1", "-p", "no:randomly")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=passed)
    return list(open_queue(url, "b1").iter_events())


def story(events: list[Event]) -> list[tuple[str, str | None, object]]:
    """Who leased, stole and handed back what: for a failing assertion's message."""
    return [(event.kind, event.worker, event.data.get("units")) for event in events]


# A module whose slow tests come last, behind quick ones, and more quick tests after it. gw1
# waits at its start until gw0 begins the slow tail, so gw0 alone reserves the module (each
# run half its share of what is left): it holds the whole tail. gw1 then runs the quick tests
# left and, idle, takes part of that tail, later in the module than anything it ran there.
SLOW_TAIL = "import pathlib, time\n\n" + "\n".join(
    f"def test_{i}():\n"
    + ("    pathlib.Path(__file__).with_name('tail-started').touch()\n" if i == 30 else "")
    + f"    time.sleep({0.3 if i >= 30 else 0.0})\n"
    for i in range(40)
)
MORE = "\n".join(f"def test_{i}():\n    pass\n" for i in range(60))
GW1_WAITS_FOR_THE_TAIL = """
import os, pathlib, time

import pytest


@pytest.fixture(scope="session", autouse=True)
def gw1_waits_for_the_tail():
    marker = pathlib.Path(__file__).with_name("tail-started")
    deadline = time.monotonic() + 60
    while os.environ["PYTEST_XDIST_WORKER"] == "gw1" and not marker.exists():
        assert time.monotonic() < deadline, "gw0 never reached the slow tail"
        time.sleep(0.01)
"""


def test_an_idle_worker_takes_part_of_a_run_another_holds(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile(test_run=SLOW_TAIL, test_z_more=MORE)
    pytester.makeconftest(GW1_WAITS_FOR_THE_TAIL)
    events = build_events(pytester, tmp_path, passed=100)
    stolen = [event for event in events if event.kind == EventKind.STOLEN]
    leases = story(events)
    assert stolen, f"an idle worker should have taken part of the other's run: {leases}"
    ran_by: dict[str, list[str]] = {}
    for event in events:
        if event.kind == EVENT_RESULT and event.unit:
            ran_by.setdefault(event.worker or "", []).append(event.unit)
    assert len(ran_by) == 2
    ran = [unit for units in ran_by.values() for unit in units]
    assert len(ran) == len(set(ran)) == 100  # each test once
    last_thief = {unit: event.worker for event in stolen for unit in event.data["units"]}
    for unit, thief in last_thief.items():  # a stolen test ran on the worker that last took it
        assert unit in ran_by[thief or ""], leases
    for units in ran_by.values():  # and no worker went back in the module
        numbers = [int(unit.rpartition("_")[2]) for unit in units if "test_run" in unit]
        assert numbers == sorted(numbers), ran_by


# One module, slow tests first, each test failing when a later one ran before it in its
# process: state a module's later tests leave behind, as a real suite's did (jsonschema's).
# Without history one worker reserves part of the slow half; the other ends up with the quick
# half and runs dry while the first still holds slow tests it has passed.
IN_ORDER = "import time\n\nRAN = []\n\n" + "\n".join(
    f"def test_{i}():\n"
    f"    assert all(earlier < {i} for earlier in RAN), RAN\n"
    f"    RAN.append({i})\n"
    f"    time.sleep({0.3 if i < 10 else 0.0})\n"
    for i in range(20)
)


def test_a_first_run_never_steals_back_within_a_module(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """By default every unit is ranked, first run or not: the worker that ran the quick half
    does not take the slow half's tail, which comes earlier in the module, and every worker
    runs its share of the module in collection order, as plain pytest would."""
    pytester.makepyfile(test_run=IN_ORDER)
    ran_by: dict[str, list[int]] = {}
    for event in build_events(pytester, tmp_path, passed=20):
        if event.kind == EVENT_RESULT and event.unit:
            ran_by.setdefault(event.worker or "", []).append(int(event.unit.rpartition("_")[2]))
    assert sorted(i for ran in ran_by.values() for i in ran) == list(range(20))
    for ran in ran_by.values():
        assert ran == sorted(ran), ran_by


CLASSES = "import time\n\n" + "\n".join(
    f"class TestGroup{c}:\n"
    f"    order = []\n"
    + "".join(
        f"    def test_{i}(self):\n"
        f"        time.sleep(0.1)\n"
        f"        type(self).order.append({i})\n"
        f"        assert type(self).order == list(range({i} + 1))\n"
        for i in range(4)
    )
    for c in range(3)
)


def test_a_steal_never_splits_a_class(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """Each class checks that its tests ran in order in one process: a class split by a
    steal would fail there. Whatever was stolen starts at a class's first test."""
    pytester.makepyfile(test_classes=CLASSES)
    for event in build_events(pytester, tmp_path, passed=12):
        if event.kind == EventKind.STOLEN:
            assert event.data["units"][0].endswith("::test_0"), event.data


# gw1 waits at its start until gw0 begins the slow test_5, which goes on until gw1 has run the
# module's last test, and 0.6 s more: slow enough that gw0 hands back the rest of its run (a
# slow run without history), tests gw1 has gone past. Each test fails if a later one ran
# before it in its process.
HANDED_BACK = (
    "import pathlib, time\n\nRAN = []\nHERE = pathlib.Path(__file__).parent\n\n"
    "def wait_for(name):\n"
    "    deadline = time.monotonic() + 60\n"
    "    while not (HERE / name).exists():\n"
    "        assert time.monotonic() < deadline, name\n"
    "        time.sleep(0.01)\n\n"
    + "\n".join(
        f"def test_{i}():\n"
        f"    assert all(earlier < {i} for earlier in RAN), RAN\n"
        f"    RAN.append({i})\n"
        + (
            "    (HERE / 'slow-started').touch()\n    wait_for('last-done')\n    time.sleep(0.6)\n"
            if i == 5
            else ""
        )
        + ("    (HERE / 'last-done').touch()\n" if i == 39 else "")
        for i in range(40)
    )
)
GW1_WAITS_FOR_THE_SLOW_TEST = """
import os, sys

import pytest


@pytest.fixture(scope="session", autouse=True)
def gw1_waits_for_the_slow_test():
    if os.environ["PYTEST_XDIST_WORKER"] == "gw1":
        sys.modules["test_run"].wait_for("slow-started")
"""


def test_a_run_handed_back_goes_back_to_its_worker_not_to_one_past_it(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """gw1, past everything gw0 hands back, would run those tests after the module's last
    one if no live worker could run them forward; gw0, which never ran them, can, and does."""
    pytester.makepyfile(test_run=HANDED_BACK)
    pytester.makeconftest(GW1_WAITS_FOR_THE_SLOW_TEST)
    events = build_events(pytester, tmp_path, passed=40)
    handed = [e for e in events if e.kind == EventKind.LEASES_RETURNED and e.data["requeued"]]
    assert handed, f"gw0 should have handed back the rest of its run: {story(events)}"
