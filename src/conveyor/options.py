"""conveyor's options, declared once.

Each row says an option's flags, the `RunOptions` field it sets, how its value is read, and its
help. From the table come: the split of a command line into conveyor's options and pytest's
arguments, `conveyor run --help`, the `CONVEYOR_*` environment variables and the
`[tool.conveyor]` table of pyproject.toml. Precedence: command line > environment >
pyproject.toml > the field's default.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from conveyor.errors import UsageError
from conveyor.option_kinds import (
    FLAG,
    REPEAT,
    Option,
    OptionSet,
    choice,
    count,
    declared,
    fraction,
    optional_count,
    optional_number,
    optional_seconds,
    optional_text,
    repeated,
    seconds,
    switch,
)
from conveyor.queue.protocol import LEASE_TTL_S, MAX_UNIT_CRASHES
from conveyor.scheduling import DEFAULT_GROUPING, GROUPINGS, ORDERS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, no-redef, unused-ignore]


def _workers(flag: str, raw: str) -> int:
    if raw in ("auto", "logical"):  # pytest-xdist's "logical" counts logical CPUs, as auto does
        return auto_workers()
    try:
        number = int(raw)
    except ValueError:
        number = -1
    if number < 0:
        raise UsageError(
            f"-n expects a number of worker processes (0 or more) or 'auto', got {raw!r}. "
            "Use -n auto for one worker per available CPU, or -n 0 to run in this process."
        )
    return number


AUTO_WORKERS_ENV = "PYTEST_XDIST_AUTO_NUM_WORKERS"


def auto_workers() -> int:
    """What `-n auto` means: pytest-xdist's PYTEST_XDIST_AUTO_NUM_WORKERS where a CI sets it
    (a configuration written for xdist keeps its limit), else one worker per usable CPU."""
    raw = os.environ.get(AUTO_WORKERS_ENV, "").strip()
    if not raw:
        return available_cpus()
    try:
        number = int(raw)
    except ValueError:
        number = 0
    if number < 1:
        raise UsageError(
            f"{AUTO_WORKERS_ENV}={raw!r}: -n auto takes its number of workers from this "
            "variable, which must be a whole number of 1 or more; set it so, or unset it for "
            "one worker per CPU."
        )
    return number


def available_cpus() -> int:
    """CPUs this process may run on (respects affinity and cgroup-limited containers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


# pytest-xdist's --dist modes, for users who bring their habits along.
XDIST_DIST_MODES = {
    "no": "module",  # with -n, xdist's "no" distributes as "load" does; conveyor's default
    "load": "test",
    "worksteal": "test",
    "loadfile": "file",  # a file is never split between workers, as under xdist
    "loadscope": "scope",  # nor a class, nor a module's tests outside classes
    "loadgroup": "group",  # nor the tests of one xdist_group
}


_grouping = choice(GROUPINGS, XDIST_DIST_MODES)


def grouping_of(given: str | None, pytest_dist: object) -> str:
    """What one worker keeps together: conveyor's --dist where it was set (command line,
    CONVEYOR_DIST, [tool.conveyor]), else pytest's own --dist (from a project's addopts or
    PYTEST_ADDOPTS, read by pytest in the worker) taken as pytest-xdist's mode, else the
    default. A mode conveyor cannot honour is a usage error that says where it was set."""
    if given is not None:
        return given
    if not isinstance(pytest_dist, str) or pytest_dist in ("", "no"):
        return DEFAULT_GROUPING
    try:
        return _grouping("--dist", pytest_dist)
    except UsageError as error:
        raise UsageError(
            f"pytest's options (addopts or PYTEST_ADDOPTS): {error} To run with another "
            "mode, give conveyor its own: `conveyor run --dist MODE`."
        ) from None


class WorkerOptions(OptionSet):
    """Options every worker process reads as well: handed to workers with their settings."""

    lease_ttl_s = Option(
        ("--lease-ttl",),
        "how long a silent worker keeps its tests (default: 30)",
        LEASE_TTL_S,
        seconds(0.1),
        "SECONDS",
    )
    max_unit_crashes = Option(
        ("--max-unit-crashes",),
        "workers a test may take down before it is reported as failed (default: 2)",
        MAX_UNIT_CRASHES,
        count(1),
        "N",
    )
    test_timeout_s = Option(
        ("--test-timeout",),
        "a test running longer is stopped (every "
        "thread's stack is dumped), reported as failed, and its worker replaced; 0 = never; "
        "default auto: 60 s + 10 x the test's usual duration when timing history knows it, "
        "else 900 s",
        None,
        optional_seconds(0, auto="auto"),
        "SECONDS",
    )
    max_requeues = Option(
        ("--max-requeues",),
        "retry a failed test up to N times, "
        "from the back of the queue; one that passes on a retry counts as passed and is listed as "
        "flaky (default: 0)",
        0,
        count(0),
        "N",
    )
    requeue_tolerance = Option(
        ("--requeue-tolerance",),
        "at most this fraction of the build's tests is retried in all (default: no build-wide cap)",
        -1.0,
        fraction,
        "F",
    )
    retry_on = Option[tuple[str, ...]](
        ("--retry-on",),
        "retry only failures whose exception chain contains "
        "this exception class (or a subclass); repeatable",
        (),
        repeated,
        "NAME",
        kind=REPEAT,
    )
    order = Option(
        ("--order",),
        "serving order: slowest, collected or random (default: slowest first, from timing history)",
        "slowest",
        choice(ORDERS),
        "ORDER",
    )
    seed = Option(("--seed",), "seed for --order random (default: 0)", 0, count(0), "N")
    grouping = Option[str | None](
        ("--dist",),
        "what one worker keeps together: module (the default) or class, where that keeps "
        "fixtures alive; test, nothing (xdist's load, worksteal); file, always a whole file "
        "(xdist's loadfile); scope, always a whole class or a module's tests outside classes "
        "(xdist's loadscope); group, always the tests of one xdist_group mark, the others "
        "spread as with test (xdist's loadgroup). Without it, a --dist in pytest's addopts "
        "is taken as "
        "pytest-xdist's mode",
        None,
        _grouping,
        "MODE",
    )
    build_ttl_s = Option(
        ("--build-ttl",),
        "Redis queues: a build's keys expire this long "
        "after its last activity (default: 86400, a day)",
        None,
        optional_seconds(1),
        "SECONDS",
    )
    start_timeout_s = Option(
        ("--start-timeout",),
        "give up when no worker has published the "
        "collection and taken a test within this long (default: 600)",
        600.0,
        seconds(1),
        "SECONDS",
    )
    worker_setup = Option(
        ("--worker-setup",),
        "once per worker process, with CONVEYOR_WORKER set (sh -c)",
        None,
        optional_text,
        "CMD",
    )


class RunOptions(WorkerOptions):
    """conveyor's options for `run`, `worker` and `report`, plus pytest's arguments."""

    workers = Option(
        ("-n", "--numprocesses"),
        "worker processes (default: auto = one per available CPU, or "
        "PYTEST_XDIST_AUTO_NUM_WORKERS where set; 0 runs pytest in this process, like "
        "pytest-xdist's -n 0)",
        0,
        _workers,
        "N|auto",
    )
    maxprocesses = Option(
        ("--maxprocesses",),
        "at most this many workers with -n auto (pytest-xdist's option)",
        None,
        optional_count(1),
        "N",
    )
    queue = Option(
        ("--queue",),
        "queue to use (default: an embedded SQLite file in a "
        "temporary directory); sqlite:///path/queue.db, redis://[user:password@]host:port/db, "
        "rediss://..., redis+cluster://host:port (a Redis Cluster)",
        None,
        optional_text,
        "URL",
    )
    build = Option(
        ("--build",),
        "build id (default: from the CI, else a new random id)",
        None,
        optional_text,
        "ID",
        settable=False,
    )
    max_restarts = Option(
        ("--max-worker-restarts",),
        "replacements for crashed workers (default: 2 x N)",
        None,
        optional_count(0),
        "N",
    )
    history_key = Option(
        ("--history-key",),
        "Redis queues: the suite's name in the shared "
        "timing history (default: the current directory's name)",
        None,
        optional_text,
        "NAME",
    )
    no_progress = Option(
        ("--no-progress",),
        "keep pytest's progress letters instead of conveyor's live status line",
        False,
        switch,
        kind=FLAG,
    )
    failures_live = Option(
        ("--show-failures-live",),
        "print each failure as soon as it happens",
        False,
        switch,
        kind=FLAG,
    )
    timeline = Option(
        ("--timeline",),
        "run/report: write the build's timeline page at the end",
        None,
        optional_text,
        "FILE.html",
    )
    fork_workers = Option(
        ("--fork-workers",),
        "collect the suite once and fork the workers from that process (POSIX): faster "
        "start-up; a plugin that copies the worker id while it configures keeps gw0's",
        False,
        switch,
        kind=FLAG,
    )
    spawn_workers = Option(
        ("--spawn-workers",),
        "start every worker as a new interpreter; by default (Linux, 2+ workers) one process "
        "imports pytest and the workers are forked from it before they configure",
        False,
        switch,
        kind=FLAG,
    )
    worker_logs = Option(
        ("--worker-logs",),
        "keep each worker's own output in DIR/gwN.log",
        None,
        optional_text,
        "DIR",
    )
    command = Option(
        ("--command",),
        "command mode, for suites that are not pytest: run CMD "
        "once per unit; {unit} {junit} {junit_dir} {worker} are substituted as single "
        "arguments; exit 0 = passed; JUnit XML written to {junit} is reported per case",
        None,
        optional_text,
        "'CMD {unit}'",
        settable=False,
    )
    units = Option[tuple[str, ...]](
        ("--units",),
        "command mode: units from a glob (repeatable, ** recurses)",
        (),
        repeated,
        "GLOB",
        kind=REPEAT,
        settable=False,
    )
    units_from = Option(
        ("--units-from",),
        "command mode: units from a file, one per line (- = stdin)",
        None,
        optional_text,
        "FILE",
        settable=False,
    )
    shell = Option(
        ("--shell",),
        "command mode: run CMD with sh -c; each placeholder becomes "
        'a quoted "$CONVEYOR_UNIT" (etc.), never the value itself',
        False,
        switch,
        kind=FLAG,
        settable=False,
    )
    node_setup = Option(
        ("--node-setup",),
        "once per machine before its workers start (sh -c)",
        None,
        optional_text,
        "CMD",
    )
    node_id = Option(
        ("--node-id",),
        "this machine's name in worker ids (default: CI node "
        "index or host name, plus the process id)",
        None,
        optional_text,
        "NAME",
        settable=False,
    )
    max_worker_failures = Option(
        ("--max-worker-failures",),
        "abort after N worker failures outside tests (default: abort only when no worker is left)",
        None,
        optional_count(0),
        "N",
    )
    stall_timeout_s = Option(
        ("--stall-timeout",),
        "report/run: give up when nothing happens for this long while tests remain (default: 1800)",
        1800.0,
        seconds(1),
        "SECONDS",
    )

    quarantine = Option(
        ("--quarantine",),
        "run/report: tests whose failures do not fail the build, each with a reason and an "
        "expiry date (TOML; see the README)",
        None,
        optional_text,
        "FILE",
    )
    quarantine_auto = Option(
        ("--quarantine-auto",),
        "run/report: also quarantine the tests whose flaky score (`conveyor flaky`) reaches SCORE",
        None,
        optional_number(0.1),
        "SCORE",
    )
    quarantine_release = Option(
        ("--quarantine-release",),
        "an auto-quarantined test leaves quarantine after passing this many builds in a row "
        "(default: 10)",
        10,
        count(1),
        "N",
    )

    def __init__(self, pytest_args: list[str] | None = None, **values: Any) -> None:
        self.pytest_args: list[str] = list(pytest_args or [])
        super().__init__(**values)

    def replace(self, **changes: Any) -> RunOptions:
        return RunOptions(self.pytest_args, **{**self.option_values(), **changes})

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

OPTIONS: tuple[Option[Any], ...] = tuple(declared(RunOptions))

BY_FLAG: dict[str, Option[Any]] = {flag: option for option in OPTIONS for flag in option.flags}
BY_KEY: dict[str, Option[Any]] = {option.key: option for option in OPTIONS}


def render_help(width: int = 88) -> str:
    """The "conveyor options" part of `conveyor run --help`, from the table."""
    import textwrap

    lines = []
    for option in OPTIONS:
        label = f"  {option.label}"
        body = textwrap.wrap(option.help, width - 26)
        if len(label) > 24:
            lines.append(label)
            lines.extend(" " * 26 + part for part in body)
        else:
            lines.append(f"{label:<26}{body[0]}")
            lines.extend(" " * 26 + part for part in body[1:])
    return "\n".join(lines) + "\n"


def from_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """Options given as CONVEYOR_<KEY> variables (a list as lines, a flag as 1/true/yes)."""
    found: dict[str, str] = {}
    for option in OPTIONS:
        if option.settable and environ.get(option.env):
            found[option.key] = _flag_or_value(option, environ[option.env], option.env)
    return found


def find_pyproject(start: Path) -> Path | None:
    for directory in (start, *start.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def from_pyproject(path: Path | None) -> dict[str, str]:
    """Options from the [tool.conveyor] table of pyproject.toml; an unknown key or a value of
    the wrong kind is a usage error that names the file and the key."""
    if path is None or not path.is_file():
        return {}
    try:
        table = tomllib.loads(path.read_text("utf-8")).get("tool", {}).get("conveyor", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read [tool.conveyor] from {path}: {exc}") from None
    if not isinstance(table, dict):
        raise UsageError(f"[tool.conveyor] in {path} must be a table of options.")
    found: dict[str, str] = {}
    for raw_key, value in table.items():
        key = str(raw_key).replace("_", "-")
        option = BY_KEY.get(key)
        where = f"{path} [tool.conveyor] {raw_key}"
        if option is None or not option.settable:
            settable = ", ".join(o.key for o in OPTIONS if o.settable)
            raise UsageError(f"{where}: not an option that can be set there ({settable}).")
        found[key] = _from_toml(option, value, where)
    return found


def _from_toml(option: Option[Any], value: Any, where: str) -> str:
    if option.kind == FLAG:
        if not isinstance(value, bool):
            raise UsageError(f"{where}: expected true or false, got {value!r}.")
        return "1" if value else ""
    if option.kind == REPEAT:
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(item, (str, int, float)) for item in values):
            raise UsageError(f"{where}: expected a list of strings, got {value!r}.")
        return "\0".join(str(item) for item in values)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UsageError(f"{where}: expected a number or a string, got {value!r}.")
    return str(value)


def _flag_or_value(option: Option[Any], raw: str, where: str) -> str:
    if option.kind == FLAG:
        lowered = raw.strip().lower()
        if lowered not in ("1", "true", "yes", "0", "false", "no", ""):
            raise UsageError(f"{where}: expected 1/true/yes or 0/false/no, got {raw!r}.")
        return "1" if lowered in ("1", "true", "yes") else ""
    if option.kind == REPEAT:
        return "\0".join(line for line in raw.splitlines() if line.strip())
    return raw


def layered(
    command_line: Mapping[str, str],
    environ: Mapping[str, str] | None = None,
    pyproject: Path | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """Every option's raw value by key (command line > environment > pyproject.toml), and
    where each value that did not come from the command line came from."""
    environ = os.environ if environ is None else environ
    merged = from_pyproject(pyproject)
    sources = {key: f"{pyproject} [tool.conveyor] {key}" for key in merged}
    from_env = from_environment(environ)
    merged.update(from_env)
    sources.update({key: BY_KEY[key].env for key in from_env})
    merged.update(command_line)
    for key in command_line:
        sources.pop(key, None)
    values = {key: value for key, value in merged.items() if value != "" or key not in FLAGS}
    return values, sources


def name_the_source(error: UsageError, sources: Mapping[str, str]) -> UsageError:
    """A bad value that came from the environment or pyproject.toml: say where it was set."""
    message = str(error)
    for key, where in sources.items():
        if any(message.startswith(flag + " ") for flag in BY_KEY[key].flags):
            return UsageError(f"{where}: {message}")
    return error


FLAGS = {option.key for option in OPTIONS if option.kind == FLAG}


def split_command_line(
    argv: Sequence[str], pytest_short_value_options: set[str]
) -> tuple[dict[str, str], list[str]]:
    """conveyor's options out of `argv` by key; the rest are pytest's, in order."""
    ours: dict[str, str] = {}
    passthrough: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            passthrough.extend(args[i + 1 :])
            break
        name, eq, inline = arg.partition("=")
        option = BY_FLAG.get(name) if name.startswith("--") else None
        if option is not None and option.kind == FLAG and not eq:
            ours[option.key] = "1"
        elif option is not None and option.kind != FLAG:
            if not eq:
                if i + 1 >= len(args):
                    raise UsageError(f"{name} needs a value.")
                inline = args[i + 1]
                i += 1
            if option.kind == REPEAT and option.key in ours:
                ours[option.key] += "\0" + inline
            else:
                ours[option.key] = inline
        elif arg == "-n":
            if i + 1 >= len(args):
                raise UsageError("-n needs a value: a number of workers, or 'auto'.")
            ours["numprocesses"] = args[i + 1]
            i += 1
        elif arg.startswith("-n") and not arg.startswith("--") and len(arg) > 2:
            ours["numprocesses"] = arg[2:].lstrip("=")
        elif arg in pytest_short_value_options and i + 1 < len(args):
            passthrough.extend(args[i : i + 2])
            i += 1
        else:
            passthrough.append(arg)
        i += 1
    return ours, passthrough
