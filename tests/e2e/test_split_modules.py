"""A module too long for one worker, its slowest tests last: with timing history its late slow
ranges are served first, yet no worker runs a test of the module before one it already ran of
it (queue/forward.py), so tests that depend on the module's order pass as in a plain run."""

from __future__ import annotations

import os
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


def test_a_new_module_of_slow_tests_is_shared_in_a_suite_with_history(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """Timing history knows every test but those of a module added since: they were guessed
    as quick as the suite's median, and one worker reserved and claimed all of them while
    the other sat idle (a first user's 12 tests of 1 s: 13.8 s where 8 s will do)."""
    quick = "".join(f"def test_{i}():\n    pass\n" for i in range(20))
    pytester.makepyfile(**{f"test_{name}": quick for name in "abcd"})
    run = (sys.executable, "-m", "conveyor", "run", "-n", "2", "-p", "no:randomly")
    assert pytester.run(*run, timeout=120).ret == 0  # the history of the quick tests
    ran = tmp_path / "ran"
    ran.mkdir()
    pytester.makepyfile(
        test_zz_new=f"""
        import os, time, pytest

        @pytest.mark.parametrize("n", range(8))
        def test_slow(n, worker_id):
            open(os.path.join({str(ran)!r}, f"{{n}}-{{worker_id}}"), "w").close()
            time.sleep(0.4)
        """
    )
    result = pytester.run(*run, timeout=120)
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["conveyor: timing history knows 80 of 88 tests*"])
    workers = {name.split("-", 1)[1] for name in os.listdir(ran)}
    assert workers == {"gw0", "gw1"}, sorted(os.listdir(ran))
