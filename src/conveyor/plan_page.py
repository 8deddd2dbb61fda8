"""`conveyor plan --html`: the predictions as a table, and one simulated build drawn as the
timeline page draws a real one (same stylesheet, same chart), so a planned build and a measured
one can be compared side by side."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from conveyor.capacity_plan import Prediction
from conveyor.queue.protocol import EVENT_FINISHED, EVENT_RESULT, EVENT_WORKER_JOINED, Event
from conveyor.timeline_page import format_seconds, render_html


def lane_name(worker: int, prediction: Prediction) -> str:
    if prediction.machines == 1:
        return f"gw{worker}"
    machine, local = divmod(worker, prediction.workers)
    return f"m{machine + 1}/gw{local}"


def schedule_events(prediction: Prediction) -> list[Event]:
    """The simulated build as the event stream a real one would leave: workers join at 0,
    tests start after the start-up, the build finishes after the tail."""
    events: list[Event] = []

    def add(
        kind: str, worker: str | None, unit: str | None, data: dict[str, Any], ts: float
    ) -> None:
        events.append(Event(len(events) + 1, kind, worker, unit, data, ts))

    for worker in range(prediction.total_workers):
        add(EVENT_WORKER_JOINED, lane_name(worker, prediction), None, {}, 0.0)
    offset = prediction.startup_s
    for run in prediction.schedule.runs:
        data: dict[str, Any] = {
            "nodeid": run.unit,
            "reports": [{"outcome": "passed", "when": "call"}],
            "started": offset + run.start,
            "duration": run.duration_s,
            "attempt": 1,
        }
        add(EVENT_RESULT, lane_name(run.worker, prediction), run.unit, data, offset + run.start)
    add(EVENT_FINISHED, None, None, {}, prediction.wall_s)
    return events


def table_html(rows: Sequence[Prediction], knee: Prediction | None, reached: bool = True) -> str:
    body = []
    for row in rows:
        mark = " class='knee'" if row is knee else ""
        workers = f"{row.machines} \u00d7 {row.workers}" if row.machines > 1 else str(row.workers)
        body.append(
            f"<tr{mark} data-workers='{row.total_workers}' data-wall='{row.wall_s:.6f}'>"
            f"<td class='num'>{workers}</td><td class='num'>{format_seconds(row.wall_s)}</td>"
            f"<td class='num'>{format_seconds(row.testing_s)}</td>"
            f"<td class='num'>{format_seconds(row.lower_bound_s)}</td>"
            f"<td class='num'>{row.utilisation * 100:.1f}%</td></tr>"
        )
    if knee is None:
        knee_text = ""
    elif reached:
        knee_text = (
            f"The knee is at {knee.total_workers} workers: doubling them gains less than 10 %. "
            "The lanes below are the simulated build at the knee."
        )
    else:
        knee_text = (
            f"The knee is not reached up to {knee.total_workers} workers: doubling still gains "
            f"10 % or more. The lanes below are the simulated build at {knee.total_workers}."
        )
    return (
        "<section><h2>Predictions</h2><p class='summary'>Simulated with conveyor's own "
        f"scheduling on the timing history. {html.escape(knee_text)} The figures under the "
        "chart measure the drawn build as the timeline page measures a real one, from its "
        "first test to its last; the table's predicted wall adds the start-up and the tail."
        "</p><div class='scroll'><table id='plan'><thead><tr>"
        "<th>workers</th><th>predicted wall</th><th>testing</th><th>lower bound</th>"
        f"<th>utilisation</th></tr></thead><tbody>{''.join(body)}</tbody></table></div>"
        "</section>"
    )


def write_plan_html(
    path: str | Path,
    rows: Sequence[Prediction],
    chosen: Prediction,
    title: str,
    *,
    reached: bool = True,
) -> None:
    page = render_html(
        schedule_events(chosen),
        title=title,
        workers=chosen.total_workers,
        intro=table_html(rows, chosen, reached),
    )
    Path(path).write_text(page, encoding="utf-8")
