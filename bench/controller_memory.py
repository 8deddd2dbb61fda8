"""Controller memory and populate time at 100,000 tests (issue target: RSS < 300 MB).

Generates 100,000 trivial tests in 100 files, runs `conveyor run -n 2` on them and samples the
controller process's peak resident set (VmHWM in /proc) just before it exits. Run with
`python -m bench.controller_memory [--tests N] [--history] [-- PYTEST ARGS]`; the arguments
after `--` go to `conveyor run`, e.g. `-- -p no:syrupy` to leave out a plugin's own memory.
Without --history the pytest cache is off, so no timing history is read or written; with it,
a first run records the history and the second, measured, reads it and merges its own in.
`--seeded-history` writes that history (every test, in the shape conveyor writes) instead of
running a first build for it: at a million tests that saves half an hour.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def _file_name(index: int) -> str:
    return f"test_f{index:03d}.py"


def write_suite(root: Path, tests: int, files: int = 100) -> None:
    root.mkdir(parents=True)
    (root / "pytest.ini").write_text("[pytest]\n")
    per_file = tests // files
    for index in range(files):
        body = "".join(f"def test_{i}():\n    pass\n\n" for i in range(per_file))
        (root / _file_name(index)).write_text(body)


def seed_history(root: Path, tests: int, files: int = 100) -> None:
    """The timing history a first build of `write_suite`'s tests would leave in pytest's
    cache: every test once, a few tenths of a millisecond each."""
    from conveyor.history import CACHE_KEY, write_json

    rng = random.Random(tests)
    per_file = tests // files
    entries = {
        f"{_file_name(index)}::test_{i}": [round(rng.uniform(0.0001, 0.001), 6), 1]
        for index in range(files)
        for i in range(per_file)
    }
    path = root / ".pytest_cache" / "v" / CACHE_KEY
    path.parent.mkdir(parents=True)
    write_json(path, {"build": 1, "tests": entries})


def peak_rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


@dataclass
class Measured:
    peak_mb: float
    wall_s: float
    summary: str
    exit_code: int


def measure(suite: Path, pytest_args: list[str], log_path: Path) -> Measured:
    """One `conveyor run -n 2` on the suite, the controller's peak RSS sampled every 0.2 s."""
    started = time.perf_counter()
    # Output to a file, not a pipe: 100,000 progress letters would fill a pipe nobody
    # reads until the end, and the controller would wait forever to write.
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "run", "-n", "2", "-q", *pytest_args],
            cwd=suite,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        peak = 0.0
        while process.poll() is None:
            peak = max(peak, peak_rss_mb(process.pid) or 0.0)
            time.sleep(0.2)
    output = log_path.read_text().strip()
    summary = output.splitlines()[-1] if output else "(no output)"
    return Measured(peak, time.perf_counter() - started, summary, process.returncode)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.controller_memory")
    parser.add_argument("--tests", type=int, default=100_000)
    parser.add_argument(
        "--history",
        action="store_true",
        help="measure a second run, which reads and merges the first run's timing history",
    )
    parser.add_argument(
        "--seeded-history",
        action="store_true",
        help="like --history, with the first run's history written directly instead of run",
    )
    parser.add_argument(
        "--log", type=Path, help="keep the measured build's whole output here (it is long)"
    )
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to `conveyor run`")
    args = parser.parse_args()
    with_history = args.history or args.seeded_history
    cache = [] if with_history else ["-p", "no:cacheprovider"]
    with tempfile.TemporaryDirectory(prefix="conveyor-memory-") as folder:
        suite = Path(folder) / "suite"
        write_suite(suite, args.tests)
        if args.seeded_history:
            seed_history(suite, args.tests)
        elif args.history:
            first = measure(suite, [*cache, *args.pytest_args], Path(folder) / "first.txt")
            print(f"first run (records the history): controller peak RSS {first.peak_mb:.0f} MB")
        found = measure(suite, [*cache, *args.pytest_args], Path(folder) / "output.txt")
        if args.log is not None:
            shutil.copyfile(Path(folder) / "output.txt", args.log)
        problems = _problems((Path(folder) / "output.txt").read_text())
    extra = f" ({' '.join(args.pytest_args)})" if args.pytest_args else ""
    history = ", with timing history" if with_history else ""
    print(
        f"{args.tests} tests, 2 workers{extra}{history}: wall {found.wall_s:.1f} s, "
        f"controller peak RSS {found.peak_mb:.0f} MB"
    )
    print(f"  {found.summary}")
    if problems:
        print("\n".join(problems))
    return found.exit_code


def _problems(output: str, most: int = 40) -> list[str]:
    """The lines of a build's output that say what went wrong (failures, errors, a worker
    stopped): a million dots of progress hide them."""
    wanted = ("FAILED", "ERROR", "Timeout", "crashed", "was stopped", "conveyor:")
    return [line for line in output.splitlines() if line.startswith(wanted) or "Timeout" in line][
        :most
    ]


if __name__ == "__main__":
    sys.exit(main())
