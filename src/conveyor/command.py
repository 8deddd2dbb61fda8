"""Command mode: run `CMD {unit}` for each unit, for test suites that are not pytest.

Each unit runs as a subprocess in a process group of its own (so a timeout kills everything it
started), with its placeholders substituted into single arguments: a unit named
`a b; rm -rf $(x)` reaches the command as exactly that one argument and is never run by a shell.
Placeholders are replaced in one pass, so a value is never searched for placeholders again.
Only with `--shell` does the command go through `sh -c`, and then the script holds no value at
all: each placeholder becomes a quoted reference to an environment variable that holds it.
Exit code 0 means passed; anything else failed, with the output kept. When the command writes
JUnit XML to `{junit}` (or into `{junit_dir}`), its test cases are reported one by one;
a unit whose process failed (non-zero exit, signal, timeout) fails whatever its JUnit says.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from conveyor.api import Case, Result, Unit, WorkerSession
from conveyor.environment import take_settings
from conveyor.errors import BuildStateLost, CollectionMismatch, QueueError, UsageError
from conveyor.history import DirectoryCache, history_store
from conveyor.scheduling import order_units
from conveyor.trace import configure as trace_configure
from conveyor.vocabulary import (
    EVENT_WORKER_ERROR,
    EXIT_DONE,
    EXIT_ORPHANED,
    EXIT_REFUSED,
    EXIT_STATE_LOST,
)
from conveyor.worker_settings import StatusFile, WorkerSettings, run_worker_setup

PLACEHOLDER = re.compile(r"\{(unit|junit|junit_dir|worker)\}")
# With --shell a placeholder becomes a reference to one of these variables, never its value.
PLACEHOLDER_ENV = {
    "unit": "CONVEYOR_UNIT",
    "junit": "CONVEYOR_JUNIT",
    "junit_dir": "CONVEYOR_JUNIT_DIR",
    "worker": "CONVEYOR_WORKER",
}
OUTPUT_LIMIT = 200_000  # characters of a unit's output kept in its report
PARENT_CHECK_S = 0.2


@dataclass(frozen=True)
class CommandSettings:
    """What a command worker needs besides the common worker settings."""

    command: str
    units_file: str
    shell: bool = False

    def to_env(self, common: WorkerSettings) -> str:
        """Both settings in the one environment variable a worker process reads."""
        return json.dumps({**asdict(self), "worker": json.loads(common.to_env())})


def substitute(text: str, values: Mapping[str, str]) -> str:
    """Every placeholder replaced in one pass: a value that itself looks like a placeholder
    (a unit named `x{junit_dir}y`) is left as it is."""
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def shell_script(command: str) -> str:
    """The --shell command with each placeholder replaced by a reference to its environment
    variable, quoted for where it stands: bare (`"${CONVEYOR_UNIT}"`), inside double quotes
    (`${CONVEYOR_UNIT}`) or inside single quotes (`'"${CONVEYOR_UNIT}"'`). The shell expands a
    variable once and never runs what it holds, so no value can become code."""
    out: list[str] = []
    quote = ""  # the quote we are inside: "", "'" or '"'
    i = 0
    while i < len(command):
        match = PLACEHOLDER.match(command, i)
        if match:
            ref = "${" + PLACEHOLDER_ENV[match.group(1)] + "}"
            out.append({"": f'"{ref}"', '"': ref, "'": f"'\"{ref}\"'"}[quote])
            i = match.end()
            continue
        char = command[i]
        if char == "\\" and quote != "'":
            out.append(command[i : i + 2])  # an escaped character never opens or closes quotes
            i += 2
            continue
        if quote == "" and char in "'\"":
            quote = char
        elif char == quote:
            quote = ""
        out.append(char)
        i += 1
    return "".join(out)


def command_env(values: Mapping[str, str]) -> dict[str, str]:
    """The unit's environment: this process's, plus each placeholder's value."""
    return {**os.environ, **{PLACEHOLDER_ENV[name]: value for name, value in values.items()}}


def command_argv(command: str, values: Mapping[str, str], shell: bool) -> list[str]:
    """The argument vector for one unit. Without a shell, each placeholder is replaced inside
    one already-split argument, so a value can never become several arguments or a command.
    With a shell, the script only names the values' variables (see `shell_script`); run it
    with `command_env(values)`."""
    if shell:
        return ["sh", "-c", shell_script(command)]
    return [substitute(token, values) for token in shlex.split(command)]


def collect_units(globs: Sequence[str], units_from: str | None) -> list[str]:
    """Units from globs (relative to the working directory, sorted) and/or a file with one
    unit per line ("-": standard input), without duplicates, in that order."""
    units: list[str] = []
    for pattern in globs:
        matches = sorted(glob.glob(pattern, recursive=True))
        if not matches:
            raise UsageError(f"--units {pattern!r} matches nothing in {Path.cwd()}.")
        units.extend(matches)
    if units_from == "-":
        units.extend(sys.stdin.read().splitlines())
    elif units_from:
        try:
            units.extend(Path(units_from).read_text("utf-8").splitlines())
        except OSError as exc:
            raise UsageError(f"cannot read units from {units_from}: {exc.strerror}.") from None
    return list(dict.fromkeys(unit.strip() for unit in units if unit.strip()))


def read_units(path: Path) -> list[str]:
    lines = path.read_text("utf-8").splitlines()
    return list(dict.fromkeys(line.strip() for line in lines if line.strip()))


def _seconds(raw: str | None) -> float | None:
    """A JUnit `time` attribute in seconds (absent or empty: 0); None when it is not a finite,
    non-negative number."""
    if raw is None or not raw.strip():
        return 0.0
    try:
        value = float(raw.replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _junit_case(case: Any, warnings: list[str]) -> Case:
    """One junitparser TestCase as a Case; a nonsense `time` counts as 0 with a warning."""
    from junitparser import Error, Failure, Skipped

    name, classname = str(case.name or "?"), str(case.classname or "")
    outcome, message = "passed", ""
    for entry in case.result:
        if isinstance(entry, Failure):
            outcome, message = "failed", entry.message or entry.text or "failed"
        elif isinstance(entry, Error):
            outcome, message = "error", entry.message or entry.text or "error"
        elif isinstance(entry, Skipped):
            outcome, message = "skipped", entry.message or "skipped"
    # junitparser reads `time` with float() and raises on anything else: read the raw text.
    raw_time = case._elem.attrib.get("time")
    seconds = _seconds(raw_time)
    if seconds is None:
        label = f"{classname}.{name}" if classname else name
        warnings.append(
            f"JUnit attribute time={raw_time!r} of test case {label} is not a duration in "
            "seconds; counted as 0"
        )
    return Case(
        name=name,
        classname=classname,
        outcome=outcome,
        duration_s=seconds or 0.0,
        message=str(message),
        output=str(case.system_out or ""),
    )


def junit_cases(paths: Sequence[Path]) -> tuple[list[Case], list[str]]:
    """Test cases from JUnit XML files, read with junitparser, and warnings about what in them
    made no sense. A file or case that cannot be read becomes an error case; nothing in a
    unit's JUnit can take its worker down."""
    from junitparser import JUnitXml

    cases: list[Case] = []
    warnings: list[str] = []
    for path in paths:
        try:
            xml = JUnitXml.fromfile(str(path))
            suites = [xml] if xml._tag == "testsuite" else list(xml)
        except Exception as exc:
            cases.append(
                Case(name=path.name, outcome="error", message=f"unreadable JUnit XML: {exc}")
            )
            continue
        for suite in suites:
            try:
                entries = list(suite)
            except Exception as exc:
                cases.append(
                    Case(name=path.name, outcome="error", message=f"unreadable JUnit XML: {exc}")
                )
                continue
            for case in entries:
                try:
                    cases.append(_junit_case(case, warnings))
                except Exception as exc:
                    cases.append(
                        Case(
                            name=path.name,
                            outcome="error",
                            message=f"unreadable test case in JUnit XML: {exc!r}",
                        )
                    )
    return cases, warnings


class CommandRunner:
    """Runs one unit's command and turns what happened into a Result."""

    def __init__(self, settings: CommandSettings, common: WorkerSettings) -> None:
        self.settings = settings
        self.common = common
        self.current: subprocess.Popen[bytes] | None = None  # the unit's process, while it runs

    def stop_unit(self, signum: int) -> None:
        """Signal the running unit's process group (it runs in a session of its own, so
        signals to this worker's group do not reach it)."""
        process = self.current
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signum)

    def run(self, unit: Unit) -> Result:
        with tempfile.TemporaryDirectory(prefix="conveyor-unit-") as scratch:
            junit_dir = Path(scratch) / "junit"
            junit_dir.mkdir()
            values = {
                "unit": unit.name,
                "junit": str(junit_dir / "report.xml"),
                "junit_dir": str(junit_dir),
                "worker": os.environ.get("CONVEYOR_WORKER", ""),
            }
            argv = command_argv(self.settings.command, values, self.settings.shell)
            started = time.monotonic()
            output, outcome, message, ended = self._execute(argv, command_env(values))
            timed_out = ended == "timeout"
            duration = time.monotonic() - started
            cases, warnings = junit_cases(sorted(junit_dir.glob("*.xml")))
        if outcome == "failed" and cases and ended != "exit":
            # A unit whose process did not end on its own failed, whatever its cases say: it is
            # listed as a failed case of its own. (The API lists any other failed unit without
            # a failed case the same way.)
            cases.append(Case("", "failed", message=message, output=output[-OUTPUT_LIMIT:]))
        return Result(
            outcome=outcome,
            duration_s=duration,
            message=message,
            output=output[-OUTPUT_LIMIT:],
            cases=cases,
            timed_out=timed_out,
            warnings=warnings,
        )

    def _execute(self, argv: list[str], env: Mapping[str, str]) -> tuple[str, str, str, str]:
        """(output, outcome, message, how the process ended: "exit", "signal" or "timeout")."""
        timeout = self.common.test_timeout_s or None
        try:
            process = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except (OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else exc
            return "", "failed", f"could not start {argv[0]!r}: {why}", "exit"
        self.current = process
        try:
            raw, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raw, _ = process.communicate()
            text = raw.decode("utf-8", "replace")
            return (
                text,
                "failed",
                f"Timeout: the unit ran longer than {timeout:g} s (--test-timeout); "
                "its process group was killed.",
                "timeout",
            )
        text = raw.decode("utf-8", "replace")
        if process.returncode == 0:
            return text, "passed", "", "exit"
        how = (
            f"killed by signal {_signal_name(-process.returncode)}"
            if process.returncode < 0
            else f"exited with code {process.returncode}"
        )
        tail = "\n".join(text.splitlines()[-30:])
        ended = "signal" if process.returncode < 0 else "exit"
        return text, "failed", f"{shlex.join(argv)} {how}\n{tail}", ended


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def replay_commands(order: Sequence[str], command: str, shell: bool) -> int:
    """Command mode's replay: run the units one after another, in the recorded order, in this
    process's environment, and say how each ended. Exit 1 when any failed."""
    failed = 0
    for unit in order:
        with tempfile.TemporaryDirectory(prefix="conveyor-replay-") as scratch:
            values = {
                "unit": unit,
                "junit": str(Path(scratch) / "report.xml"),
                "junit_dir": scratch,
                "worker": os.environ.get("CONVEYOR_WORKER", ""),
            }
            code = subprocess.run(
                command_argv(command, values, shell),
                env=command_env(values),
                stdin=subprocess.DEVNULL,
                check=False,
            ).returncode
        failed += code != 0
        print(f"conveyor replay: {unit}: {'passed' if code == 0 else f'failed (exit {code})'}")
    print(f"conveyor replay: {len(order)} unit(s), {failed} failed")
    return 1 if failed else 0


def refuse(session: WorkerSession, unit: Unit) -> None:
    """A unit this worker did not collect came out of the queue: someone other than a conveyor
    worker of this build wrote it there. Its name would become a command line, so it is not
    run; it is logged, reported as an error of the build, and completed as an error so that
    the build can finish."""
    message = (
        f"worker {session.worker_id} was handed {unit.name!r}, which it did not collect; it was "
        "not run. A worker runs only units it collected itself: something other than a "
        "conveyor worker of this build wrote this one into the queue."
    )
    print(f"conveyor: {message}", file=sys.stderr, flush=True)
    session.queue.publish(EVENT_WORKER_ERROR, session.worker_id, {"message": message})
    session.complete(unit, Result("error", message=message))


def watch_over(runner: CommandRunner, common: WorkerSettings) -> None:
    """SIGTERM is forwarded to the running unit's process group before the worker ends, and
    a worker whose supervisor is gone (killed with SIGKILL) stops its unit and itself: an
    orphan would go on running units that nobody reports."""

    def terminate(signum: int, frame: object) -> None:
        runner.stop_unit(signal.SIGTERM)
        os._exit(128 + signal.SIGTERM)

    signal.signal(signal.SIGTERM, terminate)
    if not common.supervisor_pid:
        return

    def watch() -> None:
        while os.getppid() == common.supervisor_pid:
            time.sleep(PARENT_CHECK_S)
        runner.stop_unit(signal.SIGKILL)
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="conveyor-parent-watch", daemon=True).start()


def serving_order(units: list[str], session: WorkerSession, common: WorkerSettings) -> list[str]:
    """The leader's order: slowest first from timing history, as for pytest workers."""
    cache = SimpleNamespace(cache=DirectoryCache(Path(".pytest_cache")))
    store = history_store(common.history, cache, session.queue)
    durations = store.load() if store is not None else {}
    return order_units(
        units, durations, order=common.order, grouping="test",
        workers=common.worker_count, seed=common.seed,
    )  # fmt: skip


def run_units(
    session: WorkerSession,
    runner: CommandRunner,
    status: StatusFile,
    common: WorkerSettings,
    collected: set[str],
) -> None:
    """Run leased units until the build is exhausted; a failed unit may go back for a retry
    (never a timed-out one: it would hang its next worker too)."""
    for unit in session:
        if unit.name not in collected:
            refuse(session, unit)
            continue
        status.write(f"running {unit.name}")
        result = runner.run(unit)
        status.write("between tests")
        retry = result.failed and not result.timed_out and common.max_requeues > 0
        if retry and session.requeue(
            unit, result, max_requeues=common.max_requeues, tolerance=common.requeue_tolerance
        ):
            continue
        session.complete(unit, result)


def work(settings: CommandSettings, common: WorkerSettings) -> int:
    """The command worker's life: publish or check the units, then run leased units."""
    status = StatusFile(common.status_file)
    status.write("collecting")
    units = read_units(Path(settings.units_file))
    session = WorkerSession.connect(
        common.queue_url,
        build=common.build,
        worker_id=common.worker_id,
        lease_ttl_s=common.lease_ttl_s,
    )
    runner = CommandRunner(settings, common)
    watch_over(runner, common)
    try:
        if session.queue.manifest() is None:
            units = serving_order(units, session, common)
        session.populate(units, {"max_unit_crashes": common.max_unit_crashes, "mode": "command"})
        status.write("joined")
        run_units(session, runner, status, common, collected=set(units))
    except CollectionMismatch as exc:
        status.write("refused")
        session.queue.publish("worker_refused", common.worker_id, {"message": str(exc)})
        print(f"conveyor: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except BuildStateLost as exc:
        status.write("lost")
        print(f"conveyor: {exc}", file=sys.stderr)
        return EXIT_STATE_LOST
    finally:
        session.close()
    status.write("done")
    return EXIT_DONE


def main() -> int:
    """Entry point of a command worker process: `python -m conveyor.command`."""
    trace_configure()  # before pytest captures descriptor 2
    raw = take_settings()
    if raw is None:
        print(
            "conveyor command worker: no settings were handed to this process; command "
            "workers are started by `conveyor run --command`.",
            file=sys.stderr,
        )
        return 4
    data = json.loads(raw)
    common = WorkerSettings.from_env(json.dumps(data.pop("worker")))
    settings = CommandSettings(**data)
    setup_failure = run_worker_setup(common)
    if setup_failure is not None:
        return setup_failure
    try:
        return work(settings, common)
    except QueueError as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
