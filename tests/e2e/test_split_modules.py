"""A module too long for one worker, its slowest tests last: with timing history its late slow
ranges are served first, yet no worker runs a test of the module before one it already ran of
it (queue/forward.py), so tests that depend on the module's order pass as in a plain run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Each test appends its name to its worker's file. The late tests flip module state that the
# early ones must not see: a worker that ran a late test and then an early one fails.
LONG_MODULE = """
import os
import time

LATE_RAN = []


def record(name, worker_id):
    with open(os.path.join(os.environ["RAN_DIR"], worker_id), "a") as out:
        out.write(name + "\\n")


{early}

{late}
"""

# Twelve classes of three: more ranges than the workers can start at once, so a worker done
# with a late test finds early ranges still pending.
EARLY_CLASS = """
class TestEarly{index:02d}:
{tests}
"""

EARLY_TEST = """
    def test_early_{index:02d}(self, worker_id):
        record("test_early_{index:02d}", worker_id)
        time.sleep(0.05)
        assert not LATE_RAN
"""

LATE_TEST = """
def test_late_{index}(worker_id):
    record("test_late_{index}", worker_id)
    LATE_RAN.append({index})
    time.sleep({sleep})
"""


def long_module_suite(pytester: pytest.Pytester) -> list[str]:
    """The module's tests in collection order."""
    early = "".join(
        EARLY_CLASS.format(
            index=c, tests="".join(EARLY_TEST.format(index=3 * c + i) for i in range(3))
        )
        for c in range(12)
    )
    # The last test alone is longer than the others' share of the build: served where the
    # module is, it would end the build late; served first, it ends with the others.
    sleeps = {1: 0.3, 2: 0.35, 3: 0.4, 4: 1.5}
    late = "".join(LATE_TEST.format(index=i, sleep=s) for i, s in sleeps.items())
    pytester.makepyfile(test_long=LONG_MODULE.format(early=early, late=late))
    others = "".join(f"\n\ndef test_other_{i}():\n    pass\n" for i in range(10))
    pytester.makepyfile(test_other=others)
    return [f"test_early_{i:02d}" for i in range(36)] + [f"test_late_{i}" for i in sleeps]


def ran_by_worker(folder: Path) -> dict[str, list[str]]:
    return {record.name: record.read_text().split() for record in folder.iterdir()}


@pytest.mark.parametrize("fork", [False, True], ids=["spawn", "fork"])
def test_late_slow_ranges_come_first_and_every_worker_goes_forward(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, fork: bool
) -> None:
    collected = long_module_suite(pytester)
    args = ["run", "-n", "4", "-p", "no:randomly", *(["--fork-workers"] if fork else [])]
    for first in (True, False):  # a first run records the history the second is planned by
        folder = pytester.mkdir(f"ran-{first}")
        monkeypatch.setenv("RAN_DIR", str(folder))
        result = pytester.run(sys.executable, "-m", "conveyor", *args, timeout=300)
        assert result.ret == 0, result.stdout.str() + result.stderr.str()
        result.assert_outcomes(passed=50)
        assert ("timing history knows 50 of 50" in result.stdout.str()) is not first
        ran = ran_by_worker(folder)
        assert sorted(name for names in ran.values() for name in names) == sorted(collected)
        if not first:  # planned: each worker's share of the module in collection order
            for names in ran.values():
                assert names == sorted(names, key=collected.index), ran
    # Planned by history: the slowest test, last in the module, went first to a worker of its
    # own, which then never went back to the module's earlier tests.
    (latest,) = [names for names in ran.values() if "test_late_4" in names]
    assert latest[0] == "test_late_4", ran
    assert not any(name.startswith("test_early") for name in latest), ran
