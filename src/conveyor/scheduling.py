"""The order in which the queue serves tests.

The build ends when its last worker ends, so the long tests must not come last: with timing
history the queue serves the slowest first (longest-processing-time first, which lands within a
few percent of the best possible finish). Tests of one module stay together, so that a worker
taking a run of them keeps the module's fixtures alive, unless the module is so long that
keeping it whole would itself unbalance the build (the Knapsack rule: a group taking 70 % or
more of one worker's share is split). A group is split only at class boundaries, into
contiguous ranges that keep collection order inside them: tests inside a class run as they
would in a plain run.

A split module's ranges are served in collection order at the place of their longest, except
the ranges that would then end after the build's ideal end (a long range late in a long
module, whose turn comes when the workers have run the ranges before it): up to half the
workers' count of them, the longest, are served first, each by its own length (`promoted`).
Served so, a worker could run a later range of a module and then an earlier one, which a plain
run never does (three of pyparsing's tests failed so): the queue keeps each worker going
forward through a split module (queue/forward.py), so the tests one worker runs of it are in
collection order, as under `-k`. The ranges before the promoted ones are left to the workers
that took none, which is why at most half are promoted.

`--dist file` and `--dist scope` (pytest-xdist's loadfile and loadscope) never split a group:
each file, or each scope (a class; a module's tests outside classes), is served whole and
contiguous, and the queue leases it to one worker whole (`whole_key`).
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ORDERS = ("slowest", "collected", "random")
GROUPINGS = ("module", "class", "test", "file", "scope")
# What the queue never splits between workers, by grouping (see `whole_key`): a class for the
# module and class groupings; a whole file for `file` (pytest-xdist's loadfile); a class, or a
# module's tests outside classes, for `scope` (loadscope); nothing for `test` (load).
WHOLE_BY_GROUPING = {
    "module": "class",
    "class": "class",
    "test": "none",
    "file": "file",
    "scope": "scope",
}
WHOLE_MODES = ("class", "file", "scope", "none")
UNSPLIT_GROUPINGS = ("file", "scope")  # groups the planner never cuts into ranges
SPLIT_SHARE = 0.7
RANGE_SHARE = 0.35  # a split group's ranges are at most this share of a worker's work


def scope_of(nodeid: str, grouping: str) -> str:
    """The group a test belongs to: its file (module, file), its class or else its file
    (class, scope), or itself (test)."""
    if grouping == "test":
        return nodeid
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
    groups = _groups(units, grouping)
    share = sum(seconds.values()) / max(1, workers)
    blocks: list[tuple[float, list[str]]] = []
    range_starts: set[str] = set()
    for members in groups.values():
        total = sum(seconds[unit] for unit in members)
        if len(members) > 1 and share > 0 and total >= SPLIT_SHARE * share:
            pieces = ranges(members, seconds, RANGE_SHARE * share)
            if len(pieces) > 1:
                range_starts.update(piece[0] for piece in pieces)
            lengths = [sum(seconds[unit] for unit in piece) for piece in pieces]
            first = promoted(lengths, share, workers)
            blocks.extend((lengths[index], pieces[index]) for index in first)
            rest = [index for index in range(len(pieces)) if index not in first]
            if rest:
                # The rest keep collection order, at the place of their longest.
                longest = max(lengths[index] for index in rest)
                blocks.extend((longest, pieces[index]) for index in rest)
        else:
            blocks.append((total, members))
    blocks.sort(key=lambda block: -block[0])  # stable: ties keep collection order
    return Plan([unit for _, members in blocks for unit in members], frozenset(range_starts))


def promoted(lengths: Sequence[float], share: float, workers: int) -> set[int]:
    """The ranges of a split module (their lengths in collection order) served first, by their
    own length: those that would end after `share` (the build's ideal end) if the `workers`
    ran the module's ranges in collection order from the start, at most half the workers'
    count of them, the longest."""
    late: list[int] = []
    before = 0.0
    for index, length in enumerate(lengths):
        if before / max(1, workers) + length > share:
            late.append(index)
        before += length
    return set(sorted(late, key=lambda index: -lengths[index])[: workers // 2])


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
