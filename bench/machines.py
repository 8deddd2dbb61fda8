"""`python -m bench.machines`: conveyor across machines against pytest-split.

Four "machines" on this one, each a separate process tree: for conveyor four concurrent
`conveyor run -n 1` on one Redis with timing history recorded by an earlier build; for
pytest-split four concurrent `pytest --splits 4 --group i` with an exact durations file, once
per splitting algorithm. Cases: accurate history; stale history (a quarter of the tests now
three times slower); one machine starting 5 s late; one machine killed midway, after which
every surviving conveyor machine must still report every test, and pytest-split's killed group
is lost. Repeats are interleaved round-robin and medians compared, as in `python -m bench`.

    python -m bench.machines --quick            # smaller suite, 1 repeat (a few minutes)
    python -m bench.machines                    # 5 repeats of every case
    python -m bench.machines --case stale,late --repeats 7
    python -m bench.machines --quick --machines 2   # each "machine" has a core of its own here

Every "machine" is a conveyor controller and worker, or one pytest process, on this one
computer: with more machines than cores they share them, and conveyor's two processes per
machine pay for it where separate computers would not. `--machines` sets how many (the suite,
and so the total work, stays the same).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.fleet import FleetRun, run_fleet
from bench.machine import append_record
from bench.machines_suite import (
    DURATIONS_FILE,
    MACHINES,
    MachineSuite,
    lower_bound_s,
    stale_factors,
    write_suite,
)
from bench.redis_server import redis_server_binary, throwaway_redis
from bench.runner import run_env
from bench.table import Table, plural

LATE_S = 5.0
KILLED_MACHINE = 1  # the second (with two machines also the late one: the cases are separate)
ALGORITHMS = ("least_duration", "duration_based_chunks")
DEFAULT_REPEATS = 5
TARGETS = {"accurate": 1.05, "stale": 0.75, "late": 0.75}
PYTEST_ARGS = ("-p", "no:cacheprovider", "-q")


@dataclass(frozen=True)
class Case:
    key: str
    title_template: str  # {late} and {killed}: the machines' numbers, counted from 1
    stale: bool = False
    late_s: float = 0.0
    kill_at_share: float | None = None  # of the accurate lower bound

    def title(self, machines: int) -> str:
        return self.title_template.format(late=machines, killed=KILLED_MACHINE + 1)

    def kill_at_s(self, bound_s: float) -> float | None:
        return None if self.kill_at_share is None else bound_s * self.kill_at_share


CASES = (
    Case("accurate", "accurate history"),
    Case("stale", "stale history: a quarter of the tests now 3x slower", stale=True),
    Case("late", f"machine {{late}} starts {LATE_S:.0f} s late", late_s=LATE_S),
    Case("killed", "machine {killed} killed midway", kill_at_share=0.5),
)


@dataclass(frozen=True)
class Contender:
    name: str
    argvs: Callable[[], list[list[str]]]  # one command per machine, fresh per fleet
    prepare: Callable[[], None] = lambda: None  # before every fleet
    is_conveyor: bool = False


@dataclass(frozen=True)
class MachinesOptions:
    cases: tuple[Case, ...]
    repeats: int
    quick: bool
    lease_ttl_s: float | None
    markdown: Path | None
    machines: int = MACHINES


def _case_list(value: str) -> tuple[Case, ...]:
    by_key = {case.key: case for case in CASES}
    keys = [key.strip() for key in value.split(",") if key.strip()]
    unknown = [key for key in keys if key not in by_key]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(
            f"unknown case(s) {', '.join(unknown) or '(none)'}; choose from {','.join(by_key)}"
        )
    return tuple(by_key[key] for key in keys)


def parse_options(argv: Sequence[str]) -> MachinesOptions:
    parser = argparse.ArgumentParser(
        prog="python -m bench.machines",
        description="conveyor on 4 machines sharing one Redis against pytest-split's groups.",
    )
    parser.add_argument(
        "--case", type=_case_list, default=CASES, help="accurate,stale,late,killed (default: all)"
    )
    parser.add_argument("--repeats", type=int, help="fleets per contender (default 5; quick 1)")
    parser.add_argument("--quick", action="store_true", help="smaller suite (LB 2 s), 1 repeat")
    parser.add_argument(
        "--lease-ttl",
        type=float,
        help="conveyor's --lease-ttl (default: conveyor's own): how soon a dead machine's "
        "test goes to another",
    )
    parser.add_argument(
        "--machines",
        type=int,
        default=MACHINES,
        help=f"machines in each fleet, 2 or more (default {MACHINES}); the suite stays the same",
    )
    parser.add_argument("--markdown", type=Path, help="append the results to this file")
    args = parser.parse_args(argv)
    if args.machines < 2:
        parser.error("--machines must be 2 or more (one is killed in the killed case)")
    repeats = args.repeats or (1 if args.quick else DEFAULT_REPEATS)
    return MachinesOptions(
        args.case, max(1, repeats), args.quick, args.lease_ttl, args.markdown, args.machines
    )


class HistorySnapshot:
    """conveyor's timing history in Redis as the warm-up build left it, put back before every
    fleet so that each one sees the same history (a stale run would otherwise teach it)."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)
        self._saved: dict[bytes, bytes] = {}

    def save(self) -> int:
        keys = list(self._client.scan_iter(match="conveyor:history:*"))
        self._saved = {key: self._client.dump(key) for key in keys}  # type: ignore[misc]
        return len(self._saved)

    def restore(self) -> None:
        for key in self._client.scan_iter(match="conveyor:history:*"):
            if key not in self._saved:
                self._client.delete(key)
        for key, value in self._saved.items():
            self._client.restore(key, 0, value, replace=True)

    def close(self) -> None:
        self._client.close()


def conveyor_contender(
    url: str, lease_ttl_s: float | None, snapshot: HistorySnapshot, machines: int
) -> Contender:
    def argvs() -> list[list[str]]:
        build = f"machines-{uuid.uuid4().hex[:10]}"
        extra = ["--lease-ttl", str(lease_ttl_s)] if lease_ttl_s is not None else []
        command = [sys.executable, "-m", "conveyor", "run", "-n", "1", "--queue", url]
        return [[*command, "--build", build, *extra, "-q", "."] for _ in range(machines)]

    return Contender("conveyor", argvs, snapshot.restore, is_conveyor=True)


def split_contender(algorithm: str, durations: Path, machines: int) -> Contender:
    def argvs() -> list[list[str]]:
        command = [sys.executable, "-m", "pytest", *PYTEST_ARGS, "--splits", str(machines)]
        options = ["--splitting-algorithm", algorithm, "--durations-path", str(durations)]
        return [
            [*command, "--group", str(group), *options, "."] for group in range(1, machines + 1)
        ]

    return Contender(f"pytest-split {algorithm}", argvs)


def reported(contender: Contender, fleet: FleetRun) -> int:
    """Tests in the build's report. conveyor: every surviving machine prints the whole build,
    so the build reports what the poorest of them reports; pytest-split: the sum of the
    groups, where a killed group reports nothing."""
    counts = [machine.passed or 0 for machine in fleet.survivors]
    if contender.is_conveyor:
        return min(counts, default=0)
    return sum(counts)


def fleet_ok(contender: Contender, fleet: FleetRun, total: int) -> bool:
    return reported(contender, fleet) == total and all(
        machine.exit_code == 0 for machine in fleet.survivors
    )


@dataclass
class CaseResult:
    case: Case
    bound_s: float
    total: int
    runs: dict[str, list[FleetRun]]
    machines: int = MACHINES


def _progress(line: str) -> None:
    print(f"[machines] {line}", file=sys.stderr, flush=True)


def measure_case(
    case: Case,
    suite: MachineSuite,
    lineup: Sequence[Contender],
    *,
    repeats: int,
    accurate_bound_s: float,
    logs: Path,
    machines: int = MACHINES,
) -> CaseResult:
    factors = stale_factors(suite.sleeps) if case.stale else {}
    suite.slow_down(factors)
    actual = [seconds * factors.get(nodeid, 1.0) for nodeid, seconds in suite.sleeps.items()]
    kill_at = case.kill_at_s(accurate_bound_s)
    bound = lower_bound_s(actual, machines, late_s=case.late_s, dead_after_s=kill_at)
    result = CaseResult(case, bound, suite.test_count, {c.name: [] for c in lineup}, machines)
    for round_index in range(repeats):
        offset = round_index % len(lineup)
        for contender in [*lineup[offset:], *lineup[:offset]]:
            contender.prepare()
            fleet = run_fleet(
                contender.argvs(),
                cwd=suite.path,
                env=run_env(),
                logs=logs / f"{case.key}-{round_index}-{contender.name.replace(' ', '-')}",
                delays_s={machines - 1: case.late_s} if case.late_s else None,
                kill=(KILLED_MACHINE, kill_at) if kill_at is not None else None,
            )
            result.runs[contender.name].append(fleet)
            verdict = "ok" if fleet_ok(contender, fleet, suite.test_count) else "INCOMPLETE"
            _progress(
                f"[{case.key} {round_index + 1}/{repeats}] {contender.name}: "
                f"{fleet.wall_s:.2f}s, {reported(contender, fleet)}/{suite.test_count} "
                f"reported, exits {[m.exit_code for m in fleet.machines]} {verdict}"
            )
    suite.slow_down({})
    return result


def case_table(result: CaseResult, lineup: Sequence[Contender]) -> Table:
    medians = {
        name: statistics.median(fleet.wall_s for fleet in runs)
        for name, runs in result.runs.items()
        if runs
    }
    split = {name: value for name, value in medians.items() if name.startswith("pytest-split")}
    best_split = min(split, key=split.__getitem__) if split else None
    count = len(next(iter(result.runs.values())))
    table = Table(
        f"machines, {result.case.title(result.machines)} ({result.total} tests, "
        f"{result.machines} machines, "
        f"{plural(count, 'repeat')})",
        ["contender", "median s", "min s", "max s", "x best split", "x bound", "reported"],
    )
    table.headers += ["lost", "exit codes"]
    for contender in lineup:
        runs = result.runs[contender.name]
        walls = [fleet.wall_s for fleet in runs]
        counts = [reported(contender, fleet) for fleet in runs]
        exits = sorted({m.exit_code for fleet in runs for m in fleet.survivors})
        versus = medians[contender.name] / medians[best_split] if best_split else float("nan")
        table.rows.append(
            [
                contender.name,
                f"{medians[contender.name]:.2f}",
                f"{min(walls):.2f}",
                f"{max(walls):.2f}",
                f"{versus:.2f}x",
                f"{medians[contender.name] / result.bound_s:.2f}x",
                f"{min(counts)}/{result.total}",
                str(result.total - min(counts)),
                ",".join(map(str, exits)) + ("" if killed_none(runs) else " (+1 killed)"),
            ]
        )
    table.notes.append(f"lower bound {result.bound_s:.2f} s; best pytest-split: {best_split}")
    return table


def killed_none(runs: Sequence[FleetRun]) -> bool:
    return not any(machine.killed for fleet in runs for machine in fleet.machines)


def verdicts(results: Sequence[CaseResult], lineup: Sequence[Contender]) -> list[str]:
    lines = []
    conveyor = next(c for c in lineup if c.is_conveyor)
    for result in results:
        medians = {
            name: statistics.median(f.wall_s for f in runs) for name, runs in result.runs.items()
        }
        best = min(value for name, value in medians.items() if name != conveyor.name)
        ratio = medians[conveyor.name] / best
        runs = result.runs[conveyor.name]
        complete = all(fleet_ok(conveyor, fleet, result.total) for fleet in runs)
        key = result.case.key
        if key in TARGETS:
            met = ratio <= TARGETS[key] and complete
            lines.append(
                f"{key}: conveyor {medians[conveyor.name]:.2f} s vs best pytest-split "
                f"{best:.2f} s = {ratio:.2f}x (target <= {TARGETS[key]:.2f}x: "
                f"{'met' if met else 'MISSED'})"
            )
        else:
            lost = max(
                result.total - reported(c, f)
                for c in lineup
                if not c.is_conveyor
                for f in result.runs[c.name]
            )
            good = sum(fleet_ok(conveyor, fleet, result.total) for fleet in runs)
            lines.append(
                f"{key}: conveyor reported every test with exit 0 on every surviving machine "
                f"in {good} of {len(runs)} builds (target nothing lost: "
                f"{'met' if complete else 'MISSED'}), wall {medians[conveyor.name]:.2f} s; "
                f"pytest-split lost {lost} tests (the killed group's: no report)"
            )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    options = parse_options(args)
    binary = redis_server_binary()
    if binary is None:
        print("redis-server is not installed (apt-get install -y redis-server)", file=sys.stderr)
        return 1
    with (
        tempfile.TemporaryDirectory(prefix="conveyor-machines-") as folder,
        throwaway_redis(binary, Path(folder) / "redis") as url,
    ):
        scratch = Path(folder)
        suite = write_suite(scratch / "suite", quick=options.quick)
        durations = scratch / DURATIONS_FILE
        suite.write_durations(durations)
        snapshot = HistorySnapshot(url)
        conveyor = conveyor_contender(url, options.lease_ttl_s, snapshot, options.machines)
        warm = run_fleet(conveyor.argvs(), cwd=suite.path, env=run_env(), logs=scratch / "warm")
        _progress(f"warm-up build (records history): {warm.wall_s:.2f}s")
        if not fleet_ok(conveyor, warm, suite.test_count):
            print(warm.machines[0].output_tail, file=sys.stderr)
            return 1
        _progress(f"history saved: {snapshot.save()} key(s)")
        lineup = [
            conveyor,
            *(split_contender(a, durations, options.machines) for a in ALGORITHMS),
        ]
        accurate_bound = lower_bound_s(list(suite.sleeps.values()), options.machines)
        results = [
            measure_case(
                case,
                suite,
                lineup,
                repeats=options.repeats,
                accurate_bound_s=accurate_bound,
                logs=scratch / "logs",
                machines=options.machines,
            )
            for case in options.cases
        ]
        snapshot.close()
    tables = [case_table(result, lineup) for result in results]
    lines = verdicts(results, lineup)
    print()
    print("\n\n".join(table.text() for table in tables))
    print("\n".join(lines))
    if options.markdown is not None:
        command = shlex.join(["python", "-m", "bench.machines", *args])
        append_record(options.markdown, "Machines run", command, lines, tables)
    conveyor_complete = all(
        fleet_ok(conveyor, fleet, result.total)
        for result in results
        for fleet in result.runs[conveyor.name]
    )
    return 0 if conveyor_complete else 1


if __name__ == "__main__":
    sys.exit(main())
