"""Which leases a steal moves: the rule every backend applies (redis_scripts/steal.lua is the
same rule in Lua, held to this one by the conformance suite).

A steal happens at the end of a build, when an idle worker would otherwise wait for a busy one
to drain its private backlog. It takes from the worker with the most unclaimed leases the tail
of them (the ones the victim would have run last), about half, so both end near the same time.
It never cuts inside what the build keeps on one worker (a class, by default: its tests share
class-scoped fixtures and run in order; see `scheduling.whole_key`) when any other cut is
possible.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from conveyor.scheduling import kept_together


@dataclass(frozen=True)
class Held:
    """One lease of a worker, in that worker's reservation order."""

    unit: str
    claimed: bool


def clean_boundary(before: str | None, first: str, whole: str = "class") -> bool:
    """Whether a worker may keep `before` while another runs `first` (the next unit): true
    unless `whole` keeps them together (both tests of one class, by default)."""
    return before is None or not kept_together(before, first, whole)


def never(unit: str) -> bool:
    return False


def cut(
    held: Sequence[Held],
    max_units: int,
    whole: str = "class",
    behind: Callable[[str], bool] = never,
) -> list[str]:
    """The suffix of a victim's unclaimed leases a thief takes ([] when none may be taken).

    `held` is every lease of the victim in its reservation order. Of its m unclaimed leases
    the target is the last min(ceil(m / 2), max_units). The steal starts at the first
    unclaimed lease of the suffix whose boundary with the lease before it (claimed or not) is
    clean: the target start if clean, else the nearest clean start later (a smaller steal),
    else the nearest clean start earlier that still takes at most `max_units`, else nothing.
    A start is not clean either when a lease it would take lies `behind` the thief in a split
    module (queue/forward.py)."""
    positions = [index for index, lease in enumerate(held) if not lease.claimed]
    count = len(positions)
    take = min((count + 1) // 2, max(1, max_units))
    if take == 0:
        return []
    lowest = count - min(count, max(1, max_units))
    target = count - take
    for start in [*range(target, count), *range(target - 1, lowest - 1, -1)]:
        at = positions[start]
        before = held[at - 1].unit if at > 0 else None
        taken = [held[index].unit for index in positions[start:]]
        if clean_boundary(before, held[at].unit, whole) and not any(map(behind, taken)):
            return taken
    return []


def victims(held_by: Mapping[str, Sequence[Held]], thief: str) -> list[str]:
    """Other workers holding unclaimed leases, the most first (ties: smallest id first)."""
    counts = {
        worker: sum(not lease.claimed for lease in leases)
        for worker, leases in held_by.items()
        if worker != thief
    }
    return sorted((w for w, n in counts.items() if n > 0), key=lambda w: (-counts[w], w))


def plan(
    held_by: Mapping[str, Sequence[Held]],
    thief: str,
    max_units: int,
    whole: str = "class",
    behind: Callable[[str], bool] = never,
) -> tuple[str, list[str]] | None:
    """(victim, units to move) of a steal by `thief`, or None when nothing may be stolen;
    `behind` says which units lie behind the thief (queue/forward.py)."""
    for victim in victims(held_by, thief):
        taken = cut(held_by[victim], max_units, whole, behind)
        if taken:
            return victim, taken
    return None
