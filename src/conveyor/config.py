"""Settings from the command line: conveyor's own options are taken out, the rest is pytest's.

conveyor defines few options and never one that pytest or a popular plugin defines, so every
argument it does not recognise goes to pytest unchanged and in order.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from conveyor.errors import UsageError
from conveyor.options import find_pyproject, layered, name_the_source, split_command_line
from conveyor.queue import QUEUE_ENV
from conveyor.scheduling import GROUPINGS, ORDERS

# pytest-xdist's --dist modes, for users who bring their habits along.
XDIST_DIST_MODES = {
    "no": "module",  # with -n, xdist's "no" distributes as "load" does; conveyor's default
    "load": "test",
    "worksteal": "test",
    "loadfile": "module",
    "loadscope": "module",
}

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
    quarantine: str | None = None
    quarantine_auto: float | None = None
    quarantine_release: int = 10
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
    """Take conveyor's options out of `argv`; return them by key, and pytest's arguments."""
    return split_command_line(argv, PYTEST_SHORT_VALUE_OPTIONS)


def parse_run_options(
    argv: Sequence[str],
    command: str = "run",
    environ: Mapping[str, str] | None = None,
    pyproject: Path | None = None,
) -> RunOptions:
    """conveyor's options from the command line, CONVEYOR_* variables and [tool.conveyor] of
    the nearest pyproject.toml (in that order of precedence), and pytest's arguments."""
    command_line, pytest_args = split_args(argv)
    if pyproject is None:
        pyproject = find_pyproject(Path.cwd())
    ours, sources = layered(command_line, environ, pyproject)
    try:
        return _convert(command, command_line, ours, pytest_args)
    except UsageError as error:
        raise name_the_source(error, sources) from None


def _convert(
    command: str, command_line: Mapping[str, str], ours: Mapping[str, str], pytest_args: list[str]
) -> RunOptions:
    """The options' raw values into RunOptions, checked (each error names the option)."""
    if command == "report" and "numprocesses" in command_line:
        raise UsageError("`conveyor report` runs no tests, so it takes no -n.")
    options = RunOptions(pytest_args=pytest_args)
    options.workers = parse_workers(ours.get("numprocesses", "auto"))
    if "maxprocesses" in ours:
        cap = int(_number("--maxprocesses", ours["maxprocesses"], int, 1))
        options.workers = min(options.workers, cap) if options.workers else options.workers
    # CONVEYOR_QUEUE keeps a password out of argv, which every user of the machine can read.
    options.queue = ours.get("queue")
    options.build = ours.get("build")
    options.node_id = ours.get("node-id")
    if "lease-ttl" in ours:
        options.lease_ttl_s = _number("--lease-ttl", ours["lease-ttl"], float, 0.1)
    if "max-worker-restarts" in ours:
        options.max_restarts = int(
            _number("--max-worker-restarts", ours["max-worker-restarts"], int, 0)
        )
    if "max-unit-crashes" in ours:
        options.max_unit_crashes = int(
            _number("--max-unit-crashes", ours["max-unit-crashes"], int, 1)
        )
    if "start-timeout" in ours:
        options.start_timeout_s = _number("--start-timeout", ours["start-timeout"], float, 1)
    if "stall-timeout" in ours:
        options.stall_timeout_s = _number("--stall-timeout", ours["stall-timeout"], float, 1)
    if "max-worker-failures" in ours:
        options.max_worker_failures = int(
            _number("--max-worker-failures", ours["max-worker-failures"], int, 0)
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
    options.history_key = ours.get("history-key")
    options.worker_logs = ours.get("worker-logs")
    options.command = ours.get("command")
    options.units = tuple(u for u in ours.get("units", "").split("\0") if u)
    options.units_from = ours.get("units-from")
    options.shell = "shell" in ours
    options.node_setup = ours.get("node-setup")
    options.worker_setup = ours.get("worker-setup")
    options.timeline = ours.get("timeline")
    options.no_progress = "no-progress" in ours
    options.failures_live = "show-failures-live" in ours
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
    if "build-ttl" in ours:
        options.build_ttl_s = _number("--build-ttl", ours["build-ttl"], float, 1)
    if "test-timeout" in ours and ours["test-timeout"] != "auto":
        options.test_timeout_s = _number("--test-timeout", ours["test-timeout"], float, 0)
    if "max-requeues" in ours:
        options.max_requeues = int(_number("--max-requeues", ours["max-requeues"], int, 0))
    if "requeue-tolerance" in ours:
        tolerance = _number("--requeue-tolerance", ours["requeue-tolerance"], float, 0)
        if tolerance > 1:
            raise UsageError(
                f"--requeue-tolerance is a fraction of the build's tests (0 to 1), got {tolerance}."
            )
        options.requeue_tolerance = tolerance
    if "retry-on" in ours:
        options.retry_on = tuple(name for name in ours["retry-on"].split("\0") if name)
        if options.max_requeues == 0:
            raise UsageError("--retry-on only narrows retries; also pass --max-requeues N.")
    options.quarantine = ours.get("quarantine")
    if "quarantine-auto" in ours:
        options.quarantine_auto = _number("--quarantine-auto", ours["quarantine-auto"], float, 0.1)
    if "quarantine-release" in ours:
        options.quarantine_release = int(
            _number("--quarantine-release", ours["quarantine-release"], int, 1)
        )
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
