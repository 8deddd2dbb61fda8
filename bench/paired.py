"""Before and after, interleaved: the same suite run by conveyor at an earlier commit and at the
working tree, in one invocation.

`python -m bench.paired --before REV [--suite b] [--workers W] [--runs N] [--fork-workers]
[--first-run]` checks REV out into a temporary git worktree, writes the suite once, and runs
`conveyor run -n W -q .` in it with `PYTHONPATH` at the worktree's `src` (before) or at this
checkout's `src` (after), started the default way and, with `--fork-workers`, also forked
after collection. The variants rotate each round (round r starts at variant r), so machine
noise spreads over all of them; one uncounted round first records the timing history that the
counted rounds read (with `--first-run`, every build runs without pytest's cache, so none has
history: a new project's first build). It prints each variant's median, min and max wall time,
the median "first result after" the summary gives, and for the suites that count module
fixture setups (d, h, j) their range.
The exit status is 1 when a run did not pass.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.stats import median_or_nan
from bench.suites import BUILDERS, SETUP_LOG_ENV

ROOT = Path(__file__).resolve().parent.parent
# The summary's wording since the twenty-second round, and before it (an earlier commit).
FIRST_RESULT = re.compile(r"(?:results came from|first result after) ([0-9.]+) s")


@dataclass
class Variant:
    name: str
    source: Path
    extra: list[str]
    walls: list[float] = field(default_factory=list)
    first_results: list[float] = field(default_factory=list)
    setups: list[int] = field(default_factory=list)


def run_once(
    variant: Variant, suite: Path, workers: int, setup_log: Path | None
) -> tuple[float, float | None, int | None]:
    """One build; (wall seconds, first result seconds or None, module fixture setups or None
    where the suite does not count them). Raises on a failed build."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONDONTWRITEBYTECODE", "PYTEST_ADDOPTS")
    }
    env["PYTHONPATH"] = str(variant.source)
    if setup_log is not None:  # suites d, h and j log each module fixture's setup
        setup_log.write_text("")
        env[SETUP_LOG_ENV] = str(setup_log)
    command = [sys.executable, "-m", "conveyor", "run", "-n", str(workers), "-q", *variant.extra]
    started = time.perf_counter()
    done = subprocess.run([*command, "."], cwd=suite, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(
            f"{variant.name}: exit {done.returncode}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    found = FIRST_RESULT.search(done.stdout)
    setups = len(setup_log.read_text().splitlines()) if setup_log is not None else None
    return wall, float(found.group(1)) if found else None, setups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.paired", description=__doc__)
    parser.add_argument("--before", required=True, help="the commit to compare against")
    parser.add_argument("--suite", default="b", choices=sorted(BUILDERS))
    parser.add_argument("--workers", type=int, help="default: the suite's own")
    parser.add_argument("--runs", type=int, default=5, help="counted rounds (default 5)")
    parser.add_argument("--fork-workers", action="store_true", help="also both, forked")
    parser.add_argument(
        "--first-run", action="store_true", help="every build without timing history"
    )
    args = parser.parse_args(argv)
    no_history = ["-p", "no:cacheprovider"] if args.first_run else []
    with tempfile.TemporaryDirectory(prefix="bench-paired-") as scratch:
        tree = Path(scratch) / "before"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-q", str(tree), args.before],
            cwd=ROOT,
            check=True,
        )
        try:
            suite = BUILDERS[args.suite](Path(scratch) / "suite", quick=False)
            workers = args.workers or suite.default_workers
            setup_log = Path(scratch) / "setups.log" if suite.counts_setups else None
            starts = [("default", [])] + (
                [("forked", ["--fork-workers"])] if args.fork_workers else []
            )
            variants = [
                Variant(f"{when}, {start}", source, [*extra, *no_history])
                for start, extra in starts
                for when, source in (("before", tree / "src"), ("after", ROOT / "src"))
            ]
            for round_ in range(int(not args.first_run), args.runs + 1):
                shift = round_ % len(variants)
                for variant in variants[shift:] + variants[:shift]:
                    wall, first, setups = run_once(variant, suite.path, workers, setup_log)
                    if round_:  # round 0 records the history the others read (not first runs)
                        variant.walls.append(wall)
                        if first is not None:
                            variant.first_results.append(first)
                        if setups is not None:
                            variant.setups.append(setups)
                    print(f"[{round_}/{args.runs}] {variant.name}: {wall:.2f}s", file=sys.stderr)
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False
            )
    kind = "first runs" if args.first_run else "with history"
    print(
        f"suite {args.suite}, {workers} workers, {args.runs} rounds, {kind}, before = {args.before}"
    )
    header = f"{'variant':18s} {'median s':>9s} {'min s':>6s} {'max s':>6s} {'first result':>13s}"
    print(header + (f" {'setups':>9s}" if setup_log is not None else ""))
    for variant in variants:
        first = median_or_nan(variant.first_results)  # from the summary's timing line
        line = (
            f"{variant.name:18s} {median_or_nan(variant.walls):9.2f} {min(variant.walls):6.2f} "
            f"{max(variant.walls):6.2f} "
            + (f"{'-':>13s}" if math.isnan(first) else f"{first:12.2f}s")
        )
        if variant.setups:
            line += f" {min(variant.setups):>4d}-{max(variant.setups):<4d}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
