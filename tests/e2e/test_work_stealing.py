"""Work stealing in real builds: a worker that runs dry takes unstarted tests from one that
holds a run of them, and the verdict stays plain pytest's."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_conveyor

from conveyor.queue import open_queue
from conveyor.queue.protocol import EVENT_RESULT, EventKind

# A module whose slow tests come last, behind quick ones, and more quick tests after it: the
# worker that reserves the module's second half (its slow tail) has seen only quick tests, so
# it holds the whole tail; the other runs the rest of the build and, idle, takes part of that
# tail: later in the module than anything it ran there, so it goes forward.
SLOW_TAIL = "import time\n\n" + "\n".join(
    f"def test_{i}():\n    time.sleep({0.3 if i >= 30 else 0.0})\n" for i in range(40)
)
MORE = "\n".join(f"def test_{i}():\n    pass\n" for i in range(60))


def test_an_idle_worker_takes_part_of_a_run_another_holds(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile(test_run=SLOW_TAIL, test_z_more=MORE)
    url = f"sqlite://{tmp_path / 'queue.db'}"
    result = run_conveyor(pytester, "-n", "2", "--queue", url, "--build", "b1", "-p", "no:randomly")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=100)
    queue = open_queue(url, "b1")
    events = list(queue.iter_events())
    stolen = [event for event in events if event.kind == EventKind.STOLEN]
    assert stolen, "an idle worker should have taken part of the other's run"
    ran_by: dict[str, list[str]] = {}
    for event in events:
        if event.kind == EVENT_RESULT and event.unit:
            ran_by.setdefault(event.worker or "", []).append(event.unit)
    assert len(ran_by) == 2
    assert sum(len(units) for units in ran_by.values()) == 100  # each test once
    for event in stolen:  # what was stolen was run by the thief
        assert set(event.data["units"]) <= set(ran_by[event.worker or ""])
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
    url = f"sqlite://{tmp_path / 'queue.db'}"
    result = run_conveyor(pytester, "-n", "2", "--queue", url, "--build", "b1", "-p", "no:randomly")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=20)
    ran_by: dict[str, list[int]] = {}
    for event in open_queue(url, "b1").iter_events():
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
    url = f"sqlite://{tmp_path / 'queue.db'}"
    result = run_conveyor(pytester, "-n", "2", "--queue", url, "--build", "b1", "-p", "no:randomly")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=12)
    queue = open_queue(url, "b1")
    for event in queue.iter_events():
        if event.kind == EventKind.STOLEN:
            assert event.data["units"][0].endswith("::test_0"), event.data
