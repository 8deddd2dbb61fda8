"""The timeline's figures against hand-computed schedules, and the page's safety and size."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from conveyor.queue.protocol import Event
from conveyor.timeline import (
    OUTCOMES,
    SLOWEST_COUNT,
    Figures,
    figures,
    outcome_of,
    read_timeline,
)
from conveyor.timeline_page import render_html, write_html

PASSED = [{"when": "setup", "outcome": "passed"}, {"when": "call", "outcome": "passed"}]
FAILED = [{"when": "setup", "outcome": "passed"}, {"when": "call", "outcome": "failed"}]
SKIPPED = [{"when": "setup", "outcome": "skipped"}]
XFAIL = [{"when": "call", "outcome": "skipped", "wasxfail": "known bug"}]
SETUP_ERROR = [{"when": "setup", "outcome": "failed"}]


class Stream:
    """Builds an event list the way the queue writes it: increasing seq, explicit timestamps."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(
        self,
        kind: str,
        ts: float,
        worker: str | None = None,
        unit: str | None = None,
        **data: Any,
    ) -> None:
        self.events.append(Event(len(self.events) + 1, kind, worker, unit, data, ts))

    def test(
        self,
        worker: str,
        unit: str,
        started: float,
        duration: float,
        reports: list[dict[str, Any]] = PASSED,
        *,
        kind: str = "result",
        attempt: int = 1,
    ) -> None:
        payload = {
            "nodeid": unit,
            "started": started,
            "duration": duration,
            "attempt": attempt,
            "reports": reports,
        }
        self.emit(kind, started + duration, worker, unit, **payload)

    def crash(self, worker: str, unit: str, ts: float, *, timeout: bool = False) -> None:
        cause = {"reason": f"worker {worker} died", "worker": worker, "timeout": timeout}
        self.emit("unit_crashed", ts, worker, unit, attempt=1, crashes=1, cause=cause)


def three_workers() -> list[Event]:
    """gw0: a 1000-1002, b 1002-1005 (failed).
    gw1: c 1000-1001 (skipped), d 1001-1002 (rerun), d 1002-1003, e crashes at 1004.5.
    gw2: f 1000-1004 (xfail), g 1004-1008 (setup error), h times out at 1010."""
    stream = Stream()
    stream.emit("worker_joined", 990.0, "gw0")
    stream.emit("populated", 991.0, "gw0", total=8)
    stream.emit("worker_joined", 992.0, "gw1")
    stream.emit("worker_joined", 993.0, "gw2")
    stream.test("gw0", "t.py::a", 1000.0, 2.0)
    stream.test("gw1", "t.py::c", 1000.0, 1.0, SKIPPED)
    stream.test("gw1", "t.py::d", 1001.0, 1.0, FAILED, kind="requeued")
    stream.test("gw1", "t.py::d", 1002.0, 1.0, attempt=2)
    stream.test("gw2", "t.py::f", 1000.0, 4.0, XFAIL)
    stream.test("gw0", "t.py::b", 1002.0, 3.0, FAILED)
    stream.crash("gw1", "t.py::e", 1004.5)
    stream.emit("worker_lost", 1004.5, "gw1", cause={"culprit": "t.py::e"}, requeued=[])
    stream.test("gw2", "t.py::g", 1004.0, 4.0, SETUP_ERROR)
    stream.crash("gw2", "t.py::h", 1010.0, timeout=True)
    stream.emit("finished", 1011.0, done=8, total=8)
    return stream.events


def test_wall_time_and_lower_bound() -> None:
    result = figures(three_workers())
    assert result.workers == 3
    assert result.tests_start == 1000.0
    assert result.tests_end == 1010.0
    assert result.wall_s == 10.0
    assert result.build_wall_s == 21.0  # first event 990 to finished 1011
    # Every attempt counts: 2 + 3 + 1 + 1 + 1 + 1.5 (crash) + 4 + 4 + 2 (timeout).
    assert result.total_test_s == 19.5
    assert result.longest_test_s == 4.0
    assert result.lower_bound_s == 6.5  # 19.5 / 3 beats the longest test
    assert result.wall_ratio == 10.0 / 6.5


def test_utilisation_and_idle_tail_per_worker() -> None:
    result = figures(three_workers())
    assert [row.worker for row in result.per_worker] == ["gw0", "gw1", "gw2"]
    assert [row.tests for row in result.per_worker] == [2, 4, 3]
    assert [row.busy_s for row in result.per_worker] == [5.0, 4.5, 10.0]
    assert result.utilisation == {"gw0": 0.5, "gw1": 0.45, "gw2": 1.0}
    assert result.idle_tail_s == {"gw0": 5.0, "gw1": 5.5, "gw2": 0.0}


def test_slowest_tests_name_their_worker_in_order() -> None:
    slowest = figures(three_workers()).slowest
    assert [(s.unit, s.worker, s.duration_s) for s in slowest] == [
        ("t.py::f", "gw2", 4.0),
        ("t.py::g", "gw2", 4.0),
        ("t.py::b", "gw0", 3.0),
        ("t.py::a", "gw0", 2.0),
        ("t.py::h", "gw2", 2.0),
        ("t.py::e", "gw1", 1.5),
        ("t.py::c", "gw1", 1.0),
        ("t.py::d", "gw1", 1.0),
        ("t.py::d", "gw1", 1.0),
    ]
    assert [s.outcome for s in slowest[-2:]] == ["rerun", "passed"]
    assert [s.attempt for s in slowest[-2:]] == [1, 2]


def test_only_the_ten_slowest_are_kept() -> None:
    stream = Stream()
    for index in range(15):
        stream.test(f"gw{index % 2}", f"t.py::test_{index:02d}", 100.0 + index, float(index))
    slowest = figures(stream.events).slowest
    assert len(slowest) == SLOWEST_COUNT
    assert [s.unit for s in slowest] == [f"t.py::test_{i:02d}" for i in range(14, 4, -1)]


def test_counts_per_outcome() -> None:
    assert figures(three_workers()).counts == {
        "passed": 2,
        "failed": 1,
        "error": 1,
        "skipped": 1,
        "xfail": 1,
        "xpass": 0,
        "rerun": 1,
        "crash": 1,
        "timeout": 1,
    }


def test_crashes_span_from_the_previous_test_and_are_estimated() -> None:
    bars = {(bar.unit, bar.outcome): bar for bar in read_timeline(three_workers()).bars}
    crash = bars["t.py::e", "crash"]
    timeout = bars["t.py::h", "timeout"]
    assert (crash.worker, crash.start, crash.duration_s, crash.estimated) == (
        "gw1",
        1003.0,
        1.5,
        True,
    )
    assert (timeout.worker, timeout.start, timeout.duration_s) == ("gw2", 1008.0, 2.0)
    assert "gw1 died" in crash.note


def test_the_worker_lost_with_a_finalised_crash_draws_no_second_mark() -> None:
    assert read_timeline(three_workers()).markers == []


def test_a_crash_before_any_test_or_join_is_a_marker_on_its_lane() -> None:
    stream = Stream()
    stream.test("gw0", "t.py::a", 10.0, 1.0)
    stream.crash("host-1/gw1", "t.py::boom", 10.5, timeout=True)
    timeline = read_timeline(stream.events)
    assert [(m.worker, m.ts, m.kind, m.unit) for m in timeline.markers] == [
        ("host-1/gw1", 10.5, "timeout", "t.py::boom")
    ]
    assert timeline.lanes == ["gw0", "host-1/gw1"]
    result = figures(stream.events)
    assert result.counts["timeout"] == 1
    assert result.idle_tail_s["host-1/gw1"] == 1.0  # ran nothing: idle the whole wall time


def test_a_crash_after_a_restart_starts_at_the_new_join() -> None:
    stream = Stream()
    stream.emit("worker_joined", 1.0, "gw0")
    stream.test("gw0", "t.py::a", 2.0, 1.0)
    stream.emit("worker_joined", 5.0, "gw0")  # the slot was restarted
    stream.crash("gw0", "t.py::b", 7.0)
    crash = next(bar for bar in read_timeline(stream.events).bars if bar.outcome == "crash")
    assert (crash.start, crash.duration_s) == (5.0, 2.0)


def test_lost_workers_and_expired_leases_are_marked() -> None:
    stream = Stream()
    stream.test("gw0", "t.py::a", 10.0, 1.0)
    stream.emit("lease_expired", 12.0, "gw1", "t.py::b", attempt=1, crashes=0)
    cause = {"reason": "worker gw0 was killed", "culprit": "t.py::c"}
    stream.emit("worker_lost", 13.0, "gw0", cause=cause, requeued=["t.py::c"])
    markers = read_timeline(stream.events).markers
    assert [(m.worker, m.kind, m.unit) for m in markers] == [
        ("gw1", "expired", "t.py::b"),
        ("gw0", "lost", "t.py::c"),
    ]
    assert markers[1].note == "worker gw0 was killed"
    # A build that never finished ends at its last instant drawn.
    assert figures(stream.events).build_end == 13.0


def test_the_workers_argument_overrides_the_workers_seen() -> None:
    result = figures(three_workers(), workers=10)
    assert result.workers == 10
    assert result.lower_bound_s == 4.0  # 19.5 / 10 is below the longest test


def test_a_repeated_result_is_not_a_second_test() -> None:
    stream = Stream()
    stream.test("gw0", "t.py::a", 10.0, 1.0)
    stream.test("gw1", "t.py::a", 10.0, 5.0, FAILED)
    result = figures(stream.events)
    assert result.counts["passed"] == 1
    assert result.counts["failed"] == 0
    assert result.total_test_s == 1.0


def test_a_result_without_timing_is_counted_but_not_drawn() -> None:
    stream = Stream()
    stream.emit("result", 5.0, "gw0", "t.py::a", nodeid="t.py::a", reports=PASSED)
    result = figures(stream.events)
    assert result.counts["passed"] == 1
    assert read_timeline(stream.events).bars == []
    assert result.wall_s == 0.0


def test_no_events_give_empty_figures_and_a_page() -> None:
    result = figures([])
    assert (result.workers, result.wall_s, result.lower_bound_s, result.wall_ratio) == (
        0,
        0.0,
        0.0,
        None,
    )
    assert result.slowest == ()
    assert "No test results" in render_html([], title="empty")


@pytest.mark.parametrize(
    ("reports", "outcome"),
    [
        (PASSED, "passed"),
        (FAILED, "failed"),
        (SKIPPED, "skipped"),
        (XFAIL, "xfail"),
        (SETUP_ERROR, "error"),
        ([*PASSED, {"when": "teardown", "outcome": "failed"}], "error"),
        ([*FAILED, {"when": "teardown", "outcome": "failed"}], "failed"),
        ([{"when": "call", "outcome": "passed", "wasxfail": ""}], "xpass"),
        ([], "error"),
    ],
)
def test_outcome_of_reports(reports: list[dict[str, Any]], outcome: str) -> None:
    assert outcome_of(reports) == outcome


# -- the page -----------------------------------------------------------------------------------


def data_block(page: str) -> dict[str, Any]:
    match = re.search(r"<script type='application/json' id='timeline-data'>(.*?)</script>", page)
    assert match is not None
    loaded: dict[str, Any] = json.loads(match.group(1))
    return loaded


def test_the_page_fetches_nothing() -> None:
    page = render_html(three_workers(), title="build 7")
    assert "http://" not in page
    assert "https://" not in page
    assert not re.search(r"<(script|link|img|iframe|object|embed)\b[^>]*\b(src|href)\s*=", page)
    assert "url(" not in page
    assert "@import" not in page
    assert "default-src 'none'" in page  # the browser enforces it too


def test_test_ids_cannot_break_out_of_the_page() -> None:
    nasty = "t.py::test[</script><b>&]"
    stream = Stream()
    stream.test("gw0", nasty, 10.0, 2.0)
    stream.test("gw<i>", "t.py::b", 10.0, 1.0)
    page = render_html(stream.events, title="<title> & </script>")
    assert "</script><b>" not in page
    assert "<i>" not in page
    assert page.count("</script>") == page.count("<script")
    assert "t.py::test[&lt;/script&gt;&lt;b&gt;&amp;]" in page  # the slowest table
    assert "&lt;title&gt; &amp; &lt;/script&gt;" in page
    data = data_block(page)
    assert nasty in data["units"]
    assert data["lanes"] == ["gw0", "gw<i>"]


def test_the_page_embeds_the_figures() -> None:
    events = three_workers()
    page = render_html(events, title="build")
    result = figures(events)
    assert f"data-figure='wall_s' data-value='{result.wall_s!r}'" in page
    assert f"data-figure='lower_bound_s' data-value='{result.lower_bound_s!r}'" in page
    assert "data-worker='gw1' data-utilisation='0.45' data-idle-tail='5.5'" in page
    data = data_block(page)
    assert data["lanes"] == ["gw0", "gw1", "gw2"]
    assert len(data["units"]) == 9
    assert len(data["bars"]) == 9 * 6
    assert data["first"] == 10.0  # tests start 10 s after the first event


def test_write_html_returns_the_figures(tmp_path: Path) -> None:
    events = three_workers()
    path = tmp_path / "timeline.html"
    result = write_html(path, events, title="build", workers=3)
    assert isinstance(result, Figures)
    assert result == figures(events, workers=3)
    assert path.read_text("utf-8") == render_html(events, title="build", workers=3)


def big_build(tests: int, workers: int) -> list[Event]:
    rng = random.Random(7)
    stream = Stream()
    free = [0.0] * workers
    for index in range(tests):
        lane = min(range(workers), key=free.__getitem__)
        duration = rng.expovariate(5.0)
        unit = f"tests/test_module_{index % 97}.py::TestCase::test_case[{index}-param]"
        reports = FAILED if index % 50 == 0 else PASSED
        stream.test(f"host-{lane // 16}/gw{lane % 16}", unit, 1e9 + free[lane], duration, reports)
        free[lane] += duration
    return stream.events


def test_twenty_thousand_tests_on_64_workers_stay_small() -> None:
    events = big_build(20_000, 64)
    page = render_html(events, title="big")
    assert len(page.encode("utf-8")) < 5_000_000
    data = data_block(page)
    assert len(data["lanes"]) == 64
    assert len(data["units"]) == 20_000
    assert figures(events).counts["failed"] == 400


def test_outcomes_are_all_in_the_legend() -> None:
    page = render_html(three_workers(), title="build")
    for name in OUTCOMES:
        assert f"data-outcome='{name}'" in page
