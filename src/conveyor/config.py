"""Settings from the command line: conveyor's own options are taken out, the rest is pytest's.

conveyor defines few options and never one that pytest or a popular plugin defines, so every
argument it does not recognise goes to pytest unchanged and in order.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from conveyor.errors import UsageError
from conveyor.queue import QUEUE_ENV, queue_from_env
from conveyor.scheduling import GROUPINGS, ORDERS

# conveyor's options that take a value, with their defaults.
VALUE_OPTIONS: dict[str, str] = {
    "-n": "workers",
    "--numprocesses": "workers",
    "--queue": "queue",
    "--build": "build",
    "--lease-ttl": "lease_ttl",
    "--max-worker-restarts": "max_restarts",
    "--max-unit-crashes": "max_unit_crashes",
    "--node-id": "node_id",
    "--start-timeout": "start_timeout",
    "--stall-timeout": "stall_timeout",
    "--test-timeout": "test_timeout",
    "--max-requeues": "max_requeues",
    "--requeue-tolerance": "requeue_tolerance",
    "--retry-on": "retry_on",
    "--max-worker-failures": "max_worker_failures",
    "--order": "order",
    "--seed": "seed",
    "--dist": "dist",
    "--history-key": "history_key",
    "--build-ttl": "build_ttl",
    "--worker-logs": "worker_logs",
    "--command": "command",
    "--units": "units",
    "--units-from": "units_from",
    "--node-setup": "node_setup",
    "--worker-setup": "worker_setup",
    "--timeline": "timeline",
    "--maxprocesses": "max_processes",  # pytest-xdist's, for `pytest -n` handed to conveyor
}

# conveyor's options that take no value.
FLAG_OPTIONS = {
    "--shell": "shell",
    "--no-progress": "no_progress",
    "--show-failures-live": "failures_live",
}

# pytest-xdist's --dist modes, for users who bring their habits along.
XDIST_DIST_MODES = {
    "no": "module",  # with -n, xdist's "no" distributes as "load" does; conveyor's default
    "load": "test",
    "worksteal": "test",
    "loadfile": "module",
    "loadscope": "module",
}

# conveyor's options that may be given more than once; their values are collected in order.
REPEATABLE = {"retry_on", "units"}

# pytest's short options that take a separate value; their value is never read as ours.
PYTEST_SHORT_VALUE_OPTIONS = {"-k", "-m", "-p", "-o", "-c", "-W", "-r"}

# With these pytest does not run tests, so conveyor runs it in-process unchanged.
IN_PROCESS_FLAGS = {
    "--collect-only",
    "--co",
    "--fixtures",
    "--funcargs",
    "--fixtures-per-test",
    "--markers",
    "-h",
    "--help",
    "--version",
    "-V",
    "--setup-plan",
    "--cache-show",
}


@dataclass
class RunOptions:
    """conveyor's options for `run`, plus the pytest arguments to pass through."""

    workers: int = 0
    queue: str | None = None
    build: str | None = None
    lease_ttl_s: float = 30.0
    max_restarts: int | None = None
    max_unit_crashes: int = 2
    node_id: str | None = None
    start_timeout_s: float = 600.0
    stall_timeout_s: float = 1800.0
    test_timeout_s: float | None = None
    max_requeues: int = 0
    requeue_tolerance: float = -1.0
    retry_on: tuple[str, ...] = ()
    max_worker_failures: int | None = None
    order: str = "slowest"
    seed: int = 0
    grouping: str = "module"
    history_key: str | None = None
    build_ttl_s: float | None = None
    worker_logs: str | None = None
    command: str | None = None
    units: tuple[str, ...] = ()
    units_from: str | None = None
    shell: bool = False
    node_setup: str | None = None
    worker_setup: str | None = None
    timeline: str | None = None
    no_progress: bool = False
    failures_live: bool = False
    pytest_args: list[str] = field(default_factory=list)

    @property
    def shared_queue(self) -> bool:
        """True when other processes may join this build (an explicit queue URL)."""
        return self.queue is not None

    @property
    def networked_queue(self) -> bool:
        """True when other machines may join this build (a queue on a server)."""
        return self.queue is not None and not self.queue.lower().startswith("sqlite:")

    @property
    def in_process(self) -> bool:
        """True when pytest should just run here: `-n 0`, or a flag that runs no tests."""
        if self.command is not None:
            return False
        return self.workers == 0 or any(
            arg in IN_PROCESS_FLAGS or arg.split("=", 1)[0] in IN_PROCESS_FLAGS
            for arg in self.pytest_args
        )


def available_cpus() -> int:
    """CPUs this process may run on (respects affinity and cgroup-limited containers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def parse_workers(value: str) -> int:
    if value == "auto":
        return available_cpus()
    try:
        count = int(value)
    except ValueError:
        count = -1
    if count < 0:
        raise UsageError(
            f"-n expects a number of worker processes (0 or more) or 'auto', got {value!r}. "
            "Use -n auto for one worker per available CPU, or -n 0 to run in this process."
        )
    return count


def _number(option: str, value: str, kind: type[float] | type[int], minimum: float) -> float:
    try:
        number = kind(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise UsageError(f"{option} expects a number of at least {minimum}, got {value!r}.")
    return number


def split_args(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Take conveyor's options out of `argv`; return them and pytest's arguments in order."""
    ours: dict[str, str] = {}
    passthrough: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            passthrough.extend(args[i + 1 :])
            break
        if arg in FLAG_OPTIONS:
            ours[FLAG_OPTIONS[arg]] = "1"
            i += 1
            continue
        name, eq, inline = arg.partition("=")
        if name in VALUE_OPTIONS and name.startswith("--"):
            if not eq:
                if i + 1 >= len(args):
                    raise UsageError(f"{name} needs a value.")
                inline = args[i + 1]
                i += 1
            key = VALUE_OPTIONS[name]
            if key in REPEATABLE and key in ours:
                ours[key] += "\0" + inline
            else:
                ours[key] = inline
        elif arg == "-n":
            if i + 1 >= len(args):
                raise UsageError("-n needs a value: a number of workers, or 'auto'.")
            ours["workers"] = args[i + 1]
            i += 1
        elif arg.startswith("-n") and not arg.startswith("--") and len(arg) > 2:
            ours["workers"] = arg[2:].lstrip("=")
        elif arg in PYTEST_SHORT_VALUE_OPTIONS and i + 1 < len(args):
            passthrough.extend(args[i : i + 2])
            i += 1
        else:
            passthrough.append(arg)
        i += 1
    return ours, passthrough


def parse_run_options(argv: Sequence[str], command: str = "run") -> RunOptions:
    ours, pytest_args = split_args(argv)
    if command == "report" and "workers" in ours:
        raise UsageError("`conveyor report` runs no tests, so it takes no -n.")
    options = RunOptions(pytest_args=pytest_args)
    options.workers = parse_workers(ours.get("workers", "auto"))
    if "max_processes" in ours:
        cap = int(_number("--maxprocesses", ours["max_processes"], int, 1))
        options.workers = min(options.workers, cap) if options.workers else options.workers
    # CONVEYOR_QUEUE keeps a password out of argv, which every user of the machine can read.
    options.queue = ours.get("queue") or queue_from_env()
    options.build = ours.get("build")
    options.node_id = ours.get("node_id")
    if "lease_ttl" in ours:
        options.lease_ttl_s = _number("--lease-ttl", ours["lease_ttl"], float, 0.1)
    if "max_restarts" in ours:
        options.max_restarts = int(_number("--max-worker-restarts", ours["max_restarts"], int, 0))
    if "max_unit_crashes" in ours:
        options.max_unit_crashes = int(
            _number("--max-unit-crashes", ours["max_unit_crashes"], int, 1)
        )
    if "start_timeout" in ours:
        options.start_timeout_s = _number("--start-timeout", ours["start_timeout"], float, 1)
    if "stall_timeout" in ours:
        options.stall_timeout_s = _number("--stall-timeout", ours["stall_timeout"], float, 1)
    if "max_worker_failures" in ours:
        options.max_worker_failures = int(
            _number("--max-worker-failures", ours["max_worker_failures"], int, 0)
        )
    if "order" in ours:
        if ours["order"] not in ORDERS:
            raise UsageError(f"--order must be one of {', '.join(ORDERS)}, got {ours['order']!r}.")
        options.order = ours["order"]
    if "seed" in ours:
        options.seed = int(_number("--seed", ours["seed"], int, 0))
    if "dist" in ours:
        dist = XDIST_DIST_MODES.get(ours["dist"], ours["dist"])
        dist = "module" if dist == "file" else dist
        if dist not in GROUPINGS:
            raise UsageError(
                f"--dist must be one of test, module, class, file, got {ours['dist']!r}."
            )
        options.grouping = dist
    options.history_key = ours.get("history_key")
    options.worker_logs = ours.get("worker_logs")
    options.command = ours.get("command")
    options.units = tuple(u for u in ours.get("units", "").split("\0") if u)
    options.units_from = ours.get("units_from")
    options.shell = "shell" in ours
    options.node_setup = ours.get("node_setup")
    options.worker_setup = ours.get("worker_setup")
    options.timeline = ours.get("timeline")
    options.no_progress = "no_progress" in ours
    options.failures_live = "failures_live" in ours
    if options.command is None and (options.units or options.units_from or options.shell):
        raise UsageError("--units, --units-from and --shell belong to --command 'CMD {unit}'.")
    if options.command is not None:
        if not (options.units or options.units_from) and command != "report":
            raise UsageError(
                "--command needs the units to run: --units 'GLOB' (repeatable) or "
                "--units-from FILE (one unit per line; - reads standard input)."
            )
        if options.workers == 0:
            raise UsageError("--command needs at least one worker process (-n 1 or more).")
    if "build_ttl" in ours:
        options.build_ttl_s = _number("--build-ttl", ours["build_ttl"], float, 1)
    if "test_timeout" in ours and ours["test_timeout"] != "auto":
        options.test_timeout_s = _number("--test-timeout", ours["test_timeout"], float, 0)
    if "max_requeues" in ours:
        options.max_requeues = int(_number("--max-requeues", ours["max_requeues"], int, 0))
    if "requeue_tolerance" in ours:
        tolerance = _number("--requeue-tolerance", ours["requeue_tolerance"], float, 0)
        if tolerance > 1:
            raise UsageError(
                f"--requeue-tolerance is a fraction of the build's tests (0 to 1), got {tolerance}."
            )
        options.requeue_tolerance = tolerance
    if "retry_on" in ours:
        options.retry_on = tuple(name for name in ours["retry_on"].split("\0") if name)
        if options.max_requeues == 0:
            raise UsageError("--retry-on only narrows retries; also pass --max-requeues N.")
    if command in ("worker", "report") and options.queue is None:
        raise UsageError(
            f"`conveyor {command}` needs --queue URL (or {QUEUE_ENV}): the queue that `conveyor "
            "run` or other workers of the same build use (e.g. --queue redis://ci-redis:6379/0)."
        )
    return options


def new_build_id() -> str:
    return f"local-{secrets.token_hex(6)}"


def hash_seed_for(build: str, explicit_build: bool) -> str:
    """One PYTHONHASHSEED for every worker of a build, so parametrizing over sets and dicts
    collects identically everywhere. The user's own seed wins; across machines it is derived
    from the build id so that every machine picks the same one."""
    if os.environ.get("PYTHONHASHSEED"):
        return os.environ["PYTHONHASHSEED"]
    if explicit_build:
        digest = hashlib.sha256(build.encode("utf-8")).digest()
        return str(int.from_bytes(digest[:4], "big") % 4294967295 + 1)
    return str(secrets.randbelow(4294967295) + 1)
