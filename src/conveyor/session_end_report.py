"""What the workers wrote as their pytest sessions ended, after their tests, and which of
those sessions failed as they ended: said once every worker of this machine has ended.

Plain pytest writes what comes as its session ends after its summary: most often a
`PytestUnraisableExceptionWarning`, the exception a finalizer raised when pytest collected
garbage at the end (a leaked resource), and under `-W error` that exception ends the run
with exit code 1. A worker writes it to its log, after the line that marks its session's end
(`conveyor.output_relay.SessionEndMark`); the supervisor reads it from there
(`Supervisor.session_end_outputs`) and notes the workers that said they were done and still
exited with an error (`Supervisor.session_end_failures`).
"""

from __future__ import annotations

import sys

from conveyor.supervisor import Supervisor
from conveyor.worker_exit import WorkerFailure


def say_session_ends(supervisor: Supervisor, prefix: str) -> list[WorkerFailure]:
    """Write, to stderr, what each worker wrote as its session ended (the same words from
    several workers once) and which sessions failed as they ended; those failures."""
    written = supervisor.session_end_outputs()
    failures = supervisor.session_end_failures()
    for failure in failures:
        output = written.pop(failure.worker, None) or failure.output_tail
        print(
            f"{prefix} worker {failure.worker}'s pytest session failed as it ended, after its "
            f"tests had run ({failure.cause}); a plain pytest run ends with this error too. "
            + ("What it wrote as it ended:" if output else "It wrote nothing."),
            file=sys.stderr,
        )
        if output:
            print(output, file=sys.stderr)
    by_text: dict[str, list[str]] = {}
    for worker, text in written.items():
        by_text.setdefault(text, []).append(worker)
    for text, workers in by_text.items():
        who = f"worker {workers[0]}" if len(workers) == 1 else f"workers {', '.join(workers)}"
        print(f"{prefix} {who} wrote this as its pytest session ended:", file=sys.stderr)
        print(text, file=sys.stderr)
    return failures
