"""Why a worker process ended, as the supervisor works it out: the exit code or signal, the
test it was running (from its status file), a hard-timeout dump (conveyor's own, or
pytest-timeout's), and the tail of its log."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from conveyor.fork_client import ForkedProcess
from conveyor.queue.protocol import CrashCause
from conveyor.vocabulary import (
    EXIT_DONE,
    EXIT_REFUSED,
    EXIT_SETUP_FAILED,
    EXIT_STATE_LOST,
    TIMEOUT_HEADER,
)
from conveyor.worker_settings import StatusFile

STDERR_TAIL_LINES = 30


@dataclass
class WorkerProcess:
    """One slot (gw0, gw1, ...) and the process currently filling it."""

    name: str
    index: int
    process: subprocess.Popen[bytes] | ForkedProcess | None = None
    log_path: Path | None = None
    status_path: Path | None = None
    timeout_path: Path | None = None
    incarnation: int = 0
    state: str = "starting"  # starting | running | done | refused | lost | failed
    failures: list[str] = field(default_factory=list)

    def status(self) -> str:
        try:
            return StatusFile.read(self.status_path) if self.status_path else ""
        except OSError:
            return ""


@dataclass(frozen=True)
class WorkerFailure:
    """A worker that ended abnormally, as the controller reports it."""

    worker: str
    cause: str
    culprit: str | None
    output_tail: str
    during_startup: bool
    refused: bool = False
    # Its tests had all run and been stored when its pytest session failed as it ended.
    at_session_end: bool = False


def describe_exit(returncode: int) -> str:
    """'killed by signal SIGSEGV (11)' or 'exited with code 3'."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {name} ({-returncode})"
    if returncode == 0:
        return "exited with code 0 before finishing its work (os._exit(0) in a test?)"
    return f"exited with code {returncode}"


PYTEST_TIMEOUT_TITLE = " Timeout +"  # pytest-timeout's "+++ Timeout +++" title line


def pytest_timeout_dump(log_path: Path) -> tuple[str, str]:
    """pytest-timeout's thread method dumps every stack between two "+++ Timeout +++" title
    lines and ends the process: ("the --timeout of pytest-timeout", the dump) when the log
    ends that way, else ("", ""). Such a test is timed out, not a crash to retry."""
    text = tail(log_path, lines=100_000)
    lines = text.splitlines()
    titles = [
        i for i, line in enumerate(lines) if line.startswith("+") and PYTEST_TIMEOUT_TITLE in line
    ]
    if not titles:
        return "", ""
    return "pytest-timeout's --timeout", "\n".join(lines[titles[0] : titles[-1] + 1]).strip()


def _end_of(path: Path, size: int) -> bytes | None:
    """The last `size` bytes of a log, or None if it cannot be read."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - size))
            return handle.read()
    except OSError:
        return None


def tail(path: Path, lines: int = STDERR_TAIL_LINES) -> str:
    data = _end_of(path, 64 * 1024)
    if data is None:
        return ""
    text = data.decode("utf-8", "replace")
    all_lines = text.splitlines()
    window = range(len(all_lines) - 1, max(-1, len(all_lines) - 4 * lines), -1)
    # A crash dump from faulthandler starts with "Fatal Python error"; keep it whole.
    for index in window:
        if all_lines[index].startswith("Fatal Python error"):
            return "\n".join(all_lines[index:])
    # Nor is the last traceback cut in the middle (a tail starting at a "^^^^" line says
    # little), nor the chain of exceptions it ends ("The above exception was the direct
    # cause..."), whose first one says what went wrong, as long as they fit in the window.
    cut = len(all_lines) - lines
    start = None
    for index in window:
        if not all_lines[index].endswith("Traceback (most recent call last):"):
            continue
        if start is not None and not _chained_to(all_lines, index, start):
            break
        start = index
    if start is not None:
        return "\n".join(all_lines[min(start, max(cut, 0)) :])
    return "\n".join(all_lines[-lines:])


CHAINED = (
    "The above exception was the direct cause of the following exception:",
    "During handling of the above exception, another exception occurred:",
)


def _chained_to(lines: list[str], earlier: int, later: int) -> bool:
    """Whether the traceback starting at `earlier` is one that the traceback starting at
    `later` was chained to: the last non-blank line before `later` says so."""
    for index in range(later - 1, earlier, -1):
        text = lines[index].strip()
        if text:
            return text in CHAINED
    return False


# A worker writes this line to its log (descriptor 2) as its pytest session starts to end,
# after its tests: what follows it is what plain pytest would show after its summary.
SESSION_END = b"conveyor: this worker's pytest session is ending; what it writes now follows\n"
SESSION_END_READ = 1 << 20  # how much of a log's end is searched for the line


def written_as_session_ended(path: Path) -> str | None:
    """What a worker wrote to its log after it marked its session's end (conveyor's trace
    lines left out), or None if it never marked it (it crashed before, or never ran)."""
    data = _end_of(path, SESSION_END_READ)
    at = data.rfind(SESSION_END) if data is not None else -1
    if data is None or at < 0:
        return None
    text = data[at + len(SESSION_END) :].decode("utf-8", "replace")
    return "\n".join(
        line for line in text.splitlines() if not line.startswith("conveyor-trace ")
    ).strip("\n")


def may_still_report(status: str) -> bool:
    return status in ("", "collecting") or status.startswith("running ")


def timeout_dump(slot: WorkerProcess) -> tuple[str, str]:
    """("2 s (--test-timeout)", the stacks faulthandler dumped) when the test timeout
    fired, else ("", "")."""
    try:
        text = slot.timeout_path.read_text("utf-8", "replace") if slot.timeout_path else ""
    except OSError:
        return "", ""
    header, _, dump = text.partition("\n")
    if not header.startswith(TIMEOUT_HEADER) or "Timeout (" not in dump:
        return "", ""
    _, seconds, how = header.split(" ", 2)
    return f"{seconds} s ({how})", dump.strip()


def ended_for_good(slot: WorkerProcess, returncode: int) -> tuple[str, WorkerFailure] | None:
    """A worker that must not be restarted: refused (its collection differs), or the build is
    gone from the queue (a restart would re-create it and run everything again)."""
    log = slot.log_path
    if returncode == EXIT_REFUSED:
        cause = "refused to work: its collection differs from the build's"
        output = tail(log, 5) if log else ""
        return "refused", WorkerFailure(slot.name, cause, None, output, True, refused=True)
    if returncode == EXIT_STATE_LOST:
        cause = "stopped: the build's state is gone from the queue"
        return "lost", WorkerFailure(slot.name, cause, None, tail(log) if log else "", False)
    return None


# Signals that stop a worker from outside (conveyor stopping its workers, a CI job cancelled):
# the end of a session they cut short is not the session's own failure.
STOPPED = frozenset(-signum for signum in (signal.SIGTERM, signal.SIGKILL, signal.SIGINT))


def ended_after_its_tests(slot: WorkerProcess, returncode: int) -> WorkerFailure | None:
    """A worker that had finished its work ("done") and still exited with an error: its pytest
    session failed as it ended, after its results were stored (an exception as pytest
    unconfigured, such as an unraisable exception under `-W error`, or from a plugin's
    session finish, or a crash such as SIGSEGV in its teardown). Plain pytest ends such a
    run with that error, and with exit code 1, after its summary; the build must not end
    green instead."""
    if returncode == EXIT_DONE or returncode in STOPPED or slot.status() != "done":
        return None
    output = tail(slot.log_path) if slot.log_path else ""
    cause = describe_exit(returncode)
    return WorkerFailure(slot.name, cause, None, output, False, at_session_end=True)


@dataclass(frozen=True)
class Crash:
    """A worker that died: what it was running, why, and what it said last."""

    failure: WorkerFailure
    started: bool
    returncode: int
    timed_out: bool
    log_path: Path | None

    def cause(self, keep_log: bool) -> CrashCause:
        failure = self.failure
        return {
            "reason": f"worker {failure.worker} {failure.cause}",
            "returncode": self.returncode,
            "culprit": failure.culprit,
            "output_tail": failure.output_tail,
            "worker": failure.worker,
            "timeout": self.timed_out,
            "log": str(self.log_path) if keep_log else None,
            # A hung test is not retried: it would hang its next worker too.
            "final": self.timed_out,
        }


def diagnose_crash(slot: WorkerProcess, returncode: int) -> Crash:
    status = slot.status()
    culprit = status[len("running ") :] if status.startswith("running ") else None
    started = status not in ("", "collecting")
    cause = (
        "failed its --worker-setup"
        if returncode == EXIT_SETUP_FAILED
        else describe_exit(returncode)
    )
    output = tail(slot.log_path) if slot.log_path else ""
    timeout, timed_out = timeout_dump(slot)
    if not timed_out and slot.log_path is not None:
        timeout, timed_out = pytest_timeout_dump(slot.log_path)
    if timed_out and culprit is not None:
        cause = f"was stopped: the test ran longer than {timeout}"
        output = timed_out
    failure = WorkerFailure(slot.name, cause, culprit, output, during_startup=not started)
    return Crash(failure, started, returncode, bool(timed_out), slot.log_path)
