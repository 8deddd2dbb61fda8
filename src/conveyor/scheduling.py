"""The order in which the queue serves tests.

The build ends when its last worker ends, so the long tests must not come last: with timing
history the queue serves the slowest first (longest-processing-time first, which lands within a
few percent of the best possible finish). Tests of one module stay together, so that a worker
taking a run of them keeps the module's fixtures alive, unless the module is so long that
keeping it whole would itself unbalance the build (the Knapsack rule: a group taking 70 % or
more of one worker's share is split). A group is split only at class boundaries, into
contiguous ranges that keep collection order inside them: tests inside a class run as they
would in a plain run.

A module is also cut when, with several workers, one of its tests alone is RANGE_SHARE (about
a third) of a worker's share: a test that long must find its own place in the build, not its
module's.

A split module's ranges are served in collection order at the place of their longest, except
the ranges promoted to be served by their own length, or before everything else. Which ranges
to promote is decided by simulating the build (`simulate`: each block, in serving order, to
the worker free first that may take it): a promotion is kept when the simulated build ends
sooner, or, for a range that would end after the build's ideal end, no later (longest first
is the safer order when durations vary); at most half the workers' count of one module's
ranges is promoted. Served so, a worker could run a later range of a
module and then an earlier one, which a plain run never does (three of pyparsing's tests
failed so): the queue keeps each worker going forward through a split module
(queue/forward.py), so the tests one worker runs of it are in collection order, as under `-k`;
the simulation follows the same rule, and a promotion that would send a worker back is not
kept.

The workers' count is the whole build's: on a fleet of machines, the leader plans for every
machine's workers (conveyor.fleet_size).

`--dist file`, `--dist scope` and `--dist group` (pytest-xdist's loadfile, loadscope and
loadgroup) never split a group: each file, each scope (a class; a module's tests outside
classes), or each xdist_group (named in its tests' unit names, conveyor.unit_names) is served
whole and contiguous, and the queue leases it to one worker whole (`whole_key`).

A suite whose tests declare an order or dependencies between them (conveyor.ordered_suite) is
served in collection order and kept whole ("all"): one worker runs it as plain pytest would.
"""

from __future__ import annotations

import heapq
import random
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from conveyor.unit_names import GROUP_OPEN, group_of

ORDERS = ("slowest", "collected", "random")
GROUPINGS = ("module", "class", "test", "file", "scope", "group")
DEFAULT_GROUPING = "module"
# What the queue never splits between workers, by grouping (see `whole_key`): a class for the
# module and class groupings; a whole file for `file` (pytest-xdist's loadfile); a class, or a
# module's tests outside classes, for `scope` (loadscope); an xdist_group for `group`
# (loadgroup; a test outside any group is held by nothing); nothing for `test` (load).
WHOLE_BY_GROUPING = {
    "module": "class",
    "class": "class",
    "test": "none",
    "file": "file",
    "scope": "scope",
    "group": "group",
}
# "all": one worker runs the whole build, in the published order (an order-dependent suite,
# conveyor.ordered_suite); never a --dist grouping of its own.
WHOLE_MODES = ("class", "file", "scope", "group", "none", "all")
UNSPLIT_GROUPINGS = ("file", "scope", "group")  # groups the planner never cuts into ranges
SPLIT_SHARE = 0.7
RANGE_SHARE = 0.35  # a split group's ranges are at most this share of a worker's work


def scope_of(nodeid: str, grouping: str) -> str:
    """The group a test belongs to: its file (module, file), its class or else its file
    (class, scope), its xdist_group or else itself (group), or itself (test)."""
    if grouping == "test":
        return nodeid
    if grouping == "group":
        group = group_of(nodeid)
        return nodeid if group is None else f"{GROUP_OPEN}{group})"
    path, _, rest = nodeid.partition("::")
    if grouping in ("class", "scope") and "::" in rest:
        return f"{path}::{rest.split('::', 1)[0]}"
    return path


def class_of(nodeid: str) -> str | None:
    """The class a test belongs to ("path::Class"), or None for a test outside any class."""
    path, _, rest = nodeid.partition("::")
    return f"{path}::{rest.split('::', 1)[0]}" if "::" in rest else None


def whole_key(nodeid: str, whole: str) -> str | None:
    """The part of the suite `nodeid` belongs to that one worker runs whole under the `whole`
    mode (WHOLE_MODES), or None when nothing holds it to its neighbours."""
    if whole == "class":
        return class_of(nodeid)
    if whole == "file":
        return nodeid.partition("::")[0]
    if whole == "scope":
        return class_of(nodeid) or nodeid.partition("::")[0]
    if whole == "group":
        return group_of(nodeid)
    if whole == "all":
        return ""
    check_whole(whole)
    return None


def check_whole(whole: str) -> None:
    """Refuse a mode of what is kept whole that is not one of WHOLE_MODES."""
    if whole not in WHOLE_MODES:
        raise ValueError(f"unknown mode {whole!r} of what is kept whole: {', '.join(WHOLE_MODES)}")


def whole_of(meta: object) -> str:
    """What a build keeps whole, as its leader published it in the manifest's meta ("whole");
    "none" for a build whose units are not pytest's (command mode, the API) or a meta that is
    not a JSON object."""
    whole = meta.get("whole") if isinstance(meta, Mapping) else None
    return whole if isinstance(whole, str) and whole in WHOLE_MODES else "none"


def back_to_front_order(units: Sequence[str], whole: str) -> list[str]:
    """A gone worker's leases (in the order they were granted) in the order they go back to the
    front of the queue: the most recently leased first, since the test a worker started first
    is the likeliest to have killed or hung it and those it never started are not; but what
    `whole` keeps together comes back in its own order, as a plain run would run it."""
    groups: list[list[str]] = []
    for unit in units:
        if groups and kept_together(groups[-1][-1], unit, whole):
            groups[-1].append(unit)
        else:
            groups.append([unit])
    return [unit for group in reversed(groups) for unit in group]


def kept_together(first: str, second: str, whole: str) -> bool:
    """Whether one worker must run both `first` and `second` (neighbours in the queue)."""
    key = whole_key(first, whole)
    return key is not None and key == whole_key(second, whole)


def through_group_end(front: Iterable[str], count: int, whole: str) -> list[str]:
    """The first `count` (at least one) of `front`, and after them every unit kept together
    with the last one (`kept_together`): what a queue leases at once, so that a reservation
    never ends inside a class (or file, or scope) however stale the worker's view of the queue
    was when it sized it."""
    check_whole(whole)
    taken: list[str] = []
    for unit in front:
        if len(taken) >= max(1, count) and not kept_together(taken[-1], unit, whole):
            break
        taken.append(unit)
    return taken


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
    if grouping in UNSPLIT_GROUPINGS:
        return _unsplit_plan(units, history, order=order, grouping=grouping, seed=seed)
    if order == "collected":
        return Plan(list(units))
    if order == "random":
        shuffled = list(units)
        random.Random(seed).shuffle(shuffled)
        return Plan(shuffled, frozenset(shuffled))
    if not any(unit in history for unit in units):
        return Plan(list(units))  # nothing known: collection order keeps fixtures warm
    seconds = estimate(units, history)
    share = sum(seconds.values()) / max(1, workers)
    blocks: list[Block] = []  # in collection order: a stable sort keeps it among equals
    split: list[list[Block]] = []
    range_starts: set[str] = set()
    for module, members in _groups(units, grouping).items():
        total = _length(members, seconds)
        pieces = _split(members, total, seconds, share, workers)
        if len(pieces) == 1:
            blocks.append(Block(module, members, total, 0, -1, key=total))
            continue
        range_starts.update(piece[0] for piece in pieces)
        module_blocks, place = [], 0  # places within the module: the forward rule's ranks
        for piece in pieces:
            module_blocks.append(
                Block(module, piece, _length(piece, seconds), place, place + len(piece) - 1)
            )
            place += len(piece)
        split.append(module_blocks)
        blocks.extend(module_blocks)
    served = promote(blocks, split, share, workers)
    return Plan([unit for block in served for unit in block.members], frozenset(range_starts))


def _length(members: Sequence[str], seconds: Mapping[str, float]) -> float:
    return sum(seconds[unit] for unit in members)


def _split(
    members: Sequence[str],
    total: float,
    seconds: Mapping[str, float],
    share: float,
    workers: int,
) -> list[list[str]]:
    """A group's ranges: itself whole, unless it is long against a worker's share (70 % of
    it or more) or, with several workers, holds a test that alone is RANGE_SHARE of a share
    (about a third): a test that long must find its own place in the build, not its
    module's."""
    if len(members) < 2 or share <= 0:
        return [list(members)]
    limit = RANGE_SHARE * share
    if total >= SPLIT_SHARE * share or (
        workers > 1 and total >= limit and max(seconds[unit] for unit in members) >= limit
    ):
        return ranges(members, seconds, limit)
    return [list(members)]


@dataclass(eq=False)  # a block is itself: found in an order by identity
class Block:
    """What a worker leases together: a whole group, or one range of a split group (`first`
    and `last`: the places of its first and last unit among its group's, in collection order;
    `last` is -1 for a whole group). `key` orders the serving (see `promote`)."""

    module: str
    members: list[str]
    length: float
    first: int
    last: int
    key: float = 0.0
    promoted: str = ""  # "", OWN or FRONT

    @property
    def is_range(self) -> bool:
        return self.last >= 0


OWN, FRONT = "own", "front"
FRONT_KEY = 1e12  # ranges served before everything else, longest first among themselves
MAX_TRIALS = 8  # ranges tried for promotion each round, the longest
MAX_ROUNDS = 8  # promotions at most
SIMULATION_BUDGET = 1_000_000  # blocks simulated in all, for one plan (about a second)
CLOSE_ENOUGH = 0.01  # a simulated end this near the lower bound is not improved on


@dataclass(frozen=True)
class Simulated:
    """A list-scheduling replay of a serving order: when each block ends and on which worker
    (by position in the order), the build's end, and how many blocks no worker could take
    going forward."""

    ends: list[float]
    workers: list[int]
    makespan: float
    backward: int


def simulate(served: Sequence[Block], workers: int) -> Simulated:
    """Each block, in serving order, goes to the worker free first among those the forward
    rule lets take it (queue/forward.py: a worker never takes a range of a module behind one
    it already took); when none may, to the worker free first, counted in `backward`."""
    # More workers than blocks: the extra ones would take nothing.
    free = [(0.0, worker) for worker in range(max(1, min(workers, len(served))))]
    marks: list[dict[str, int]] = [{} for _ in free]
    ends: list[float] = []
    taken_by: list[int] = []
    backward = 0
    for block in served:
        passed_over: list[tuple[float, int]] = []
        chosen = heapq.heappop(free)
        while block.is_range and marks[chosen[1]].get(block.module, -1) > block.first:
            passed_over.append(chosen)
            if not free:
                backward += 1
                chosen = min(passed_over)
                passed_over.remove(chosen)
                break
            chosen = heapq.heappop(free)
        for item in passed_over:
            heapq.heappush(free, item)
        start, worker = chosen
        end = start + block.length
        ends.append(end)
        taken_by.append(worker)
        heapq.heappush(free, (end, worker))
        if block.is_range:
            marks[worker][block.module] = max(marks[worker].get(block.module, -1), block.last)
    return Simulated(ends, taken_by, max(ends, default=0.0), backward)


def _set_keys(module_blocks: Sequence[Block]) -> None:
    """Promoted ranges by their own length (FRONT ones before everything); the rest in
    collection order at their longest."""
    rest = [block for block in module_blocks if not block.promoted]
    longest = max((block.length for block in rest), default=0.0)
    for block in module_blocks:
        base = FRONT_KEY if block.promoted == FRONT else 0.0
        block.key = base + block.length if block.promoted else longest


def _served(blocks: Sequence[Block]) -> list[Block]:
    return sorted(blocks, key=lambda block: -block.key)  # stable: ties keep collection order


def promote(
    blocks: Sequence[Block], split: Sequence[Sequence[Block]], share: float, workers: int
) -> list[Block]:
    """The serving order. A whole group is served by its length; a split group's ranges at
    first all at the place of its longest, in collection order. Then, round by round, the
    build is simulated (`simulate`) and one range promoted: served by its own length, or
    before everything else, but never later than it was. Tried are the longest ranges; kept
    is the promotion that ends the simulated build soonest, if it ends it sooner (a range
    ending late is promoted by its own length also when the end stays the same: the longest
    first is the safer order when durations vary) and sends no worker back. Once the
    simulated end is within 1 % of the lower bound (`share`, or the longest block) only such
    late ranges are promoted.

    At most half the workers' count of one module's ranges is promoted, so that a worker that
    took none is left for the ranges before them even when durations differ from the history
    (the simulation, exact about durations, would allow more, and a test a little slower than
    its history would then send a worker back). At most MAX_ROUNDS ranges are promoted in all,
    and the simulations of one plan are bounded (SIMULATION_BUDGET blocks), so that a suite of
    many modules is planned in about the time it takes to sort it."""
    for module_blocks in split:
        _set_keys(module_blocks)
    served = _served(blocks)
    if not split or workers < 2:
        return served
    current = simulate(served, workers)
    simulations_left = SIMULATION_BUDGET // max(1, len(blocks)) - 1
    bound = max(share, max(block.length for block in blocks))
    for _ in range(min(workers, MAX_ROUNDS)):
        if simulations_left <= 0:
            break
        near_bound = current.makespan <= bound * (1 + CLOSE_ENOUGH)
        found, used = _best_promotion(
            blocks, split, served, current, share, workers, near_bound, simulations_left
        )
        simulations_left -= used
        if found is None:
            break
        served, current = found
    return served


def _best_promotion(
    blocks: Sequence[Block],
    split: Sequence[Sequence[Block]],
    served: Sequence[Block],
    current: Simulated,
    share: float,
    workers: int,
    late_only: bool,
    simulations: int,
) -> tuple[tuple[list[Block], Simulated] | None, int]:
    """The best single promotion from `served` (see `promote`), applied, or None if none
    helps; and how many of the `simulations` allowed it used. `late_only`: the simulated end
    is already near the bound; only ranges ending after the share are promoted, by their own
    length."""
    end_of = {id(block): end for block, end in zip(served, current.ends, strict=True)}
    per_module = max(1, workers // 2)
    candidates = sorted(
        (
            (block, module_blocks)
            for module_blocks in split
            if sum(1 for block in module_blocks if block.promoted) < per_module
            for block in module_blocks
            if not block.promoted and (end_of[id(block)] > share or not late_only)
        ),
        key=lambda found: (end_of[id(found[0])] <= share, -found[0].length),
    )[:MAX_TRIALS]
    best: tuple[float, list[Block], Simulated, Block, Sequence[Block], str] | None = None
    used = 0
    for block, module_blocks in candidates:
        for how in (OWN,) if late_only else (OWN, FRONT):
            if used >= simulations:
                break
            block.promoted = how
            _set_keys(module_blocks)
            order = _served(blocks)
            if order.index(block) > served.index(block):
                block.promoted = ""  # by its own length it would come later: not a promotion
                _set_keys(module_blocks)
                continue
            trial = simulate(order, workers)
            used += 1
            block.promoted = ""
            _set_keys(module_blocks)
            if trial.backward > current.backward:
                continue
            late_tie = how == OWN and end_of[id(block)] > share
            better = trial.makespan < current.makespan - 1e-9 or (
                late_tie and trial.makespan <= current.makespan + 1e-9
            )
            if better and (best is None or trial.makespan < best[0] - 1e-9):
                best = (trial.makespan, order, trial, block, module_blocks, how)
    if best is None:
        return None, used
    _, order, trial, block, module_blocks, how = best
    block.promoted = how
    _set_keys(module_blocks)
    return (order, trial), used


def _groups(units: Sequence[str], grouping: str) -> dict[str, list[str]]:
    """The units by group, groups in order of their first unit, each in collection order."""
    groups: dict[str, list[str]] = {}
    for unit in units:
        groups.setdefault(scope_of(unit, grouping), []).append(unit)
    return groups


def _unsplit_plan(
    units: Sequence[str], history: Mapping[str, float], *, order: str, grouping: str, seed: int
) -> Plan:
    """pytest-xdist's loadfile and loadscope: every group whole and contiguous, its tests in
    collection order (a scope's functions around a class come together, as under xdist); the
    groups in collection order, shuffled, or longest first."""
    groups = list(_groups(units, grouping).values())
    if order == "random":
        random.Random(seed).shuffle(groups)
    elif order == "slowest" and any(unit in history for unit in units):
        seconds = estimate(units, history)
        groups.sort(key=lambda members: -sum(seconds[unit] for unit in members))
    return Plan([unit for members in groups for unit in members])


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
