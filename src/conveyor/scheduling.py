"""The order in which the queue serves tests.

The build ends when its last worker ends, so the long tests must not come last: with timing
history the queue serves the slowest first (longest-processing-time first, which lands within a
few percent of the best possible finish). Tests of one module stay together, so that a worker
taking a run of them keeps the module's fixtures alive, unless the module is so long that
keeping it whole would itself unbalance the build (the Knapsack rule: a group taking 70 % or
more of one worker's share is split into its tests).
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ORDERS = ("slowest", "collected", "random")
GROUPINGS = ("module", "class", "test")
SPLIT_SHARE = 0.7


def scope_of(nodeid: str, grouping: str) -> str:
    """The group a test belongs to: its file, its class (or file), or itself."""
    if grouping == "test":
        return nodeid
    path, _, rest = nodeid.partition("::")
    if grouping == "class" and "::" in rest:
        return f"{path}::{rest.split('::', 1)[0]}"
    return path


def estimate(units: Sequence[str], history: Mapping[str, float]) -> dict[str, float]:
    """Seconds per test: its own history, else its module's median, else the suite's median.
    Tests new to the history are thus treated as typical, not as instant (not served last)."""
    suite_median = statistics.median(history.values()) if history else 0.0
    by_module: dict[str, list[float]] = {}
    for nodeid, seconds in history.items():
        by_module.setdefault(scope_of(nodeid, "module"), []).append(seconds)
    module_median = {module: statistics.median(values) for module, values in by_module.items()}
    return {
        unit: history.get(unit, module_median.get(scope_of(unit, "module"), suite_median))
        for unit in units
    }


@dataclass(frozen=True)
class Plan:
    """The serving order, and the groups split into single tests for balance (workers must
    not hold those together)."""

    order: list[str]
    split: frozenset[str] = frozenset()


def plan(
    units: Sequence[str],
    history: Mapping[str, float],
    *,
    order: str = "slowest",
    grouping: str = "module",
    workers: int = 1,
    seed: int = 0,
) -> Plan:
    """The units in serving order (see the module docstring)."""
    if order == "collected":
        return Plan(list(units))
    if order == "random":
        shuffled = list(units)
        random.Random(seed).shuffle(shuffled)
        return Plan(shuffled, frozenset(scope_of(unit, grouping) for unit in units))
    if not any(unit in history for unit in units):
        return Plan(list(units))  # nothing known: collection order keeps fixtures warm
    seconds = estimate(units, history)
    groups: dict[str, list[str]] = {}
    for unit in units:
        groups.setdefault(scope_of(unit, grouping), []).append(unit)
    share = sum(seconds.values()) / max(1, workers)
    blocks: list[tuple[float, list[str]]] = []
    split: set[str] = set()
    for scope, members in groups.items():
        total = sum(seconds[unit] for unit in members)
        if len(members) > 1 and share > 0 and total >= SPLIT_SHARE * share:
            blocks.extend((seconds[unit], [unit]) for unit in members)
            split.add(scope)
        else:
            blocks.append((total, members))
    blocks.sort(key=lambda block: -block[0])  # stable: ties keep collection order
    return Plan([unit for _, members in blocks for unit in members], frozenset(split))


def order_units(units: Sequence[str], history: Mapping[str, float], **options: Any) -> list[str]:
    return plan(units, history, **options).order
