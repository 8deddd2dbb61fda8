"""How many workers a build's plan is made for: the whole fleet, not the leader's machine.

The leader plans the serving order (conveyor.scheduling) before any other machine has joined,
and the plan depends on the workers' count: a module is split into ranges only when it is long
against one worker's share of the build. A fleet of machines running `-n 1` each planned with
the leader's own count (one) would never split anything, and its batches would be sized for a
worker alone. The count comes, in this order, from the CI's own parallelism (the machines of
a GitLab, Buildkite or CircleCI parallel job, each assumed to run as many workers as this one),
then from the suite's recent builds (the workers seen there beyond their reporters' machines,
assumed to come again), and otherwise from this machine alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from conveyor.build_memory import MEMORY_ERRORS, memory_store
from conveyor.worker_settings import WorkerSettings

RECENT_BUILDS = 5


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


def other_machines_workers(builds: Sequence[Mapping[str, Any]]) -> int:
    """Workers that ran on other machines than the reporter's, the most in the RECENT_BUILDS
    newest builds that recorded both counts (0 when none did). The most, because a plan for
    too few workers splits nothing (one machine's build of the suite, run by hand against the
    same Redis, would otherwise unplan the next fleet), while one for a few too many only cuts
    some modules that need not have been."""
    found: list[int] = []
    for record in reversed(builds):
        fleet, local = _count(record.get("fleet_workers")), _count(record.get("workers"))
        if fleet is not None and local is not None:
            found.append(max(0, fleet - local))
            if len(found) == RECENT_BUILDS:
                break
    return max(found, default=0)


def planned_workers(
    local: int,
    *,
    networked: bool,
    ci_machines: int | None,
    builds: Sequence[Mapping[str, Any]] = (),
) -> int:
    """The workers' count the plan is made for. Only a queue on a server has other machines."""
    local = max(1, local)
    if not networked:
        return local
    if ci_machines is not None and ci_machines > 1:
        return local * ci_machines
    return local + other_machines_workers(builds)


def recorded_builds(store: Any) -> list[Mapping[str, Any]]:
    """The build memory's recent builds, or none where it cannot be read: a plan made for
    this machine alone is still a plan, so reading this never fails a build."""
    if store is None:
        return []
    try:
        return list(store.builds())
    except MEMORY_ERRORS:
        return []


def plan_workers(settings: WorkerSettings, config: Any, queue: Any) -> int:
    """What the leader of a build plans for (see the module docstring)."""
    local = settings.worker_count
    if not settings.networked_queue:
        return max(1, local)
    builds: list[Mapping[str, Any]] = []
    if not (settings.ci_machines or 0) > 1:
        builds = recorded_builds(memory_store(settings.history, config, queue))
    return planned_workers(local, networked=True, ci_machines=settings.ci_machines, builds=builds)
