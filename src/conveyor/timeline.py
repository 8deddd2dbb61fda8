"""The build timeline: why a build took as long as it did.

Everything comes from the build's event stream: a result carries when its test started and how
long it ran, so one lane per worker and one bar per test attempt rebuild the schedule exactly.
The figures say how far the wall time is from what the tests allow (the lower bound) and where
workers sat idle; the page draws the lanes.

The page is one self-contained HTML file. CI artefact viewers often block network fetches, and a
timeline must still open offline long after the build, so CSS, script and data are inline and
nothing is fetched from anywhere. Lanes are drawn on a <canvas> from an embedded JSON block:
20,000 DOM elements would make the page slow to open and to hover.
"""

from __future__ import annotations

import bisect
import html
import json
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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


def render_html(events: Sequence[Event], *, title: str, workers: int | None = None) -> str:
    """The self-contained timeline page for one build's events."""
    timeline = read_timeline(events)
    return _page(timeline, _figures(timeline, workers), title)


def write_html(
    path: str | Path, events: Sequence[Event], *, title: str, workers: int | None = None
) -> Figures:
    """Write the page to `path` and return its figures (for a one-line summary in the CLI)."""
    timeline = read_timeline(events)
    result = _figures(timeline, workers)
    Path(path).write_text(_page(timeline, result, title), encoding="utf-8")
    return result


def _page(timeline: Timeline, result: Figures, title: str) -> str:
    safe_title = html.escape(title)
    return "".join(
        [
            "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>",
            "<meta name='viewport' content='width=device-width, initial-scale=1'>",
            # No fetches at all, even by accident: the policy blocks anything not inline.
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; ",
            "img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">",
            f"<title>{safe_title}</title><style>{_CSS}</style></head>",
            f"<body><script>{_ERROR_HOOK_JS}</script>",
            f"<h1>{safe_title}</h1>",
            _summary_html(result),
            _cards_html(result),
            _legend_html(result),
            "<div class='tables'>",
            _workers_html(result),
            _slowest_html(result),
            "</div>",
            "<h2>Lanes</h2><p class='hint'>One lane per worker, one bar per test attempt. ",
            "Hover a bar for details; scroll over the lanes to zoom, drag to pan, ",
            "double-click to reset. The shaded start is collection and worker start-up.</p>",
            "<div id='chart'><canvas id='lanes'></canvas></div>",
            "<div id='tip' role='tooltip' hidden></div>",
            "<script type='application/json' id='timeline-data'>",
            _data_json(timeline, result),
            f"</script><script>{_CHART_JS}</script></body></html>\n",
        ]
    )


def format_seconds(seconds: float) -> str:
    """Readable at every scale a build spans: 850 ms, 12.3 s, 4 m 05 s, 1 h 02 m."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} m {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} m"


def _number(value: float | None) -> str:
    """Machine-readable values beside the readable ones, so tools (and tests) can check them."""
    return "" if value is None else repr(round(value, 6))


def _summary_html(result: Figures) -> str:
    if not result.slowest:
        return "<p class='summary'>No test results in this build's events.</p>"
    longest = result.slowest[0]
    spread_s = result.total_test_s / result.workers if result.workers else 0.0
    if result.longest_test_s >= spread_s:
        bound = (
            f"The longest test bounds the build: <code>{html.escape(longest.unit)}</code> ran "
            f"{format_seconds(longest.duration_s)}; more workers cannot make it faster, "
            "splitting that test can."
        )
    else:
        bound = (
            f"The total test time spread over {result.workers} workers bounds the build "
            f"({format_seconds(spread_s)}); more workers or faster tests make it shorter."
        )
    ratio = result.wall_ratio or 0.0
    waste = (
        f" The wall time is {ratio:.2f}\u00d7 that bound: the idle tails below show where "
        "workers waited."
        if ratio > 1.1
        else f" The wall time is {ratio:.2f}\u00d7 that bound: the schedule is close to ideal."
    )
    return f"<p class='summary'>{bound}{waste}</p>"


def _card(key: str, label: str, value: float | None, shown: str, hint: str = "") -> str:
    hint_html = f"<div class='hint'>{html.escape(hint)}</div>" if hint else ""
    return (
        f"<div class='card' data-figure='{key}' data-value='{_number(value)}'>"
        f"<div class='label'>{html.escape(label)}</div>"
        f"<div class='value'>{html.escape(shown)}</div>{hint_html}</div>"
    )


def _cards_html(result: Figures) -> str:
    ratio = result.wall_ratio
    ratio_shown = f"{ratio:.2f}\u00d7" if ratio is not None else "\u2013"
    cards = [
        _time_card("wall_s", "Wall time", result.wall_s, "first test → last test"),
        _time_card(
            "lower_bound_s",
            "Lower bound",
            result.lower_bound_s,
            "max(longest test, total ÷ workers)",
        ),
        _card(
            "wall_ratio",
            "Wall ÷ lower bound",
            ratio,
            ratio_shown,
            "1.00\u00d7 is a perfect schedule",
        ),
        _time_card("build_wall_s", "Build time", result.build_wall_s, "first event → build end"),
        _time_card("total_test_s", "Total test time", result.total_test_s, "every attempt"),
        _time_card("longest_test_s", "Longest test", result.longest_test_s),
        _card("workers", "Workers", result.workers, str(result.workers)),
    ]
    return f"<div class='cards'>{''.join(cards)}</div>"


def _time_card(key: str, label: str, seconds: float, hint: str = "") -> str:
    return _card(key, label, seconds, format_seconds(seconds), hint)


def _legend_html(result: Figures) -> str:
    items = [
        f"<span class='item' data-outcome='{name}' data-count='{result.counts.get(name, 0)}'>"
        f"<span class='swatch sw-{name}'></span>{name} <b>{result.counts.get(name, 0)}</b></span>"
        for name in OUTCOMES
    ]
    items += [
        f"<span class='item'><span class='mark' style='background:{colour}'></span>"
        f"{_MARKER_LABELS[kind]}</span>"
        for kind, colour in MARKER_COLOURS.items()
    ]
    return f"<div class='legend'>{''.join(items)}</div>"


_MARKER_LABELS = {
    "crash": "crash (unplaced)",
    "timeout": "timeout (unplaced)",
    "lost": "worker lost",
    "expired": "lease expired",
}


def _workers_html(result: Figures) -> str:
    rows = [
        f"<tr data-worker='{html.escape(row.worker)}' data-utilisation='{_number(row.utilisation)}'"
        f" data-idle-tail='{_number(row.idle_tail_s)}'><td>{html.escape(row.worker)}</td>"
        f"<td class='num'>{row.tests}</td><td class='num'>{format_seconds(row.busy_s)}</td>"
        f"<td class='util'><span class='meter' style='width:{min(row.utilisation, 1) * 100:.1f}%'>"
        f"</span><span>{row.utilisation * 100:.1f}%</span></td>"
        f"<td class='num'>{format_seconds(row.idle_tail_s)}</td></tr>"
        for row in result.per_worker
    ]
    return (
        "<section><h2>Workers</h2><div class='scroll'><table id='workers'><thead><tr>"
        "<th>worker</th><th>tests</th><th>busy</th><th>utilisation</th><th>idle tail</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div></section>"
    )


def _slowest_html(result: Figures) -> str:
    rows = [
        f"<tr><td class='num'>{format_seconds(slow.duration_s)}</td>"
        f"<td class='test'>{html.escape(slow.unit)}</td><td>{html.escape(slow.worker)}</td>"
        f"<td><span class='swatch sw-{slow.outcome}'></span>{slow.outcome}</td>"
        f"<td class='num'>{slow.attempt}</td></tr>"
        for slow in result.slowest
    ]
    return (
        f"<section><h2>{SLOWEST_COUNT} slowest</h2><div class='scroll'><table id='slowest'>"
        "<thead><tr><th>duration</th><th>test</th><th>worker</th><th>outcome</th>"
        f"<th>attempt</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div></section>"
    )


def _data_json(timeline: Timeline, result: Figures) -> str:
    """Columnar data (flat numbers, one list of ids) keeps 20,000 tests to about a megabyte.
    Every `<`, `>` and `&` is a JSON escape, so no test id can close the script element."""
    origin = result.build_start or 0.0
    lane_index = {lane: index for index, lane in enumerate(timeline.lanes)}
    bars = sorted(timeline.bars, key=lambda bar: (lane_index[bar.worker], bar.start))
    flat: list[float] = []
    notes: dict[str, str] = {}
    for index, bar in enumerate(bars):
        flat += [
            lane_index[bar.worker],
            round(bar.start - origin, 6),
            round(bar.duration_s, 6),
            OUTCOMES.index(bar.outcome),
            bar.attempt,
            1 if bar.estimated else 0,
        ]
        if bar.note:
            notes[str(index)] = bar.note
    markers = [
        [lane_index[m.worker], round(m.ts - origin, 6), MARKER_KINDS.index(m.kind), m.unit, m.note]
        for m in timeline.markers
    ]
    payload = {
        "end": round((result.build_end or origin) - origin, 6),
        "first": round((result.tests_start or origin) - origin, 6),
        "lanes": timeline.lanes,
        "outcomes": list(OUTCOMES),
        "colours": list(OUTCOME_COLOURS.values()),
        "markerKinds": list(MARKER_KINDS),
        "markerColours": list(MARKER_COLOURS.values()),
        "bars": flat,
        "units": [bar.unit for bar in bars],
        "notes": notes,
        "markers": markers,
    }
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


_SWATCH_CSS = "".join(
    f".sw-{name}{{background:{colour}}}" for name, colour in OUTCOME_COLOURS.items()
)

_CSS = (
    """
*{box-sizing:border-box}
body{margin:16px 20px;font:13px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d232b;
background:#fff}
h1{font-size:20px;margin:0 0 6px}h2{font-size:15px;margin:14px 0 6px}
code{font-size:12px;background:#f1f3f5;padding:0 3px;border-radius:3px;word-break:break-all}
.summary{max-width:1100px;margin:4px 0 10px}.hint{color:#66707c;font-size:12px}
.cards{display:flex;flex-wrap:wrap;gap:8px;margin:8px 0}
.card{border:1px solid #dde1e6;border-radius:6px;padding:6px 10px;min-width:130px}
.card .label{color:#55606c;font-size:12px}.card .value{font-size:18px;font-weight:600}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;margin:8px 0}
.legend .item{display:inline-flex;align-items:center;gap:4px}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:middle;
margin-right:3px}
.mark{display:inline-block;width:3px;height:14px;vertical-align:middle}
.sw-rerun{background-image:repeating-linear-gradient(45deg,transparent 0 2px,
rgba(0,0,0,.35) 2px 4px)}
.tables{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
.tables section{flex:1 1 480px;min-width:0}
.scroll{max-height:280px;overflow:auto;border:1px solid #dde1e6;border-radius:6px}
table{border-collapse:collapse;width:100%}
th,td{padding:2px 8px;text-align:left;border-bottom:1px solid #eef0f2;white-space:nowrap}
th{position:sticky;top:0;background:#f7f8fa;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.test{white-space:normal;word-break:break-all;font-family:ui-monospace,monospace;font-size:12px}
td.util{position:relative;min-width:120px}
.meter{position:absolute;left:0;top:3px;bottom:3px;background:#cfe3d3;z-index:0}
td.util span:last-child{position:relative}
#chart{position:relative;width:100%;border:1px solid #dde1e6;border-radius:6px;overflow:hidden}
#lanes{display:block;width:100%;cursor:crosshair}
#tip{position:fixed;z-index:10;max-width:520px;background:#1d232b;color:#fff;padding:6px 8px;
border-radius:4px;font-size:12px;pointer-events:none;white-space:pre-wrap;word-break:break-all}
"""
    + _SWATCH_CSS
)

# First in <body>: records script errors on <body data-errors> so a headless check (and a person
# reading the DOM) can tell the page drew without failing.
_ERROR_HOOK_JS = """
(function () {
  function record(message) {
    var body = document.body;
    var previous = body.getAttribute("data-errors");
    body.setAttribute("data-errors", (previous ? previous + " | " : "") + String(message));
  }
  window.onerror = function (message) { record(message); };
  window.addEventListener("unhandledrejection", function (event) { record(event.reason); });
  var original = console.error;
  console.error = function () {
    record(Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments);
  };
})();
"""

_CHART_JS = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("timeline-data").textContent);
  var FIELDS = 6, LABEL_W = 150, AXIS_H = 24, RIGHT_PAD = 12;
  var bars = data.bars, count = bars.length / FIELDS, lanes = data.lanes;
  var laneH = lanes.length <= 16 ? 18 : Math.max(8, Math.min(18, Math.floor(720 / lanes.length)));
  var span = Math.max(data.end, 1e-6);
  var view = {t0: 0, t1: span};
  var canvas = document.getElementById("lanes"), ctx = canvas.getContext("2d");
  var tip = document.getElementById("tip");
  var plotW = 1, pending = false, drag = null;

  // Bars come sorted by lane, then start: each lane is one contiguous range.
  var laneFrom = [], laneTo = [];
  for (var l = 0; l < lanes.length; l++) { laneFrom.push(0); laneTo.push(0); }
  for (var i = count - 1; i >= 0; i--) { laneFrom[bars[i * FIELDS]] = i; }
  for (i = 0; i < count; i++) { laneTo[bars[i * FIELDS]] = i + 1; }
  var laneMarkers = lanes.map(function () { return []; });
  data.markers.forEach(function (m) { laneMarkers[m[0]].push(m); });

  function stripes() {
    var tile = document.createElement("canvas");
    tile.width = tile.height = 6;
    var t = tile.getContext("2d");
    t.strokeStyle = "rgba(0,0,0,0.35)"; t.lineWidth = 2;
    t.beginPath(); t.moveTo(0, 6); t.lineTo(6, 0); t.moveTo(-3, 3); t.lineTo(3, -3);
    t.moveTo(3, 9); t.lineTo(9, 3); t.stroke();
    return ctx.createPattern(tile, "repeat");
  }
  var rerunPattern = stripes();
  var RERUN = data.outcomes.indexOf("rerun"), CRASH = data.outcomes.indexOf("crash");
  var TIMEOUT = data.outcomes.indexOf("timeout");

  function x(t) { return LABEL_W + (t - view.t0) / (view.t1 - view.t0) * plotW; }
  function timeAt(px) { return view.t0 + (px - LABEL_W) / plotW * (view.t1 - view.t0); }

  function fmt(s) {
    if (s === 0) return "0 s";
    if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 0) + " ms";
    if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + " s";
    var m = Math.floor(s / 60), r = Math.round(s - m * 60);
    if (m < 60) return m + " m " + (r < 10 ? "0" : "") + r + " s";
    var h = Math.floor(m / 60); m -= h * 60;
    return h + " h " + (m < 10 ? "0" : "") + m + " m";
  }

  function tickStep(seconds, pixels) {
    var raw = seconds / Math.max(1, pixels / 90), p = Math.pow(10, Math.floor(Math.log10(raw)));
    var steps = [1, 2, 5, 10];
    for (var k = 0; k < steps.length; k++) if (steps[k] * p >= raw) return steps[k] * p;
    return 10 * p;
  }

  function firstFrom(lane, t) {
    // Index of the first bar on `lane` that may reach t (bars on a lane do not overlap).
    var lo = laneFrom[lane], hi = laneTo[lane];
    while (lo < hi) {
      var mid = (lo + hi) >> 1;
      if (bars[mid * FIELDS + 1] <= t) lo = mid + 1; else hi = mid;
    }
    return Math.max(laneFrom[lane], lo - 1);
  }

  function drawAxis(height) {
    var step = tickStep(view.t1 - view.t0, plotW);
    ctx.fillStyle = "#55606c"; ctx.strokeStyle = "#e3e6ea"; ctx.lineWidth = 1;
    ctx.font = "11px system-ui, sans-serif"; ctx.textAlign = "center"; ctx.textBaseline = "middle";
    for (var t = Math.ceil(view.t0 / step) * step; t <= view.t1; t += step) {
      var px = Math.round(x(t)) + 0.5;
      ctx.beginPath(); ctx.moveTo(px, AXIS_H - 4); ctx.lineTo(px, height); ctx.stroke();
      ctx.fillText(fmt(t), px, AXIS_H / 2 - 2);
    }
  }

  function drawLabels() {
    ctx.fillStyle = "#1d232b"; ctx.textAlign = "right"; ctx.textBaseline = "middle";
    ctx.font = Math.min(12, laneH - 1) + "px system-ui, sans-serif";
    for (var l = 0; l < lanes.length; l++) {
      var name = lanes[l];
      // Keep the end of long names (host-123/gw7): the slot is what tells lanes apart.
      while (name.length > 2 && ctx.measureText(name).width > LABEL_W - 10) name = name.slice(1);
      if (name !== lanes[l]) name = "\\u2026" + name.slice(1);
      ctx.fillText(name, LABEL_W - 6, AXIS_H + l * laneH + laneH / 2);
    }
  }

  function drawGlyph(kind, px, top) {
    // A crash is an X at the bar's end, a timeout a triangle; a white halo keeps either
    // visible on its own bar, on a neighbour and on the lane background.
    ctx.beginPath();
    if (kind === TIMEOUT) {
      ctx.moveTo(px - 4, top); ctx.lineTo(px + 4, top); ctx.lineTo(px, top + 7); ctx.closePath();
    } else {
      ctx.moveTo(px - 3, top); ctx.lineTo(px + 3, top + 6);
      ctx.moveTo(px + 3, top); ctx.lineTo(px - 3, top + 6);
    }
    ctx.strokeStyle = "#fff"; ctx.lineWidth = 3.5; ctx.stroke();
    ctx.strokeStyle = ctx.fillStyle = data.colours[kind]; ctx.lineWidth = 1.5; ctx.stroke();
    if (kind === TIMEOUT) ctx.fill();
  }

  function drawLane(l) {
    var top = AXIS_H + l * laneH + 1, h = laneH - 2, glyphs = [];
    for (var i = firstFrom(l, view.t0); i < laneTo[l]; i++) {
      var o = i * FIELDS, start = bars[o + 1];
      if (start > view.t1) break;
      var x0 = x(start), x1 = x(start + bars[o + 2]), w = x1 - x0;
      if (x1 < LABEL_W) continue;
      if (w > 3) w -= 1; else if (w < 1) w = 1;
      var outcome = bars[o + 3];
      ctx.fillStyle = data.colours[outcome];
      ctx.fillRect(x0, top, w, h);
      if (outcome === RERUN) { ctx.fillStyle = rerunPattern; ctx.fillRect(x0, top, w, h); }
      if (outcome === CRASH || outcome === TIMEOUT) glyphs.push([outcome, x1]);
    }
    glyphs.forEach(function (g) { drawGlyph(g[0], g[1], top); });
    laneMarkers[l].forEach(function (m) {
      var px = Math.round(x(m[1])) + 0.5;
      ctx.strokeStyle = data.markerColours[m[2]]; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.moveTo(px, top); ctx.lineTo(px, top + h); ctx.stroke();
      var kind = data.outcomes.indexOf(data.markerKinds[m[2]]);
      if (kind >= 0) drawGlyph(kind, px, top);
    });
  }

  function draw() {
    pending = false;
    var ratio = window.devicePixelRatio || 1, width = canvas.clientWidth || 800;
    var height = AXIS_H + lanes.length * laneH + 4;
    canvas.width = Math.round(width * ratio); canvas.height = Math.round(height * ratio);
    canvas.style.height = height + "px";
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    plotW = Math.max(1, width - LABEL_W - RIGHT_PAD);
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, width, height);
    for (var l = 0; l < lanes.length; l += 2) {
      ctx.fillStyle = "#f5f6f8"; ctx.fillRect(0, AXIS_H + l * laneH, width, laneH);
    }
    if (data.first > view.t0) {
      ctx.fillStyle = "rgba(120,130,145,0.12)";
      ctx.fillRect(LABEL_W, AXIS_H, Math.max(0, x(data.first) - LABEL_W), height - AXIS_H);
    }
    drawAxis(height);
    ctx.save();
    ctx.beginPath(); ctx.rect(LABEL_W, 0, plotW + RIGHT_PAD, height); ctx.clip();
    for (l = 0; l < lanes.length; l++) drawLane(l);
    ctx.restore();
    drawLabels();
  }

  function redraw() {
    if (!pending) { pending = true; window.requestAnimationFrame(draw); }
  }

  function hit(px, py) {
    var lane = Math.floor((py - AXIS_H) / laneH);
    if (lane < 0 || lane >= lanes.length || px < LABEL_W) return null;
    var t = timeAt(px), slack = 3 * (view.t1 - view.t0) / plotW, best = null, gap = Infinity;
    laneMarkers[lane].forEach(function (m) {
      var d = Math.abs(m[1] - t);
      if (d <= slack && d < gap) { gap = d; best = {marker: m}; }
    });
    if (best) return best;
    for (var i = firstFrom(lane, t - slack); i < laneTo[lane]; i++) {
      var o = i * FIELDS, start = bars[o + 1], end = start + bars[o + 2];
      if (start > t + slack) break;
      var d = t < start ? start - t : t > end ? t - end : 0;
      if (d <= slack && d < gap) { gap = d; best = {bar: i}; }
    }
    return best;
  }

  function describe(found) {
    if (found.marker) {
      var m = found.marker;
      return [m[3] || "(no test)", data.markerKinds[m[2]] + " at " + fmt(m[1]),
              "worker: " + lanes[m[0]], m[4]].join("\\n");
    }
    var o = found.bar * FIELDS, note = data.notes[String(found.bar)];
    var guess = bars[o + 5] ? " (estimated: since the previous test)" : "";
    var lines = [
      data.units[found.bar],
      "outcome: " + data.outcomes[bars[o + 3]],
      "duration: " + fmt(bars[o + 2]) + guess,
      "attempt: " + bars[o + 4],
      "worker: " + lanes[bars[o]],
      "started: " + fmt(bars[o + 1]) + " into the build"
    ];
    if (note) lines.push(note);
    return lines.join("\\n");
  }

  function place(event) {
    var box = canvas.getBoundingClientRect();
    return [event.clientX - box.left, event.clientY - box.top];
  }

  canvas.addEventListener("mousemove", function (event) {
    var at = place(event);
    if (drag) {
      var shift = (drag[0] - at[0]) / plotW * (drag[2] - drag[1]);
      setView(drag[1] + shift, drag[2] + shift);
      return;
    }
    var found = hit(at[0], at[1]);
    if (!found) { tip.hidden = true; return; }
    tip.textContent = describe(found);
    tip.hidden = false;
    var left = event.clientX + 14, top = event.clientY + 14;
    if (left + tip.offsetWidth > innerWidth - 8) left = event.clientX - tip.offsetWidth - 14;
    if (top + tip.offsetHeight > innerHeight - 8) top = event.clientY - tip.offsetHeight - 14;
    tip.style.left = Math.max(4, left) + "px"; tip.style.top = Math.max(4, top) + "px";
  });
  canvas.addEventListener("mouseleave", function () { tip.hidden = true; drag = null; });
  canvas.addEventListener("mousedown", function (event) {
    drag = [place(event)[0], view.t0, view.t1];
  });
  window.addEventListener("mouseup", function () { drag = null; });
  canvas.addEventListener("dblclick", function () { setView(0, span); });
  canvas.addEventListener("wheel", function (event) {
    event.preventDefault();
    var t = timeAt(place(event)[0]), factor = Math.exp(event.deltaY * 0.0015);
    setView(t - (t - view.t0) * factor, t + (view.t1 - t) * factor);
  }, {passive: false});
  window.addEventListener("resize", redraw);

  function setView(t0, t1) {
    var width = Math.min(span, Math.max(t1 - t0, span / 1e5));
    t0 = Math.min(Math.max(0, t0), span - width);
    view.t0 = t0; view.t1 = t0 + width;
    redraw();
  }

  draw();
  document.body.setAttribute("data-rendered", "yes");
})();
"""
