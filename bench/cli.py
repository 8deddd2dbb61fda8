"""Command line: parse options, build the suites in a temporary directory, run, report."""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from bench import queue_micro, runner
from bench.contenders import Contender, contenders
from bench.machine import append_record
from bench.redis_server import redis_server_binary, throwaway_redis
from bench.report import mismatches, suite_table
from bench.suites import BUILDERS, SHAPES
from bench.table import Table

ALL_SUITES = ("a", "b", "c", "d", "e", "f", "g", "h", "i", "j")
# Names for several suites at once in --suite.
GROUPS = {"all": ALL_SUITES, "shapes": SHAPES}
DEFAULT_RUNS = 5
QUEUE_UNITS = 100_000
QUICK_QUEUE_UNITS = 10_000


@dataclass(frozen=True)
class BenchOptions:
    suites: tuple[str, ...]
    workers: int | None  # None: each suite's own default
    runs: int
    quick: bool
    markdown: Path | None
    no_redis: bool
    fork_probe: bool = False
    only: tuple[str, ...] = ()  # contender names to keep (plain pytest always runs)


def _suite_list(value: str) -> tuple[str, ...]:
    words = [word.strip().lower() for word in value.split(",") if word.strip()]
    keys = [key for word in words for key in GROUPS.get(word, (word,))]
    unknown = [key for key in keys if key not in ALL_SUITES]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(
            f"unknown suite(s) {', '.join(unknown) or '(none)'}; choose from "
            f"{','.join(ALL_SUITES)} or {' / '.join(GROUPS)}, e.g. --suite a,d or --suite shapes"
        )
    return tuple(dict.fromkeys(keys))


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return number


def parse_options(argv: Sequence[str]) -> BenchOptions:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Compare plain pytest, pytest-xdist and conveyor on synthetic suites.",
    )
    parser.add_argument(
        "--suite",
        type=_suite_list,
        default=ALL_SUITES,
        help="comma-separated suites to run, or `shapes` (b,c,f,g,h,i,j) (default: all)",
    )
    parser.add_argument(
        "--workers",
        type=_positive,
        help="worker processes for every parallel contender (default: each suite's own, "
        "2 for a, 8 for b/c/f/g/j, 4 for d/h/i)",
    )
    parser.add_argument(
        "--runs", type=_positive, help=f"counted runs per contender (default {DEFAULT_RUNS})"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller suites and 1 run: a smoke test"
    )
    parser.add_argument("--markdown", type=Path, help="append the results to this file")
    parser.add_argument(
        "--no-redis", action="store_true", help="skip the Redis contenders even if available"
    )
    parser.add_argument(
        "--fork-probe",
        action="store_true",
        help="also time bench/fork_probe.py: one collection, forked workers, no queue (a floor)",
    )
    parser.add_argument(
        "--contenders",
        default="",
        help="comma-separated contender names to run (plain pytest, the reference, always "
        "runs), e.g. xdist-load,xdist-worksteal,conveyor-sqlite,conveyor-first",
    )
    args = parser.parse_args(argv)
    runs = args.runs if args.runs is not None else (1 if args.quick else DEFAULT_RUNS)
    only = tuple(name.strip() for name in args.contenders.split(",") if name.strip())
    return BenchOptions(
        args.suite,
        args.workers,
        runs,
        args.quick,
        args.markdown,
        args.no_redis,
        args.fork_probe,
        only,
    )


def _chosen(lineup: list[Contender], only: tuple[str, ...]) -> list[Contender]:
    """The contenders asked for, plain pytest always first; an unknown name is an error."""
    if not only:
        return lineup
    unknown = sorted(set(only) - {contender.name for contender in lineup})
    if unknown:
        names = ", ".join(contender.name for contender in lineup)
        raise SystemExit(
            f"python -m bench: unknown contender(s) {', '.join(unknown)}; choose from {names}"
        )
    return [c for c in lineup if c.name == "pytest" or c.name in only]


@contextmanager
def _maybe_redis(options: BenchOptions, scratch: Path, notes: list[str]) -> Iterator[str | None]:
    """A throwaway Redis URL when redis-server and the redis client exist, else None."""
    binary = redis_server_binary()
    if options.no_redis:
        notes.append("Redis contenders skipped (--no-redis)")
        yield None
    elif binary is None:
        notes.append("Redis contenders skipped: no redis-server binary on PATH")
        yield None
    elif find_spec("redis") is None:
        notes.append("Redis contenders skipped: `pip install conveyor[redis]` for the client")
        yield None
    else:
        with throwaway_redis(binary, scratch / "redis") as url:
            yield url


def _run_suites(
    options: BenchOptions, scratch: Path, redis_url: str | None
) -> tuple[list[Table], list[str]]:
    tables: list[Table] = []
    problems: list[str] = []
    for key in options.suites:
        if key == "e":
            units = QUICK_QUEUE_UNITS if options.quick else QUEUE_UNITS
            measured = queue_micro.measure(
                unit_count=units, runs=options.runs, redis_url=redis_url, scratch=scratch
            )
            tables.append(queue_micro.queue_table(measured, units, options.runs))
            problems += queue_micro.all_errors(measured)
            continue
        suite = BUILDERS[key](scratch / f"suite_{key}", quick=options.quick)
        workers = options.workers or suite.default_workers
        measurements = runner.measure(
            suite,
            _chosen(contenders(workers, redis_url, fork_probe=options.fork_probe), options.only),
            workers=workers,
            runs=options.runs,
            scratch=scratch,
        )
        tables.append(suite_table(measurements))
        problems += mismatches(measurements)
    return tables, problems


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    notes: list[str] = []
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="conveyor-bench-")))
        redis_url = stack.enter_context(_maybe_redis(options, scratch, notes))
        tables, problems = _run_suites(options, scratch, redis_url)
    print()
    print("\n\n".join(table.text() for table in tables))
    for note in notes:
        print(f"note: {note}")
    if options.markdown is not None:
        append_record(options.markdown, "Benchmark run", command, notes, tables)
    if problems:
        banner = "!" * 78
        print(
            f"\n{banner}\nEXIT CODE MISMATCHES OR ERRORS ({len(problems)}): the timings above "
            f"compare runs that did not do the same thing\n{banner}",
            file=sys.stderr,
        )
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1
    return 0
