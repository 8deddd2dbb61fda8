"""(e) Queue microbenchmark: populate time, and reserve+complete throughput of each backend
with several worker processes hammering one build, without pytest in the way."""

from __future__ import annotations

import multiprocessing
import queue as queue_module
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from bench.redis_server import flush_all
from bench.table import Table, plural
from conveyor.queue import open_queue
from conveyor.queue.protocol import EXHAUSTED, WAIT

PROCESS_COUNTS = (1, 8, 32)
BATCH = 32
REPORT_TIMEOUT_S = 600.0
WAIT_RETRY_S = 0.001  # "wait": other workers hold the last leases; ask again shortly


@dataclass(frozen=True)
class Trial:
    backend: str  # "sqlite" or "redis"
    processes: int


@dataclass(frozen=True)
class TrialResult:
    populate_s: float
    drain_s: float
    completed: int
    errors: tuple[str, ...]


def unit_names(count: int) -> list[str]:
    """Node ids shaped like a real suite's: 100 tests per module."""
    return [f"tests/test_mod_{i // 100:04d}.py::test_{i}" for i in range(count)]


def _drain(url: str, build: str, worker: str, barrier: Barrier, results: Any) -> None:
    """Child process: reserve and complete until the build is exhausted; report
    (units completed, finish time, error) to the parent."""
    completed, error = 0, ""
    try:
        queue = open_queue(url, build)
        try:
            barrier.wait()
            while True:
                reservation = queue.reserve(worker, BATCH)
                if reservation.state == EXHAUSTED:
                    break
                if reservation.state == WAIT:
                    time.sleep(WAIT_RETRY_S)
                    continue
                payloads = [(lease.unit, {"outcome": "passed"}) for lease in reservation.leases]
                completed += sum(queue.complete(worker, payloads))
        finally:
            queue.close()
    except Exception as exc:  # reported by the parent, which must not hang on a dead child
        error = f"{worker}: {type(exc).__name__}: {exc}"
        barrier.abort()
    results.put((completed, time.perf_counter(), error))


def _trial_url(trial: Trial, scratch: Path, redis_url: str | None, index: int) -> str:
    if trial.backend == "redis":
        assert redis_url is not None
        return redis_url
    return f"sqlite://{scratch / f'queue-{index}.db'}"


def _cleanup(trial: Trial, url: str) -> None:
    if trial.backend == "redis":
        flush_all(url)
        return
    path = Path(url[len("sqlite://") :])
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def run_trial(trial: Trial, url: str, units: list[str]) -> TrialResult:
    build = f"bench-{uuid.uuid4().hex[:12]}"
    queue = open_queue(url, build)
    start = time.perf_counter()
    queue.populate("bench-leader", units, {})
    populate_s = time.perf_counter() - start
    queue.close()  # children open their own connections; none may be shared across fork
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(trial.processes + 1)
    results = context.Queue()
    children = [
        context.Process(target=_drain, args=(url, build, f"w{i}", barrier, results))
        for i in range(trial.processes)
    ]
    for child in children:
        child.start()
    errors: list[str] = []
    try:
        barrier.wait()
    except Exception:  # a child failed to connect and broke the barrier
        errors.append("start barrier broken")
    start = time.perf_counter()
    reports = []
    for _ in children:
        try:
            reports.append(results.get(timeout=REPORT_TIMEOUT_S))
        except queue_module.Empty:
            errors.append(f"a process sent no report within {REPORT_TIMEOUT_S:.0f}s")
            break
    for child in children:
        child.join(timeout=REPORT_TIMEOUT_S)
        if child.exitcode != 0:
            errors.append(f"a process exited with {child.exitcode}")
            child.kill()
    completed = sum(count for count, _, _ in reports)
    drain_s = max((end for _, end, _ in reports), default=time.perf_counter()) - start
    errors += [error for _, _, error in reports if error]
    if completed != len(units):
        errors.append(f"completed {completed} of {len(units)} units")
    return TrialResult(populate_s, drain_s, completed, tuple(errors))


def measure(
    *, unit_count: int, runs: int, redis_url: str | None, scratch: Path
) -> dict[Trial, list[TrialResult]]:
    """Every trial `runs` times, round-robin (round r starts at trial r) to spread noise."""
    backends = ["sqlite"] + (["redis"] if redis_url is not None else [])
    trials = [Trial(b, p) for b in backends for p in PROCESS_COUNTS]
    units = unit_names(unit_count)
    measured: dict[Trial, list[TrialResult]] = {t: [] for t in trials}
    for round_index in range(runs):
        offset = round_index % len(trials)
        for index, trial in enumerate([*trials[offset:], *trials[:offset]]):
            url = _trial_url(trial, scratch, redis_url, index)
            try:
                result = run_trial(trial, url, units)
            finally:
                _cleanup(trial, url)
            measured[trial].append(result)
            print(
                f"[e {round_index + 1}/{runs}] {trial.backend} x{trial.processes}: "
                f"populate {result.populate_s:.2f}s, drain {result.drain_s:.2f}s "
                f"({unit_count / result.drain_s:,.0f} units/s)"
                + (f" ERRORS: {list(result.errors)}" if result.errors else ""),
                file=sys.stderr,
                flush=True,
            )
    return measured


def queue_table(measured: dict[Trial, list[TrialResult]], unit_count: int, runs: int) -> Table:
    headers = ["backend", "operation", "processes", "median s", "median units/s"]
    headers += ["min units/s", "max units/s", "errors"]
    title = f"suite e: queue microbenchmark ({unit_count:,} units, {plural(runs, 'run')})"
    table = Table(title, headers)
    backends = list(dict.fromkeys(trial.backend for trial in measured))
    for backend in backends:
        populates = [r.populate_s for t, rs in measured.items() if t.backend == backend for r in rs]
        median_s = statistics.median(populates)
        rate = f"{unit_count / median_s:,.0f}"
        table.rows.append([backend, "populate", "1", f"{median_s:.3f}", rate, "", "", ""])
        for trial in (t for t in measured if t.backend == backend):
            results = measured[trial]
            rates = [unit_count / r.drain_s for r in results]
            errors = sum(len(r.errors) for r in results)
            table.rows.append(
                [
                    backend,
                    "reserve+complete",
                    str(trial.processes),
                    f"{statistics.median(r.drain_s for r in results):.3f}",
                    f"{statistics.median(rates):,.0f}",
                    f"{min(rates):,.0f}",
                    f"{max(rates):,.0f}",
                    f"{errors} !!" if errors else "0",
                ]
            )
    table.notes.append(
        f"populate: median over all {backend_trials(measured)} builds per backend; "
        f"reserve+complete: batches of {BATCH}, timed from a shared start barrier to the last "
        "process's finish"
    )
    return table


def backend_trials(measured: dict[Trial, list[TrialResult]]) -> int:
    backends = {t.backend for t in measured}
    return sum(len(rs) for rs in measured.values()) // max(1, len(backends))


def all_errors(measured: dict[Trial, list[TrialResult]]) -> list[str]:
    return [
        f"suite e, {t.backend} x{t.processes}: {error}"
        for t, results in measured.items()
        for r in results
        for error in r.errors
    ]
