"""The order in which the queue serves tests.

The build ends when its last worker ends, so the long tests must not come last: with timing
history the queue serves the slowest first (longest-processing-time first, which lands within a
few percent of the best possible finish). Tests of one module stay together, so that a worker
taking a run of them keeps the module's fixtures alive, unless the module is so long that
keeping it whole would itself unbalance the build (the Knapsack rule: a group taking 70 % or
more of one worker's share is split). A group is split only at class boundaries, into
contiguous ranges served in collection order: tests inside a class, and classes that depend on
an earlier class, run as they would in a plain run.
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
RANGE_SHARE = 0.35  # a split group's ranges are at most this share of a worker's work


def scope_of(nodeid: str, grouping: str) -> str:
    """The group a test belongs to: its file, its class (or file), or itself."""
    if grouping == "test":
        return nodeid
    path, _, rest = nodeid.partition("::")
    if grouping == "class" and "::" in rest:
        return f"{path}::{rest.split('::', 1)[0]}"
    return path


def class_of(nodeid: str) -> str | None:
    """The class a test belongs to ("path::Class"), or None for a test outside any class."""
    path, _, rest = nodeid.partition("::")
    return f"{path}::{rest.split('::', 1)[0]}" if "::" in rest else None


def same_class(first: str, second: str) -> bool:
    cls = class_of(first)
    return cls is not None and cls == class_of(second)


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
    """The serving order, and the first unit of each range of a split group: a worker holds a
    range together as it would a whole group, and never holds two ranges together."""

    order: list[str]
    range_starts: frozenset[str] = frozenset()


def atoms(members: Sequence[str]) -> list[list[str]]:
    """A group's tests cut at class boundaries only: each class (a unittest TestCase, a class
    with class-scoped fixtures) is one piece, each test outside a class another."""
    pieces: list[list[str]] = []
    last_key: str | None = None
    for unit in members:
        path, _, rest = unit.partition("::")
        key = f"{path}::{rest.split('::', 1)[0]}" if "::" in rest else None
        if key is not None and key == last_key:
            pieces[-1].append(unit)
        else:
            pieces.append([unit])
        last_key = key
    return pieces


def ranges(members: Sequence[str], seconds: Mapping[str, float], limit: float) -> list[list[str]]:
    """Contiguous ranges of a group, each at most `limit` seconds where its classes allow,
    keeping collection order inside and between them."""
    cut: list[list[str]] = []
    current: list[str] = []
    current_s = 0.0
    for piece in atoms(members):
        piece_s = sum(seconds[unit] for unit in piece)
        if current and current_s + piece_s > limit:
            cut.append(current)
            current, current_s = [], 0.0
        current.extend(piece)
        current_s += piece_s
    if current:
        cut.append(current)
    return cut


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
        return Plan(shuffled, frozenset(shuffled))
    if not any(unit in history for unit in units):
        return Plan(list(units))  # nothing known: collection order keeps fixtures warm
    seconds = estimate(units, history)
    groups: dict[str, list[str]] = {}
    for unit in units:
        groups.setdefault(scope_of(unit, grouping), []).append(unit)
    share = sum(seconds.values()) / max(1, workers)
    blocks: list[tuple[float, list[str]]] = []
    range_starts: set[str] = set()
    for members in groups.values():
        total = sum(seconds[unit] for unit in members)
        if len(members) > 1 and share > 0 and total >= SPLIT_SHARE * share:
            pieces = ranges(members, seconds, RANGE_SHARE * share)
            if len(pieces) > 1:
                range_starts.update(piece[0] for piece in pieces)
            # Every range of the group takes the place of its longest one, and they stay in
            # collection order there: a worker that runs two of them runs them as a plain
            # run would (classes that depend on an earlier class exist).
            longest = max(sum(seconds[unit] for unit in piece) for piece in pieces)
            blocks.extend((longest, piece) for piece in pieces)
        else:
            blocks.append((total, members))
    blocks.sort(key=lambda block: -block[0])  # stable: ties keep collection order
    return Plan([unit for _, members in blocks for unit in members], frozenset(range_starts))


def range_keys(
    serving_order: Sequence[str], range_starts: frozenset[str], grouping: str
) -> dict[str, str]:
    """unit -> the first unit of its range, for the units of split groups (a range is
    contiguous in the serving order, and begins with its first unit)."""
    keys: dict[str, str] = {}
    current: str | None = None
    for unit in serving_order:
        if unit in range_starts:
            current = unit
        elif current is not None and scope_of(unit, grouping) != scope_of(current, grouping):
            current = None
        if current is not None:
            keys[unit] = current
    return keys


def order_units(units: Sequence[str], history: Mapping[str, float], **options: Any) -> list[str]:
    return plan(units, history, **options).order


# How a worker sizes its reservations. The worker's plugin and `conveyor plan`'s simulator must
# ask for the same batches, so the rule lives here as plain functions of plain inputs.
MAX_BATCH = 32
BATCH_TARGET_S = 0.25  # work a batch should hold, by the durations seen so far
AFFINITY_TARGET_S = 2.0  # work of a module's run kept together when nothing else says so


def batch_size(pending: int, worker_count: int, typical_test_s: float | None = None) -> int:
    """How many units to reserve at once: tiny tests travel in batches (fewer round trips),
    slow ones alone (a batch of slow tests would pin them to one worker), and batches shrink
    near the end so that the tail stays balanced across workers."""
    if typical_test_s is None:
        return 1  # nothing seen yet: the first units served may be the slowest of the build
    share = pending // max(1, 4 * worker_count)
    if typical_test_s > 0:
        share = min(share, int(BATCH_TARGET_S / typical_test_s))
    return max(1, min(MAX_BATCH, share))


class BatchPolicy:
    """The size of a worker's next reservation, from the published serving order.

    A module's run of tests goes to one worker whole, so its fixtures are set up once: with
    timing history the leader has split the modules too long for balance into ranges (each held
    together); without it the run is cut to about AFFINITY_TARGET_S of work by the durations
    seen so far (nothing seen yet: one unit). Outside such runs the batch follows those
    durations, and a reservation never ends inside a class (except with grouping "test")."""

    def __init__(
        self,
        order: Sequence[str],
        range_starts: frozenset[str],
        *,
        grouping: str,
        worker_count: int,
        has_history: bool,
    ) -> None:
        self.order = list(order)
        self.grouping = grouping
        self.worker_count = worker_count
        self.has_history = has_history
        self._positions = {unit: index for index, unit in enumerate(self.order)}
        self._range_of = range_keys(self.order, range_starts, grouping)

    def scope_key(self, unit: str) -> str:
        return self._range_of.get(unit) or scope_of(unit, self.grouping)

    def run_after(self, unit: str) -> int:
        """How many units follow `unit` in the serving order within its module (or class, or
        range of a split module): the next reservation takes them all. A worker sets its
        affinity to this after every reservation, from the last unit it was given."""
        position = self._positions.get(unit)
        if position is None or self.grouping == "test":
            return 0
        scope = self.scope_key(unit)
        run = 0
        for following in self.order[position + 1 : position + 1 + MAX_BATCH]:
            if self.scope_key(following) != scope:
                break
            run += 1
        return run

    def run_at_front(self, pending: int) -> int:
        """The module run the queue is about to serve: with `pending` units left, the front
        of the queue is at position total - pending."""
        position = len(self.order) - pending
        if not 0 <= position < len(self.order):
            return 0
        return 1 + self.run_after(self.order[position])

    def size(self, pending: int, *, affinity: int, typical_test_s: float | None) -> int:
        """How many units to ask for with `pending` units left (as the last reply said), the
        worker's `affinity` (units left of its current run) and its recent typical duration."""
        return self._to_class_end(pending, self._within_runs(pending, affinity, typical_test_s))

    def _within_runs(self, pending: int, affinity: int, typical: float | None) -> int:
        run = affinity or self.run_at_front(pending)
        if run <= 1:
            return batch_size(pending, self.worker_count, typical)
        if self.has_history:
            return min(run, MAX_BATCH)
        if typical is None:
            return 1
        return max(1, min(run, MAX_BATCH, int(AFFINITY_TARGET_S / max(typical, 1e-6))))

    def _to_class_end(self, pending: int, want: int) -> int:
        if self.grouping == "test":
            return want
        start = len(self.order) - pending
        if not 0 <= start < len(self.order):
            return want
        end = start + want
        while 0 < end < len(self.order) and same_class(self.order[end - 1], self.order[end]):
            end += 1
        return end - start
