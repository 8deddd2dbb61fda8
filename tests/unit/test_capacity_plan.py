"""`conveyor plan`'s simulator: the scheduler's own order and batch rule, start-up from records."""

from __future__ import annotations

import pytest

from conveyor.batch_policy import BatchRule
from conveyor.capacity_plan import (
    DEFAULT_STARTUP_S,
    RECENT_BUILDS,
    Overheads,
    Setups,
    knee,
    knee_reached,
    merge_setups,
    overheads_from,
    parse_worker_counts,
    predict,
    simulate,
)
from conveyor.plan_page import schedule_events, table_html
from conveyor.timeline import figures


def test_batch_policy_takes_a_modules_run_and_never_ends_inside_a_class() -> None:
    order = [
        "a.py::test_1",
        "a.py::test_2",
        "a.py::test_3",
        "b.py::T::test_1",
        "b.py::T::test_2",
        "c.py::test_1",
    ]
    policy = BatchRule(order, frozenset(), grouping="module", worker_count=2, has_history=True)
    assert policy.size(6, affinity=0, typical_test_s=None) == 3  # a.py's run, whole
    assert policy.run_after("a.py::test_1") == 2
    # A batch of one that would end inside class T is carried to the class's end.
    test_policy = BatchRule(order, frozenset(), grouping="class", worker_count=2, has_history=True)
    assert test_policy.size(3, affinity=0, typical_test_s=None) == 2


def test_simulate_serves_the_slowest_first_and_runs_every_test_once() -> None:
    history = {"a.py::test_long": 3.0, "b.py::test_1": 1.0, "c.py::test_1": 1.0}
    history |= {f"d.py::test_{i}": 0.5 for i in range(2)}
    units = sorted(history)
    schedule = simulate(units, history, workers=2)
    assert sorted(run.unit for run in schedule.runs) == units
    first = min(schedule.runs, key=lambda run: (run.start, run.worker))
    assert first.unit == "a.py::test_long"
    assert schedule.span_s == pytest.approx(3.0)  # 3 | 1 + 1 + 0.5 + 0.5
    assert schedule.busy_s == pytest.approx(6.0)


def test_machines_share_one_queue() -> None:
    history = {f"m{i}.py::test": 1.0 for i in range(8)}
    one = simulate(sorted(history), history, workers=2)
    two = simulate(sorted(history), history, workers=2, machines=2)
    assert (one.span_s, two.span_s) == (pytest.approx(4.0), pytest.approx(2.0))
    assert two.workers == 4


def test_gap_between_tests_counts_per_test() -> None:
    history = {f"t{i}.py::test": 1.0 for i in range(4)}
    assert simulate(sorted(history), history, workers=1, gap_s=0.25).span_s == pytest.approx(5.0)


def test_prediction_adds_start_up_and_tail_and_finds_the_knee() -> None:
    history = {f"t{i:02d}.py::test": 1.0 for i in range(16)}
    overheads = Overheads({1: 1.0, 4: 2.5}, tail_by_workers={1: 0.5}, gap_by_workers={1: 0.0})
    rows = predict(sorted(history), history, [1, 2, 4, 8, 16, 32], overheads)
    by_workers = {row.workers: row for row in rows}
    assert by_workers[1].wall_s == pytest.approx(1.0 + 16 + 0.5)
    assert by_workers[4].wall_s == pytest.approx(2.5 + 4 + 0.5)
    assert by_workers[2].startup_s == pytest.approx(1.5)  # the line through 1 and 4 workers
    assert by_workers[32].utilisation == pytest.approx(0.5)  # 16 tests, 32 workers
    assert by_workers[16].lower_bound_s == pytest.approx(by_workers[16].startup_s + 1 + 0.5)
    found = knee(rows)
    assert found is not None
    following = by_workers[found.workers * 2]
    assert following.wall_s > 0.9 * found.wall_s
    earlier = [row for row in rows if row.workers < found.workers]
    assert all(by_workers[row.workers * 2].wall_s <= 0.9 * row.wall_s for row in earlier)


def test_overheads_come_from_recorded_builds_and_fall_back_to_defaults() -> None:
    assert Overheads().startup_s(8) == DEFAULT_STARTUP_S
    records = [
        {"workers": 2, "startup_s": 1.0, "tail_s": 0.2, "gap_s": 0.01},
        {"workers": 2, "startup_s": 3.0, "tail_s": 0.4, "gap_s": 0.03},
        {"workers": "x", "startup_s": -1, "tail_s": "slow"},  # nonsense is skipped
    ]
    overheads = overheads_from(records)
    assert overheads.startup_s(2) == overheads.startup_s(16) == pytest.approx(2.0)
    assert (overheads.tail_s(2), overheads.gap_s(2)) == (pytest.approx(0.3), pytest.approx(0.02))
    by_count = overheads_from(
        [
            {"workers": 2, "startup_s": 1.0, "gap_s": 0.01, "tail_s": 0.2},
            {"workers": 8, "startup_s": 3.0, "gap_s": 0.04, "tail_s": 0.8},
        ]
    )
    assert by_count.gap_s(4) == pytest.approx(0.02)  # on the line through 2 and 8 workers
    assert by_count.tail_s(4) == pytest.approx(0.4)  # more workers to stop at the end
    assert overheads.recorded_builds == 2


def test_overheads_follow_the_recent_builds_at_each_count() -> None:
    """A machine or a suite that changed: old builds' costs no longer count."""
    old = [{"workers": 2, "startup_s": 5.0, "tail_s": 2.0, "gap_s": 0.1}] * 20
    new = [{"workers": 2, "startup_s": 1.0, "tail_s": 0.2, "gap_s": 0.01}] * RECENT_BUILDS
    overheads = overheads_from([*old, *new])
    assert overheads.startup_s(2) == pytest.approx(1.0)
    assert overheads.tail_s(2) == pytest.approx(0.2)
    assert overheads.gap_s(2) == pytest.approx(0.01)


def test_worker_counts_are_checked() -> None:
    assert parse_worker_counts("8, 2,4,2") == [2, 4, 8]
    for bad in ("", "0", "two", "2,-1"):
        with pytest.raises(ValueError, match="--workers"):
            parse_worker_counts(bad)


def test_the_page_draws_the_simulated_build_like_a_real_one() -> None:
    history = {f"t{i}.py::test": 1.0 for i in range(6)}
    rows = predict(
        sorted(history), history, [1, 3], Overheads({1: 2.0, 3: 2.0}, {1: 0.1}, {1: 0.0})
    )
    chosen = rows[1]
    found = figures(schedule_events(chosen))
    assert found.workers == 3
    assert found.wall_s == pytest.approx(2.0)
    assert found.build_wall_s == pytest.approx(chosen.wall_s)
    assert "id='plan'" in table_html(rows, chosen) and "class='knee'" in table_html(rows, chosen)


def test_the_ranges_of_a_split_module_go_to_different_workers() -> None:
    """A module holding the slow tests is split into ranges; a worker that starts later sizes
    its first batch by the queue as it finds it, so it does not swallow every range at once."""
    history = {f"x.py::test_{i:02d}": 0.03 for i in range(17)}
    history |= {f"x.py::test_{i:02d}": 2.0 for i in range(17, 20)}
    history |= {f"y.py::test_{i:02d}": 0.03 for i in range(20)}
    schedule = simulate(sorted(history), history, workers=2)
    slow_workers = {run.worker for run in schedule.runs if history[run.unit] == 2.0}
    assert slow_workers == {0, 1}
    # Not 6 s on one worker; not the best split either (4 s): worker 0, whose recent tests
    # took 30 ms, sizes its next batch by them and takes the two remaining slow tests at once,
    # as a real worker does.
    assert schedule.span_s == pytest.approx(4.51)


def test_a_module_setup_is_paid_each_time_a_worker_enters_the_module() -> None:
    """A module fixture's cost sits in the history of whichever tests paid it; the simulator
    takes it out of them and charges it where pytest would set the module up again."""
    setups = merge_setups(Setups(), {"m.py::test_0": 0.5, "m.py::test_1": 0.0, "n.py::t": 0.001})
    assert setups.modules == {"m.py": 0.5} and setups.tests == {"m.py::test_0": 0.5}
    history = {f"m.py::test_{i}": 0.1 for i in range(4)} | {"m.py::test_0": 0.6}
    one = simulate(sorted(history), history, workers=1, setups=setups)
    assert one.span_s == pytest.approx(0.5 + 4 * 0.1)  # set up once, each test 0.1
    again = merge_setups(setups, {"m.py::test_0": 0.0, "m.py::test_1": 0.5})
    assert again.tests == {"m.py::test_0": 0.25, "m.py::test_1": 0.25}  # smoothed as history
    assert Setups.from_json(again.as_json()) == again
    assert Setups.from_json({"modules": {"m.py": "slow"}, "tests": []}) == Setups()


def test_an_idle_worker_steals_in_the_simulation_as_in_a_build() -> None:
    """One module's run goes to one worker whole; the other, with nothing pending, takes the
    back half of what is not yet claimed, as `Queue.steal` does."""
    history = {f"m.py::test_{i}": 1.0 for i in range(10)}
    schedule = simulate(sorted(history), history, workers=2)
    by_worker: dict[int, list[str]] = {}
    for run in schedule.runs:
        by_worker.setdefault(run.worker, []).append(run.unit)
    assert sorted(unit for units in by_worker.values() for unit in units) == sorted(history)
    assert len(by_worker) == 2 and min(len(units) for units in by_worker.values()) >= 4
    assert schedule.span_s <= 6.0  # not 10 s on one worker while the other idles


def test_a_simulated_steal_never_splits_a_class() -> None:
    history = {f"m.py::TestA::test_{i}": 1.0 for i in range(6)}
    schedule = simulate(sorted(history), history, workers=2)
    assert len({run.worker for run in schedule.runs}) == 1


def test_a_knee_past_the_counts_simulated_is_not_claimed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With 1,2,4 workers on a suite that keeps gaining, the plan says the knee lies beyond
    what it simulated instead of calling 4 the knee."""
    from conveyor.cli_memory import _print_plan

    history = {f"m{i}.py::test_a": 1.0 for i in range(64)}
    rows = predict(sorted(history), history, [1, 2, 4], Overheads({1: 0.1}, {1: 0.0}, {1: 0.0}))
    best = knee(rows)
    _print_plan(rows, best, Overheads(), sorted(history), 64.0, "history")
    printed = capsys.readouterr().out
    assert "knee: not reached up to 4 workers" in printed
    # The last row is the fastest simulated, not a knee: the table must not say otherwise.
    assert "<- knee" not in printed
    assert printed.count("<- fastest simulated") == 1
    assert not knee_reached(rows, best)
    page = table_html(rows, best, knee_reached(rows, best))
    assert "not reached up to 4 workers" in page and "The knee is at" not in page


def test_more_workers_than_cores_are_noted(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Predictions at counts past this machine's cores rest on builds whose tests ran slower
    for sharing them: the plan says so."""
    from conveyor.cli_memory import _print_plan

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    history = {f"m{i}.py::test_a": 1.0 for i in range(8)}
    rows = predict(sorted(history), history, [1, 2, 4, 8], Overheads({1: 0.1}, {1: 0.0}, {1: 0.0}))
    _print_plan(rows, knee(rows), Overheads(), sorted(history), 8.0, "history")
    printed = capsys.readouterr().out
    assert "note: this machine has 2 cores; at 4, 8 workers they are shared" in printed


def test_builds_without_timing_history_do_not_set_the_overheads() -> None:
    """A first run reserves one test at a time: its gap between tests is not a planned build's."""
    first = {"workers": 2, "startup_s": 1.0, "tail_s": 0.2, "gap_s": 0.05, "with_history": False}
    later = {"workers": 2, "startup_s": 1.0, "tail_s": 0.2, "gap_s": 0.01, "with_history": True}
    assert overheads_from([first, later, later]).gap_s(2) == pytest.approx(0.01)
    assert overheads_from([first]).gap_s(2) == pytest.approx(0.05)  # nothing better known
    unknown = {"workers": 2, "startup_s": 1.0, "gap_s": 0.02}  # recorded before the flag existed
    assert overheads_from([first, unknown]).gap_s(2) == pytest.approx(0.02)
