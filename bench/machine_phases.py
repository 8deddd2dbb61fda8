"""`python -m bench.machine_phases`: where a fleet's wall time goes, conveyor beside pytest-split.

The `accurate` case of `python -m bench.machines` (every machine starts at once, timing
history and durations file exact), with each fleet's wall time split into three phases:

- start: from the fleet's start to the first test's start on each machine (the earliest and
  the latest machine), what each runner spends before it tests anything;
- tests: from the first test's start on any machine to the last test's end on any;
- end: from the last test's end to the last machine's exit.

A small plugin (`-p bench_phases`, written to a temporary folder on PYTHONPATH) notes the
times in the process that runs the tests: pytest-split's one process per machine, conveyor's
worker (never its controller). Fleets alternate between the contenders, after one uncounted
conveyor fleet that records the timing history every later one reads.

    python -m bench.machine_phases [--machines 2] [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.fleet import run_fleet
from bench.machines_suite import DURATIONS_FILE, lower_bound_s, write_suite
from bench.redis_server import redis_server_binary, throwaway_redis
from bench.runner import run_env
from bench.table import Table

PLUGIN = '''
"""When the first test of this process started and its last one ended (test processes only:
conveyor's controller runs no test)."""
import json, os, time

_first = None
_last = None


def _runs_tests():
    return bool(os.environ.get("CONVEYOR_WORKER")) or not os.environ.get("BENCH_PHASES_CONVEYOR")


def pytest_runtest_logstart(nodeid, location):
    global _first
    if _first is None and _runs_tests():
        _first = time.time()


def pytest_runtest_logfinish(nodeid, location):
    global _last
    if _runs_tests():
        _last = time.time()


def pytest_sessionfinish(session):
    if _first is not None and _last is not None:
        with open(os.environ["BENCH_PHASES_FILE"], "a") as out:
            out.write(json.dumps({"first": _first, "last": _last}) + "\\n")
'''


@dataclass(frozen=True)
class Phases:
    wall_s: float
    first_start_s: float  # the earliest machine's first test
    last_first_start_s: float  # the latest machine's first test
    last_end_s: float

    @property
    def tests_s(self) -> float:
        return self.last_end_s - self.first_start_s

    @property
    def end_s(self) -> float:
        return self.wall_s - self.last_end_s


def measure(argvs: list[list[str]], cwd: Path, scratch: Path, conveyor: bool) -> Phases:
    notes = scratch / f"phases-{uuid.uuid4().hex[:8]}.jsonl"
    env = run_env()
    env["PYTHONPATH"] = str(scratch / "plugin")
    env["BENCH_PHASES_FILE"] = str(notes)
    if conveyor:
        env["BENCH_PHASES_CONVEYOR"] = "1"
    started = time.time()
    fleet = run_fleet(argvs, cwd=cwd, env=env, logs=scratch / "logs")
    bad = [machine.exit_code for machine in fleet.machines if machine.exit_code != 0]
    if bad:
        raise SystemExit(f"a machine exited {bad[0]}; see {scratch / 'logs'}")
    rows = [json.loads(line) for line in notes.read_text().splitlines() if line.strip()]
    firsts = [row["first"] - started for row in rows]
    return Phases(
        fleet.wall_s, min(firsts), max(firsts), max(row["last"] for row in rows) - started
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.machine_phases")
    parser.add_argument("--machines", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="the smaller suite (40 tests)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    binary = redis_server_binary()
    if binary is None:
        raise SystemExit("redis-server is needed (apt-get install -y redis-server)")
    with tempfile.TemporaryDirectory(prefix="bench-phases-") as folder:
        scratch = Path(folder)
        (scratch / "plugin").mkdir()
        (scratch / "plugin" / "bench_phases.py").write_text(PLUGIN)
        suite_dir = scratch / "suite"
        suite_dir.mkdir()
        suite = write_suite(suite_dir, quick=args.quick)
        durations = suite_dir / DURATIONS_FILE
        suite.write_durations(durations)
        with throwaway_redis(binary, scratch) as url:

            def conveyor() -> list[list[str]]:
                build = f"phases-{uuid.uuid4().hex[:10]}"
                command = [sys.executable, "-m", "conveyor", "run", "-n", "1", "--queue", url]
                return [
                    [*command, "--build", build, "-p", "bench_phases", "-q", "."]
                    for _ in range(args.machines)
                ]

            def split() -> list[list[str]]:
                command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
                command += ["-p", "bench_phases", "-q", "--splits", str(args.machines)]
                options = ["--splitting-algorithm", "least_duration"]
                options += ["--durations-path", str(durations), "."]
                return [
                    [*command, "--group", str(group), *options]
                    for group in range(1, args.machines + 1)
                ]

            measure(conveyor(), suite_dir, scratch, conveyor=True)  # records the history
            runs: dict[str, list[Phases]] = {"conveyor": [], "pytest-split least_duration": []}
            for repeat in range(args.repeats):
                order = list(runs) if repeat % 2 == 0 else list(reversed(runs))
                for name in order:
                    is_conveyor = name == "conveyor"
                    argvs = conveyor() if is_conveyor else split()
                    runs[name].append(measure(argvs, suite_dir, scratch, conveyor=is_conveyor))
                    print(f"[{repeat + 1}/{args.repeats}] {name}: {runs[name][-1]}", flush=True)
    bound = lower_bound_s(list(suite.sleeps.values()), args.machines)
    title = (
        f"{args.machines} machines, {suite.test_count} tests, lower bound {bound:.2f} s, "
        f"{args.repeats} fleets each (medians, seconds)"
    )
    table = Table(title, ["contender", "wall", "start (first / last machine)", "tests", "end"])
    for name, phases in runs.items():

        def median(values: list[float]) -> str:
            return f"{statistics.median(values):.2f}"

        table.rows.append(
            [
                name,
                median([p.wall_s for p in phases]),
                f"{median([p.first_start_s for p in phases])} / "
                f"{median([p.last_first_start_s for p in phases])}",
                median([p.tests_s for p in phases]),
                median([p.end_s for p in phases]),
            ]
        )
    print(table.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
