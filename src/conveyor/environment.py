"""The environment variables conveyor hands its worker processes, and how a process started
from inside a test forgets them.

A worker looks like an xdist worker (PYTEST_XDIST_WORKER, ...) so that fixtures isolate
themselves; a `pytest` or `conveyor run` that a test starts in a subprocess inherits those
variables, yet must behave as if started from a shell, not as a worker of the outer build.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping, MutableMapping
from pathlib import Path

WORKER = "CONVEYOR_WORKER"
WORKER_COUNT = "CONVEYOR_WORKER_COUNT"
XDIST_WORKER = "PYTEST_XDIST_WORKER"
XDIST_WORKER_COUNT = "PYTEST_XDIST_WORKER_COUNT"
XDIST_TESTRUNUID = "PYTEST_XDIST_TESTRUNUID"
WORKER_PID = "CONVEYOR_WORKER_PID"  # set by a pytest worker process to its own pid
ADDED = "CONVEYOR_ADDED_ENV"  # names the supervisor added to the user's environment


def worker_environment(base: Mapping[str, str], user: Mapping[str, str]) -> dict[str, str]:
    """`base` (the user's environment plus what conveyor sets) marked with the names conveyor
    added, so that processes started inside the worker can drop exactly those."""
    added = sorted(name for name in base if name not in user)
    return {**base, ADDED: ",".join(added)}


def mark_worker_process(environ: MutableMapping[str, str] = os.environ) -> None:
    environ[WORKER_PID] = str(os.getpid())


def forget_outer_worker(environ: MutableMapping[str, str] = os.environ) -> bool:
    """In a process started from inside a pytest worker (a test running pytest or conveyor),
    drop the variables the worker's supervisor added. True when there were some."""
    pid = environ.get(WORKER_PID)
    if pid is None or pid == str(os.getpid()):
        return False
    for name in environ.get(ADDED, "").split(","):
        if name:
            environ.pop(name, None)
    environ.pop(ADDED, None)
    environ.pop(WORKER_PID, None)
    return True


SETTINGS_FILE = "CONVEYOR_WORKER_SETTINGS_FILE"


def write_settings_file(path: Path, text: str) -> None:
    """A worker's settings (the queue URL, password included) go through a file only its
    user can read, never through the environment, which /proc shows to others."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def take_settings(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """The settings the supervisor wrote for this worker process; the file is removed once
    read. None when this process was not started by a supervisor."""
    path = environ.pop(SETTINGS_FILE, None)
    if path is None:
        return None
    try:
        text = Path(path).read_text("utf-8")
    except OSError:
        return None
    with contextlib.suppress(OSError):
        os.unlink(path)
    return text


def process_started_at() -> float | None:
    """When this process started (epoch seconds), from /proc on Linux; None elsewhere. The
    build's start-up is measured from here, as a user waiting for the command measures it."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as uptime:
            since_boot = float(uptime.read().split()[0])
        age = since_boot - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - max(0.0, age)
