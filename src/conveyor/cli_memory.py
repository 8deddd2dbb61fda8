"""`conveyor plan` and `conveyor flaky`: questions answered from what earlier builds recorded
(timing history, build costs, flaky events), in pytest's cache or in Redis."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from conveyor.build_memory import BuildMemory, memory_store
from conveyor.capacity_plan import (
    DEFAULT_WORKER_COUNTS,
    Setups,
    knee,
    knee_reached,
    overheads_from,
    parse_worker_counts,
    predict,
)
from conveyor.errors import UsageError
from conveyor.flaky import flakiest, summarise
from conveyor.history import DirectoryCache, HistoryStore, history_store
from conveyor.options import XDIST_DIST_MODES, find_pyproject, layered
from conveyor.queue import check_url, open_queue, queue_from_env
from conveyor.scheduling import GROUPINGS, ORDERS

PLAN_USAGE = """\
usage: conveyor plan [--workers 1,2,4,8,16,32] [--machines N] [--dist MODE] [--order ORDER]
                     [--queue URL --history-key NAME] [--cache-dir DIR] [--html FILE] [--json]

Simulates the build conveyor would run on each worker count (per machine; --machines N
machines share one queue), with its own scheduling, on the timing history, and prints the
predicted wall time, the lower bound, the utilisation and the knee: the worker count past
which doubling the workers gains less than 10 %. Start-up, the tail and the gap between tests
come from recorded builds (defaults until there are some). --html draws the knee's build.
"""

FLAKY_USAGE = """\
usage: conveyor flaky [--queue URL --history-key NAME] [--cache-dir DIR] [--limit N] [--json]

The flakiest tests: failed then passed on a retry, or another outcome than an earlier build
of the same commit. The score halves every week without new events.
"""


@dataclass(frozen=True)
class Stores:
    history: HistoryStore
    memory: BuildMemory
    where: str


def _configured() -> dict[str, str]:
    """The project's own settings (CONVEYOR_* and [tool.conveyor]), so that plan simulates
    the build as the project configures it."""
    return layered({}, None, find_pyproject(Path.cwd()))[0]


def _parser(prog: str) -> argparse.ArgumentParser:
    configured = _configured()
    parser = argparse.ArgumentParser(prog=prog, add_help=False, allow_abbrev=False)
    parser.add_argument("--queue", default=configured.get("queue", queue_from_env()))
    parser.add_argument("--history-key", default=configured.get("history-key", Path.cwd().name))
    parser.add_argument("--cache-dir", default=".pytest_cache")
    parser.add_argument("--json", action="store_true")
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str], usage: str) -> Any:
    try:
        return parser.parse_args(list(argv))
    except SystemExit:
        raise UsageError(usage.strip()) from None


@contextmanager
def _stores(args: Any) -> Iterator[Stores]:
    """The history and memory the given options name: Redis with --queue, else the cache."""
    queue = None
    if args.queue:
        check_url(args.queue)
        queue = open_queue(args.queue, "history")
        location, where = f"redis:{args.history_key}", f"Redis ({args.history_key})"
    else:
        location, where = "cache", str(args.cache_dir)
    try:
        config = SimpleNamespace(cache=DirectoryCache(Path(args.cache_dir)))
        history = history_store(location, config, queue)
        memory = memory_store(location, config, queue)
        if history is None or memory is None:
            raise UsageError("this queue keeps no history: use the cache or a Redis queue.")
        yield Stores(history, memory, where)
    finally:
        if queue is not None:
            queue.close()


def _checked_plan_args(args: argparse.Namespace) -> tuple[list[int], str]:
    """The worker counts and the grouping `conveyor plan` was asked for, or a usage error."""
    try:
        counts = parse_worker_counts(args.workers)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.machines < 1:
        raise UsageError(f"--machines must be 1 or more, got {args.machines}.")
    grouping = XDIST_DIST_MODES.get(args.dist, args.dist)
    if grouping not in GROUPINGS or args.order not in ORDERS:
        raise UsageError(f"--dist must be one of {', '.join(GROUPINGS)} and --order one of "
                         f"{', '.join(ORDERS)}.")  # fmt: skip
    return list(counts), grouping


def plan(argv: Sequence[str]) -> int:
    parser = _parser("conveyor plan")
    parser.add_argument("--workers", default=",".join(map(str, DEFAULT_WORKER_COUNTS)))
    parser.add_argument("--machines", type=int, default=1)
    configured = _configured()
    parser.add_argument("--dist", default=configured.get("dist", "module"))
    parser.add_argument("--order", default=configured.get("order", "slowest"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--html")
    args = _parse(parser, argv, PLAN_USAGE)
    counts, grouping = _checked_plan_args(args)
    with _stores(args) as stores:
        durations = stores.history.load()
        overheads = overheads_from(stores.memory.builds())
        setups = Setups.from_json(stores.memory.setups())
    if not durations:
        raise UsageError(
            f"no timing history in {stores.where}: run the suite with conveyor once (or "
            "`conveyor history import FILE`), then plan."
        )
    units = sorted(durations)  # the history keeps no collection order; ids sort by file
    rows = predict(
        units,
        durations,
        counts,
        overheads,
        machines=args.machines,
        order=args.order,
        grouping=grouping,
        seed=args.seed,
        setups=setups,
    )
    best = knee(rows)
    if args.json:
        _print_plan_json(rows, best, overheads, len(units))
    else:
        _print_plan(rows, best, overheads, units, sum(durations.values()), stores.where)
    if args.html and best is not None:
        from conveyor.plan_page import write_plan_html

        write_plan_html(args.html, rows, best, "conveyor plan", reached=knee_reached(rows, best))
        drawn = "the knee's" if knee_reached(rows, best) else f"the {best.total_workers} workers'"
        print(f"conveyor plan: {drawn} simulated build drawn in {args.html}")
    return 0


def _print_plan(
    rows: Sequence[Any], best: Any, overheads: Any, units: Sequence[str], total: float, where: str
) -> None:
    measured = ", ".join(str(w) for w in overheads.startup_by_workers) or "none"
    reached = knee_reached(rows, best)
    mark = "  <- knee" if reached else "  <- fastest simulated"
    print(
        f"conveyor plan: {len(units)} tests, {total:.1f} s of tests in the timing history "
        f"({where}); overheads from {overheads.recorded_builds} recorded build(s) (start-up "
        f"measured at {measured} worker(s))"
    )
    print(
        f"{'workers':>9}  {'predicted':>10}  {'testing':>9}  {'bound':>9}  {'utilisation':>11}"
        f"  {'start-up':>9}  {'tail':>7}  {'gap':>8}"
    )
    for row in rows:
        label = f"{row.machines}x{row.workers}" if row.machines > 1 else str(row.workers)
        print(
            f"{label:>9}  {row.wall_s:>8.1f} s  {row.testing_s:>7.1f} s  "
            f"{row.lower_bound_s:>7.1f} s  {row.utilisation * 100:>10.1f}%  "
            f"{row.startup_s:>7.1f} s  {row.tail_s:>5.1f} s  "
            f"{overheads.gap_s(row.workers) * 1000:>5.1f} ms" + (mark if row is best else "")
        )
    _note_cores(rows)
    if not reached and best is not None:
        print(
            f"knee: not reached up to {best.total_workers} workers: doubling still shortened "
            "the build by 10 % or more at the last step; plan with more workers "
            f"(e.g. --workers {rows[-1].workers},{rows[-1].workers * 2},{rows[-1].workers * 4})."
        )
    elif best is not None:
        print(
            f"knee: {best.total_workers} workers (start-up {best.startup_s:.1f} s); past it, "
            "doubling the workers shortens the build by less than 10 %."
        )


def _note_cores(rows: Sequence[Any]) -> None:
    """Rows with more workers than this machine has cores: a plan drawn from builds run here
    says what this machine would do, where tests run slower once workers outnumber cores."""
    cores = os.cpu_count() or 1
    crowded = [row.workers for row in rows if row.workers > cores]
    if crowded:
        print(
            f"note: this machine has {cores} cores; at {', '.join(map(str, crowded))} workers "
            "they are shared, and the tests recorded by builds that ran like that were slower "
            "for it (their durations are in the timing history). Plan larger counts from the "
            "history of a machine that has the cores."
        )


def _print_plan_json(rows: Sequence[Any], best: Any, overheads: Any, tests: int) -> None:
    data = {
        "tests": tests,
        "recorded_builds": overheads.recorded_builds,
        "knee": best.total_workers if best is not None else None,
        "knee_reached": knee_reached(rows, best),
        "rows": [
            {
                "workers": row.workers,
                "machines": row.machines,
                "predicted_wall_s": round(row.wall_s, 4),
                "testing_s": round(row.testing_s, 4),
                "lower_bound_s": round(row.lower_bound_s, 4),
                "utilisation": round(row.utilisation, 4),
                "startup_s": round(row.startup_s, 4),
                "tail_s": round(row.tail_s, 4),
                "gap_s": round(overheads.gap_s(row.workers), 6),
            }
            for row in rows
        ],
    }
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def flaky(argv: Sequence[str]) -> int:
    parser = _parser("conveyor flaky")
    parser.add_argument("--limit", type=int, default=20)
    args = _parse(parser, argv, FLAKY_USAGE)
    with _stores(args) as stores:
        events = stores.memory.flaky_events()
    ranked = flakiest(summarise(events, time.time()), args.limit if args.limit > 0 else None)
    if args.json:
        sys.stdout.write(json.dumps([t.as_json() for t in ranked], indent=2) + "\n")
        return 0
    if not ranked:
        print(
            f"conveyor flaky: no flaky test recorded in {stores.where}. Counted are a test "
            "that failed, then passed on a retry (--max-requeues, pytest-rerunfailures), and "
            "one whose outcome changed between builds of the same commit (known from git or "
            "the CI's variables: builds of an unknown commit are never compared)."
        )
        return 0
    print(f"{'score':>6} {'count':>5} {'retry':>5} {'flip':>4}  {'last seen (UTC)':<16}  test")
    for test in ranked:
        seen = dt.datetime.fromtimestamp(test.last_seen, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
        print(
            f"{test.score:>6.2f} {test.count:>5} {test.retries:>5} {test.flips:>4}  {seen:<16}  "
            f"{test.test}"
        )
        if test.last_message:
            print(f"{'':>42}{test.last_message}")
    return 0
