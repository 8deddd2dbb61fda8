"""Bisect: find the earlier tests that make a test fail when they run in one process.

Most often one earlier test is to blame (it leaves a global, an environment variable or a
monkeypatch behind); sometimes it takes several (a module whose fixture's teardown breaks its
next setup fails when a test of it, a test of another module and the failing test run in that
order). Each step replays some of the worker's earlier tests, in their recorded order,
followed by the failing test.

The search assumes that more earlier tests never make the failure go away. It looks for the
shortest beginning of the order that makes the test fail: the last test of that beginning is
one of the culprits. If that test alone (with the culprits found so far) makes it fail, the
search is over; otherwise the next culprit is in what came before, and the search goes on
there, each culprit costing a binary search. One culprit among 200 candidates takes 8 steps,
plus one run alone and one confirmation; two take about twice that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# run(tests) -> True: the last test failed; False: it passed; None: it did not run.
Runner = Callable[[list[str]], bool | None]

FOUND = "found"
FOUND_SEVERAL = "found several"  # together, in their order, they make it fail
FAILS_ALONE = "fails alone"
INCONCLUSIVE = "inconclusive"

# Runs a search may take before it settles for the tests it has narrowed the failure to.
MAX_RUNS = 60


@dataclass
class BisectResult:
    verdict: str
    culprit: str | None = None
    culprits: list[str] = field(default_factory=list)  # FOUND_SEVERAL: in their order
    runs: int = 0
    log: list[str] = field(default_factory=list)


def bisect(
    before: Sequence[str], victim: str, run: Runner, max_runs: int = MAX_RUNS
) -> BisectResult:
    result = BisectResult(INCONCLUSIVE)

    def attempt(tests: list[str]) -> bool | None:
        result.runs += 1
        failed = run([*tests, victim])
        word = {True: "fails", False: "passes", None: "did not run"}[failed]
        result.log.append(f"run {result.runs}: {len(tests)} earlier test(s) -> {victim} {word}")
        return failed

    alone = attempt([])
    if alone is None:
        result.log.append(f"{victim} did not run at all: does it still exist?")
        return result
    if alone:
        result.verdict = FAILS_ALONE
        return result
    candidates = list(before)  # the recorded order made it fail after all of them
    if not candidates:
        result.log.append("no test ran before it on that worker.")
        return result
    found: list[str] = []  # culprits, each found before (later in the order than) the rest
    while True:
        shortest, complete = _shortest_failing_beginning(
            candidates, found, attempt, lambda: result.runs < max_runs
        )
        if shortest is None:
            result.log.append(
                "the earlier tests do not make it fail in this order: it may be flaky, or "
                "depend on more than the tests that ran before it in that process."
            )
            return result
        if not complete:
            result.log.append(f"stopped after {max_runs} runs: fewer of these tests may be enough.")
            found = [*candidates[:shortest], *found]
            break
        found.insert(0, candidates[shortest - 1])
        candidates = candidates[: shortest - 1]
        if attempt(found):
            break
        if not candidates:
            result.log.append(
                "these tests do not make it fail without the ones the search left out: it "
                "may be flaky."
            )
            return result
    if len(found) == 1:
        result.verdict, result.culprit = FOUND, found[0]
    else:
        result.verdict, result.culprits = FOUND_SEVERAL, found
    return result


def _shortest_failing_beginning(
    candidates: list[str],
    found: list[str],
    attempt: Callable[[list[str]], bool | None],
    may_run: Callable[[], bool],
) -> tuple[int | None, bool]:
    """The smallest n such that candidates[:n] followed by `found` makes the victim fail,
    assumed of all of them (None if all of them, tried when nothing shorter failed, do
    not); and False if the runs allowed ran out first, n then being the shortest seen."""
    low, high = 1, len(candidates)
    seen_failing = False
    while low < high:
        if not may_run():
            return high, False
        middle = (low + high) // 2
        if attempt([*candidates[:middle], *found]):
            high, seen_failing = middle, True
        else:
            low = middle + 1
    # Never seen failing: the whole order may not reproduce the failure at all.
    unconfirmed = not seen_failing and low == len(candidates) and len(candidates) > 1
    if unconfirmed and not attempt([*candidates, *found]):
        return None, True
    return low, True


def replay_runner(pytest_args: Sequence[str], cwd: Path | None = None) -> Runner:
    """Each step is a fresh `conveyor replay` process, so no state leaks between steps."""

    def run(tests: list[str]) -> bool | None:
        with tempfile.TemporaryDirectory(prefix="conveyor-bisect-") as folder:
            order = Path(folder) / "order.txt"
            outcomes = Path(folder) / "outcomes.json"
            order.write_text("\n".join(tests) + "\n", "utf-8")
            subprocess.run(
                [
                    sys.executable, "-m", "conveyor", "replay", "--from-file", str(order),
                    "--outcomes", str(outcomes), "-q", "-p", "no:cacheprovider", *pytest_args,
                ],
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
                check=False,
            )  # fmt: skip
            try:
                seen = json.loads(outcomes.read_text("utf-8"))
            except (OSError, ValueError):
                return None
        outcome = seen.get(tests[-1])
        return None if outcome is None else outcome == "failed"

    return run
