"""Work stealing in real builds: a worker that runs dry takes unstarted tests from one that
holds a run of them, and the verdict stays plain pytest's."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_conveyor

from conveyor.queue import open_queue
from conveyor.queue.protocol import EVENT_RESULT, EventKind

# One module, slow tests first: without history a worker takes its share of the module's run
# at once (the slow half, in collection order) and, claiming only the test it runs and the one
# promised next, leaves the rest stealable; the other worker gets the quick half, runs dry and
# takes part of the slow run.
ONE_MODULE = "import time\n\n" + "\n".join(
    f"def test_{i}():\n    time.sleep({0.3 if i < 10 else 0.0})\n" for i in range(20)
)


def test_an_idle_worker_takes_part_of_a_run_another_holds(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile(test_run=ONE_MODULE)
    url = f"sqlite://{tmp_path / 'queue.db'}"
    result = run_conveyor(pytester, "-n", "2", "--queue", url, "--build", "b1", "-p", "no:randomly")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=20)
    queue = open_queue(url, "b1")
    events = list(queue.iter_events())
    stolen = [event for event in events if event.kind == EventKind.STOLEN]
    assert stolen, "an idle worker should have taken part of the other's run"
    ran_by: dict[str, set[str]] = {}
    for event in events:
        if event.kind == EVENT_RESULT and event.unit:
            ran_by.setdefault(event.worker or "", set()).add(event.unit)
    assert len(ran_by) == 2  # both workers ran part of the module
    assert sum(len(units) for units in ran_by.values()) == 20  # each test once
    for event in stolen:  # what was stolen was run by the thief
        assert set(event.data["units"]) <= ran_by[event.worker or ""]


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
