"""How long the suite would take on N workers: `conveyor plan`.

The answer comes from running conveyor's own scheduling on the timing history, not from a
formula: the leader's serving order (`scheduling.plan`), and every worker asking for batches as
a real worker does (`batch_policy.BatchRule`), taking them from the front of one queue. Each
test costs its smoothed duration plus the gap between tests that recorded builds measured
(reservations, results, pytest's own per-test work); each build pays a start-up (process start
to the first test) and a tail (the last test's end to the report), also from recorded builds.
Everything here is pure: the caller reads the history, this module only computes.
"""

from __future__ import annotations

import heapq
import itertools
import math
import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from conveyor.batch_policy import CLAIM_AHEAD_S, BatchRule
from conveyor.scheduling import estimate, kept_together, plan, scope_of, through_group_end

# Without any recorded build: a typical `conveyor run` on a small machine takes about this long
# from the command to the first test (interpreter, pytest, collection in every worker) and from
# the last test to its end (the report).
DEFAULT_STARTUP_S = 2.0
DEFAULT_TAIL_S = 0.3
DEFAULT_GAP_S = 0.002
# Overheads follow the machine and the code as they are now: only the most recent builds at each
# worker count are used (the median of them, so one slow build does not move the plan).
RECENT_BUILDS = 7
RECENT_DURATIONS = 16  # a worker sizes batches by the mean of its last 16 tests
KNEE_GAIN = 0.10  # doubling the workers gains less than this: more workers are not worth it
DEFAULT_WORKER_COUNTS = (1, 2, 4, 8, 16, 32)


def _by_workers(known: Mapping[int, float], workers: int, default: float) -> float:
    """A figure at this many local workers: measured at that count, else a straight line
    through the counts measured (start-up and per-test overhead grow with the processes a
    machine runs), never below the least measured, else the one count measured, else the
    default."""
    if workers in known:
        return known[workers]
    if len(known) >= 2:
        xs, ys = list(known), list(known.values())
        mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
        spread = sum((x - mean_x) ** 2 for x in xs)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread
        return max(min(ys), mean_y + slope * (workers - mean_x))
    if known:
        return next(iter(known.values()))
    return default


@dataclass(frozen=True)
class Overheads:
    """What a build costs besides its tests, from recorded builds (or the defaults): the
    start-up, the gap between tests on a worker and the tail, by local worker count (on a
    machine with fewer cores than workers, each grows with the count: every worker imports and
    collects at the start, and stops, reports and exits at the end)."""

    startup_by_workers: Mapping[int, float] = field(default_factory=dict)
    tail_by_workers: Mapping[int, float] = field(default_factory=dict)
    gap_by_workers: Mapping[int, float] = field(default_factory=dict)
    recorded_builds: int = 0

    def startup_s(self, workers: int) -> float:
        return _by_workers(self.startup_by_workers, workers, DEFAULT_STARTUP_S)

    def tail_s(self, workers: int) -> float:
        return _by_workers(self.tail_by_workers, workers, DEFAULT_TAIL_S)

    def gap_s(self, workers: int) -> float:
        return _by_workers(self.gap_by_workers, workers, DEFAULT_GAP_S)


def overheads_from(builds: Sequence[Mapping[str, Any]]) -> Overheads:
    """Per worker count, medians over the RECENT_BUILDS newest recorded builds ({"workers",
    "startup_s", "tail_s", "gap_s", "with_history"} each, oldest first); records missing a
    figure or holding nonsense are skipped. A plan simulates a build that timing history
    orders, so builds without history (a first run reserves one test at a time: its gap between
    tests is another) are left out, unless no other build was recorded."""
    planned = [record for record in builds if record.get("with_history") is not False]
    by_count: dict[int, list[Mapping[str, Any]]] = {}
    for record in planned or builds:
        workers = record.get("workers")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            continue
        if _seconds(record.get("startup_s")) is not None:
            by_count.setdefault(workers, []).append(record)

    def medians(name: str) -> dict[int, float]:
        found = {}
        for workers, records in sorted(by_count.items()):
            values = [
                v for r in records[-RECENT_BUILDS:] if (v := _seconds(r.get(name))) is not None
            ]
            if values:
                found[workers] = statistics.median(values)
        return found

    return Overheads(
        startup_by_workers=medians("startup_s"),
        tail_by_workers=medians("tail_s"),
        gap_by_workers=medians("gap_s"),
        recorded_builds=sum(len(records) for records in by_count.values()),
    )


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and value >= 0 else None


# Setup phases shorter than this are noise, not a fixture worth modelling.
MIN_SETUP_S = 0.01
SETUP_SMOOTHING = 0.5  # as the timing history's, so that the two subtract consistently


@dataclass(frozen=True)
class Setups:
    """What module setups cost: per module, the longest setup phase of its tests (a module
    fixture, paid when a worker enters the module); per test, the setup it has carried in the
    timing history, smoothed as the history is, so that durations minus it leave the test."""

    modules: Mapping[str, float] = field(default_factory=dict)
    tests: Mapping[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"modules": dict(self.modules), "tests": dict(self.tests)}

    @classmethod
    def from_json(cls, stored: Any) -> Setups:
        if not isinstance(stored, Mapping):
            return cls()

        def part(name: str) -> dict[str, float]:
            raw = stored.get(name)
            raw = raw if isinstance(raw, Mapping) else {}
            return {str(k): v for k, val in raw.items() if (v := _seconds(val)) is not None}

        return cls(part("modules"), part("tests"))


def merge_setups(previous: Setups, setup_by_test: Mapping[str, float]) -> Setups:
    """`previous` updated with one build's setup phases ({test: seconds}, every test run)."""

    def smooth(old: float | None, new: float) -> float:
        return new if old is None else SETUP_SMOOTHING * new + (1 - SETUP_SMOOTHING) * old

    tests = dict(previous.tests)
    longest: dict[str, float] = {}
    for test, seconds in setup_by_test.items():
        module = scope_of(test, "module")
        longest[module] = max(longest.get(module, 0.0), seconds)
        if test in tests or seconds >= MIN_SETUP_S:
            # A test of a known module with no entry carried no setup so far, and the history
            # smooths its duration from there; one of a new module is seen for the first time.
            old = tests.get(test, 0.0 if module in previous.modules else None)
            tests[test] = round(smooth(old, seconds), 6)
    modules = dict(previous.modules)
    for module, seconds in longest.items():
        if module in modules or seconds >= MIN_SETUP_S:
            modules[module] = round(smooth(modules.get(module), seconds), 6)
    return Setups(
        {m: v for m, v in modules.items() if v >= MIN_SETUP_S / 10},
        {t: v for t, v in tests.items() if v >= MIN_SETUP_S / 10},
    )


@dataclass(frozen=True)
class Run:
    """One test on one simulated worker, in seconds from the first test's start."""

    worker: int
    unit: str
    start: float
    duration_s: float


@dataclass(frozen=True)
class Schedule:
    """A simulated build: which worker ran what, when."""

    workers: int
    runs: tuple[Run, ...]

    @property
    def span_s(self) -> float:
        return max((run.start + run.duration_s for run in self.runs), default=0.0)

    @property
    def busy_s(self) -> float:
        return sum(run.duration_s for run in self.runs)


class _Workers:
    """The simulated workers' timelines: what each runs when, and where each will be free."""

    def __init__(
        self, total: int, seconds: Mapping[str, float], gap_s: float, setups: Setups, whole: str
    ):
        self.seconds, self.gap_s, self.setups, self.whole = seconds, gap_s, setups, whole
        self.runs: list[list[Run]] = [[] for _ in range(total)]
        self.recent = [deque[float](maxlen=RECENT_DURATIONS) for _ in range(total)]
        self.in_module: list[str | None] = [None] * total
        self.free_at = [0.0] * total
        self.heap = [(0.0, index) for index in range(total)]

    def next_free(self) -> tuple[float, int] | None:
        """The worker free earliest (ties: the lower index); stale entries are skipped."""
        while self.heap:
            now, worker = heapq.heappop(self.heap)
            if now == self.free_at[worker]:
                return now, worker
        return None

    def typical(self, worker: int) -> float | None:
        recent = self.recent[worker]
        return statistics.fmean(recent) if recent else None

    def run(self, worker: int, units: Sequence[str], now: float) -> None:
        for unit in units:
            module = scope_of(unit, "module")
            cost = max(0.0, self.seconds[unit] - self.setups.tests.get(unit, 0.0)) + self.gap_s
            if module != self.in_module[worker]:
                cost += self.setups.modules.get(module, 0.0)  # pytest sets the module up again
                self.in_module[worker] = module
            self.runs[worker].append(Run(worker, unit, now, cost))
            self.recent[worker].append(cost)
            now += cost
        self.free_at[worker] = now
        heapq.heappush(self.heap, (now, worker))

    def steal(self, thief: int, now: float) -> list[str]:
        """What an idle worker takes when nothing is pending (`Queue.steal`): the back half of
        the unclaimed runs of the worker with most of them, never from inside a class (or
        what else the grouping keeps whole).
        Claimed: what runs now, the next test, and CLAIM_AHEAD_S of work beyond."""
        best: tuple[int, int, int] | None = None  # (unclaimed, victim, first unclaimed index)
        for victim, runs in enumerate(self.runs):
            if victim == thief:
                continue
            later = [i for i, run in enumerate(runs) if run.start > now]
            claimed_until = now + CLAIM_AHEAD_S
            unclaimed = [i for i in later[1:] if runs[i].start > claimed_until]
            if unclaimed and (best is None or len(unclaimed) > best[0]):
                best = (len(unclaimed), victim, unclaimed[0])
        if best is None:
            return []
        count, victim, first = best
        runs = self.runs[victim]
        cut = len(runs) - math.ceil(count / 2)
        while cut < len(runs) and kept_together(runs[cut - 1].unit, runs[cut].unit, self.whole):
            cut += 1  # a smaller steal rather than a split class
        if cut >= len(runs) or cut < first:
            return []
        taken = [run.unit for run in runs[cut:]]
        del runs[cut:]
        self.free_at[victim] = runs[-1].start + runs[-1].duration_s
        heapq.heappush(self.heap, (self.free_at[victim], victim))
        return taken


class _Front:
    """The shared queue's front, and what each simulated worker knows of it."""

    def __init__(self, queue: Sequence[str], policy: BatchRule, total: int) -> None:
        self.queue, self.policy, self.position = queue, policy, 0
        # A worker sizes each reservation by the pending count of its last reply, which other
        # workers' reservations have made stale since; its first one by the count when it
        # starts (a real worker reads the status then, after those that started earlier).
        self.known_pending: list[int | None] = [None] * total
        self.affinity = [0] * total

    @property
    def empty(self) -> bool:
        return self.position >= len(self.queue)

    def take(self, worker: int, typical: float | None) -> list[str]:
        known = self.known_pending[worker]
        pending = len(self.queue) - self.position if known is None else known
        want = self.policy.size(pending, affinity=self.affinity[worker], typical_test_s=typical)
        # The queue leases through the end of the last test's class (`Queue.reserve`).
        front = (self.queue[index] for index in range(self.position, len(self.queue)))
        taken = through_group_end(front, want, self.policy.whole)
        self.position += len(taken)
        self.known_pending[worker] = len(self.queue) - self.position
        self.affinity[worker] = self.policy.run_after(taken[-1])
        return taken


def simulate(
    units: Sequence[str],
    history: Mapping[str, float],
    *,
    workers: int,
    machines: int = 1,
    order: str = "slowest",
    grouping: str = "module",
    seed: int = 0,
    gap_s: float = 0.0,
    setups: Setups | None = None,
) -> Schedule:
    """The schedule conveyor would run: `machines` machines of `workers` workers each share one
    queue. The leader plans for its own worker count, as a real leader does; every worker
    reserves when it has nothing left, the one free earliest first (ties: the lower index),
    and once nothing is pending an idle worker steals from the busiest. With `setups`, a
    worker pays a module's setup each time it enters the module, and each test costs its
    duration without the setup it has paid in earlier builds."""
    serving = plan(units, history, order=order, grouping=grouping, workers=workers, seed=seed)
    queue = serving.order
    policy = BatchRule(
        queue,
        serving.range_starts,
        grouping=grouping,
        worker_count=workers,
        has_history=any(unit in history for unit in units),
        known=history.keys(),
    )
    total = workers * machines
    sim = _Workers(total, estimate(queue, history), gap_s, setups or Setups(), policy.whole)
    front = _Front(queue, policy, total)
    while (free := sim.next_free()) is not None:
        now, worker = free
        if front.empty:
            stolen = sim.steal(worker, now)
            if stolen:
                sim.run(worker, stolen, now)
            continue
        sim.run(worker, front.take(worker, sim.typical(worker)), now)
    return Schedule(total, tuple(run for runs in sim.runs for run in runs))


@dataclass(frozen=True)
class Prediction:
    """One row of `conveyor plan`: `wall_s` = start-up + simulated testing + tail."""

    workers: int  # on each machine
    machines: int
    wall_s: float
    testing_s: float
    lower_bound_s: float  # start-up + max(longest test, busy time / all workers) + tail
    utilisation: float
    startup_s: float
    tail_s: float
    schedule: Schedule

    @property
    def total_workers(self) -> int:
        return self.workers * self.machines


def predict(
    units: Sequence[str],
    history: Mapping[str, float],
    worker_counts: Sequence[int],
    overheads: Overheads,
    *,
    machines: int = 1,
    order: str = "slowest",
    grouping: str = "module",
    seed: int = 0,
    setups: Setups | None = None,
) -> list[Prediction]:
    rows = []
    for workers in sorted(set(worker_counts)):
        schedule = simulate(
            units,
            history,
            workers=workers,
            machines=machines,
            order=order,
            grouping=grouping,
            seed=seed,
            gap_s=overheads.gap_s(workers),
            setups=setups,
        )
        startup, tail = overheads.startup_s(workers), overheads.tail_s(workers)
        fixed = startup + tail
        span = schedule.span_s
        everyone = workers * machines
        longest_run = max((run.duration_s for run in schedule.runs), default=0.0)
        rows.append(
            Prediction(
                workers=workers,
                machines=machines,
                wall_s=fixed + span,
                testing_s=span,
                lower_bound_s=fixed + max(longest_run, schedule.busy_s / everyone),
                utilisation=schedule.busy_s / (everyone * span) if span > 0 else 0.0,
                startup_s=startup,
                tail_s=tail,
                schedule=schedule,
            )
        )
    return rows


def knee(rows: Sequence[Prediction]) -> Prediction | None:
    """The first worker count past which doubling the workers shortens the wall time by less
    than KNEE_GAIN (gains between counts that are not a doubling apart are scaled to one)."""
    for current, following in itertools.pairwise(rows):
        if current.wall_s <= 0:
            return current
        doublings = math.log2(following.workers / current.workers)
        ratio = following.wall_s / current.wall_s
        gain = 1 - ratio ** (1 / doublings) if ratio > 0 else 1.0
        if gain < KNEE_GAIN:
            return current
    return rows[-1] if rows else None


def knee_reached(rows: Sequence[Prediction], found: Prediction | None) -> bool:
    """Whether `found` (what `knee` returned) is a knee, not merely the last count simulated
    while doubling still paid."""
    return found is not None and (len(rows) == 1 or found is not rows[-1])


def parse_worker_counts(text: str) -> list[int]:
    """ "1,2,4,8" into [1, 2, 4, 8]; ValueError naming the bad part."""
    counts = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) < 1:
            raise ValueError(f"--workers takes positive numbers separated by commas, got {part!r}")
        counts.append(int(part))
    if not counts:
        raise ValueError("--workers needs at least one worker count, e.g. --workers 2,4,8")
    return sorted(set(counts))
