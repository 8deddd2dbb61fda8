"""The benchmark harness's own logic: statistics, suite shapes, the scale simulation's workload
and policy, the machines' lower bounds and accounting. No timings are asserted."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import RedisServer

from bench import first_result, machine_phases, machines_suite, scale_workload, suites
from bench.cli import _chosen
from bench.contenders import contenders
from bench.fleet import FleetRun, MachineRun, descendants, kill_machine, passed_count
from bench.machines import CASES, Contender, parse_options, reported, split_contender
from bench.paired import ROOT, Variant, run_once
from bench.scale_sim import Simulation, SimWorker, result_payload
from bench.stats import percentile, ratio
from conveyor.queue.protocol import dumps
from conveyor.queue.redis import RedisQueue


def test_percentile_is_an_observed_value_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([3.0, 1.0, 2.0], 0.99) == 3.0  # few samples: the worst one
    assert math.isnan(percentile([], 0.5))
    with pytest.raises(ValueError, match="between 0 and 1"):
        percentile(values, 99)


def test_ratio_is_nan_without_a_reference() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert math.isnan(ratio(1.0, 0.0))
    assert math.isnan(ratio(math.nan, 1.0))


def test_spread_puts_slow_tests_between_fast_ones_in_order() -> None:
    fast = [0.01 * i for i in range(1, 13)]
    slow = [1.0, 2.0, 3.0]
    order = suites.spread(fast, slow)
    assert sorted(order) == sorted(fast + slow)
    assert [value for value in order if value < 1] == fast
    positions = [order.index(value) for value in slow]
    assert positions[0] > 0 and positions[-1] < len(order) - 1
    assert positions == sorted(positions)
    gaps = [b - a for a, b in itertools.pairwise(positions)]
    assert max(gaps) - min(gaps) <= 1


@pytest.mark.parametrize("key", sorted(suites.BUILDERS))
def test_each_quick_suite_collects_the_tests_it_counts(key: str, pytester: pytest.Pytester) -> None:
    suite = suites.BUILDERS[key](pytester.path, quick=True)
    result = pytester.runpytest("--collect-only", "-q", "-p", "no:cacheprovider")
    result.assert_outcomes()
    result.stdout.fnmatch_lines([f"{suite.test_count} tests collected*"])
    assert "-p no:randomly" in (pytester.path / "pytest.ini").read_text()


def test_shapes_are_deterministic(tmp_path: Path) -> None:
    first = suites.huge_module(tmp_path / "one", quick=False)
    second = suites.huge_module(tmp_path / "two", quick=False)
    assert first.sleeps_s == second.sleeps_s
    assert len(first.sleeps_s) == 300
    assert sum(s >= 0.5 for s in first.sleeps_s) == 15
    assert len(list((tmp_path / "one").glob("test_*.py"))) == 1


def test_scale_workload_is_a_slowest_first_permutation() -> None:
    durations = scale_workload.draw_durations(5000)
    assert durations == scale_workload.draw_durations(5000)
    assert all(0.005 <= d <= 10.0 for d in durations)
    workload = scale_workload.build_workload(5000, workers=10)
    assert sorted(workload.order) == sorted(scale_workload.unit_names(5000))
    module_totals: dict[str, float] = {}
    for unit in workload.order:
        module = unit.split("::")[0]
        module_totals[module] = module_totals.get(module, 0.0) + workload.seconds[unit]
    served = list(dict.fromkeys(unit.split("::")[0] for unit in workload.order))
    totals = [module_totals[module] for module in served]
    assert totals == sorted(totals, reverse=True)


def test_lower_bound_is_the_longest_test_or_the_even_share() -> None:
    assert scale_workload.lower_bound_s([1.0, 1.0, 1.0, 1.0], 2) == 2.0
    assert scale_workload.lower_bound_s([5.0, 1.0], 4) == 5.0
    assert scale_workload.lower_bound_s([], 4) == 0.0


def test_simulated_worker_asks_for_the_module_run_at_the_front() -> None:
    workload = scale_workload.build_workload(300, workers=3)
    worker = SimWorker("w", workload, worker_count=3, pending=workload.total)
    front = workload.range_of[workload.order[0]]  # a split module's range is at the front
    run = sum(1 for unit in workload.order if workload.range_of.get(unit) == front)
    assert 1 < run < 32
    assert worker.batch() == run  # the whole range, held together
    per_test = scale_workload.build_workload(300, workers=3, grouping="test")
    fresh = SimWorker("w", per_test, worker_count=3, pending=per_test.total)
    assert fresh.batch() == 1  # no test seen yet: the first may be the slowest


def test_result_payload_has_the_size_of_real_reports() -> None:
    payload = result_payload("tests/test_mod_00001.py::test_123", 1, 1000.0, 0.25)
    assert [r["when"] for r in payload["reports"]] == ["setup", "call", "teardown"]
    assert 900 <= len(dumps(payload)) <= 2500


@pytest.mark.redis
def test_simulation_completes_every_unit_on_a_real_redis(redis_server: RedisServer) -> None:
    url = redis_server.url
    workload = scale_workload.build_workload(400, workers=4)
    build = f"sim-test-{time.time_ns()}"
    leader = RedisQueue.from_url(url, build, clock=lambda: 1_000_000.0)
    leader.populate("leader", workload.order, {})
    simulation = Simulation(
        url=url,
        build=build,
        workload=workload,
        workers=4,
        connections=2,
        window_s=0.05,
        budget_s=120.0,
        lease_ttl_s=30.0,
        epoch=1_000_000.0,
        charge_latency=False,
    )
    result = simulation.run()
    assert result.finished and not result.stopped_by_budget
    assert leader.status().done == 400
    assert sum(worker.tests for worker in result.workers) == 400
    bound = scale_workload.lower_bound_s(list(workload.seconds.values()), 4)
    assert result.makespan_s >= bound - 1e-6
    leader.close()


def test_machines_lower_bound_for_a_late_or_dead_machine() -> None:
    work = [1.0] * 24
    assert machines_suite.lower_bound_s(work, 4) == 6.0
    assert machines_suite.lower_bound_s(work, 4, late_s=4.0) == 7.0
    assert machines_suite.lower_bound_s(work, 4, dead_after_s=3.0) == 7.0
    assert machines_suite.lower_bound_s(work, 4, dead_after_s=10.0) == 6.0


def test_machine_suite_slows_tests_down_without_changing_their_code(tmp_path: Path) -> None:
    suite = machines_suite.write_suite(tmp_path, quick=True)
    assert sum(suite.sleeps.values()) == pytest.approx(8.0, rel=0.01)
    sources = {p.name: p.read_text() for p in tmp_path.glob("test_*.py")}
    factors = machines_suite.stale_factors(suite.sleeps)
    assert len(factors) == suite.test_count // 4
    longest_first = sorted(suite.sleeps, key=suite.sleeps.__getitem__, reverse=True)
    assert longest_first[0] not in factors and longest_first[1] in factors
    suite.slow_down(factors)
    assert {p.name: p.read_text() for p in tmp_path.glob("test_*.py")} == sources
    written = json.loads((tmp_path / machines_suite.SLOWDOWN_FILE).read_text())
    assert set(written.values()) == {3.0}
    durations = tmp_path / "durations.json"
    suite.write_durations(durations)
    assert json.loads(durations.read_text()) == suite.sleeps


def _machine(index: int, passed: int | None, *, killed: bool = False) -> MachineRun:
    return MachineRun(index, 0.0, 1.0, -9 if killed else 0, killed, passed, "")


def test_a_build_reports_what_its_machines_report() -> None:
    fleet = FleetRun((_machine(0, 40), _machine(1, None, killed=True), _machine(2, 40)))
    conveyor = Contender("conveyor", lambda: [], is_conveyor=True)
    split = Contender("pytest-split", lambda: [])
    assert reported(conveyor, fleet) == 40  # every survivor prints the whole build
    assert reported(split, fleet) == 80  # groups add up; the killed one reports nothing
    assert passed_count("....\n12 passed, 1 skipped in 2.0s") == 12


def test_a_fleet_of_any_size_splits_the_same_suite(tmp_path: Path) -> None:
    options = parse_options(["--quick", "--machines", "2", "--case", "late,killed"])
    assert options.machines == 2 and [case.key for case in options.cases] == ["late", "killed"]
    groups = split_contender("least_duration", tmp_path / "d", options.machines).argvs()
    assert [argv[argv.index("--group") + 1] for argv in groups] == ["1", "2"]
    assert all(argv[argv.index("--splits") + 1] == "2" for argv in groups)
    titles = {case.key: case.title(options.machines) for case in CASES}
    assert titles["late"] == "machine 2 starts 5 s late"  # the last machine
    assert titles["killed"] == "machine 2 killed midway"
    with pytest.raises(SystemExit):
        parse_options(["--machines", "1"])


def test_kill_machine_reaches_processes_in_other_sessions() -> None:
    # A child in a session of its own, as conveyor's supervisor starts its workers.
    script = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
        "start_new_session=True); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (found := descendants(parent.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert found
        kill_machine(parent)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{pid}").exists() for pid in found) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in found)
    finally:
        if parent.poll() is None:
            parent.kill()


def _alive(pid: int) -> bool:
    """A zombie (killed, not yet reaped by its dead parent's reaper) counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_contenders_can_be_chosen_and_plain_pytest_always_runs() -> None:
    lineup = contenders(2, None, fork_probe=True)
    names = [c.name for c in _chosen(lineup, ("conveyor-first", "fork-probe"))]
    assert names == ["pytest", "conveyor-first", "fork-probe"]
    assert _chosen(lineup, ()) == lineup
    with pytest.raises(SystemExit, match=r"unknown contender.*xdist-lod"):
        _chosen(lineup, ("xdist-lod",))


def test_the_fork_probe_runs_every_test_once_and_counts_them(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench/fork_probe.py splits the collected tests over forked children: every test runs
    once, the parent prints the children's sum, and a failure sets the exit code."""
    pytester.makepyfile(
        test_probe="""
        import os
        def test_ok(): pass
        def test_also(): pass
        def test_third(): pass
        def test_fails(): assert os.environ.get("PROBE_PASS")
        """
    )
    script = str(Path(__file__).parents[2] / "bench" / "fork_probe.py")
    argv = [sys.executable, script, "-n", "2", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    failing = pytester.run(*argv)
    assert failing.ret == 1
    assert failing.outlines[-1] == "fork probe: 3 passed, 1 failed"
    monkeypatch.setenv("PROBE_PASS", "1")
    passing = pytester.run(*argv)
    assert passing.ret == 0
    assert passing.outlines[-1] == "fork probe: 4 passed, 0 failed"


def test_paired_runs_read_the_first_result_and_the_setups_from_a_real_build(
    tmp_path: Path,
) -> None:
    """bench.paired reads what a real build prints: the summary's first result (a first
    run's too, since the twenty-second round) and the module fixture setups the suite
    logs."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "pytest.ini").write_text("[pytest]\naddopts = -p no:randomly\n")
    (suite / "test_m.py").write_text(
        "import os, pytest\n\n"
        "@pytest.fixture(scope='module', autouse=True)\n"
        "def logged():\n"
        "    with open(os.environ['BENCH_SETUP_LOG'], 'a') as log:\n"
        "        log.write('setup\\n')\n\n"
        "def test_a():\n    pass\n\n"
        "def test_b():\n    pass\n"
    )
    variant = Variant("after, spawned", ROOT / "src", [])
    log = tmp_path / "setups.log"
    wall, first_run, setups = run_once(variant, suite, 2, log)
    assert first_run is not None and 0 < first_run <= wall  # without history too
    assert setups is not None and 1 <= setups <= 2  # one module, on one or two workers
    wall, first_result, _ = run_once(variant, suite, 2, log)
    assert first_result is not None and 0 < first_result <= wall


def test_first_result_is_noted_by_the_reporting_session_not_a_worker(tmp_path: Path) -> None:
    """bench.first_result's plugin writes once per run, from plain pytest's session or
    conveyor's controller: a worker's report would come before the user sees anything."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "pytest.ini").write_text("[pytest]\naddopts = -p no:randomly\n")
    (suite / "test_m.py").write_text("import time\n\ndef test_a():\n    time.sleep(0.3)\n")
    plugin_dir = tmp_path / "plugin"
    plugin_dir.mkdir()
    (plugin_dir / "bench_first_result.py").write_text(first_result.PLUGIN)
    plain, _, conveyor, *_ = first_result.commands(2)
    for command in (plain, conveyor):
        first, wall = first_result.run_once(command, suite, plugin_dir)
        assert 0.3 < first <= wall, command.name  # after the test's own 0.3 s


def test_machine_phases_are_noted_by_the_process_that_runs_the_tests(tmp_path: Path) -> None:
    """bench.machine_phases' plugin notes the first test's start and the last test's end in
    plain pytest and in conveyor's worker; conveyor's controller replays reports and writes
    nothing, or the tests would seem to end when the report does."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "pytest.ini").write_text("[pytest]\naddopts = -p no:randomly\n")
    (suite / "test_m.py").write_text("import time\n\ndef test_a():\n    time.sleep(0.3)\n")
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "bench_phases.py").write_text(machine_phases.PLUGIN)
    conveyor = [sys.executable, "-m", "conveyor", "run", "-n", "1", "-p", "bench_phases", "."]
    plain = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "bench_phases", "."]
    for argv, is_conveyor in ((plain, False), (conveyor, True)):
        phases = machine_phases.measure([argv], suite, tmp_path, conveyor=is_conveyor)
        assert phases.first_start_s == phases.last_first_start_s  # one process noted it
        assert 0.3 <= phases.tests_s < phases.wall_s - phases.first_start_s + 1e-9
        assert phases.end_s >= 0
