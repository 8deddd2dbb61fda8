"""Turns measurements into tables, and finds runs whose exit code differs from plain pytest's."""

from __future__ import annotations

import statistics

from bench.runner import TIMED_OUT, Measurements, Run
from bench.table import Table, plural

REFERENCE = "pytest"


def _exit_codes(runs: list[Run]) -> str:
    codes = sorted({"timeout" if r.exit_code == TIMED_OUT else str(r.exit_code) for r in runs})
    return ",".join(codes)


def reference_exit_code(measurements: Measurements) -> int | None:
    """Plain pytest's exit code, or None when its own runs disagree (flagged as well)."""
    codes = {run.exit_code for run in measurements.runs.get(REFERENCE, [])}
    return codes.pop() if len(codes) == 1 else None


def _problem(run: Run, expected: int | None, test_count: int) -> str | None:
    """Why this run did not do what plain pytest did, or None when it did."""
    if expected is None:
        return "plain pytest's own runs gave different exit codes"
    if run.exit_code != expected:
        return f"exit code {run.exit_code}, plain pytest gave {expected}"
    if expected == 0 and run.passed != test_count:
        return f"{run.passed} tests passed, the suite has {test_count}"
    return None


def mismatches(measurements: Measurements) -> list[str]:
    """One message per run that did not match plain pytest, with the end of its output."""
    expected = reference_exit_code(measurements)
    messages = []
    for name, runs in measurements.runs.items():
        for index, run in enumerate(runs, 1):
            problem = _problem(run, expected, measurements.suite.test_count)
            if problem is not None:
                messages.append(
                    f"suite {measurements.suite.key}, {name} run {index}: {problem}"
                    f"\n--- end of its output ---\n{run.output_tail.rstrip()}\n---"
                )
    return messages


def _ratio(value: float, reference: float | None) -> str:
    return f"{value / reference:.2f}x" if reference else "-"


def _setups(runs: list[Run]) -> str:
    counts = sorted(r.setups for r in runs if r.setups is not None)
    if not counts:
        return "-"
    return str(counts[0]) if counts[0] == counts[-1] else f"{counts[0]}-{counts[-1]}"


def suite_table(measurements: Measurements) -> Table:
    suite, workers = measurements.suite, measurements.workers
    medians = {
        name: statistics.median(r.wall_s for r in runs)
        for name, runs in measurements.runs.items()
        if runs
    }
    xdist = {name: m for name, m in medians.items() if name.startswith("xdist-")}
    best_xdist = min(xdist.values()) if xdist else None
    bound = suite.lower_bound_s(workers)
    expected = reference_exit_code(measurements)
    headers = ["contender", "median s", "min s", "max s", "x pytest", "x best xdist"]
    if bound is not None:
        headers.append("x bound")
    if suite.counts_setups:
        headers.append("fixture setups")
    headers.append("exit")
    table = Table(
        f"suite {suite.key}: {suite.title} ({suite.test_count} tests, {workers} workers, "
        f"{plural(len(next(iter(measurements.runs.values()))), 'run')})",
        headers,
    )
    for name, runs in measurements.runs.items():
        walls = [r.wall_s for r in runs]
        row = [name, f"{medians[name]:.2f}", f"{min(walls):.2f}", f"{max(walls):.2f}"]
        row += [_ratio(medians[name], medians.get(REFERENCE)), _ratio(medians[name], best_xdist)]
        if bound is not None:
            row.append(_ratio(medians[name], bound))
        if suite.counts_setups:
            row.append(_setups(runs))
        clean = all(_problem(r, expected, suite.test_count) is None for r in runs)
        flag = "" if clean else " !!"
        row.append(_exit_codes(runs) + flag)
        table.rows.append(row)
    if best_xdist is not None:
        best = min(xdist, key=xdist.__getitem__)
        table.notes.append(f"best xdist mode: {best}")
    if bound is not None:
        longest, total = max(suite.sleeps_s), sum(suite.sleeps_s)
        table.notes.append(
            f"lower bound max(longest {longest:.2f}s, total {total:.2f}s / {workers}) "
            f"= {bound:.2f}s"
        )
    return table
