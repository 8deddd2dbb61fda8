"""`python -m bench.scale`: one real Redis, many simulated workers, a million units.

Populates one build with the real `RedisQueue`, drains it with simulated workers (see
`bench.scale_sim`) while a controller-like reader follows the event stream, and reports
populate time, per-verb latency percentiles, Redis CPU and memory, the events per second the
reader follows, and the simulated makespan against the lower bound.

    python -m bench.scale --quick                       # 50 workers x 20,000 units
    python -m bench.scale                               # 1,000 workers x 1,000,000 units
    python -m bench.scale --workers 200 --units 200000  # anything between
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.machine import append_record
from bench.redis_server import redis_server_binary, throwaway_redis
from bench.scale_sim import VERBS, Recorder, SimResult, Simulation
from bench.scale_workload import Workload, build_workload, lower_bound_s
from bench.stats import percentile
from bench.table import Table
from conveyor.build_follower import EVENTS_PAGE, POLL_MAX_S
from conveyor.queue.redis import RedisQueue

FULL = (1000, 1_000_000)
QUICK = (50, 20_000)
TARGET_P99_S = 0.010
TARGET_MAKESPAN_RATIO = 1.02


@dataclass(frozen=True)
class ScaleOptions:
    workers: int
    units: int
    seconds: float
    connections: int
    window_s: float
    grouping: str
    lease_ttl_s: float
    charge_latency: bool
    markdown: Path | None


def parse_options(argv: Sequence[str]) -> ScaleOptions:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale",
        description="Many simulated workers against one real Redis build.",
    )
    parser.add_argument("--workers", type=int, help=f"simulated workers (default {FULL[0]:,})")
    parser.add_argument("--units", type=int, help=f"units in the build (default {FULL[1]:,})")
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK[0]} workers x {QUICK[1]:,} units"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=1800.0,
        help="real-time budget for the drain; the run stops there and says how far it got",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=16,
        help="Redis connections (one per driver thread) the simulated workers share (16)",
    )
    parser.add_argument(
        "--window-ms",
        type=float,
        default=50.0,
        help="simulated events due within this window run at once (default 50 ms)",
    )
    parser.add_argument("--grouping", choices=("module", "test"), default="module")
    parser.add_argument("--lease-ttl", type=float, default=30.0, help="seconds (default 30)")
    parser.add_argument(
        "--free-calls",
        action="store_true",
        help="queue calls take no simulated time: the makespan of the scheduling policy alone",
    )
    parser.add_argument("--markdown", type=Path, help="append the results to this file")
    args = parser.parse_args(argv)
    workers, units = QUICK if args.quick else FULL
    return ScaleOptions(
        workers=args.workers or workers,
        units=args.units or units,
        seconds=args.seconds,
        connections=max(1, args.connections),
        window_s=args.window_ms / 1000,
        grouping=args.grouping,
        lease_ttl_s=args.lease_ttl,
        charge_latency=not args.free_calls,
        markdown=args.markdown,
    )


@dataclass
class Follower:
    """A controller-like reader: pages `events()` as conveyor's controller does, in real time,
    while the build runs; how many events a second it could follow is what it read divided by
    the time it spent inside `events()`."""

    queue: RedisQueue
    done: threading.Event = field(default_factory=threading.Event)
    cursor: int = 0
    events: int = 0
    pages: int = 0
    busy_s: float = 0.0
    lag_at_end: int | None = None
    catch_up_s: float = 0.0

    def run(self) -> None:
        finished_at: float | None = None
        while True:
            start = time.perf_counter()
            page = self.queue.events(self.cursor, EVENTS_PAGE)
            self.busy_s += time.perf_counter() - start
            if page:
                self.pages += 1
                self.events += len(page)
                self.cursor = page[-1].seq
                continue
            if self.done.is_set():
                if finished_at is not None:
                    self.catch_up_s = time.perf_counter() - finished_at
                return
            time.sleep(POLL_MAX_S)

    def mark_done(self, last_seq: int) -> None:
        self.lag_at_end = max(0, last_seq - self.cursor)
        self.done.set()


def _redis_cpu_s(info: Mapping[str, Any]) -> float:
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _evalsha_percentiles_us(client: redis.Redis) -> dict[str, float]:
    """Server-side latency of script calls (Redis 7 `INFO latencystats`): every verb is an
    EVALSHA, so this is all of them together, without the network or the client."""
    try:
        stats = client.info("latencystats")
    except redis.ResponseError:
        return {}
    raw = stats.get("latency_percentiles_usec_evalsha")
    if isinstance(raw, dict):
        return {str(k): float(v) for k, v in raw.items()}
    if isinstance(raw, str):
        pairs = (item.split("=", 1) for item in raw.split(","))
        return {name: float(value) for name, value in pairs}
    return {}


@dataclass
class Measured:
    options: ScaleOptions
    plan_s: float
    populate_s: float
    memory_populated_mb: float
    result: SimResult
    lower_bound_s: float
    cpu_drain_s: float
    memory_peak_mb: float
    memory_end_mb: float
    server_us: dict[str, float]
    follower: Follower
    last_seq: int
    done_units: int
    reread_s: float


def _reread_s(queue: RedisQueue) -> float:
    """Time to page through the whole stream again from the start, as a controller that
    joins late (or replays the build) does: the rate at which a reader can follow events."""
    start = time.perf_counter()
    cursor = 0
    while page := queue.events(cursor, EVENTS_PAGE):
        cursor = page[-1].seq
    return time.perf_counter() - start


def _progress(line: str) -> None:
    print(f"[scale] {line}", file=sys.stderr, flush=True)


def measure(options: ScaleOptions, url: str) -> Measured:
    start = time.perf_counter()
    workload: Workload = build_workload(options.units, options.workers, grouping=options.grouping)
    plan_s = time.perf_counter() - start
    _progress(f"planned {workload.total:,} units in {plan_s:.1f}s")
    admin = redis.Redis.from_url(url, decode_responses=True)
    build = f"scale-{uuid.uuid4().hex[:8]}"
    epoch = time.time()
    leader = RedisQueue.from_url(url, build, clock=lambda: epoch)
    start = time.perf_counter()
    leader.populate("sim-leader", workload.order, {"max_unit_crashes": 2})
    populate_s = time.perf_counter() - start
    memory_populated_mb = float(admin.info("memory")["used_memory"]) / 2**20
    _progress(f"populated in {populate_s:.2f}s, Redis uses {memory_populated_mb:.0f} MB")
    admin.config_resetstat()
    cpu_before = _redis_cpu_s(admin.info("cpu"))
    follower = Follower(RedisQueue.from_url(url, build))
    reader = threading.Thread(target=follower.run, name="follower", daemon=True)
    reader.start()
    simulation = Simulation(
        url=url,
        build=build,
        workload=workload,
        workers=options.workers,
        connections=options.connections,
        window_s=options.window_s,
        budget_s=options.seconds,
        lease_ttl_s=options.lease_ttl_s,
        epoch=epoch,
        charge_latency=options.charge_latency,
    )
    result = simulation.run(_progress)
    cpu_drain_s = _redis_cpu_s(admin.info("cpu")) - cpu_before
    server_us = _evalsha_percentiles_us(admin)
    last_seq = int(admin.get(f"conveyor:{{{build}}}:seq") or 0)
    follower.mark_done(last_seq)
    caught_up = time.perf_counter()
    reader.join()
    follower.catch_up_s = time.perf_counter() - caught_up
    reread_s = _reread_s(follower.queue)
    memory = admin.info("memory")
    status = leader.status()
    leader.close()
    follower.queue.close()
    admin.close()
    return Measured(
        options=options,
        plan_s=plan_s,
        populate_s=populate_s,
        memory_populated_mb=memory_populated_mb,
        result=result,
        lower_bound_s=lower_bound_s(list(workload.seconds.values()), options.workers),
        cpu_drain_s=cpu_drain_s,
        memory_peak_mb=float(memory["used_memory_peak"]) / 2**20,
        memory_end_mb=float(memory["used_memory"]) / 2**20,
        server_us=server_us,
        follower=follower,
        last_seq=last_seq,
        done_units=status.done,
        reread_s=reread_s,
    )


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.2f}"


def verb_table(recorder: Recorder, makespan_s: float) -> Table:
    table = Table(
        "queue calls, client-observed (per call: round trip, Lua script, redis-py, GIL)",
        ["verb", "calls", "p50 ms", "p99 ms", "max ms", "calls / simulated s", "p99 <= 10 ms"],
    )
    for verb in (*VERBS, *(v for v in recorder.latencies if v not in VERBS)):
        values = recorder.latencies.get(verb)
        if not values:
            continue
        p99 = percentile(values, 0.99)
        rate = len(values) / makespan_s if makespan_s > 0 else math.nan
        table.rows.append(
            [
                verb,
                f"{len(values):,}",
                _ms(percentile(values, 0.5)),
                _ms(p99),
                _ms(max(values)),
                f"{rate:,.0f}",
                "yes" if p99 <= TARGET_P99_S else "NO",
            ]
        )
    return table


def summary_table(m: Measured) -> Table:
    o, r, f = m.options, m.result, m.follower
    makespan = r.makespan_s
    calls = sum(len(v) for v in r.recorder.latencies.values())
    queue_s = [w.queue_s for w in r.workers]
    rows = [
        ("simulated workers / units", f"{o.workers:,} / {o.units:,} ({o.grouping} grouping)"),
        ("connections (driver threads)", f"{o.connections}, window {o.window_s * 1000:.0f} ms"),
        ("queue calls take simulated time", "yes" if o.charge_latency else "no (--free-calls)"),
        ("plan (scheduling.plan, slowest first)", f"{m.plan_s:.2f} s"),
        ("populate (one script)", f"{m.populate_s:.2f} s"),
        ("Redis memory after populate", f"{m.memory_populated_mb:,.0f} MB"),
        ("drain, real time", f"{r.real_s:.1f} s in {r.steps:,} steps"),
        ("units completed", f"{m.done_units:,} of {o.units:,}"),
        ("queue calls", f"{calls:,} ({calls / max(r.real_s, 1e-9):,.0f} / real s)"),
        ("simulated makespan", f"{makespan:.2f} s"),
        ("lower bound max(longest, total / workers)", f"{m.lower_bound_s:.2f} s"),
        ("makespan / lower bound", f"{makespan / m.lower_bound_s:.3f}"),
        (
            "queue wait charged per worker (mean / max)",
            f"{sum(queue_s) / len(queue_s):.2f} / {max(queue_s):.2f} s",
        ),
        ("reserve polls that found only 'wait'", f"{sum(w.wait_polls for w in r.workers):,}"),
        ("Redis CPU during drain", f"{m.cpu_drain_s:.1f} s"),
        (
            "Redis CPU per simulated second (>= 1: cannot keep up in real time)",
            f"{m.cpu_drain_s / makespan:.2f}" if makespan else "-",
        ),
        ("Redis memory peak / end", f"{m.memory_peak_mb:,.0f} / {m.memory_end_mb:,.0f} MB"),
        (
            "events in the stream",
            f"{m.last_seq:,} ({m.last_seq / max(makespan, 1e-9):,.0f} / simulated s)",
        ),
        (
            f"controller reader: whole stream re-read in pages of {EVENTS_PAGE}",
            f"{m.reread_s:.1f} s = {m.last_seq / max(m.reread_s, 1e-9):,.0f} events / s",
        ),
        (
            "controller reader during the drain: time inside events()",
            f"{f.busy_s:.1f} s for {f.events:,} events in {f.pages:,} pages",
        ),
        (
            "controller reader: behind when the drain ended",
            f"{f.lag_at_end or 0:,} events, caught up in {f.catch_up_s:.1f} s",
        ),
    ]
    if m.server_us:
        shown = ", ".join(f"{k} {v / 1000:.2f}" for k, v in m.server_us.items())
        rows.append(("server-side EVALSHA latency, ms (INFO latencystats)", shown))
    title = f"scale: {o.workers:,} simulated workers x {o.units:,} units on one Redis"
    table = Table(title, ["measure", "value"], [list(row) for row in rows])
    if r.stopped_by_budget:
        table.notes.append(
            f"STOPPED by the --seconds budget ({o.seconds:.0f} s): the build did not finish"
        )
    return table


def target_lines(m: Measured) -> list[str]:
    worst = max(
        ((verb, percentile(v, 0.99)) for verb, v in m.result.recorder.latencies.items() if v),
        key=lambda pair: pair[1],
    )
    ratio = m.result.makespan_s / m.lower_bound_s
    if m.result.stopped_by_budget:
        return [
            f"target p99 <= 10 ms per operation: worst {worst[0]} {worst[1] * 1000:.2f} ms "
            f"({'met' if worst[1] <= TARGET_P99_S else 'MISSED'}) over the part that ran",
            "target makespan <= 1.02 x lower bound: not known, the build was stopped",
        ]
    return [
        f"target p99 <= 10 ms per operation: worst {worst[0]} {worst[1] * 1000:.2f} ms "
        f"({'met' if worst[1] <= TARGET_P99_S else 'MISSED'})",
        f"target makespan <= 1.02 x lower bound: {ratio:.3f} "
        f"({'met' if ratio <= TARGET_MAKESPAN_RATIO and m.result.finished else 'MISSED'})",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    options = parse_options(args)
    binary = redis_server_binary()
    if binary is None:
        print("redis-server is not installed (apt-get install -y redis-server)", file=sys.stderr)
        return 1
    with (
        tempfile.TemporaryDirectory(prefix="conveyor-scale-") as folder,
        throwaway_redis(binary, Path(folder) / "redis") as url,
    ):
        measured = measure(options, url)
    tables = [
        summary_table(measured),
        verb_table(measured.result.recorder, measured.result.makespan_s),
    ]
    lines = target_lines(measured)
    print()
    print("\n\n".join(table.text() for table in tables))
    print("\n".join(lines))
    if options.markdown is not None:
        command = shlex.join(["python", "-m", "bench.scale", *args])
        append_record(options.markdown, "Scale run", command, lines, tables)
    complete = measured.done_units == options.units and measured.result.finished
    if not complete:
        print(
            f"the build did not finish: {measured.done_units:,} of {options.units:,} units done",
            file=sys.stderr,
        )
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
