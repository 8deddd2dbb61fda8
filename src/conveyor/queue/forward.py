"""A worker goes forward through a module, never back: the rule every backend applies
(redis_scripts/_lib.lua's take_pending is the same rule in Lua, held to this one by the
conformance suite).

A plain run runs a module's tests in collection order; suites whose later tests change what
earlier ones see exist (pyparsing's does). Several paths could send a worker back: with timing
history the leader serves a long module's late slow ranges first; a steal takes the tail of
another worker's backlog; a hand-back, a crash or an expiry puts units back at the front. So
the queue keeps, for each worker and each module, the highest rank it has leased there (its
*mark*), and a unit ranked below the worker's mark is *behind* it. Each worker's tests of a
module are then a subsequence of collection order, as under `-k`. A build that keeps
classes whole (the default) ranks every unit, first run or not: a steal that sent its thief
back to a module's earlier tests failed a real suite whose later tests leave state behind
(jsonschema's). So an idle worker that has passed everything another holds of a module waits
for it rather than run those tests out of order: a correct verdict before an even end. Other
builds rank only the units of modules that history split (`--dist test` asks for no order;
a file or scope never goes to two workers; `--order random` ranks nothing).

A reservation passes over units behind its worker (looking at most SCAN units into the queue)
and leases from the first one that is not, and it holds at most one range of a split module:
a worker sizes its reservation by the range it saw at the front, and the front may have moved
on since. When every unit it looks at is behind, it waits while another live worker could run
the front unit forward, and otherwise takes the front anyway: nothing is ever stuck, and a
build whose workers have all gone past a unit still runs it. A worker that hands units back
unstarted (a slow run without history) has not gone past them: its mark comes down to the
lowest of them (`lowered`), so it may take them again, and a worker past them waits for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from conveyor.scheduling import kept_together

SCAN = 500  # pending units a reservation looks through for one its worker may run


def file_of(unit: str) -> str:
    return unit.partition("::")[0]


def ranks(units: Sequence[str], meta: Mapping[str, object]) -> dict[str, int]:
    """The rank of each unit the forward rule holds, from the leader's meta: every unit when
    the build keeps classes whole (`whole`), else the units of split modules (`range_starts`,
    the first unit of each range, names them); none when every unit starts a range, as under
    `--order random`, which asks for no order. `collection_order` gives each unit's place in
    collection order (listed in serving order; absent when the two orders are one). A rank is
    twice that place, plus one for a range's first unit (`starts_a_range`): ranks order units
    as collection order does."""
    starts = meta.get("range_starts")
    first = (
        {start for start in starts if isinstance(start, str)} if isinstance(starts, list) else set()
    )
    if len(units) > 1 and len(first) >= len(units):
        return {}
    every = meta.get("whole") == "class"
    if not every and not first:
        return {}
    split = {file_of(start) for start in first}
    order = meta.get("collection_order")
    if not isinstance(order, list) or len(order) != len(units):
        order = list(range(len(units)))
    return {
        unit: 2 * place + (unit in first)
        for unit, place in zip(units, order, strict=True)
        if isinstance(place, int) and (every or file_of(unit) in split)
    }


def starts_a_range(rank: int | None) -> bool:
    return rank is not None and rank % 2 == 1


def is_behind(rank: int | None, mark: int | None) -> bool:
    """Whether a unit of `rank` lies behind a worker whose mark in its module is `mark`."""
    return rank is not None and mark is not None and rank < mark


def behind(rank_of: Callable[[str], int | None], marks: Mapping[str, int]) -> Callable[[str], bool]:
    """Whether a unit lies behind a worker with `marks` (module -> its mark)."""
    return lambda unit: is_behind(rank_of(unit), marks.get(file_of(unit)))


def marked(
    marks: dict[str, int], units: Iterable[str], rank_of: Callable[[str], int | None]
) -> None:
    """Raise `marks` (module -> highest rank leased) for newly leased `units`."""
    for unit in units:
        raise_mark(marks, unit, rank_of(unit))


def raise_mark(marks: dict[str, int], unit: str, rank: int | None) -> None:
    """Raise `marks` (module -> highest rank leased) for one newly leased unit of `rank`."""
    if rank is not None:
        module = file_of(unit)
        marks[module] = max(rank, marks.get(module, rank))


def lowered(
    marks: Mapping[str, int], units: Iterable[str], rank_of: Callable[[str], int | None]
) -> dict[str, int]:
    """The marks a worker keeps after handing `units` back unstarted: in each module, no
    higher than the lowest of them. A worker leases forward, so what it hands back are the
    highest ranks it leased in a module; it ran none of them, and may take them again (else
    a worker already past them all, finding no one who could run them forward, would run them
    out of order). Only a worker that had to take units behind it (the last resort of
    `choose`'s caller) can hand back lower ranks than ones it ran, in a module whose order it
    has already left."""
    lowest: dict[str, int] = {}
    for unit in units:
        rank = rank_of(unit)
        module = file_of(unit)
        if rank is not None and module in marks:
            lowest[module] = min(rank, lowest.get(module, rank))
    return {module: min(marks[module], rank) for module, rank in lowest.items()}


def choose(
    front: Iterable[str],
    count: int,
    whole: str,
    rank_of: Callable[[str], int | None],
    marks: Mapping[str, int],
) -> list[str] | None:
    """What a reservation of `count` takes from `front` (pending units in serving order) for
    a worker with `marks`: the first unit not behind it among the first SCAN, the units after
    it up to `count`, and every unit kept together with the last one taken
    (`scheduling.through_group_end`), stopping at the start of another range and at a unit
    behind the worker. [] when nothing is pending; None when every unit looked at is behind
    (see `others_could_run`)."""
    mark = dict(marks)
    taken: list[str] = []
    looked = 0
    for unit in front:
        rank = rank_of(unit)
        behind = is_behind(rank, mark.get(file_of(unit)))
        if not taken:
            if looked >= SCAN:
                return None
            looked += 1
            if behind:
                continue
        else:
            full = len(taken) >= max(1, count) and not kept_together(taken[-1], unit, whole)
            if behind or starts_a_range(rank) or full:
                break
        taken.append(unit)
        raise_mark(mark, unit, rank)
    if not taken and looked:
        return None
    return taken


def others_could_run(
    unit: str,
    rank: int,
    worker: str,
    marks_of: Mapping[str, Mapping[str, int]],
    last_seen: Mapping[str, float],
    since: float,
) -> bool:
    """Whether a worker other than `worker`, seen since `since` (alive: it reserved, claimed
    or heartbeat within a lease's lifetime), could run `unit` (of collection `rank`) forward:
    the reservation of a worker it is behind then waits for that one."""
    module = file_of(unit)
    return any(
        other != worker
        and seen >= since
        and not is_behind(rank, marks_of.get(other, {}).get(module))
        for other, seen in last_seen.items()
    )
