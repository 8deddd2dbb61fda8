"""Synthetic test suites, written into a directory the caller owns (a temporary one).

Every suite is deterministic: the heavy-tailed sleeps come from a fixed random seed, so two
invocations of the benchmark measure the same work.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

SEED = 20240607
SETUP_LOG_ENV = "BENCH_SETUP_LOG"
PYTEST_INI = "[pytest]\n"  # pins rootdir to the suite, away from any config above the temp dir


@dataclass(frozen=True)
class Suite:
    """A suite on disk and the facts the report needs about it."""

    key: str
    title: str
    path: Path
    default_workers: int
    test_count: int
    sleeps_s: tuple[float, ...] = ()  # per-test sleeps, for the lower bound (suites b and c)
    counts_setups: bool = False  # suite d: each module-fixture setup appends to $BENCH_SETUP_LOG

    def lower_bound_s(self, workers: int) -> float | None:
        """No schedule beats max(longest test, total sleep / workers); None without sleeps."""
        if not self.sleeps_s:
            return None
        return max(max(self.sleeps_s), sum(self.sleeps_s) / workers)


def _write(root: Path, files: dict[str, str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pytest.ini").write_text(PYTEST_INI)
    for name, text in files.items():
        (root / name).write_text(text)


def trivial(root: Path, *, quick: bool) -> Suite:
    """(a) 2,000 `def test_i(): pass` in 20 files: pure per-test overhead."""
    file_count, per_file = (5, 40) if quick else (20, 100)
    files = {}
    for f in range(file_count):
        body = "".join(f"def test_{f * per_file + i}():\n    pass\n\n\n" for i in range(per_file))
        files[f"test_trivial_{f:02d}.py"] = body.rstrip() + "\n"
    _write(root, files)
    return Suite("a", "trivial tests", root, 2, file_count * per_file)


def heavy_tailed_sleeps(*, quick: bool) -> tuple[list[float], list[float]]:
    """(fast, slow) sleeps in seconds: most tests 10-50 ms, a few 1-3 s, about 30 s in all
    (about 7 s with `quick`)."""
    rng = random.Random(SEED)
    fast_count, slow_count = (37, 3) if quick else (188, 12)
    fast = [round(rng.uniform(0.010, 0.050), 4) for _ in range(fast_count)]
    slow = [round(rng.uniform(1.0, 3.0), 3) for _ in range(slow_count)]
    return fast, slow


def _sleep_files(sleeps: Sequence[float], per_file: int = 20) -> dict[str, str]:
    """Tests in collection order: file by file, and in definition order within a file."""
    files = {}
    for start in range(0, len(sleeps), per_file):
        lines = ["import time\n"]
        for i, sleep_s in enumerate(sleeps[start : start + per_file], start):
            lines.append(f"\n\ndef test_{i:03d}():\n    time.sleep({sleep_s})\n")
        files[f"test_sleep_{start // per_file:02d}.py"] = "".join(lines)
    return files


def _sleep_suite(root: Path, key: str, *, quick: bool, slow_first: bool) -> Suite:
    fast, slow = heavy_tailed_sleeps(quick=quick)
    order = slow + fast if slow_first else fast + slow
    _write(root, _sleep_files(order))
    title = "heavy tail, slow tests first" if slow_first else "heavy tail, slow tests last"
    return Suite(key, title, root, 8, len(order), sleeps_s=tuple(order))


def slow_last(root: Path, *, quick: bool) -> Suite:
    """(b) 200 heavy-tailed sleep tests with the slow ones last in collection order."""
    return _sleep_suite(root, "b", quick=quick, slow_first=False)


def slow_first(root: Path, *, quick: bool) -> Suite:
    """(c) the same tests as (b) with the slow ones first."""
    return _sleep_suite(root, "c", quick=quick, slow_first=True)


MODULE_FIXTURE_TEMPLATE = """\
import os
import time

import pytest


@pytest.fixture(scope="module")
def expensive():
    with open(os.environ["{env}"], "a") as log:
        log.write("{module}\\n")
    time.sleep(0.2)
    return {module!r}
{tests}"""


def module_fixtures(root: Path, *, quick: bool) -> Suite:
    """(d) 30 modules whose ~10 tests share a module-scoped fixture costing 0.2 s: how often
    a runner sets the fixture up again because it split a module across workers."""
    module_count, per_module = (6, 10) if quick else (30, 10)
    files = {}
    for m in range(module_count):
        module = f"test_fixture_{m:02d}"
        tests = "".join(
            f"\n\ndef test_{i}(expensive):\n    assert expensive == {module!r}\n"
            for i in range(per_module)
        )
        files[f"{module}.py"] = MODULE_FIXTURE_TEMPLATE.format(
            env=SETUP_LOG_ENV, module=module, tests=tests
        )
    _write(root, files)
    return Suite("d", "module fixtures", root, 4, module_count * per_module, counts_setups=True)


class SuiteBuilder(Protocol):
    def __call__(self, root: Path, *, quick: bool) -> Suite: ...


BUILDERS: dict[str, SuiteBuilder] = {
    "a": trivial,
    "b": slow_last,
    "c": slow_first,
    "d": module_fixtures,
}
