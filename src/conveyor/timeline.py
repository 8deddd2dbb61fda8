"""The build timeline: why a build took as long as it did.

Everything comes from the build's event stream: a result carries when its test started and how
long it ran, so one lane per worker and one bar per test attempt rebuild the schedule exactly.
The figures say how far the wall time is from what the tests allow (the lower bound) and where
workers sat idle; the page draws the lanes.

conveyor.timeline_page draws it as one self-contained HTML file.
"""

from __future__ import annotations

import bisect
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from conveyor.queue.protocol import (
    EVENT_FINISHED,
    EVENT_LEASE_EXPIRED,
    EVENT_REQUEUED,
    EVENT_RESULT,
    EVENT_UNIT_CRASHED,
    EVENT_WORKER_JOINED,
    EVENT_WORKER_LOST,
    Event,
)

# One outcome per bar, in legend order; the colours are shared by the legend and the canvas.
OUTCOME_COLOURS: dict[str, str] = {
    "passed": "#3e9c4b",
    "failed": "#d62839",
    "error": "#f07f13",
    "skipped": "#a9b0b8",
    "xfail": "#9b8ac4",
    "xpass": "#e0b520",
    "rerun": "#f2a65a",
    "crash": "#5c1f73",
    "timeout": "#7a0c0c",
}
OUTCOMES: tuple[str, ...] = tuple(OUTCOME_COLOURS)
# Instants drawn on a lane: crashes that cannot be placed as a bar, lost workers, expired leases.
MARKER_COLOURS: dict[str, str] = {
    "crash": OUTCOME_COLOURS["crash"],
    "timeout": OUTCOME_COLOURS["timeout"],
    "lost": "#1f4e9c",
    "expired": "#6b7785",
}
MARKER_KINDS: tuple[str, ...] = tuple(MARKER_COLOURS)
SLOWEST_COUNT = 10
# Crash causes can carry a worker's whole output tail; a tooltip needs only the gist.
NOTE_MAX_CHARS = 300
UNKNOWN_WORKER = "?"


@dataclass(frozen=True)
class Bar:
    """One test attempt on one worker's lane. `estimated` bars (crashes) have no measured start:
    they span from the worker's previous test (or its start) to the crash."""

    worker: str
    unit: str
    start: float
    duration_s: float
    outcome: str
    attempt: int
    estimated: bool = False
    note: str = ""

    @property
    def end(self) -> float:
        return self.start + self.duration_s


@dataclass(frozen=True)
class Marker:
    """Something that happened at one instant on a lane."""

    worker: str
    ts: float
    kind: str
    unit: str
    note: str


@dataclass(frozen=True)
class WorkerFigures:
    """How one worker spent the wall time; `idle_tail_s` is the wait after its last test."""

    worker: str
    tests: int
    busy_s: float
    utilisation: float
    idle_tail_s: float


@dataclass(frozen=True)
class SlowTest:
    unit: str
    worker: str
    duration_s: float
    outcome: str
    attempt: int


@dataclass(frozen=True)
class Figures:
    """Why the build took as long as it did, in numbers.

    `wall_s` runs from the first test's start to the last test's end; `build_wall_s` from the
    build's first event (collection, worker start-up included) to its end. No schedule can beat
    `lower_bound_s`: the longest test, or the total test time spread evenly over every worker.
    Busy and total times count every attempt (reruns, and crashed tests up to the crash), because
    each one occupied a worker.
    """

    workers: int
    wall_s: float
    build_wall_s: float
    total_test_s: float
    longest_test_s: float
    lower_bound_s: float
    wall_ratio: float | None
    per_worker: tuple[WorkerFigures, ...]
    slowest: tuple[SlowTest, ...]
    counts: Mapping[str, int]
    tests_start: float | None = None
    tests_end: float | None = None
    build_start: float | None = None
    build_end: float | None = None

    @property
    def utilisation(self) -> dict[str, float]:
        return {row.worker: row.utilisation for row in self.per_worker}

    @property
    def idle_tail_s(self) -> dict[str, float]:
        return {row.worker: row.idle_tail_s for row in self.per_worker}


@dataclass
class Timeline:
    """The drawable build: bars and markers by worker, plus the instants that bound it."""

    bars: list[Bar] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    lanes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    first_event: float | None = None
    last_event: float | None = None
    finished: float | None = None


# -- reading the event stream -----------------------------------------------------------------


def outcome_of(reports: Iterable[Any]) -> str:
    """pytest's terminal categories folded to one per test: a failing call is a failure, a
    failing setup or teardown an error, a report with `wasxfail` an xfail (skipped) or xpass."""
    reports = [report for report in reports if isinstance(report, Mapping)]
    if not reports:
        # A result without reports: the worker could not run the test at all.
        return "error"
    failed = [report for report in reports if report.get("outcome") == "failed"]
    if any(report.get("when") == "call" for report in failed):
        return "failed"
    if failed:
        return "error"
    expected = [report for report in reports if "wasxfail" in report]
    if expected:
        return "xpass" if any(r.get("outcome") == "passed" for r in expected) else "xfail"
    if any(report.get("outcome") == "skipped" for report in reports):
        return "skipped"
    return "passed"


def _short(text: object) -> str:
    text = str(text)
    return text if len(text) <= NOTE_MAX_CHARS else text[: NOTE_MAX_CHARS - 1] + "…"


@dataclass(frozen=True)
class _Crash:
    worker: str
    unit: str
    ts: float
    kind: str
    attempt: int
    note: str


class _Reader:
    """Turns events into a Timeline: one handler per event kind, crashes placed at the end
    because a crash's bar starts where the worker's previous result (seen earlier) ended."""

    def __init__(self) -> None:
        self.timeline = Timeline()
        self._lanes: dict[str, None] = {}
        self._finals: set[str] = set()
        self._joins: dict[str, list[float]] = defaultdict(list)
        self._crashes: list[_Crash] = []
        self._handlers: dict[str, Callable[[Event], None]] = {
            EVENT_RESULT: self._on_result,
            EVENT_REQUEUED: self._on_requeued,
            EVENT_UNIT_CRASHED: self._on_unit_crashed,
            EVENT_WORKER_JOINED: self._on_worker_joined,
            EVENT_WORKER_LOST: self._on_worker_lost,
            EVENT_LEASE_EXPIRED: self._on_lease_expired,
            EVENT_FINISHED: self._on_finished,
        }

    def read(self, events: Iterable[Event]) -> Timeline:
        timeline = self.timeline
        for event in events:
            ts = float(event.ts)
            if timeline.first_event is None or ts < timeline.first_event:
                timeline.first_event = ts
            if timeline.last_event is None or ts > timeline.last_event:
                timeline.last_event = ts
            handler = self._handlers.get(event.kind)
            if handler is not None:
                handler(event)
        ends: dict[str, list[float]] = defaultdict(list)
        for bar in timeline.bars:
            ends[bar.worker].append(bar.end)
        for lane_ends in ends.values():
            lane_ends.sort()
        for crash in self._crashes:
            self._place(crash, ends.get(crash.worker, []))
        timeline.lanes = sorted(self._lanes, key=_natural_key)
        return timeline

    def _lane(self, worker: object) -> str:
        name = str(worker) if worker else UNKNOWN_WORKER
        self._lanes.setdefault(name, None)
        return name

    def _on_result(self, event: Event) -> None:
        unit = str(event.data.get("nodeid") or event.unit)
        if unit in self._finals:
            return  # the queue keeps the first result; a repeat is not a second test
        self._finals.add(unit)
        reports = event.data.get("reports")
        outcome = outcome_of(reports if isinstance(reports, list) else [])
        self._add_attempt(event, unit, outcome)

    def _on_requeued(self, event: Event) -> None:
        unit = str(event.data.get("nodeid") or event.unit)
        self._add_attempt(event, unit, "rerun")

    def _add_attempt(self, event: Event, unit: str, outcome: str) -> None:
        """Counted always; drawn when the result says when it ran (old or odd payloads may not)."""
        self.timeline.counts[outcome] += 1
        worker = self._lane(event.worker)
        try:
            start = float(event.data["started"])
            duration_s = max(0.0, float(event.data["duration"]))
            attempt = int(event.data.get("attempt", 1))
        except (KeyError, TypeError, ValueError):
            return
        if not (math.isfinite(start) and math.isfinite(duration_s)):
            return
        self.timeline.bars.append(Bar(worker, unit, start, duration_s, outcome, attempt))

    def _on_unit_crashed(self, event: Event) -> None:
        cause = event.data.get("cause")
        cause = cause if isinstance(cause, Mapping) else {}
        kind = "timeout" if cause.get("timeout") else "crash"
        self.timeline.counts[kind] += 1
        worker = self._lane(event.worker or cause.get("worker"))
        note = _short(cause.get("reason", "the worker crashed"))
        attempt = _int(event.data.get("attempt"), 1)
        self._crashes.append(_Crash(worker, str(event.unit), float(event.ts), kind, attempt, note))

    def _on_worker_joined(self, event: Event) -> None:
        self._joins[self._lane(event.worker)].append(float(event.ts))

    def _on_worker_lost(self, event: Event) -> None:
        cause = event.data.get("cause")
        cause = cause if isinstance(cause, Mapping) else {}
        culprit = str(cause.get("culprit") or "")
        if culprit and any(crash.unit == culprit for crash in self._crashes):
            return  # the crash itself is drawn; a second mark would say the same
        worker = self._lane(event.worker)
        note = _short(cause.get("reason", "the worker was lost"))
        self.timeline.markers.append(Marker(worker, float(event.ts), "lost", culprit, note))

    def _on_lease_expired(self, event: Event) -> None:
        worker = self._lane(event.worker)
        note = "the worker stopped renewing its lease; the test went back to the queue"
        marker = Marker(worker, float(event.ts), "expired", str(event.unit or ""), note)
        self.timeline.markers.append(marker)

    def _on_finished(self, event: Event) -> None:
        self.timeline.finished = float(event.ts)

    def _place(self, crash: _Crash, ends: Sequence[float]) -> None:
        """A crashed test has no measured start: it began when the worker finished its previous
        test (or started); without either, only the instant of the crash can be shown."""
        joins = sorted(self._joins.get(crash.worker, []))
        before = [_last_at_most(ends, crash.ts), _last_at_most(joins, crash.ts)]
        known = [instant for instant in before if instant is not None]
        if not known:
            marker = Marker(crash.worker, crash.ts, crash.kind, crash.unit, crash.note)
            self.timeline.markers.append(marker)
            return
        start = max(known)
        bar = Bar(
            crash.worker,
            crash.unit,
            start,
            crash.ts - start,
            crash.kind,
            crash.attempt,
            estimated=True,
            note=crash.note,
        )
        self.timeline.bars.append(bar)


def _int(value: object, default: int) -> int:
    try:
        return int(value)  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError):
        return default


def _last_at_most(ordered: Sequence[float], limit: float) -> float | None:
    index = bisect.bisect_right(ordered, limit)
    return ordered[index - 1] if index else None


def _natural_key(name: str) -> list[Any]:
    """gw2 before gw10: workers are numbered, and lanes read best in that order."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def read_timeline(events: Iterable[Event]) -> Timeline:
    return _Reader().read(events)


# -- figures ----------------------------------------------------------------------------------


def figures(events: Sequence[Event], workers: int | None = None) -> Figures:
    """The numbers that explain the build's length; `workers` defaults to the workers seen."""
    return _figures(read_timeline(events), workers)


def _figures(timeline: Timeline, workers: int | None) -> Figures:
    bars = timeline.bars
    tests_start = min((bar.start for bar in bars), default=None)
    tests_end = max((bar.end for bar in bars), default=None)
    wall_s = tests_end - tests_start if tests_start is not None and tests_end is not None else 0.0
    build_start, build_end = _build_bounds(timeline, tests_start, tests_end)
    total_s = sum(bar.duration_s for bar in bars)
    longest_s = max((bar.duration_s for bar in bars), default=0.0)
    count = workers if workers is not None else len(timeline.lanes)
    lower_s = max(longest_s, total_s / count) if count > 0 else longest_s
    return Figures(
        workers=count,
        wall_s=wall_s,
        build_wall_s=build_end - build_start if build_start is not None else 0.0,
        total_test_s=total_s,
        longest_test_s=longest_s,
        lower_bound_s=lower_s,
        wall_ratio=wall_s / lower_s if lower_s > 0 else None,
        per_worker=_per_worker(timeline, wall_s, tests_end),
        slowest=_slowest(bars),
        counts=dict(timeline.counts),
        tests_start=tests_start,
        tests_end=tests_end,
        build_start=build_start,
        build_end=build_end,
    )


def _build_bounds(
    timeline: Timeline, tests_start: float | None, tests_end: float | None
) -> tuple[float | None, float]:
    """From the first event (or test, if a worker's clock runs ahead of the queue's) to
    `finished`, or to the last test when the build never finished (stopped, interrupted)."""
    starts = [t for t in (timeline.first_event, tests_start) if t is not None]
    ends = [t for t in (timeline.finished, tests_end) if t is not None]
    ends += [marker.ts for marker in timeline.markers]
    if not ends and timeline.last_event is not None:
        ends.append(timeline.last_event)
    start = min(starts) if starts else None
    end = max(ends) if ends else (start or 0.0)
    return start, end


def _per_worker(
    timeline: Timeline, wall_s: float, tests_end: float | None
) -> tuple[WorkerFigures, ...]:
    """Idle tails are measured to the last test's end, not to `finished`: the worker that ran the
    last test has none, and the tails show what the schedule wasted, not shutdown latency."""
    by_worker: dict[str, list[Bar]] = {lane: [] for lane in timeline.lanes}
    for bar in timeline.bars:
        by_worker[bar.worker].append(bar)
    rows = []
    for lane, bars in by_worker.items():
        busy_s = sum(bar.duration_s for bar in bars)
        last_end = max((bar.end for bar in bars), default=None)
        # A worker that ran nothing idled for the whole wall time.
        idle_tail_s = wall_s if last_end is None or tests_end is None else tests_end - last_end
        utilisation = busy_s / wall_s if wall_s > 0 else 0.0
        rows.append(WorkerFigures(lane, len(bars), busy_s, utilisation, idle_tail_s))
    return tuple(rows)


def _slowest(bars: Iterable[Bar]) -> tuple[SlowTest, ...]:
    ranked = sorted(bars, key=lambda bar: (-bar.duration_s, bar.unit, bar.start))
    return tuple(
        SlowTest(bar.unit, bar.worker, bar.duration_s, bar.outcome, bar.attempt)
        for bar in ranked[:SLOWEST_COUNT]
    )


# -- the page ---------------------------------------------------------------------------------
