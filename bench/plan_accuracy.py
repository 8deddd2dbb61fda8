"""`python -m bench.plan_accuracy`: how close `conveyor plan` comes to the wall time measured.

For each bench suite: `--warmups` uncounted `conveyor run -n W` per worker count (they record
the timing history and each build's start-up, tail and gap between tests, as any build does),
then `conveyor plan --workers 2,4,8 --json` predicts, and only then are the counted runs timed
(process start to exit, as `python -m bench` times them). The error is predicted / measured - 1
against the median of the counted runs; the issue's target is within 15 %.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.contenders import _conveyor
from bench.machine import facts
from bench.runner import prime_bytecode, run_env
from bench.suites import BUILDERS, SETUP_LOG_ENV, Suite
from bench.table import Table

TARGET = 0.15
DEFAULT_SUITES = ("a", "b", "d")
DEFAULT_WORKERS = (2, 4, 8)


@dataclass(frozen=True)
class Row:
    """One worker count of one suite: the wall times, and the split of each that the build
    itself recorded (start-up; first test to last test), predicted and measured."""

    suite: str
    workers: int
    predicted_s: float
    measured_s: tuple[float, ...]
    predicted_startup_s: float
    predicted_testing_s: float
    predicted_tail_s: float
    startup_s: tuple[float, ...]
    testing_s: tuple[float, ...]

    @property
    def tail_s(self) -> tuple[float, ...]:
        """What each run cost after its last test: the wall time less the two parts it
        recorded (the report, stopping the workers, the interpreter's exit)."""
        return tuple(
            max(0.0, wall - start - testing)
            for wall, start, testing in zip(
                self.measured_s, self.startup_s, self.testing_s, strict=True
            )
        )

    @property
    def median_s(self) -> float:
        return statistics.median(self.measured_s)

    @property
    def error(self) -> float:
        return self.predicted_s / self.median_s - 1


def _timed(suite: Suite, workers: int, scratch: Path) -> float:
    env = run_env()
    if suite.counts_setups:
        env[SETUP_LOG_ENV] = str(scratch / f"setups-{suite.key}.log")
    start = time.perf_counter()
    done = subprocess.run(
        _conveyor(workers),
        cwd=suite.path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    wall_s = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"conveyor run -n {workers} failed on suite {suite.key}:\n{done.stdout}")
    return wall_s


def _last_build(suite: Suite) -> dict[str, float]:
    """The record the run just made of itself (start-up, testing span) in the suite's cache."""
    path = suite.path / ".pytest_cache" / "v" / "conveyor" / "builds"
    record: dict[str, float] = json.loads(path.read_text("utf-8"))[-1]
    return record


def _plan(suite: Suite, workers: Sequence[int]) -> dict[int, dict[str, float]]:
    argv = [sys.executable, "-m", "conveyor", "plan", "--json"]
    argv += ["--workers", ",".join(map(str, workers))]
    done = subprocess.run(
        argv, cwd=suite.path, env=run_env(), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"conveyor plan failed on suite {suite.key}:\n{done.stderr}")
    return {row["workers"]: row for row in json.loads(done.stdout)["rows"]}


def measure_suite(
    suite: Suite, workers: Sequence[int], runs: int, scratch: Path, warmups: int
) -> list[Row]:
    prime_bytecode(suite)
    for _ in range(warmups):
        for count in workers:
            wall = _timed(suite, count, scratch)
            print(f"[{suite.key} warm-up] -n {count}: {wall:.2f}s", file=sys.stderr, flush=True)
    predicted = _plan(suite, workers)
    measured: dict[int, list[tuple[float, dict[str, float]]]] = {count: [] for count in workers}
    for round_index in range(runs):
        for count in workers:
            wall = _timed(suite, count, scratch)
            measured[count].append((wall, _last_build(suite)))
            print(
                f"[{suite.key} {round_index + 1}/{runs}] -n {count}: {wall:.2f}s "
                f"(predicted {predicted[count]['predicted_wall_s']:.2f}s)",
                file=sys.stderr,
                flush=True,
            )
    return [
        Row(
            suite.key,
            count,
            predicted[count]["predicted_wall_s"],
            tuple(wall for wall, _ in measured[count]),
            predicted[count]["startup_s"],
            predicted[count]["testing_s"],
            predicted[count]["tail_s"],
            tuple(record["startup_s"] for _, record in measured[count]),
            tuple(record["testing_s"] for _, record in measured[count]),
        )
        for count in workers
    ]


def table(rows: Sequence[Row], titles: dict[str, str]) -> Table:
    result = Table(
        "conveyor plan: predicted against measured wall time",
        [
            "suite",
            "workers",
            "predicted s",
            "measured s (median)",
            "min-max",
            "error",
            "<= 15 %",
            "start-up pred / meas",
            "testing pred / meas",
            "tail pred / meas",
        ],
    )
    for row in rows:
        result.rows.append(
            [
                f"{row.suite} ({titles[row.suite]})",
                str(row.workers),
                f"{row.predicted_s:.2f}",
                f"{row.median_s:.2f}",
                f"{min(row.measured_s):.2f}-{max(row.measured_s):.2f}",
                f"{row.error * 100:+.1f} %",
                "yes" if abs(row.error) <= TARGET else "no",
                f"{row.predicted_startup_s:.2f} / {statistics.median(row.startup_s):.2f}",
                f"{row.predicted_testing_s:.2f} / {statistics.median(row.testing_s):.2f}",
                f"{row.predicted_tail_s:.2f} / {statistics.median(row.tail_s):.2f}",
            ]
        )
    errors = [abs(row.error) for row in rows]
    if errors:
        result.notes.append(
            f"mean |error| {statistics.fmean(errors) * 100:.1f} %, "
            f"worst {max(errors) * 100:.1f} %; {sum(e <= TARGET for e in errors)} of "
            f"{len(errors)} within {TARGET * 100:.0f} %"
        )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plan_accuracy", description=__doc__)
    parser.add_argument("--suite", default=",".join(DEFAULT_SUITES))
    parser.add_argument("--workers", default=",".join(map(str, DEFAULT_WORKERS)))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--warmups", type=int, default=3, help="uncounted runs per worker count (>= 3: a median)"
    )
    parser.add_argument("--full", action="store_true", help="full-size suites (default: quick)")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    keys = [key.strip() for key in args.suite.split(",") if key.strip()]
    unknown = [key for key in keys if key not in BUILDERS]
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; choose from {','.join(BUILDERS)}")
    workers = sorted({int(w) for w in args.workers.split(",")})
    rows: list[Row] = []
    titles: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="conveyor-plan-bench-") as tmp:
        scratch = Path(tmp)
        for key in keys:
            suite = BUILDERS[key](scratch / key, quick=not args.full)
            titles[key] = f"{suite.title}, {suite.test_count} tests"
            rows += measure_suite(suite, workers, args.runs, scratch, args.warmups)
    result = table(rows, titles)
    print(result.text())
    if args.markdown is not None:
        command = "python -m bench.plan_accuracy " + " ".join(argv or sys.argv[1:])
        machine = ", ".join(f"{name} {value}" for name, value in facts().items())
        with args.markdown.open("a", encoding="utf-8") as handle:
            handle.write(f"\n{result.markdown()}\n\nCommand: `{command.strip()}`; {machine}.\n")
    return 0 if all(abs(row.error) <= TARGET for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
