"""Which leases a steal moves: the rule every backend applies (redis_scripts/steal.lua is the
same rule in Lua, held to this one by the conformance suite).

A steal happens at the end of a build, when an idle worker would otherwise wait for a busy one
to drain its private backlog. It takes from the worker with the most unclaimed leases the tail
of them (the ones the victim would have run last), about half, so both end near the same time;
when that tail lies behind the thief (a module it has gone past, queue/forward.py), the last
of them that do not.
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
    """The run of a victim's unclaimed leases a thief takes ([] when none may be taken).

    `held` is every lease of the victim in its reservation order. The steal ends with the
    victim's last unclaimed lease when it can; when those last leases lie `behind` the thief
    (queue/forward.py: another module's tests it has passed), it ends instead with the last
    one that does not, where that end is a clean boundary, and the victim keeps what follows.
    Either way the victim's leases stay in their order, and so do the thief's."""
    positions = [index for index, lease in enumerate(held) if not lease.claimed]
    for end in _ends(held, positions, whole, behind):
        taken = _cut_ending_at(held, positions, end, max_units, whole, behind)
        if taken:
            return taken
    return []


def _ends(
    held: Sequence[Held], positions: Sequence[int], whole: str, behind: Callable[[str], bool]
) -> list[int]:
    """Where a steal may end, in `positions`: after the last unclaimed lease, else after the
    last one not behind the thief when the boundary there splits nothing kept whole."""
    ends = [len(positions)]
    last = next(
        (k for k in range(len(positions) - 1, -1, -1) if not behind(held[positions[k]].unit)),
        None,
    )
    if last is not None and last + 1 < len(positions):
        after = held[positions[last] + 1].unit
        if clean_boundary(held[positions[last]].unit, after, whole):
            ends.append(last + 1)
    return ends


def _cut_ending_at(
    held: Sequence[Held],
    positions: Sequence[int],
    end: int,
    max_units: int,
    whole: str,
    behind: Callable[[str], bool],
) -> list[str]:
    """The leases positions[start:end] a steal takes, [] when no start will do. Of the m
    unclaimed leases the target is about half (min(ceil(m / 2), max_units), and no more than
    lie before `end`). The steal starts at the target if the boundary with the lease before
    it (claimed or not) is clean, else at the nearest clean start later (a smaller steal),
    else at the nearest clean start earlier that still takes at most `max_units`, else
    nothing. A start is not clean either when a lease it would take lies `behind` the thief."""
    limit = max(1, max_units)
    take = min((len(positions) + 1) // 2, limit, end)
    if take == 0:
        return []
    lowest = end - min(end, limit)
    target = end - take
    for start in [*range(target, end), *range(target - 1, lowest - 1, -1)]:
        at = positions[start]
        before = held[at - 1].unit if at > 0 else None
        taken = [held[index].unit for index in positions[start:end]]
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
