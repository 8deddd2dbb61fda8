"""Facts about the machine and software, recorded next to every Markdown results table."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from bench.table import Table


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def nproc() -> int:
    """What `nproc` prints: the CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


def conveyor_commit() -> str:
    """The checked-out commit of conveyor (read-only `git rev-parse`), if this is a checkout."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).resolve().parent,
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def redis_server_version() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        return "not found"
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    words = done.stdout.split()
    version = next((w for w in words if w.startswith("v=")), "v=unknown")
    return version[2:]


def facts() -> dict[str, str]:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(nproc()),
        "CPU": cpu_model(),
        "Python": platform.python_version(),
        "pytest": _version("pytest"),
        "pytest-xdist": _version("pytest-xdist"),
        "conveyor": f"{_version('conveyor')} ({conveyor_commit()})",
        "redis-server": redis_server_version(),
        "redis (Python client)": _version("redis"),
    }


def append_record(
    path: Path, title: str, command: str, notes: Sequence[str], tables: Sequence[Table]
) -> None:
    """One run's record for docs/benchmarks.md: its command, the machine, notes and tables."""
    machine = facts()
    lines = ["", f"### {title} {machine['date']}", "", "```", command, "```", ""]
    lines += [f"- {name}: {value}" for name, value in machine.items()]
    lines += [f"- {note}" for note in notes]
    for table in tables:
        lines += ["", table.markdown()]
    with path.open("a", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")
    print(f"results appended to {path}")
