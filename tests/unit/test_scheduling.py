"""Serving order from timing history: slowest first, modules kept together unless too long."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from conveyor import scheduling
from conveyor.history import CacheHistory, merge, read_durations_file
from conveyor.scheduling import (
    Block,
    Simulated,
    back_to_front_order,
    estimate,
    kept_together,
    order_units,
    plan,
    range_keys,
    scope_of,
    simulate,
    through_group_end,
    whole_key,
)


def test_scope_of_groups_by_file_class_or_test() -> None:
    nodeid = "tests/test_a.py::TestX::test_y[1]"
    assert scope_of(nodeid, "module") == "tests/test_a.py"
    assert scope_of(nodeid, "class") == "tests/test_a.py::TestX"
    assert scope_of("tests/test_a.py::test_f", "class") == "tests/test_a.py"
    assert scope_of(nodeid, "test") == nodeid
    assert scope_of(nodeid, "file") == "tests/test_a.py"
    assert scope_of(nodeid, "scope") == "tests/test_a.py::TestX"
    assert scope_of("tests/test_a.py::test_f", "scope") == "tests/test_a.py"


def test_what_is_kept_whole_by_each_mode() -> None:
    method, function = "t/a.py::TestX::test_y[1]", "t/a.py::test_f"
    assert [whole_key(method, mode) for mode in ("class", "file", "scope", "none")] == [
        "t/a.py::TestX",
        "t/a.py",
        "t/a.py::TestX",
        None,
    ]
    assert [whole_key(function, mode) for mode in ("class", "file", "scope")] == [
        None,
        "t/a.py",
        "t/a.py",
    ]
    assert not kept_together(function, "t/a.py::test_g", "class")
    assert kept_together(function, "t/a.py::test_g", "scope")
    assert not kept_together(method, function, "scope")
    with pytest.raises(ValueError, match="unknown mode 'clas'"):
        through_group_end([method], 1, "clas")


def test_a_lease_runs_through_the_end_of_its_group() -> None:
    front = ["a.py::C::t1", "a.py::C::t2", "a.py::t3", "b.py::t1"]
    assert through_group_end(iter(front), 1, "class") == front[:2]
    assert through_group_end(iter(front), 1, "file") == front[:3]
    assert through_group_end(iter(front), 1, "none") == front[:1]
    assert through_group_end(iter(front), 0, "none") == front[:1]  # at least one
    assert through_group_end(iter([]), 3, "class") == []


def test_unknown_tests_are_estimated_from_their_module_then_the_suite() -> None:
    history = {"a.py::t1": 1.0, "a.py::t2": 3.0, "b.py::t1": 10.0}
    guesses = estimate(["a.py::t1", "a.py::new", "c.py::new", "b.py::t1"], history)
    assert guesses == {"a.py::t1": 1.0, "a.py::new": 2.0, "c.py::new": 3.0, "b.py::t1": 10.0}


def test_without_history_the_collection_order_is_kept() -> None:
    units = ["b.py::t", "a.py::t", "c.py::t"]
    assert order_units(units, {}, workers=4) == units


def test_slowest_modules_first_with_their_tests_together() -> None:
    units = ["fast.py::t1", "fast.py::t2", "slow.py::t1", "slow.py::t2", "mid.py::t1"]
    history = {
        "fast.py::t1": 0.1,
        "fast.py::t2": 0.1,
        "slow.py::t1": 2.0,
        "slow.py::t2": 1.0,
        "mid.py::t1": 1.5,
    }
    ordered = order_units(units, history, workers=1)
    assert ordered == ["slow.py::t1", "slow.py::t2", "mid.py::t1", "fast.py::t1", "fast.py::t2"]


def test_a_module_too_long_for_one_worker_is_split_into_ranges_served_slowest_first() -> None:
    units = [f"big.py::t{i}" for i in range(4)] + ["small.py::t"]
    history = {f"big.py::t{i}": float(i + 1) for i in range(4)} | {"small.py::t": 0.5}
    # total 10.5 s over 4 workers: a share of 2.6 s; big.py (10 s) is split into ranges of at
    # most 0.35 of a share where its tests allow: one test each. In collection order t2 and
    # t3 would end after the share (t3: 1.5 s of work before it over 4 workers, then 4 s):
    # they come first, longest first; the rest keep collection order (the queue keeps each
    # worker going forward through the module: queue/forward.py).
    found = plan(units, history, workers=4)
    assert found.order == ["big.py::t3", "big.py::t2", "big.py::t0", "big.py::t1", "small.py::t"]
    assert found.range_starts == {f"big.py::t{i}" for i in range(4)}


def test_a_split_module_is_cut_only_at_class_boundaries() -> None:
    units = [
        "m.py::TestA::test_1",
        "m.py::TestA::test_2",
        "m.py::TestA::test_3",
        "m.py::test_free",
        "m.py::TestB::test_1",
        "m.py::TestB::test_2",
        "other.py::test_x",
    ]
    history = dict.fromkeys(units, 1.0) | {"m.py::TestB::test_2": 5.0}
    found = plan(units, history, workers=4)
    # TestB (6 s) is the slowest range and comes first; each range keeps its own order.
    m_order = [unit for unit in found.order if unit.startswith("m.py")]
    assert m_order == [*units[4:6], *units[:3], units[3]]
    assert found.range_starts == {"m.py::TestA::test_1", "m.py::test_free", "m.py::TestB::test_1"}
    keys = range_keys(found.order, found.range_starts, "module")
    assert keys["m.py::TestA::test_3"] == "m.py::TestA::test_1"
    assert keys["m.py::TestB::test_2"] == "m.py::TestB::test_1"
    assert "other.py::test_x" not in keys


def test_a_split_modules_ranges_take_their_own_places_among_the_other_groups() -> None:
    units = [f"big.py::TestC{i}::test" for i in range(3)] + ["mid.py::t", "tiny.py::t"]
    history = {
        "big.py::TestC0::test": 1.0,
        "big.py::TestC1::test": 4.0,
        "big.py::TestC2::test": 2.0,
        "mid.py::t": 3.0,
        "tiny.py::t": 0.1,
    }
    ordered = order_units(units, history, workers=4)
    # TestC1 would end after the share (10.1 s / 4) at the place of big.py's longest: it is
    # served by its own length, first. The other two then end in time, and keep collection
    # order at the place of their longest (2 s): mid.py (3 s) comes between.
    assert ordered == [
        "big.py::TestC1::test",
        "mid.py::t",
        "big.py::TestC0::test",
        "big.py::TestC2::test",
        "tiny.py::t",
    ]


def test_test_grouping_is_plain_longest_first() -> None:
    units = ["a.py::x", "a.py::y", "b.py::z"]
    history = {"a.py::x": 1.0, "a.py::y": 3.0, "b.py::z": 2.0}
    assert order_units(units, history, grouping="test") == ["a.py::y", "b.py::z", "a.py::x"]


def test_random_order_is_reproducible_by_seed() -> None:
    units = [f"m.py::t{i}" for i in range(50)]
    first = order_units(units, {}, order="random", seed=7)
    assert first == order_units(units, {}, order="random", seed=7)
    assert first != units and sorted(first) == sorted(units)
    assert order_units(units, {"m.py::t3": 9.0}, order="collected") == units


def test_history_is_smoothed_and_forgets_tests_not_seen_for_long() -> None:
    stored = merge({}, {"t.py::a": 2.0, "t.py::gone": 1.0})
    stored = merge(stored, {"t.py::a": 4.0})
    assert stored["tests"]["t.py::a"][0] == pytest.approx(3.0)
    for _ in range(20):
        stored = merge(stored, {"t.py::a": 3.0})
    assert "t.py::gone" not in stored["tests"]


class DictCache:
    """pytest's Cache get/set, in memory."""

    def __init__(self) -> None:
        self.data: dict[str, object] = {}

    def get(self, key: str, default: object) -> object:
        return self.data.get(key, default)

    def set(self, key: str, value: object) -> None:
        self.data[key] = value


def test_cache_history_round_trip() -> None:
    store = CacheHistory(DictCache())
    assert store.load() == {}
    store.record({"t.py::a": 1.5})
    assert store.load() == {"t.py::a": 1.5}


def test_pytest_split_durations_file_is_understood(tmp_path: Path) -> None:
    split = tmp_path / ".test_durations"
    split.write_text('{"t.py::a": 1.25, "t.py::b": 0.5}')
    assert read_durations_file(split) == {"t.py::a": 1.25, "t.py::b": 0.5}
    garbage = tmp_path / "bad.json"
    garbage.write_text('["not", "durations"]')
    with pytest.raises(ValueError, match="neither a conveyor history export"):
        read_durations_file(garbage)


def test_batches_hold_many_tiny_tests_few_slow_ones_and_shrink_at_the_end() -> None:
    from conveyor.batch_policy import MAX_BATCH, batch_size

    assert batch_size(10_000, 2, typical_test_s=0.001) == MAX_BATCH
    assert batch_size(10_000, 2, typical_test_s=0.1) == 2
    assert batch_size(10_000, 2, typical_test_s=2.0) == 1
    assert batch_size(40, 2, typical_test_s=0.001) == 5
    assert batch_size(3, 2, typical_test_s=0.001) == 1
    # Nothing seen yet: one at a time, since the slowest tests are served first.
    assert batch_size(10_000, 2) == 1


SCOPED = [
    "a.py::test_before",
    "a.py::TestOne::test_1",
    "a.py::TestOne::test_2",
    "a.py::test_after",
    "b.py::test_1",
    "b.py::test_2",
]


def test_loadscope_brings_a_modules_functions_together_around_its_classes() -> None:
    order = plan(SCOPED, {}, grouping="scope", workers=2).order
    assert order == [SCOPED[0], SCOPED[3], SCOPED[1], SCOPED[2], SCOPED[4], SCOPED[5]]


def test_file_and_scope_groups_are_never_split_and_go_longest_first() -> None:
    history = {unit: 0.1 for unit in SCOPED} | {"b.py::test_2": 50.0, "a.py::test_after": 9.0}
    for grouping in ("file", "scope"):
        served = plan(SCOPED, history, grouping=grouping, workers=4)
        assert served.range_starts == frozenset()
        assert served.order[:2] == ["b.py::test_1", "b.py::test_2"]  # the longest group first
    assert plan(SCOPED, history, grouping="scope", workers=4).order[2:4] == [
        "a.py::test_before",
        "a.py::test_after",
    ]


GROUPED = [
    "a.py::test_db (xdist_group db)",
    "a.py::test_free",
    "b.py::test_web (xdist_group web)",
    "b.py::test_db_too (xdist_group db)",
    "c.py::test_free",
]


def test_loadgroup_brings_each_xdist_group_together_and_goes_longest_first() -> None:
    """A group's tests, in whatever files, are contiguous in collection order; a test
    outside any group is a group of its own."""
    assert plan(GROUPED, {}, grouping="group", workers=2).order == [
        GROUPED[0],
        GROUPED[3],
        GROUPED[1],
        GROUPED[2],
        GROUPED[4],
    ]
    history = {unit: 1.0 for unit in GROUPED} | {"c.py::test_free": 5.0}
    served = plan(GROUPED, history, grouping="group", workers=2)
    assert served.order[:3] == [GROUPED[4], GROUPED[0], GROUPED[3]]
    assert served.range_starts == frozenset()
    assert whole_key(GROUPED[3], "group") == "db" and whole_key(GROUPED[1], "group") is None
    assert scope_of(GROUPED[1], "group") == GROUPED[1]


def test_random_order_shuffles_whole_files() -> None:
    units = [f"m{m}.py::t{t}" for m in range(6) for t in range(4)]
    order = plan(units, {}, order="random", grouping="file", workers=2, seed=3).order
    assert sorted(order) == sorted(units)
    files = [unit.split("::")[0] for unit in order]
    assert all(files[i] == files[i - 1] for i in range(1, len(files)) if i % 4)  # contiguous
    assert order != units  # shuffled


def test_a_gone_workers_tests_come_back_latest_group_first_each_group_in_order() -> None:
    held = ["a.py::t0", "a.py::C::t1", "a.py::C::t2", "a.py::t3", "b.py::t1", "b.py::t2"]
    assert back_to_front_order(held, "none") == held[::-1]
    assert back_to_front_order(held, "class") == [*held[5:2:-1], *held[1:3], held[0]]
    assert back_to_front_order(held, "file") == [*held[4:], *held[:4]]
    assert back_to_front_order(held, "scope") == [*held[4:], held[3], *held[1:3], held[0]]
    assert back_to_front_order([], "class") == []


def test_a_module_holding_a_test_a_third_of_a_share_long_is_split_for_several_workers() -> None:
    units = [f"m.py::t{i}" for i in range(6)]
    units += [f"{name}.py::t{i}" for name in ("n", "o") for i in range(30)]
    history = dict.fromkeys(units, 0.1) | {"m.py::t3": 2.5}
    # 9 s over 2 workers: a share of 4.5 s. m.py (3 s) is under 70 % of it, but its 2.5 s
    # test is over a third: it is cut out, to be placed by its own length. n.py and o.py hold
    # quick tests only. One worker has nothing to balance.
    assert plan(units, history, workers=1).range_starts == frozenset()
    split = plan(units, history, workers=2)
    assert {"m.py::t0", "m.py::t3", "m.py::t4"} <= split.range_starts
    assert all(unit.startswith("m.py") for unit in split.range_starts)


def test_the_simulation_sends_a_worker_only_forward_through_a_split_module() -> None:
    first, second = Block("m.py", ["m.py::a"], 1.0, 0, 0), Block("m.py", ["m.py::b"], 1.0, 1, 1)
    other = Block("n.py", ["n.py::c"], 3.0, 2, -1)
    # `second` goes to worker 0, free first; `first` is behind it there, so it waits for
    # worker 1 (busy with n.py) rather than run backwards.
    found = simulate([second, other, first], workers=2)
    assert (found.workers, found.ends, found.backward) == ([0, 1, 1], [1.0, 3.0, 4.0], 0)
    alone = simulate([second, first], workers=1)
    assert (alone.ends, alone.backward) == ([1.0, 2.0], 1)  # nobody else could: counted


def test_late_slow_ranges_of_several_modules_are_placed_by_simulating_the_build() -> None:
    """Two machines, each module's slow tests among quick ones (bench.machines' suite): served
    at their modules' places, the 2.2 s and 2.0 s tests end on one worker at 4.9 s; the plan
    puts the 2.2 s test first, so that the 2.0 s one follows it on the other worker while the
    first runs the 2.5 s test and every quick test (the best finish, 4.2 s)."""
    m = [f"m.py::t{i:02d}" for i in range(20)]
    n = [f"n.py::t{i:02d}" for i in range(20)]
    history = dict.fromkeys(m + n, 0.03) | {m[6]: 2.5, m[19]: 2.2, n[13]: 2.0}
    found = plan(m + n, history, workers=2)
    assert found.order[0] == m[19]
    assert found.order.index(n[13]) < found.order.index(n[0])
    assert found.order.index(m[0]) < found.order.index(m[6]) < found.order.index(m[7])


def test_no_more_than_half_the_workers_count_of_one_modules_ranges_is_promoted() -> None:
    """With exact durations the simulation would promote two of m1.py's three ranges for two
    workers, leaving `test_7` to whichever worker has passed neither: a range 15 % slower than
    its history and no worker has, and the queue would send one back for it."""
    units = [
        "m1.py::test_7",
        "m1.py::Test8::test_8",
        "m1.py::Test8::test_9",
        "m1.py::Test8::test_10",
        "m1.py::test_11",
        "m1.py::test_12",
        "m0.py::test_1",
        "m2.py::test_13",
    ]
    history = dict(zip(units, [0.4, 2.3, 2.3, 2.3, 0.7, 0.6, 5.2, 2.4], strict=True))
    order = plan(units, history, workers=2).order
    before_first = {unit for unit in order[: order.index("m1.py::test_7")]}
    later_ranges = {"m1.py::Test8::test_8", "m1.py::test_11"}
    assert len(before_first & later_ranges) <= 1, order


def test_the_simulations_of_one_plan_are_bounded_by_the_blocks_they_walk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A suite of many modules is planned in about the time it takes to sort it: each
    simulation walks every block, so fewer of them are run the more blocks there are."""
    calls: list[int] = []
    real = scheduling.simulate

    def counted(served: Sequence[Block], workers: int) -> Simulated:
        calls.append(len(served))
        return real(served, workers)

    monkeypatch.setattr(scheduling, "simulate", counted)
    # bench.machines' two modules for two workers (promotions help there), among 100,000
    # modules of instant tests (unbounded, its simulations would walk 1.8 million blocks).
    m0 = [
        Block("m0.py", [f"m0.py::t{i}"], length, i, i)
        for i, length in enumerate([0.2, 2.53, 0.43, 2.19])
    ]
    m1 = [
        Block("m1.py", [f"m1.py::t{i}"], length, i, i)
        for i, length in enumerate([0.36, 2.07, 0.21])
    ]
    fillers = [Block(f"f{i}.py", [f"f{i}.py::t"], 0.0, 0, -1) for i in range(100_000)]
    served = scheduling.promote([*m0, *m1, *fillers], [m0, m1], share=4.0, workers=2)
    assert sorted(id(block) for block in served) == sorted(id(b) for b in [*m0, *m1, *fillers])
    assert len(calls) > 1 and sum(calls) <= scheduling.SIMULATION_BUDGET
