"""Controller memory and populate time at 100,000 tests (issue target: RSS < 300 MB).

Generates 100,000 trivial tests in 100 files, runs `conveyor run -n 2` on them and samples the
controller process's peak resident set (VmHWM in /proc) just before it exits. Run with
`python -m bench.controller_memory [--tests N] [-- PYTEST ARGS]`; the arguments after `--` go
to `conveyor run`, e.g. `-- -p no:syrupy` to leave out a plugin's own memory.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_suite(root: Path, tests: int, files: int = 100) -> None:
    root.mkdir(parents=True)
    (root / "pytest.ini").write_text("[pytest]\n")
    per_file = tests // files
    for index in range(files):
        body = "".join(f"def test_{i}():\n    pass\n\n" for i in range(per_file))
        (root / f"test_f{index:03d}.py").write_text(body)


def peak_rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.controller_memory")
    parser.add_argument("--tests", type=int, default=100_000)
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to `conveyor run`")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="conveyor-memory-") as folder:
        suite = Path(folder) / "suite"
        write_suite(suite, args.tests)
        started = time.perf_counter()
        log_path = Path(folder) / "output.txt"
        # Output to a file, not a pipe: 100,000 progress letters would fill a pipe nobody
        # reads until the end, and the controller would wait forever to write.
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "conveyor",
                    "run",
                    "-n",
                    "2",
                    "-q",
                    "-p",
                    "no:cacheprovider",
                    *args.pytest_args,
                ],
                cwd=suite,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            peak = 0.0
            while process.poll() is None:
                peak = max(peak, peak_rss_mb(process.pid) or 0.0)
                time.sleep(0.2)
        output = log_path.read_text()
        wall = time.perf_counter() - started
    summary = output.strip().splitlines()[-1] if output.strip() else "(no output)"
    extra = f" ({' '.join(args.pytest_args)})" if args.pytest_args else ""
    print(
        f"{args.tests} tests, 2 workers{extra}: wall {wall:.1f} s, "
        f"controller peak RSS {peak:.0f} MB"
    )
    print(f"  {summary}")
    return process.returncode


if __name__ == "__main__":
    sys.exit(main())
