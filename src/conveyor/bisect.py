"""Bisect: find the earlier test that makes a test fail when both run in one process.

Assumes one polluting test (the common case: a test that leaves a global, an environment
variable or a monkeypatch behind). Each step replays a subset of the worker's order followed
by the failing test; the search halves the candidates each time, so 200 candidates take 8 steps,
plus one run alone and one confirmation.
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
FAILS_ALONE = "fails alone"
INCONCLUSIVE = "inconclusive"


@dataclass
class BisectResult:
    verdict: str
    culprit: str | None = None
    runs: int = 0
    log: list[str] = field(default_factory=list)


def bisect(before: Sequence[str], victim: str, run: Runner) -> BisectResult:
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
    candidates = list(before)
    if not candidates:
        result.log.append("no test ran before it on that worker.")
        return result
    while len(candidates) > 1:
        half = candidates[: len(candidates) // 2]
        candidates = half if attempt(half) else candidates[len(candidates) // 2 :]
    if attempt(candidates):
        result.verdict, result.culprit = FOUND, candidates[0]
    else:
        result.log.append(
            "the pair does not reproduce the failure: it may need several earlier tests, "
            "or be flaky."
        )
    return result


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
