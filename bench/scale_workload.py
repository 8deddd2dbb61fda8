"""The work of the scale simulation: unit names, drawn test durations, the serving order the
leader would publish with timing history, and the lower bound no schedule can beat."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from conveyor import scheduling

SEED = 20240607
TESTS_PER_MODULE = 100
# Three classes of tests, as in a real suite with a heavy tail: (share, shortest s, longest s).
DURATION_MIX = ((0.90, 0.005, 0.100), (0.09, 0.1, 1.0), (0.01, 1.0, 10.0))


def unit_names(count: int) -> list[str]:
    """Node ids shaped like a real suite's: 100 tests per module."""
    return [f"tests/test_mod_{i // TESTS_PER_MODULE:05d}.py::test_{i}" for i in range(count)]


def draw_durations(count: int, seed: int = SEED) -> list[float]:
    """Seconds per test from DURATION_MIX (mean about 0.15 s, longest under 10 s)."""
    rng = random.Random(seed)
    shares = [share for share, _, _ in DURATION_MIX]
    bounds = [(low, high) for _, low, high in DURATION_MIX]
    picks = rng.choices(range(len(DURATION_MIX)), weights=shares, k=count)
    return [rng.uniform(*bounds[pick]) for pick in picks]


def lower_bound_s(durations: Sequence[float], workers: int) -> float:
    """max(longest test, total / workers): no schedule of these tests ends sooner."""
    if not durations:
        return 0.0
    return max(max(durations), sum(durations) / max(1, workers))


@dataclass(frozen=True)
class Workload:
    """Units in the order the leader publishes them, each one's duration, and the facts a
    simulated worker's batch policy reads (positions, the ranges of split modules)."""

    order: list[str]
    seconds: dict[str, float]
    positions: dict[str, int]
    range_of: dict[str, str]
    grouping: str

    @property
    def total(self) -> int:
        return len(self.order)

    def scope_key(self, unit: str) -> str:
        return self.range_of.get(unit) or scheduling.scope_of(unit, self.grouping)


def build_workload(
    count: int, workers: int, *, grouping: str = "module", seed: int = SEED
) -> Workload:
    """Exact history (every test's duration known): the serving order is conveyor's own
    `scheduling.plan`, slowest first by module or range."""
    units = unit_names(count)
    seconds = dict(zip(units, draw_durations(count, seed), strict=True))
    plan = scheduling.plan(units, seconds, grouping=grouping, workers=workers)
    positions = {unit: index for index, unit in enumerate(plan.order)}
    range_of = scheduling.range_keys(plan.order, plan.range_starts, grouping)
    return Workload(plan.order, seconds, positions, range_of, grouping)
