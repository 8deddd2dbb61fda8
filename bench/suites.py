"""Synthetic test suites, written into a directory the caller owns (a temporary one).

Every suite is deterministic: the heavy-tailed sleeps come from a fixed random seed, so two
invocations of the benchmark measure the same work.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

SEED = 20240607
SETUP_LOG_ENV = "BENCH_SETUP_LOG"
# Pins rootdir to the suite, away from any config above the temp dir, and keeps
# pytest-randomly (when installed) from shuffling the collection order each shape is about.
PYTEST_INI = "[pytest]\naddopts = -p no:randomly\n"


@dataclass(frozen=True)
class Suite:
    """A suite on disk and the facts the report needs about it."""

    key: str
    title: str
    path: Path
    default_workers: int
    test_count: int
    sleeps_s: tuple[float, ...] = ()  # per-test sleeps, for the lower bound (sleep-only suites)
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


def _sleep_files(
    sleeps: Sequence[float], per_file: int = 20, prefix: str = "test_sleep"
) -> dict[str, str]:
    """Tests in collection order: file by file, and in definition order within a file."""
    files = {}
    for start in range(0, len(sleeps), per_file):
        lines = ["import time\n"]
        for i, sleep_s in enumerate(sleeps[start : start + per_file], start):
            lines.append(f"\n\ndef test_{i:03d}():\n    time.sleep({sleep_s})\n")
        files[f"{prefix}_{start // per_file:02d}.py"] = "".join(lines)
    return files


def spread(fast: Sequence[float], slow: Sequence[float]) -> list[float]:
    """The slow tests at even intervals among the fast ones, the first one a gap in: neither
    early nor late in collection order."""
    if not slow:
        return list(fast)
    gap = len(fast) / len(slow)
    order: list[float] = []
    taken = 0
    for index, slow_s in enumerate(slow):
        until = round(gap * (index + 0.5))
        order += fast[taken:until]
        order.append(slow_s)
        taken = until
    return order + list(fast[taken:])


Arrange = Callable[[list[float], list[float]], list[float]]
SLEEP_ORDERS: dict[str, tuple[str, Arrange]] = {
    "last": ("heavy tail, slow tests last", lambda fast, slow: fast + slow),
    "first": ("heavy tail, slow tests first", lambda fast, slow: slow + fast),
    "spread": ("heavy tail, slow tests spread", spread),
}


def _sleep_suite(root: Path, key: str, *, quick: bool, where: str) -> Suite:
    fast, slow = heavy_tailed_sleeps(quick=quick)
    title, arrange = SLEEP_ORDERS[where]
    order = arrange(fast, slow)
    _write(root, _sleep_files(order))
    return Suite(key, title, root, 8, len(order), sleeps_s=tuple(order))


def slow_last(root: Path, *, quick: bool) -> Suite:
    """(b) 200 heavy-tailed sleep tests with the slow ones last in collection order."""
    return _sleep_suite(root, "b", quick=quick, where="last")


def slow_first(root: Path, *, quick: bool) -> Suite:
    """(c) the same tests as (b) with the slow ones first."""
    return _sleep_suite(root, "c", quick=quick, where="first")


def slow_spread(root: Path, *, quick: bool) -> Suite:
    """(f) the same tests as (b) with the slow ones spread evenly through the files."""
    return _sleep_suite(root, "f", quick=quick, where="spread")


MODULE_FIXTURE_TEMPLATE = """\
import os
import time

import pytest


@pytest.fixture(scope="module")
def expensive():
    with open(os.environ["{env}"], "a") as log:
        log.write("{module}\\n")
    time.sleep({fixture_s})
    return {module!r}
{tests}"""


def _fixture_modules(
    prefix: str, module_count: int, per_module: int, *, fixture_s: float, test_s: float
) -> dict[str, str]:
    """Modules whose tests share one module-scoped fixture that logs each set-up."""
    body = f"    time.sleep({test_s})\n" if test_s else ""
    files = {}
    for m in range(module_count):
        module = f"{prefix}_{m:03d}"
        tests = "".join(
            f"\n\ndef test_{i}(expensive):\n{body}    assert expensive == {module!r}\n"
            for i in range(per_module)
        )
        files[f"{module}.py"] = MODULE_FIXTURE_TEMPLATE.format(
            env=SETUP_LOG_ENV, module=module, tests=tests, fixture_s=fixture_s
        )
    return files


def module_fixtures(root: Path, *, quick: bool) -> Suite:
    """(d) 30 modules whose ~10 tests share a module-scoped fixture costing 0.2 s: how often
    a runner sets the fixture up again because it split a module across workers."""
    module_count, per_module = (6, 10) if quick else (30, 10)
    files = _fixture_modules("test_fixture", module_count, per_module, fixture_s=0.2, test_s=0)
    _write(root, files)
    return Suite("d", "module fixtures", root, 4, module_count * per_module, counts_setups=True)


def huge_module_sleeps(*, quick: bool) -> list[float]:
    """One module's heavy tail in a seeded random order: 95 % of tests 10-50 ms, 5 % 0.5-1.5 s
    (about 22 s in all; about 4.5 s with `quick`)."""
    rng = random.Random(SEED + 1)
    count = 60 if quick else 300
    slow_count = count // 20
    sleeps = [round(rng.uniform(0.010, 0.050), 4) for _ in range(count - slow_count)]
    sleeps += [round(rng.uniform(0.5, 1.5), 3) for _ in range(slow_count)]
    rng.shuffle(sleeps)
    return sleeps


def huge_module(root: Path, *, quick: bool) -> Suite:
    """(g) every test in one module, slow ones scattered: a runner that keeps a module on one
    worker (xdist's loadfile and loadscope) runs the whole suite serially."""
    sleeps = huge_module_sleeps(quick=quick)
    _write(root, _sleep_files(sleeps, per_file=len(sleeps), prefix="test_huge"))
    return Suite("g", "one huge module", root, 8, len(sleeps), sleeps_s=tuple(sleeps))


def small_modules(root: Path, *, quick: bool) -> Suite:
    """(h) 100 small modules of 4 tests (10 ms each) sharing a 0.1 s module fixture: fixture
    affinity when modules are many and cheap, where scheduling overhead shows."""
    module_count, per_module = (20, 4) if quick else (100, 4)
    files = _fixture_modules("test_small", module_count, per_module, fixture_s=0.1, test_s=0.01)
    _write(root, files)
    title = "many small modules with module fixtures"
    return Suite("h", title, root, 4, module_count * per_module, counts_setups=True)


COMPUTE_LOOPS = 400_000  # about 20-40 ms of CPU in CPython on a current x86 core

PARAMETRIZE_TEMPLATE = """\
import time

import pytest


@pytest.mark.parametrize("n", range({compute}))
def test_compute(n):
    assert sum(i * i for i in range(200 + n % 50)) >= 0


@pytest.mark.parametrize("n", range({sleep}))
def test_sleep(n):
    time.sleep(0.002 + (n % 10) * 0.0005)


@pytest.mark.parametrize("a", range({side}))
@pytest.mark.parametrize("b", ["x", "y", "z"])
def test_grid(a, b):
    assert (a, b) != (-1, "")
"""


def parametrize_explosion(root: Path, *, quick: bool) -> Suite:
    """(i) three parametrized functions in one module expanding to 3,000 cases (300 with
    `quick`): tiny compute, 2-7 ms sleeps and a 2-D grid. Per-test overhead and batching."""
    compute, sleep, side = (150, 90, 20) if quick else (1500, 900, 200)
    text = PARAMETRIZE_TEMPLATE.format(compute=compute, sleep=sleep, side=side)
    _write(root, {"test_params.py": text})
    return Suite("i", "parametrize explosion", root, 4, compute + sleep + 3 * side)


COMPUTE_TEMPLATE = """\
import pytest


@pytest.mark.parametrize("n", range({count}))
def test_spin(n):
    assert sum(i * i for i in range({loops})) > 0
"""


def mix(root: Path, *, quick: bool) -> Suite:
    """(j) all shapes in one suite: heavy-tail sleeps with the slow tests first in one file
    and last in another, one big module, small fixture modules, a parametrize explosion and
    CPU-bound tests (which no runner can spread over more cores than the machine has)."""
    fast, slow = heavy_tailed_sleeps(quick=True)
    huge = huge_module_sleeps(quick=True)
    fixture_modules, compute = (4, 4) if quick else (20, 20)
    files = _sleep_files(slow + fast, per_file=len(fast) + len(slow), prefix="test_early")
    files |= _sleep_files(fast + slow, per_file=len(fast) + len(slow), prefix="test_late")
    files |= _sleep_files(huge, per_file=len(huge), prefix="test_huge")
    files |= _fixture_modules("test_small", fixture_modules, 4, fixture_s=0.1, test_s=0.01)
    params = (150, 90, 20) if quick else (600, 300, 60)
    files["test_params.py"] = PARAMETRIZE_TEMPLATE.format(
        compute=params[0], sleep=params[1], side=params[2]
    )
    files["test_compute.py"] = COMPUTE_TEMPLATE.format(count=compute, loops=COMPUTE_LOOPS)
    _write(root, files)
    count = 2 * (len(fast) + len(slow)) + len(huge) + 4 * fixture_modules
    count += params[0] + params[1] + 3 * params[2] + compute
    return Suite("j", "mix of all shapes", root, 8, count, counts_setups=True)


class SuiteBuilder(Protocol):
    def __call__(self, root: Path, *, quick: bool) -> Suite: ...


BUILDERS: dict[str, SuiteBuilder] = {
    "a": trivial,
    "b": slow_last,
    "c": slow_first,
    "d": module_fixtures,
    "f": slow_spread,
    "g": huge_module,
    "h": small_modules,
    "i": parametrize_explosion,
    "j": mix,
}
# The shapes a scheduler must handle all at once, not be tuned to one of (issue 14, item 8).
SHAPES = ("b", "c", "f", "g", "h", "i", "j")
