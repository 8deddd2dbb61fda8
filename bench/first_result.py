"""When the first result reaches the user, and the build's wall time: plain pytest, pytest-xdist
and conveyor's three ways of starting workers, interleaved on one suite.

`python -m bench.first_result [--suite a] [--workers W] [--runs N]` writes the suite once and
runs each command in it with a small plugin (`-p bench_first_result`, written to a temporary
folder on PYTHONPATH) that notes when the first test's call report reaches a session that is
not a worker: plain pytest's own, xdist's controller, conveyor's controller. Both times are
measured from just before the command starts, so each includes the interpreter, pytest, the
plugins and the collection. The commands rotate each round (round r starts at command r); one
uncounted round first records conveyor's timing history. The exit status is 1 when a run did
not pass.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.stats import median_or_nan
from bench.suites import BUILDERS

PLUGIN = '''
"""Note when the first test's call report reaches this session, unless it is a worker."""
import os, time

_noted = False


def pytest_runtest_logreport(report):
    global _noted
    if _noted or report.when != "call" or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    _noted = True
    with open(os.environ["BENCH_FIRST_RESULT_FILE"], "a") as out:
        out.write(f"{time.time()}\\n")
'''


@dataclass
class Command:
    name: str
    argv: list[str]
    firsts: list[float] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)


def commands(workers: int) -> list[Command]:
    python = [sys.executable, "-m"]
    conveyor = [*python, "conveyor", "run", "-n", str(workers), "-q"]
    return [
        Command("pytest", [*python, "pytest", "-p", "no:cacheprovider", "-q"]),
        Command("xdist", [*python, "pytest", "-p", "no:cacheprovider", "-q", "-n", str(workers)]),
        Command("conveyor", conveyor),
        Command("conveyor-spawn", [*conveyor, "--spawn-workers"]),
        Command("conveyor-fork", [*conveyor, "--fork-workers"]),
    ]


def run_once(command: Command, suite: Path, plugin_dir: Path) -> tuple[float, float]:
    """(first result, wall) in seconds from the start; raises on a failed run."""
    with tempfile.NamedTemporaryFile("r", suffix=".first", delete=False) as noted:
        path = Path(noted.name)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONDONTWRITEBYTECODE", "PYTEST_ADDOPTS", "PYTHONPATH")
    }
    env["PYTHONPATH"] = str(plugin_dir)
    env["BENCH_FIRST_RESULT_FILE"] = str(path)
    try:
        started = time.time()
        done = subprocess.run(
            [*command.argv, "-p", "bench_first_result", "."],
            cwd=suite,
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.time() - started
        if done.returncode != 0:
            raise SystemExit(
                f"{command.name}: exit {done.returncode}\n"
                f"{done.stdout[-3000:]}{done.stderr[-3000:]}"
            )
        lines = path.read_text().split()
        if not lines:
            raise SystemExit(f"{command.name}: no test result reached the reporting session")
        return float(lines[0]) - started, wall
    finally:
        path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.first_result", description=__doc__)
    parser.add_argument("--suite", default="a", choices=sorted(BUILDERS))
    parser.add_argument("--workers", type=int, help="default: the suite's own")
    parser.add_argument("--runs", type=int, default=5, help="counted rounds (default 5)")
    parser.add_argument("--quick", action="store_true", help="the suite's small version")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-first-result-") as scratch:
        plugin_dir = Path(scratch) / "plugin"
        plugin_dir.mkdir()
        (plugin_dir / "bench_first_result.py").write_text(PLUGIN)
        suite = BUILDERS[args.suite](Path(scratch) / "suite", quick=args.quick)
        workers = args.workers or suite.default_workers
        lineup = commands(workers)
        for round_ in range(args.runs + 1):
            shift = round_ % len(lineup)
            for command in lineup[shift:] + lineup[:shift]:
                first, wall = run_once(command, suite.path, plugin_dir)
                if round_:  # round 0 records the history the others read
                    command.firsts.append(first)
                    command.walls.append(wall)
                print(
                    f"[{round_}/{args.runs}] {command.name}: first {first:.2f}s, wall {wall:.2f}s",
                    file=sys.stderr,
                )
    print(f"suite {args.suite}, {workers} workers, {args.runs} rounds")
    columns = ("first result", 13), ("min", 6), ("max", 6), ("wall", 7), ("x pytest", 9)
    print(f"{'command':16s}" + "".join(f" {name:>{width}s}" for name, width in columns))
    reference = median_or_nan(lineup[0].walls)
    for command in lineup:
        wall = median_or_nan(command.walls)
        print(
            f"{command.name:16s} {median_or_nan(command.firsts):12.2f}s "
            f"{min(command.firsts):6.2f} {max(command.firsts):6.2f} {wall:6.2f}s "
            f"{wall / reference:8.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
