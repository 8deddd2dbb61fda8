"""Settings from the command line: conveyor's own options are taken out, the rest is pytest's.

conveyor defines few options and never one that pytest or a popular plugin defines, so every
argument it does not recognise goes to pytest unchanged and in order. The options themselves
are declared once, in conveyor.options.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path

from conveyor.errors import UsageError
from conveyor.options import (
    BY_KEY,
    IN_PROCESS_FLAGS,
    OPTIONS,
    RunOptions,
    auto_workers,
    find_pyproject,
    layered,
    name_the_source,
    split_command_line,
)
from conveyor.queue import QUEUE_ENV

__all__ = ["IN_PROCESS_FLAGS", "RunOptions", "parse_run_options"]

# pytest's short options that take a separate value; their value is never read as ours.
PYTEST_SHORT_VALUE_OPTIONS = {"-k", "-m", "-p", "-o", "-c", "-W", "-r"}


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
    _one_way_to_start(ours, sources)
    try:
        return _convert(command, command_line, ours, pytest_args)
    except UsageError as error:
        raise name_the_source(error, sources) from None


START_KEYS = ("fork-workers", "spawn-workers")


def _one_way_to_start(ours: dict[str, str], sources: Mapping[str, str]) -> None:
    """--fork-workers and --spawn-workers set in different places: the nearer one wins (a
    command-line switch overrides pyproject.toml's), as for any one option. Set in the same
    place, they stay a usage error."""
    chosen = [key for key in START_KEYS if key in ours]  # a switch set false is left out
    if len(chosen) < 2:
        return
    ranks = {key: _rank(key, sources) for key in chosen}
    if len(set(ranks.values())) == 2:
        del ours[max(chosen, key=ranks.__getitem__)]


def _rank(key: str, sources: Mapping[str, str]) -> int:
    """0 the command line, 1 the environment, 2 pyproject.toml."""
    if key not in sources:
        return 0
    return 1 if sources[key] == BY_KEY[key].env else 2


def _convert(
    command: str, command_line: Mapping[str, str], ours: Mapping[str, str], pytest_args: list[str]
) -> RunOptions:
    """The options' raw values into RunOptions, each parsed as its declaration says (every
    error names the option), then the checks that involve more than one option."""
    if command == "report" and "numprocesses" in command_line:
        raise UsageError("`conveyor report` runs no tests, so it takes no -n.")
    options = RunOptions(pytest_args)
    for option in OPTIONS:
        if option.key in ours:
            setattr(options, option.field, option.parse(option.flags[-1], ours[option.key]))
    if "numprocesses" not in ours:
        options.workers = auto_workers()
    if options.maxprocesses is not None and options.workers:
        options.workers = min(options.workers, options.maxprocesses)
    if "order" not in ours and options.workers == 1 and not options.shared_queue:
        # One worker alone gains nothing from slowest first (its build takes as long in any
        # order), and collection order is plain pytest's: a suite whose tests depend on the
        # order they run in then passes or fails as it does there. --order set anywhere wins.
        options.order = "collected"
    _check_together(command, options)
    return options


def _check_together(command: str, options: RunOptions) -> None:
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
    if options.fork_workers and options.command is not None:
        raise UsageError(
            "--fork-workers forks pytest workers after collection; --command runs no pytest. "
            "Drop one of them."
        )
    if options.fork_workers and not hasattr(os, "fork"):
        raise UsageError("--fork-workers needs os.fork(), which this platform lacks; drop it.")
    if options.fork_workers and options.spawn_workers:
        raise UsageError(
            "--fork-workers and --spawn-workers are two ways to start the workers; pick one."
        )
    if options.retry_on and options.max_requeues == 0:
        raise UsageError("--retry-on only narrows retries; also pass --max-requeues N.")
    if command in ("worker", "report") and options.queue is None:
        raise UsageError(
            f"`conveyor {command}` needs --queue URL (or {QUEUE_ENV}): the queue that `conveyor "
            "run` or other workers of the same build use (e.g. --queue redis://ci-redis:6379/0)."
        )


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
