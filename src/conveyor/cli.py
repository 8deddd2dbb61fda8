"""The `conveyor` command: parses its own few options and delegates.

pytest, and conveyor's modules that need it, are imported where they are used, not here: the
commands that need no pytest (`conveyor worker`, `plan`, `flaky`, `history`, `events`) start
without importing it, and `conveyor run` spawns its workers before it imports pytest.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, NoReturn

from conveyor import __version__, interrupts
from conveyor.ci import detect, node_id, parallel_jobs
from conveyor.config import RunOptions, hash_seed_for, new_build_id, parse_run_options
from conveyor.environment import forget_outer_worker, process_started_at
from conveyor.errors import ConveyorError, NodeSetupFailed, QueueError, UsageError
from conveyor.hooks import run_shell
from conveyor.options import render_help
from conveyor.process_exit import SettleGarbageAtEnd, end_with_the_session, exit_process
from conveyor.quarantine import Entry, refuse_expired
from conveyor.quarantine import load as load_quarantine
from conveyor.queue import QUEUE_ENV, Queue, check_url, mask_url, open_queue, queue_from_env
from conveyor.session_end_report import say_session_ends
from conveyor.supervisor import Supervisor, WorkerStart
from conveyor.trace import configure as trace_configure
from conveyor.worker_settings import WorkerSettings

if TYPE_CHECKING:
    from conveyor.command import CommandSettings
    from conveyor.history import HistoryStore
    from conveyor.memory_plugin import BuildMemoryPlugin, MemorySettings

USAGE_TEMPLATE = """\
usage: conveyor run    [-n N|auto] [--queue URL] [--build ID] [options] [PYTEST_ARGS...]
       conveyor worker [-n N|auto]  --queue URL  [--build ID] [options] [PYTEST_ARGS...]
       conveyor report               --queue URL  [--build ID] [PYTEST_REPORT_ARGS...]
       conveyor events|replay|bisect|timeline ...   (the build record; --help on each)
       conveyor history export|import ...           (timing history)
       conveyor plan [--workers 1,2,4,8] ...        (how many workers: simulated from history)
       conveyor flaky [--json] ...                  (the flakiest tests of earlier builds)

run:    work and report on this machine. Without --queue, an embedded SQLite queue in a
        temporary directory; with --queue redis://..., the same command on every machine
        joins one build and each prints the whole build's report.
worker: only work (N local worker processes). report: only wait and report; any number
        of reports may run, before, during or after the workers.

conveyor options (also CONVEYOR_<NAME> variables or [tool.conveyor] in pyproject.toml):
{options}
Build ids come from --build, else from the CI (GitHub Actions GITHUB_RUN_ID, GitLab
CI_PIPELINE_ID, Buildkite BUILDKITE_BUILD_ID[-BUILDKITE_STEP_ID], CircleCI
CIRCLE_WORKFLOW_ID[-CIRCLE_JOB], Jenkins BUILD_TAG); a shared queue needs one of them.

Every other argument goes to pytest unchanged (-k, -m, -x, -v, -p, --junitxml, paths...).
Exit codes are pytest's: 0 passed, 1 failed, 2 interrupted, 3 internal, 4 usage, 5 no tests.
"""


def usage() -> str:
    """The command's help, with the options' table (built only when asked for)."""
    return USAGE_TEMPLATE.replace("{options}", render_help())


# The build's start-up is measured from the process start (the user waits from there).
PROCESS_STARTED_AT = process_started_at() or time.time()
EXIT_INTERRUPTED = 2  # pytest's ExitCode.INTERRUPTED, without importing pytest to say so


def _error(message: str, code: int) -> int:
    print(f"conveyor: error: {message}", file=sys.stderr)
    return code


@dataclass(frozen=True)
class Build:
    """Which build this process works on, and where."""

    id: str
    queue_url: str
    hash_seed: str
    node: str


def _resolve_build(options: RunOptions, run_dir: Path, *, joining: bool = False) -> Build:
    """`joining`: worker and report take part in a build someone else names; they never
    invent a build id of their own."""
    if options.queue is not None:
        check_url(options.queue)
    ci = detect()
    if options.build:
        build, explicit = options.build, True
    elif options.shared_queue and ci is not None:
        build, explicit = ci.build, True
    elif options.networked_queue or joining:
        raise UsageError(
            "a shared queue needs a build id that every machine of the build agrees on: pass "
            "--build ID (for example your CI's pipeline id). None was found in the environment "
            "(GitHub Actions, GitLab CI, Buildkite, CircleCI and Jenkins are detected)."
        )
    else:
        build, explicit = new_build_id(), False
    queue_url = options.queue or f"sqlite://{run_dir / 'queue.db'}"
    node = node_id(ci, options.node_id) + "/" if options.shared_queue else ""
    return Build(build, queue_url, hash_seed_for(build, explicit), node)


def _supervisor(
    options: RunOptions,
    build: Build,
    run_dir: Path,
    *,
    check_only: bool = False,
    own_controller: bool = True,
) -> Supervisor:
    env = dict(os.environ)
    env.pop(QUEUE_ENV, None)  # workers get the URL with their settings, not from here
    env["PYTHONHASHSEED"] = build.hash_seed
    env["PYTEST_XDIST_TESTRUNUID"] = build.id
    template = WorkerSettings.for_build(
        options,
        queue_url=build.queue_url,
        build=build.id,
        worker_id="",
        worker_count=options.workers,
        history=_history_location(options),
        check_only=check_only,
        own_controller=own_controller and not check_only,
        # Workers without a controller do once for all what a controller does (machine_lock).
        machine_run_folder=None if own_controller or check_only else str(run_dir),
        networked_queue=options.networked_queue,
        ci_machines=parallel_jobs() if options.networked_queue else None,
    )
    restarts = options.max_restarts if options.max_restarts is not None else 2 * options.workers
    return Supervisor(
        queue=_open(options, build),
        count=options.workers,
        settings_template=template,
        pytest_args=[arg for arg in options.pytest_args if arg != "--cache-clear"],
        run_dir=run_dir,
        env=env,
        max_restarts=restarts,
        node=build.node,
        max_worker_failures=options.max_worker_failures,
        log_dir=Path(options.worker_logs).resolve() if options.worker_logs else None,
        command=_command_settings(options, run_dir),
        start=worker_start(options),
    )


def worker_start(options: RunOptions) -> WorkerStart:
    """How the workers start: forked after collection when asked; else, on Linux with two
    or more pytest workers, forked from one process that imported pytest (the same start,
    without each worker importing pytest on cores that have tests to run); else spawned."""
    if options.fork_workers:
        return "fork"
    preloadable = sys.platform.startswith("linux") and hasattr(os, "fork")
    if options.spawn_workers or options.command is not None or not preloadable:
        return "spawn"
    return "preload" if options.workers >= 2 else "spawn"


def _command_settings(options: RunOptions, run_dir: Path) -> CommandSettings | None:
    """Command mode: the units go to a file every local worker reads the same way."""
    if options.command is None:
        return None
    from conveyor.command import CommandSettings, collect_units

    units_file = run_dir / "units.txt"
    units_file.write_text("\n".join(collect_units(options.units, options.units_from)) + "\n")
    return CommandSettings(options.command, str(units_file), options.shell)


def _node_setup(options: RunOptions) -> None:
    """--node-setup: once per machine, before its workers start."""
    if not options.node_setup:
        return
    code, output = run_shell(options.node_setup)
    if code != 0:
        raise NodeSetupFailed(
            f"--node-setup exited with code {code}; this machine runs no tests. "
            f"Its output:\n{output.rstrip()}"
        )


def _history_location(options: RunOptions) -> str:
    """Embedded queues keep history in pytest's cache; Redis queues in Redis, per suite."""
    if options.networked_queue:
        return f"redis:{options.history_key or Path.cwd().name}"
    return "cache"


def _open(options: RunOptions, build: Build) -> Queue:
    queue = open_queue(
        build.queue_url,
        build.id,
        lease_ttl_s=options.lease_ttl_s,
        build_ttl_s=options.build_ttl_s,
    )
    try:
        # A stored build that cannot be read (a manifest written by something else) is refused
        # here, with its message and exit code 3, before any worker or report starts on it.
        queue.manifest()
    except BaseException:
        queue.close()
        raise
    return queue


def _already_finished(queue: Queue) -> bool:
    """A re-run CI job (same build id) reports the stored results instead of working."""
    return queue.status().finished


def _resume_if_stopped(queue: Queue) -> bool:
    """A stopped build with tests left (a cancelled job, -x, Ctrl-C) run again is resumed: its
    workers run what is left and the report covers the whole build. Never replayed as it is."""
    status = queue.status()
    if not status.populated or status.stop_reason is None or status.done >= status.total:
        return False
    resumed = queue.resume(f"run again after: {status.stop_reason}")
    if resumed:
        print(
            f"conveyor: build was stopped ({status.stop_reason}) with "
            f"{status.total - status.done} test(s) left; resuming it.",
            file=sys.stderr,
        )
    return resumed


CHECK_FAILURE_LINES = 2  # of a check that could not compare: its last lines, its error


def _check_replay(options: RunOptions, build: Build, run_dir: Path) -> int | None:
    """Before a finished build's stored results are replayed, one worker collects and compares
    the collection and the code with the build's: stale results are never reported. None when
    they match, else the exit code after saying why."""
    checker = _supervisor(options.replace(workers=1), build, run_dir, check_only=True)
    checker.start()
    try:
        checker.wait()
    finally:
        checker.shutdown(terminate=True)
    states = checker.final_states()
    if states == ["done"]:
        return None
    new_build = (
        "Start a new build: pass another --build (a CI re-run attempt gets one of its own "
        "where the CI says which attempt it is)."
    )
    detail = "\n".join(f.output_tail for f in checker.failures if f.output_tail).strip()
    if states != ["refused"]:
        # Not a different collection: the check itself could not run (a plugin's error,
        # often options the build was not started with). Its last lines say why.
        last = "\n".join(detail.splitlines()[-CHECK_FAILURE_LINES:])
        return _error(
            f"build {build.id} already finished, but checking this checkout against it failed "
            "before it could compare the tests, so its stored results are not replayed. "
            f"{new_build}" + (f"\n{last}" if last else ""),
            3,
        )
    return _error(
        f"build {build.id} already finished, but this checkout does not collect the same "
        f"tests from the same code, so its stored results are not replayed. {new_build}"
        + (f"\n{detail}" if detail else ""),
        3,
    )


def _controller_exit(
    options: RunOptions,
    build: Build,
    queue: Queue,
    supervisor: Supervisor | None,
    command: str = "run",
) -> tuple[int, BuildMemoryPlugin]:
    """Report the build through pytest; the exit code, and the build memory, whose
    `record_cost` the caller runs once the workers are gone and before the queue closes."""
    import pytest

    from conveyor.compat import run_pytest
    from conveyor.controller import ControllerPlugin, ControllerSettings
    from conveyor.memory_plugin import BuildMemoryPlugin

    if supervisor is not None:
        role = f"{options.workers} worker{'s' if options.workers != 1 else ''}"
    elif command == "run":  # a finished build run again (see _already_finished)
        role = (
            f"build {build.id} has finished: its stored results are reported and no test runs "
            "(another --build id runs the tests again)"
        )
    else:
        role = "report only"
    header = (
        f"conveyor: {role}, queue {queue.display_url}, "
        f"build {build.id}, PYTHONHASHSEED={build.hash_seed}"
    )
    settings = ControllerSettings(
        queue_url=build.queue_url,
        build=build.id,
        workers=options.workers if supervisor else 0,
        start_timeout_s=options.start_timeout_s,
        stall_timeout_s=options.stall_timeout_s,
        history=_history_location(options),
        timeline=options.timeline,
        no_progress=options.no_progress,
        failures_live=options.failures_live,
        header=header,
        shared=options.shared_queue,
        node=build.node,
        started_at=PROCESS_STARTED_AT,
    )
    controller = ControllerPlugin(settings, queue, supervisor)
    memory = BuildMemoryPlugin(_memory_settings(options, build, supervisor), queue)
    try:
        plugins = [controller, memory, SettleGarbageAtEnd()]
        return run_pytest(options.pytest_args, plugins, f"conveyor {command}"), memory
    except KeyboardInterrupt:
        if not controller.reporting:
            raise  # before the session reached the build: stopped by the caller, as while starting
        # Once the tests are over the first interrupt waits for the report; this is another.
        interrupts.acted_on()
        print(
            "\nconveyor: interrupted again while the report was written: the report above is "
            "incomplete; the build was stopped.",
            file=sys.stderr,
        )
        return int(pytest.ExitCode.INTERRUPTED), memory
    except Exception as failure:
        # A plugin's own handling of Ctrl-C failed (pytest's terminal reporter itself raises
        # TypeError for an interrupt that lands in a frame without a line number): the build
        # is still an interrupted one, stopped as such, and no traceback of conveyor's.
        if not _during_an_interrupt(failure):
            raise
        if not controller.interrupt_handled:
            raise KeyboardInterrupt from failure  # stopped by the caller, as while starting
        print(
            "conveyor: pytest failed while it reported the interrupt "
            f"({type(failure).__name__}: {failure}); the build was stopped all the same",
            file=sys.stderr,
        )
        return int(pytest.ExitCode.INTERRUPTED), memory
    finally:
        interrupts.release()  # held by the controller while the report was written


def _during_an_interrupt(failure: BaseException) -> bool:
    """Whether `failure` was raised while a KeyboardInterrupt was being handled."""
    seen: set[int] = set()
    cause: BaseException | None = failure
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__context__
    return False


def _quarantine(options: RunOptions) -> tuple[Entry, ...]:
    """--quarantine's entries; a malformed file or an expired entry stops the build here,
    before any worker starts (QuarantineFileError: a usage error naming file and line)."""
    if not options.quarantine:
        return ()
    entries = load_quarantine(Path(options.quarantine))
    refuse_expired(entries, datetime.date.today())
    return tuple(entries)


def _memory_settings(
    options: RunOptions, build: Build, supervisor: Supervisor | None
) -> MemorySettings:
    from conveyor.memory_plugin import MemorySettings

    return MemorySettings(
        build=build.id,
        history=_history_location(options),
        local_workers=options.workers if supervisor else 0,
        entries=_quarantine(options),
        auto_threshold=options.quarantine_auto,
        release_after=options.quarantine_release,
        started_at=PROCESS_STARTED_AT,
    )


def _in_run_dir(command: Callable[[RunOptions, Path], int], options: RunOptions) -> int:
    run_dir = Path(tempfile.mkdtemp(prefix="conveyor-"))
    try:
        return command(options, run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def run(argv: Sequence[str]) -> int:
    """Work and report on this machine (`conveyor run`)."""
    options = parse_run_options(argv, "run")
    if options.in_process:
        from conveyor.compat import run_pytest

        return run_pytest(options.pytest_args, [], "conveyor run")  # signals as in pytest too
    interrupts.install()  # before anything starts: a SIGTERM then must not orphan anything
    return _in_run_dir(_run, options)


def _run(options: RunOptions, run_dir: Path) -> int:
    _quarantine(options)  # a bad quarantine file stops the build before anything starts
    build = _resolve_build(options, run_dir)
    queue = _open(options, build)
    _resume_if_stopped(queue)
    replaying = _already_finished(queue)
    if replaying and (refused := _check_replay(options, build, run_dir)) is not None:
        queue.close()
        return refused
    supervisor = None if replaying else _supervisor(options, build, run_dir)
    memory: BuildMemoryPlugin | None = None
    try:
        if supervisor is not None:
            _node_setup(options)
        # The workers start before the controller imports pytest and its plugins, so that
        # those imports run while the workers start rather than before they do (the first
        # result comes about 0.3 s sooner at -n 2). The controller may then still be starting
        # while they run tests: an interrupt there, or the queue lost while it configures, is
        # handled as during the build (see `interrupted_while_starting`, ControllerPlugin).
        if supervisor is not None:
            supervisor.start()
        code, memory = _controller_exit(options, build, queue, supervisor)
        return code if supervisor is None else _after_the_report(supervisor, code)
    except KeyboardInterrupt:
        if supervisor is None:
            raise
        from conveyor.build_follower import interrupted_while_starting

        interrupted_while_starting(queue, supervisor, build.id, shared=options.shared_queue)
        return 2
    finally:
        if supervisor is not None:
            supervisor.shutdown(terminate=True)  # none is left after a report
        _record_cost(memory)
        queue.close()


def _after_the_report(supervisor: Supervisor, code: int) -> int:
    """The workers end their own sessions while the summary is printed; wait for them after
    it. Interrupted meanwhile, the build (reported in full) is not a green one."""
    try:
        supervisor.shutdown()
    except KeyboardInterrupt:
        interrupts.acted_on()
        supervisor.shutdown(terminate=True)
        print(
            "conveyor: interrupted while the workers ended their sessions: the report above "
            "is complete, and the workers were stopped.",
            file=sys.stderr,
        )
        return 2
    return _after_session_ends(supervisor, code)


def _after_session_ends(supervisor: Supervisor, code: int) -> int:
    """What the workers wrote as their pytest sessions ended, after their tests, which plain
    pytest shows after its summary (an unraisable exception's warning, a plugin's last
    words); and a worker whose session failed as it ended (an exception as pytest
    unconfigured), for which plain pytest exits 1: the build is not green either. Said here,
    once every worker has ended. After an interrupt the workers' ends are the interrupt's
    doing, and the build is not green anyway."""
    if interrupts.received():
        return code
    failures = say_session_ends(supervisor, "conveyor:")
    if failures and code in (0, 5):
        print("conveyor: the build fails for it: exit 1.", file=sys.stderr)
        return 1
    return code


def _record_cost(memory: BuildMemoryPlugin | None) -> None:
    """What the build cost besides its tests, for `conveyor plan`: recorded once the workers
    are gone, so that its tail counts the report and their exit, and before the queue (where
    a shared build keeps its memory) closes."""
    if memory is not None:
        memory.record_cost()


def worker(argv: Sequence[str]) -> int:
    """Only work: N local worker processes join the build (`conveyor worker`)."""
    interrupts.install()
    options = parse_run_options(argv, "worker")
    if options.workers == 0:
        raise UsageError("`conveyor worker` needs at least one worker process (-n 1 or more).")
    return _in_run_dir(_work_only, options)


def _work_only(options: RunOptions, run_dir: Path) -> int:
    build = _resolve_build(options, run_dir, joining=True)
    queue = _open(options, build)
    try:
        _resume_if_stopped(queue)
        if _already_finished(queue):
            stopped = _stop_reason(queue)
            ended = f"was stopped ({stopped})" if stopped else "is already finished"
            print(f"conveyor worker: build {build.id} {ended}; nothing to do.")
            return 0
        supervisor = _supervisor(options, build, run_dir, own_controller=False)
        _node_setup(options)
        print(
            f"conveyor worker: {options.workers} worker(s) joining build {build.id} "
            f"on {queue.display_url}",
            flush=True,
        )
        supervisor.start()
        try:
            supervisor.wait()
        except KeyboardInterrupt:
            interrupts.acted_on()
            supervisor.leave("this machine was interrupted; its tests go back")
            return _error("interrupted; this machine's unfinished tests went back to the queue.", 2)
        supervisor.shutdown()
        return _report_worker_outcome(supervisor, _stop_reason(queue))
    finally:
        queue.close()


def _stop_reason(queue: Queue) -> str | None:
    """Why the build was stopped before it finished (-x elsewhere, another machine's
    Ctrl-C), if it was."""
    try:
        status = queue.status()
    except QueueError:
        return None
    return status.stop_reason if status.done < status.total else None


def _report_worker_outcome(supervisor: Supervisor, stop_reason: str | None = None) -> int:
    for failure in supervisor.failures:
        if failure.at_session_end:
            continue  # with what it wrote as it ended, below
        print(f"conveyor worker: worker {failure.worker} {failure.cause}", file=sys.stderr)
        if failure.output_tail:
            print(failure.output_tail, file=sys.stderr)
    states = supervisor.final_states()
    if say_session_ends(supervisor, "conveyor worker:"):
        # Its results are stored and the report may read green; this machine's job must not.
        print(
            "conveyor worker: a worker's pytest session failed as it ended (above), as a plain "
            "pytest run would; exit 1.",
            file=sys.stderr,
        )
        return 1
    if all(state == "done" for state in states):
        if stop_reason is not None:
            # Not finished: what this machine did not run has no result, and the report
            # says so; this machine's own part ended as it should.
            print(f"conveyor worker: the build was stopped before it finished ({stop_reason}).")
            return 0
        print("conveyor worker: done.")
        return 0
    print(f"conveyor worker: finished with worker states {', '.join(states)}.", file=sys.stderr)
    return 3


def report(argv: Sequence[str]) -> int:
    """Only report: wait for the build and replay it (`conveyor report`)."""
    interrupts.install()
    options = parse_run_options(argv, "report")
    run_dir = Path(tempfile.gettempdir())
    build = _resolve_build(options, run_dir, joining=True)
    queue = _open(options, build)
    memory: BuildMemoryPlugin | None = None
    try:
        code, memory = _controller_exit(options, build, queue, None, command="report")
        return code
    finally:
        _record_cost(memory)
        queue.close()


HISTORY_USAGE = """\
usage: conveyor history export [-o FILE] [--queue URL --history-key NAME] [--cache-dir DIR]
       conveyor history import FILE [--queue URL --history-key NAME] [--cache-dir DIR]

Timing history lives in pytest's cache directory (default .pytest_cache) for the embedded
queue, or in Redis with --queue redis://... . export writes {test id: seconds} (the format of
pytest-split's .test_durations); import reads that format or a previous export.
"""


def history(argv: Sequence[str]) -> int:
    """Export or import timing history, for CI systems that cache files between builds."""
    parser = argparse.ArgumentParser(prog="conveyor history", add_help=False)
    parser.add_argument("action", choices=("export", "import"))
    parser.add_argument("file", nargs="?")
    parser.add_argument("-o", "--output")
    parser.add_argument("--queue", default=queue_from_env())
    parser.add_argument("--history-key", default=Path.cwd().name)
    parser.add_argument("--cache-dir", default=".pytest_cache")
    try:
        args = parser.parse_args(list(argv))
    except SystemExit:
        print(HISTORY_USAGE, end="", file=sys.stderr)
        return 4
    queue = None
    if args.queue:
        check_url(args.queue)
        queue = open_queue(args.queue, "history")
        location = f"redis:{args.history_key}"
    else:
        location = "cache"
    from conveyor.history import DirectoryCache, history_store

    store = history_store(
        location, SimpleNamespace(cache=DirectoryCache(Path(args.cache_dir))), queue
    )
    if store is None:
        raise UsageError("timing history is kept in Redis or pytest's cache; this queue has none.")
    try:
        if args.action == "export":
            return _export_history(store, args.output)
        return _import_history(store, args.file)
    finally:
        if queue is not None:
            queue.close()


def _export_history(store: HistoryStore, output: str | None) -> int:
    text = json.dumps(store.load(), indent=2, sort_keys=True) + "\n"
    if output:
        Path(output).write_text(text, "utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _import_history(store: HistoryStore, path: str | None) -> int:
    if not path:
        raise UsageError("`conveyor history import` needs the FILE to read.")
    from conveyor.history import read_durations_file

    try:
        durations = read_durations_file(Path(path))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    store.record(durations)
    print(f"conveyor history: imported {len(durations)} durations.")
    return 0


RECORD_USAGE = """\
usage: conveyor events --queue URL --build ID [--json]
       conveyor timeline --queue URL --build ID [-o FILE.html]
       conveyor replay (--queue URL --build ID --worker W | --from-file FILE) [PYTEST_ARGS...]
                       [--command 'CMD {unit}' [--shell]]   (command mode: the units in order)
       conveyor bisect (--queue URL --build ID | --from-file FILE) --failing TEST_ID
                       [--worker W] [PYTEST_ARGS...]

timeline: a self-contained HTML page: one lane per worker, one bar per test, and the
        figures that explain the wall time (lower bound, utilisation, idle tail, slowest).
events: the build's record (worker joined/lost, results, reruns, lease expiries, crashes,
        rejected duplicates), one JSON object per line.
replay: run exactly the tests that worker ran, in its order, in one plain pytest process.
bisect: find the earlier test on the same worker that makes --failing fail.
The queue must outlive the build: use --queue sqlite:///path or Redis with `conveyor run`.
"""


def _record_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, add_help=False, allow_abbrev=False)
    parser.add_argument("--queue", default=queue_from_env())
    parser.add_argument("--build")
    parser.add_argument("--worker")
    parser.add_argument("--from-file")
    return parser


def _parse_record_args(
    parser: argparse.ArgumentParser, argv: Sequence[str]
) -> tuple[argparse.Namespace, list[str]]:
    try:
        return parser.parse_known_args(list(argv))
    except SystemExit:
        raise UsageError(RECORD_USAGE.strip()) from None


def _recorded_build(args: argparse.Namespace) -> Queue:
    if not args.queue or not args.build:
        raise UsageError("this needs the build's --queue URL and --build ID (or --from-file).")
    check_url(args.queue)
    queue = open_queue(args.queue, args.build)
    if queue.manifest() is None:
        queue.close()
        raise UsageError(f"build {args.build!r} is not in the queue {mask_url(args.queue)}.")
    return queue


def events(argv: Sequence[str]) -> int:
    """Export the build's event stream as JSON Lines."""
    parser = _record_parser("conveyor events")
    parser.add_argument("--json", action="store_true")
    args, rest = _parse_record_args(parser, argv)
    if rest:
        raise UsageError(f"unexpected arguments: {' '.join(rest)}")
    queue = _recorded_build(args)
    try:
        cursor = 0
        while page := queue.events(cursor, 2000):
            for event in page:
                record = {
                    "seq": event.seq,
                    "ts": event.ts,
                    "kind": event.kind,
                    "worker": event.worker,
                    "unit": event.unit,
                    "data": event.data,
                }
                sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
            cursor = page[-1].seq
        return 0
    finally:
        queue.close()


def _order(args: argparse.Namespace, failing: str | None = None) -> list[str]:
    from conveyor.replay import read_order_file, worker_order

    if args.from_file:
        return read_order_file(Path(args.from_file))
    queue = _recorded_build(args)
    try:
        worker = args.worker or (failing and _worker_that_ran(queue, failing))
        if not worker:
            raise UsageError("pass --worker W (see `conveyor events` for the build's workers).")
        return worker_order(queue, worker)
    finally:
        queue.close()


def _as_recorded(args: argparse.Namespace, given: str) -> str:
    """A test id as the build recorded it, given as conveyor's and pytest's summaries write
    it (relative to the folder the command ran in)."""
    from conveyor.replay import read_order_file, recorded_id

    if args.from_file:
        return recorded_id(given, read_order_file(Path(args.from_file)))
    queue = _recorded_build(args)
    try:
        return recorded_id(given, queue.units())
    finally:
        queue.close()


def _rootdir(args: argparse.Namespace) -> str | None:
    """The folder the recorded build's test ids are relative to (None for --from-file)."""
    if args.from_file:
        return None
    from conveyor.replay import recorded_rootdir

    queue = _recorded_build(args)
    try:
        return recorded_rootdir(queue)
    finally:
        queue.close()


def _worker_that_ran(queue: Queue, unit: str) -> str | None:
    cursor, found = 0, None
    while page := queue.events(cursor, 2000):
        for event in page:
            if event.unit == unit and event.kind in ("result", "requeued"):
                found = event.worker
        cursor = page[-1].seq
    if found is None:
        raise UsageError(f"no worker of this build ran {unit!r}.")
    return found


def timeline(argv: Sequence[str]) -> int:
    """Write the build's timeline page (`conveyor timeline --queue URL --build ID -o FILE`)."""
    parser = _record_parser("conveyor timeline")
    parser.add_argument("-o", "--output", default="timeline.html")
    args, rest = _parse_record_args(parser, argv)
    if rest:
        raise UsageError(f"unexpected arguments: {' '.join(rest)}")
    queue = _recorded_build(args)
    try:
        recorded, cursor = [], 0
        while page := queue.events(cursor, 2000):
            recorded.extend(page)
            cursor = page[-1].seq
    finally:
        queue.close()
    from conveyor.timeline_page import write_html

    found = write_html(args.output, recorded, title=f"conveyor build {args.build}")
    print(
        f"conveyor: timeline of build {args.build} written to {args.output}: wall "
        f"{found.wall_s:.1f} s, lower bound {found.lower_bound_s:.1f} s, {found.workers} workers"
    )
    return 0


def replay(argv: Sequence[str]) -> int:
    """Run one worker's recorded order in one plain pytest process."""
    parser = _record_parser("conveyor replay")
    parser.add_argument("--outcomes")
    parser.add_argument("--command")
    parser.add_argument("--shell", action="store_true")
    args, pytest_args = _parse_record_args(parser, argv)
    order = _order(args)
    if args.command:
        from conveyor.command import replay_commands

        return replay_commands(order, args.command, args.shell)
    outcomes = Path(args.outcomes) if args.outcomes else None
    from conveyor.replay import run_in_process

    return run_in_process(order, pytest_args, outcomes, _rootdir(args))


def bisect_command(argv: Sequence[str]) -> int:
    """Find the test that makes --failing fail when it runs earlier on the same worker."""
    from conveyor.bisect import FAILS_ALONE, FOUND, FOUND_SEVERAL, bisect, replay_runner
    from conveyor.replay import chosen_rootdir

    parser = _record_parser("conveyor bisect")
    parser.add_argument("--failing", required=False)
    args, pytest_args = _parse_record_args(parser, argv)
    if not args.failing:
        raise UsageError("conveyor bisect needs --failing TEST_ID.")
    args.failing = _as_recorded(args, args.failing)
    order = _order(args, args.failing)
    if args.failing not in order:
        raise UsageError(f"{args.failing!r} is not in that worker's order.")
    before = order[: len(order) - 1 - order[::-1].index(args.failing)]
    before = [unit for unit in before if unit != args.failing]
    print(f"conveyor bisect: {len(before)} test(s) ran before {args.failing} on that worker.")
    rootdir = _rootdir(args)
    if rootdir and chosen_rootdir(pytest_args) is None:
        pytest_args = [f"--rootdir={rootdir}", *pytest_args]  # each step collects from there
    result = bisect(before, args.failing, replay_runner(pytest_args))
    for line in result.log:
        print(f"  {line}")
    where = (
        f"cd {shlex.quote(rootdir)} && "
        if rootdir and Path(rootdir).resolve() != Path.cwd().resolve()
        else ""
    )
    if result.verdict in (FOUND, FOUND_SEVERAL):
        if result.verdict == FOUND:
            culprits = [str(result.culprit)]
            print(
                f"conveyor bisect: {result.culprit} makes {args.failing} fail ({result.runs} runs)."
            )
        else:
            culprits = result.culprits
            print(
                f"conveyor bisect: these {len(culprits)} tests, run in this order before it, "
                f"make {args.failing} fail ({result.runs} runs):"
            )
            for unit in culprits:
                print(f"  {unit}")
        tests = " ".join(shlex.quote(unit) for unit in (*culprits, args.failing))
        print(f"reproduce with: {where}pytest -p no:randomly {tests}")
        return 0
    if result.verdict == FAILS_ALONE:
        print(f"conveyor bisect: {args.failing} fails on its own; the order is not the cause.")
        return 1
    print(f"conveyor bisect: inconclusive after {result.runs} runs.")
    return 1


def plan(argv: Sequence[str]) -> int:
    from conveyor.cli_memory import plan as plan_command

    return plan_command(argv)


def flaky(argv: Sequence[str]) -> int:
    from conveyor.cli_memory import flaky as flaky_command

    return flaky_command(argv)


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "run": run,
    "worker": worker,
    "report": report,
    "history": history,
    "events": events,
    "timeline": timeline,
    "replay": replay,
    "bisect": bisect_command,
    "plan": plan,
    "flaky": flaky,
}


def main(argv: Sequence[str] | None = None) -> int:
    forget_outer_worker()  # a conveyor started by a test starts as if from a shell
    trace_configure()
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage(), end="")
        return 0 if args else 4
    if args[0] in ("--version", "-V"):
        print(f"conveyor {__version__}")
        return 0
    command, rest = args[0], args[1:]
    handler = COMMANDS.get(command)
    if handler is None:
        return _error(f"unknown command {command!r}; see `conveyor --help`.", 4)
    if rest and rest[0] in ("-h", "--help"):
        from conveyor.cli_memory import FLAKY_USAGE, PLAN_USAGE

        usage_of = {"history": HISTORY_USAGE, "plan": PLAN_USAGE, "flaky": FLAKY_USAGE}
        print(
            usage_of.get(
                command, usage() if command in ("run", "worker", "report") else RECORD_USAGE
            ),
            end="",
        )
        return 0
    try:
        return _run_command(handler, rest)
    finally:
        _forget_handled_interrupt()


def _forget_handled_interrupt() -> None:
    """CPython marks a KeyboardInterrupt that leaves an exec() of source text as unhandled,
    even when code further up handles it, and then ends the process by killing it with
    SIGINT, whatever exit code it chose: -2 where conveyor said 2. An interrupt while modules
    import lands there often (dataclasses and named tuples exec their methods). Any exec()
    of source text that succeeds clears the mark: the exit code is conveyor's own."""
    exec("")


def _run_command(handler: Callable[[Sequence[str]], int], rest: Sequence[str]) -> int:
    try:
        code = handler(rest)
        if interrupts.lost():
            # It came as the command ended (held while the report was written, or where
            # nothing could act on it: see conveyor.interrupts): still a cancelled run, never
            # a green one. A build reported as interrupted already says so.
            interrupts.acted_on()
            if code == EXIT_INTERRUPTED:
                return code
            return _error("interrupted as it ended, after the report above; exit 2.", 2)
        return code
    except UsageError as exc:  # a wrong queue URL included (QueueURLError)
        return _error(str(exc), 4)
    except QueueError as exc:  # a queue that cannot be used, a build lost or unusable
        return _error(str(exc), 3)
    except BrokenPipeError:
        # The reader went away (`conveyor events --json | head`): not an error of ours.
        # Python would complain again at exit while flushing stdout; point it at nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ConveyorError, OSError) as exc:
        return _error(str(exc), 3)
    except KeyboardInterrupt:
        interrupts.acted_on()
        return _error("interrupted.", 2)


def console_main() -> NoReturn:
    """The `conveyor` console script: `main`, then an exit that skips the interpreter's
    last garbage collections (`conveyor.process_exit`)."""
    end_with_the_session()
    exit_process(main())


if __name__ == "__main__":
    console_main()
