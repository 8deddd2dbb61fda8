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
import selectors
import signal
import sys
import time
from dataclasses import dataclass

from conveyor.vocabulary import EXIT_ORPHANED

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
    """The pipes this process serves fork requests on, if the supervisor made it a fork server.
    They are made non-inheritable here: a process that a conftest starts must not hold the
    reply pipe open, or the supervisor would never see the server end."""
    raw = os.environ.pop(CHANNEL_ENV, None)
    if not raw:
        return None
    requests, _, replies = raw.partition(",")
    channel = int(requests), int(replies)
    for fd in channel:
        os.set_inheritable(fd, False)
    return channel


STOP = b'{"stop": true}\n'  # no more forks: the supervisor is shutting down


class ForkGate:
    """Holds a forked child until its parent opens the gate, and ends the child if the parent
    dies first: the pipe's write end then closes without the byte that opens it."""

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe()

    def wait(self) -> None:
        """In the child: return once the gate opens; end this process if it never will."""
        os.close(self._write_fd)
        try:
            opened = os.read(self._read_fd, 1) == b"1"
        except OSError:
            opened = False
        os.close(self._read_fd)
        if not opened:
            os._exit(EXIT_ORPHANED)

    def open(self) -> None:
        """In the parent: let the child go on."""
        with contextlib.suppress(OSError):
            os.write(self._write_fd, b"1")
        self.close()

    def close(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class ForkServer:
    """Forks a worker per request; `serve` returns only in a forked worker."""

    def __init__(self, requests_fd: int, replies_fd: int) -> None:
        self.requests_fd = requests_fd
        self.replies_fd = replies_fd
        self.children: set[int] = set()
        self.pid = os.getpid()  # a forked worker's parent, which it watches

    def serve(self, supervisor_pid: int | None) -> ForkRequest:
        """Serve until the supervisor closes the channel, then end this process once its
        workers have ended (without pytest's session end: the server ran no tests and must
        write nothing); end at once if the supervisor goes away. In a forked child this
        returns the request that made it."""
        # A conftest that ignores SIGCHLD would have the kernel reap the workers unseen.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        pending = b""
        stopped = False
        with selectors.DefaultSelector() as selector:
            selector.register(self.requests_fd, selectors.EVENT_READ)
            while True:
                ready = selector.select(REAP_INTERVAL_S)
                self._reap()
                self._leave_if_orphaned(supervisor_pid)
                if not ready:
                    continue
                try:
                    chunk = os.read(self.requests_fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                pending += chunk
                # A stop cancels the requests before it as well: they were sent while this
                # process collected, for a build that is over by now.
                stopped = stopped or STOP in pending
                while b"\n" in pending and not stopped:
                    line, pending = pending.split(b"\n", 1)
                    request = ForkRequest.decode(line)
                    if self._fork(request) == 0:
                        return request
        self._wait_for_children(supervisor_pid)
        os._exit(0)

    def _leave_if_orphaned(self, supervisor_pid: int | None) -> None:
        """The supervisor is gone (its channel closes as it dies, before this process is
        handed to another parent): so is this process, and with it, at their next heartbeat,
        the workers it forked (they watch their parent)."""
        if supervisor_pid and os.getppid() != supervisor_pid:
            os._exit(0)

    def _fork(self, request: ForkRequest) -> int:
        """Fork; 0 in the child. Buffered output is flushed first, or both would write it.
        The child waits at a gate until the supervisor has been told its pid: a server that
        died in between would otherwise leave a worker nobody knows of, running tests beside
        the replacement the supervisor starts for it."""
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        try:
            gate = ForkGate()
        except OSError as exc:  # out of descriptors: this worker only fails
            self._reply(f"failed {request.slot} {request.incarnation} {exc.errno or 0}")
            return -1
        try:
            pid = os.fork()
        except OSError as exc:  # out of memory or processes: this worker only fails
            gate.close()
            self._reply(f"failed {request.slot} {request.incarnation} {exc.errno or 0}")
            return -1
        if pid == 0:
            for fd in (self.requests_fd, self.replies_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)
            gate.wait()
            return 0
        self.children.add(pid)
        self._reply(f"forked {request.slot} {request.incarnation} {pid}")
        gate.open()
        return pid

    def _reap(self) -> None:
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else: its status is lost
                self.children.discard(pid)
                self._reply(f"exited {pid} {EXIT_ORPHANED}")
                continue
            if done:
                self.children.discard(pid)
                self._reply(f"exited {pid} {os.waitstatus_to_exitcode(status)}")

    def _wait_for_children(self, supervisor_pid: int | None) -> None:
        """The supervisor learns how each worker ended only from here; it kills this process
        if a worker outstays its shutdown."""
        while self.children:
            self._leave_if_orphaned(supervisor_pid)
            self._reap()
            time.sleep(REAP_INTERVAL_S)

    def _reply(self, line: str) -> None:
        try:
            os.write(self.replies_fd, line.encode() + b"\n")
        except OSError:
            os._exit(0)  # the supervisor is gone; its workers notice their parent leaving
