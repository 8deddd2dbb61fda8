"""What a supervisor hands each worker process, and what the worker hands back outside the
queue (its status file, a failed --worker-setup). Shared by pytest and command workers."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass

from conveyor.hooks import run_shell
from conveyor.queue.protocol import LEASE_TTL_S, MAX_UNIT_CRASHES
from conveyor.vocabulary import EXIT_SETUP_FAILED


@dataclass(frozen=True)
class WorkerSettings:
    """What the supervisor tells a worker process (through one environment variable)."""

    queue_url: str
    build: str
    worker_id: str
    worker_count: int
    lease_ttl_s: float = LEASE_TTL_S
    max_unit_crashes: int = MAX_UNIT_CRASHES
    status_file: str | None = None
    timeout_file: str | None = None
    supervisor_pid: int | None = None
    start_timeout_s: float = 600.0
    test_timeout_s: float | None = None  # None: automatic from history; 0: none
    max_requeues: int = 0
    requeue_tolerance: float = -1.0
    retry_on: tuple[str, ...] = ()
    order: str = "slowest"
    grouping: str = "module"
    seed: int = 0
    history: str = "cache"  # "cache", "redis:<suite>" or "off"
    build_ttl_s: float | None = None
    worker_setup: str | None = None
    check_only: bool = False  # compare collection and code with the build's, then leave
    own_controller: bool = True  # a controller on this machine publishes the plugins' input

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, raw: str) -> WorkerSettings:
        fields = json.loads(raw)
        fields["retry_on"] = tuple(fields.get("retry_on", ()))
        return cls(**fields)


class StatusFile:
    """A tiny file the supervisor reads after a crash to learn which test was running."""

    def __init__(self, path: str | None) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) if path else None

    def write(self, state: str) -> None:
        if self._fd is not None:
            data = state.encode("utf-8", "surrogatepass")
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)


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
