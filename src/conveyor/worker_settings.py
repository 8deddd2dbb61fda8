"""What a supervisor hands each worker process, and what the worker hands back outside the
queue (its status file, a failed --worker-setup). Shared by pytest and command workers."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from conveyor.hooks import run_shell
from conveyor.option_kinds import declared
from conveyor.options import WorkerOptions
from conveyor.vocabulary import EXIT_SETUP_FAILED


class WorkerSettings(WorkerOptions):
    """What the supervisor tells a worker process (through a 0600 file): the build, who the
    worker is, and every option declared on `WorkerOptions` (conveyor.options), so that an
    option workers read is declared in that one place and travels by itself."""

    def __init__(
        self,
        queue_url: str,
        build: str,
        worker_id: str,
        worker_count: int,
        *,
        status_file: str | None = None,
        timeout_file: str | None = None,
        supervisor_pid: int | None = None,
        history: str = "cache",  # "cache", "redis:<suite>" or "off"
        check_only: bool = False,  # compare collection and code with the build's, then leave
        own_controller: bool = True,  # a controller on this machine publishes plugins' input
        machine_run_folder: str | None = None,  # workers alone: their machine's run folder
        fork_server: bool = False,  # collect, then fork the workers (conveyor.fork_server)
        networked_queue: bool = False,  # other machines may join (conveyor.fleet_size)
        ci_machines: int | None = None,  # the CI's parallel jobs of this build, where it says
        **options: Any,
    ) -> None:
        self.queue_url = queue_url
        self.build = build
        self.worker_id = worker_id
        self.worker_count = worker_count
        self.status_file = status_file
        self.timeout_file = timeout_file
        self.supervisor_pid = supervisor_pid
        self.history = history
        self.check_only = check_only
        self.own_controller = own_controller
        self.machine_run_folder = machine_run_folder
        self.fork_server = fork_server
        self.networked_queue = networked_queue
        self.ci_machines = ci_machines
        super().__init__(**options)

    @classmethod
    def for_build(cls, options: WorkerOptions, **own: Any) -> WorkerSettings:
        """The settings of a build's workers: `own` fields plus the workers' options."""
        return cls(**own, **{o.field: getattr(options, o.field) for o in declared(WorkerOptions)})

    def replace(self, **changes: Any) -> WorkerSettings:
        return WorkerSettings(**{**self.as_dict(), **changes})

    def as_dict(self) -> dict[str, Any]:
        return {**vars(self), **self.option_values()}

    def to_env(self) -> str:
        return json.dumps(self.as_dict())

    @classmethod
    def from_env(cls, raw: str) -> WorkerSettings:
        fields = json.loads(raw)
        for option in declared(WorkerOptions):  # JSON has lists, not tuples
            if isinstance(fields.get(option.field), list):
                fields[option.field] = tuple(fields[option.field])
        return cls(**fields)


class StatusFile:
    """A tiny file the supervisor reads after a crash to learn which test was running.

    Written twice per test, so one write is one system call: a shorter state is padded with
    NULs over the longer one before it (the reader strips them) instead of truncating first."""

    PAD = b"\0"

    def __init__(self, path: str | None) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) if path else None
        self._written = 0

    def write(self, state: str) -> None:
        if self._fd is not None:
            data = state.encode("utf-8", "surrogatepass")
            os.pwrite(self._fd, data.ljust(self._written, self.PAD), 0)
            self._written = max(self._written, len(data))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @classmethod
    def read(cls, path: Path) -> str:
        return path.read_bytes().rstrip(cls.PAD).decode("utf-8", "replace")


def run_worker_setup(settings: WorkerSettings) -> int | None:
    """--worker-setup: once per worker process, before it collects, with its id in the
    environment (CONVEYOR_WORKER). None when it succeeded (or there is none), else the exit
    code for the process; its output goes to the worker's log, which the report shows."""
    if not settings.worker_setup:
        return None
    code, output = run_shell(settings.worker_setup)
    if code == 0:
        return None
    sys.stderr.write(output)
    sys.stderr.write(f"conveyor: --worker-setup exited with code {code}\n")
    sys.stderr.flush()
    return EXIT_SETUP_FAILED
