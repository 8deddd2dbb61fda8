"""The timeline page: one self-contained HTML file drawing a build's lanes and figures.

CI artefact viewers often block network fetches, and a timeline must still open offline long
after the build, so CSS, script and data are inline and nothing is fetched from anywhere. The
stylesheet and scripts are package data (conveyor/timeline_assets). Lanes are drawn on a
<canvas> from an embedded JSON block: 20,000 DOM elements would make the page slow to open and
to hover.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from conveyor.queue.protocol import Event
from conveyor.timeline import (
    MARKER_COLOURS,
    MARKER_KINDS,
    OUTCOME_COLOURS,
    OUTCOMES,
    SLOWEST_COUNT,
    Figures,
    Timeline,
    _figures,
    read_timeline,
)


def render_html(
    events: Sequence[Event], *, title: str, workers: int | None = None, intro: str = ""
) -> str:
    """The self-contained timeline page for one build's events; `intro` is HTML shown under
    the title (`conveyor plan` puts its table of predictions there)."""
    timeline = read_timeline(events)
    return _page(timeline, _figures(timeline, workers), title, intro)


def write_html(
    path: str | Path, events: Sequence[Event], *, title: str, workers: int | None = None
) -> Figures:
    """Write the page to `path` and return its figures (for a one-line summary in the CLI)."""
    timeline = read_timeline(events)
    result = _figures(timeline, workers)
    Path(path).write_text(_page(timeline, result, title), encoding="utf-8")
    return result


def _page(timeline: Timeline, result: Figures, title: str, intro: str = "") -> str:
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
            intro,
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


def _asset(name: str) -> str:
    """A stylesheet or script of the page, from the package (conveyor/timeline_assets)."""
    return resources.files("conveyor.timeline_assets").joinpath(name).read_text("utf-8")


_SWATCH_CSS = "".join(
    f".sw-{name}{{background:{colour}}}" for name, colour in OUTCOME_COLOURS.items()
)

_CSS = _asset("timeline.css") + _SWATCH_CSS

# First in <body>: records script errors on <body data-errors> so a headless check (and a person
# reading the DOM) can tell the page drew without failing.
_ERROR_HOOK_JS = _asset("error_hook.js")

_CHART_JS = _asset("chart.js")
