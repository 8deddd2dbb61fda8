"""Collect once, fork the workers (`--fork-workers`): the process that forks them.

Without it every worker process imports pytest, the plugins and the suite and collects it, N
times over on N cores that have tests to run. With it the supervisor starts one pytest process
(the fork server) that configures and collects like a worker, then, instead of joining the
build, forks a worker per request the supervisor sends. A forked worker starts where the server
stopped: collected, in `pytest_runtestloop`, and goes on as a spawned worker would (joins,
compares its collection, runs what it is handed). A replacement for a crashed worker is forked
from the same untouched process, so it starts as fast as the first.

The channel is two pipes: the supervisor writes one JSON request a line, the server answers
`forked <slot> <incarnation> <pid>` and `exited <pid> <returncode>` lines (the workers are the
server's children, so only it can collect their exit status). The server ends when the
supervisor closes its end, or dies with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import sys
from dataclasses import dataclass

CHANNEL_ENV = "CONVEYOR_FORK_SERVER"  # "<requests fd>,<replies fd>", inherited from the supervisor
REAP_INTERVAL_S = 0.05


@dataclass(frozen=True)
class ForkRequest:
    """One worker to fork: its slot, and what makes it that worker rather than the server."""

    slot: str
    incarnation: int
    log_path: str  # the worker's stdout and stderr
    env: dict[str, str]  # variables that differ from the server's (settings file, worker id)

    def encode(self) -> bytes:
        return json.dumps(vars(self)).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> ForkRequest:
        fields = json.loads(line)
        return cls(
            slot=str(fields["slot"]),
            incarnation=int(fields["incarnation"]),
            log_path=str(fields["log_path"]),
            env={str(key): str(value) for key, value in fields["env"].items()},
        )


def channel_from_environment() -> tuple[int, int] | None:
    """The pipes this process serves fork requests on, if the supervisor made it a fork server."""
    raw = os.environ.pop(CHANNEL_ENV, None)
    if not raw:
        return None
    requests, _, replies = raw.partition(",")
    return int(requests), int(replies)


class ForkServer:
    """Forks a worker per request; `serve` returns only in a forked worker."""

    def __init__(self, requests_fd: int, replies_fd: int) -> None:
        self.requests_fd = requests_fd
        self.replies_fd = replies_fd
        self.children: set[int] = set()

    def serve(self) -> ForkRequest:
        """Serve until the supervisor closes the channel, then end this process (without
        pytest's session end: the server ran no tests and must write nothing). In a forked
        child this returns the request that made it."""
        pending = b""
        while True:
            ready, _, _ = select.select([self.requests_fd], [], [], REAP_INTERVAL_S)
            self._reap()
            if not ready:
                continue
            try:
                chunk = os.read(self.requests_fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = ForkRequest.decode(line)
                pid = self._fork()
                if pid == 0:
                    return request
                self._say(f"forked {request.slot} {request.incarnation} {pid}")
        self._reap()
        os._exit(0)

    def _fork(self) -> int:
        """Fork; 0 in the child. Buffered output is flushed first, or both would write it."""
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        pid = os.fork()
        if pid == 0:
            for fd in (self.requests_fd, self.replies_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)
            return 0
        self.children.add(pid)
        return pid

    def _reap(self) -> None:
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                self.children.discard(pid)
                continue
            if done:
                self.children.discard(pid)
                self._say(f"exited {pid} {os.waitstatus_to_exitcode(status)}")

    def _say(self, line: str) -> None:
        try:
            os.write(self.replies_fd, line.encode() + b"\n")
        except OSError:
            os._exit(0)  # the supervisor is gone; its workers notice their parent leaving
