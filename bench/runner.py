"""Runs the contenders on one suite, round-robin, and keeps every measurement."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.contenders import COMMON_ARGS, Contender
from bench.suites import SETUP_LOG_ENV, Suite

PASSED = re.compile(r"\b(\d+) passed\b")
RUN_TIMEOUT_S = 900.0
TIMED_OUT = -1  # recorded as the exit code of a run that hit RUN_TIMEOUT_S
# Variables that would make runs differ from a developer's ordinary pytest invocation.
STRIPPED_ENV = ("PYTHONDONTWRITEBYTECODE", "PYTEST_ADDOPTS")


@dataclass(frozen=True)
class Run:
    """One timed run of one contender."""

    wall_s: float
    exit_code: int
    setups: int | None  # module-fixture setups (suite d), else None
    passed: int | None  # from pytest's summary line; None when it printed none
    output_tail: str


@dataclass
class Measurements:
    """Every counted run of every contender on one suite, in contender order."""

    suite: Suite
    workers: int
    runs: dict[str, list[Run]] = field(default_factory=dict)


def run_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in STRIPPED_ENV:
        env.pop(name, None)
    return env


def run_once(contender: Contender, suite: Suite, log_path: Path) -> Run:
    """Time one run from process start to exit, output captured so the terminal costs nothing."""
    env = run_env()
    if suite.counts_setups:
        log_path.write_text("")
        env[SETUP_LOG_ENV] = str(log_path)
    argv = contender.argv()
    start = time.perf_counter()
    try:
        done = subprocess.run(
            argv,
            cwd=suite.path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
        wall_s = time.perf_counter() - start
        exit_code, output = done.returncode, done.stdout
    except subprocess.TimeoutExpired as exc:
        wall_s = time.perf_counter() - start
        exit_code, output = TIMED_OUT, exc.stdout or b""
    setups = len(log_path.read_text().splitlines()) if suite.counts_setups else None
    tail = output.decode("utf-8", "replace")[-2000:]
    return Run(wall_s, exit_code, setups, passed_count(tail), tail)


def passed_count(output: str) -> int | None:
    """The `N passed` of pytest's last summary line."""
    found = PASSED.findall(output)
    return int(found[-1]) if found else None


def prime_bytecode(suite: Suite) -> None:
    """Collect once, uncounted, so pytest writes the rewritten test modules' .pyc files and
    no contender pays for compiling them just because it happened to run first."""
    argv = [sys.executable, "-m", "pytest", *COMMON_ARGS, "--collect-only", "."]
    subprocess.run(
        argv, cwd=suite.path, env=run_env(), capture_output=True, check=False, timeout=120
    )


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure(
    suite: Suite, lineup: Sequence[Contender], *, workers: int, runs: int, scratch: Path
) -> Measurements:
    """Run every contender `runs` times. Round r starts at contender r (mod len), so no
    contender always runs right after the same neighbour or in the same slot."""
    prime_bytecode(suite)
    result = Measurements(suite, workers, {c.name: [] for c in lineup})
    log_path = scratch / f"setups-{suite.key}.log"
    # Warm-up, uncounted: later conveyor runs then see the timing history it recorded.
    for contender in lineup:
        if contender.is_conveyor:
            warm = run_once(contender, suite, log_path)
            _progress(f"[{suite.key} warm-up] {contender.name}: {warm.wall_s:.2f}s")
    for round_index in range(runs):
        offset = round_index % len(lineup)
        for contender in [*lineup[offset:], *lineup[:offset]]:
            run = run_once(contender, suite, log_path)
            result.runs[contender.name].append(run)
            extra = f" setups={run.setups}" if run.setups is not None else ""
            _progress(
                f"[{suite.key} {round_index + 1}/{runs}] {contender.name}: "
                f"{run.wall_s:.2f}s rc={run.exit_code}{extra}"
            )
    return result
