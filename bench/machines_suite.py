"""The suite of `python -m bench.machines`: heavy-tailed sleeps whose durations can change
without their code changing (a slowdown file), a pytest-split durations file, and the lower
bound of each case.

The tests read `slowdown.json` beside them at import: {test name: factor}. Making tests slower
that way leaves their source, and so every runner's idea of which tests they are, unchanged,
as when a dependency or a machine makes part of a suite slower overnight.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.suites import PYTEST_INI, heavy_tailed_sleeps, spread

MACHINES = 4
FULL_LOWER_BOUND_S = 6.0  # total / 4 machines, as in the measurement
QUICK_LOWER_BOUND_S = 2.0
PER_FILE = 20
SLOWDOWN_FILE = "slowdown.json"
DURATIONS_FILE = ".test_durations"
STALE_SHARE = 0.25
STALE_FACTOR = 3.0

HEADER = f"""\
import json
import pathlib
import time

_SLOWDOWN = json.loads((pathlib.Path(__file__).parent / "{SLOWDOWN_FILE}").read_text())
"""


@dataclass(frozen=True)
class MachineSuite:
    path: Path
    sleeps: dict[str, float]  # node id -> seconds, as the tests are written

    @property
    def test_count(self) -> int:
        return len(self.sleeps)

    def slow_down(self, factors: Mapping[str, float]) -> None:
        """Make the tests in `factors` (node id -> factor) slower from the next run on."""
        by_name = {nodeid.rsplit("::", 1)[1]: factor for nodeid, factor in factors.items()}
        (self.path / SLOWDOWN_FILE).write_text(json.dumps(by_name))

    def write_durations(self, path: Path) -> None:
        """pytest-split's durations file with the exact durations of the tests as written."""
        path.write_text(json.dumps(self.sleeps, indent=1, sort_keys=True))


def sleeps(*, quick: bool) -> list[float]:
    """The heavy tail of bench.suites scaled so that total / 4 machines is the lower bound
    (6 s; 2 s with `quick`), slow tests spread through the files."""
    fast, slow = heavy_tailed_sleeps(quick=quick)
    order = spread(fast, slow)
    target = (FULL_LOWER_BOUND_S if not quick else QUICK_LOWER_BOUND_S) * MACHINES
    scale = target / sum(order)
    return [round(seconds * scale, 4) for seconds in order]


def write_suite(root: Path, *, quick: bool) -> MachineSuite:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pytest.ini").write_text(PYTEST_INI)
    (root / SLOWDOWN_FILE).write_text("{}")
    durations: dict[str, float] = {}
    order = sleeps(quick=quick)
    for start in range(0, len(order), PER_FILE):
        name = f"test_machines_{start // PER_FILE:02d}.py"
        lines = [HEADER]
        for i, seconds in enumerate(order[start : start + PER_FILE], start):
            test = f"test_{i:03d}"
            lines.append(
                f"\n\ndef {test}():\n    time.sleep({seconds} * _SLOWDOWN.get({test!r}, 1))\n"
            )
            durations[f"{name}::{test}"] = seconds
        (root / name).write_text("".join(lines))
    return MachineSuite(root, durations)


def stale_factors(durations: Mapping[str, float]) -> dict[str, float]:
    """A quarter of the tests now take three times as long: every fourth by duration, from
    the second longest down, so the change reaches the heavy tail as well as the many fast
    tests (a random quarter of a suite with few slow tests may miss them all), while the
    longest test alone does not become the whole lower bound."""
    by_length = sorted(durations, key=lambda nodeid: (-durations[nodeid], nodeid))
    return {nodeid: STALE_FACTOR for nodeid in sorted(by_length[1::4])}


def lower_bound_s(
    durations: Sequence[float],
    machines: int,
    *,
    late_s: float = 0.0,
    dead_after_s: float | None = None,
) -> float:
    """The earliest any schedule can finish: the longest test, and the total work over the
    machine time available (one machine `late_s` late, or one gone after `dead_after_s`)."""
    total = sum(durations)
    longest = max(durations, default=0.0)
    even = (total + late_s) / max(1, machines)
    if dead_after_s is not None and even > dead_after_s:
        # One machine works until it dies (its finished tests count); the others do the rest.
        return max(longest, (total - dead_after_s) / max(1, machines - 1))
    return max(longest, even)
