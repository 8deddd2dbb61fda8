"""The supervisor's side of `--fork-workers`: start the fork server, ask it for workers, and
see each forked worker through the few `subprocess.Popen` methods the supervisor uses.

A forked worker is the server's child, not the supervisor's: its pid and its exit status come
back over the server's reply pipe (see conveyor.fork_server). When the server ends before it
forked a requested worker (its conftest failed to import, its collection crashed), that worker
ends with the server's exit code and the server's output in its log, so the supervisor reports
it as it reports a spawned worker that failed the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from conveyor.fork_server import CHANNEL_ENV, STOP, ForkRequest
from conveyor.trace import event
from conveyor.vocabulary import EXIT_ORPHANED

trace = event("fork")
ORPHAN_POLL_S = 0.05


class ForkedProcess:
    """A worker the fork server forked (or will fork), as the supervisor watches it."""

    def __init__(self, request: ForkRequest) -> None:
        self.request = request
        self.pid: int | None = None
        self.returncode: int | None = None
        self._orphaned = False
        self._ended = threading.Event()

    def poll(self) -> int | None:
        if self.returncode is None and self._orphaned and self.pid is not None:
            ended = _orphan_ended(self.pid)
            if ended is not None:
                self.mark_ended(ended)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (returncode := self.poll()) is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"forked worker {self.request.slot}", timeout or 0)
            self._ended.wait(ORPHAN_POLL_S if left is None else min(left, ORPHAN_POLL_S))
        return returncode

    @property
    def orphaned(self) -> bool:
        """Its fork server ended first: its exit status is lost, and nothing replaces it."""
        return self._orphaned

    def send_signal(self, signum: int) -> None:
        if self.pid is not None and self.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signum)

    # The fork server's replies, as the reader thread receives them.

    def mark_forked(self, pid: int) -> None:
        self.pid = pid

    def mark_orphaned(self) -> None:
        self._orphaned = True

    def mark_ended(self, returncode: int) -> None:
        self.returncode = returncode
        self._ended.set()


def _orphan_ended(pid: int) -> int | None:
    """How a worker whose fork server is gone ended: None while it runs. It was adopted by
    init, or by this process if it is the container's first: then it is reaped here and its
    status is real; else a zombie or a missing process counts as having left as an orphan."""
    with contextlib.suppress(ChildProcessError):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return EXIT_ORPHANED
        except PermissionError:  # somebody else's process now: ours is gone
            return EXIT_ORPHANED
        return None
    return EXIT_ORPHANED if state in ("Z", "X") else None


class ForkServerProcess:
    """The fork server, started once per supervisor; `fork` asks it for one more worker."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.log_path = log_path
        requests_read, requests_write = os.pipe()
        replies_read, replies_write = os.pipe()
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**env, CHANNEL_ENV: f"{requests_read},{replies_write}"},
                pass_fds=(requests_read, replies_write),
                start_new_session=True,
            )
        os.close(requests_read)
        os.close(replies_write)
        self._requests: int | None = requests_write
        self._replies = replies_read
        self._lock = threading.Lock()
        self._waiting: dict[tuple[str, int], ForkedProcess] = {}
        self._forked: dict[int, ForkedProcess] = {}
        self._gone = False
        self.forked_any = False  # once it has, it got past collection
        self._cancelled: set[tuple[str, int]] = set()  # requests nobody waits for any more
        self._reader = threading.Thread(
            target=self._read, name="conveyor-fork-replies", daemon=True
        )
        self._reader.start()
        trace("fork server started, pid=%d", self.process.pid)

    @property
    def pid(self) -> int:
        return self.process.pid

    def fork(self, request: ForkRequest) -> ForkedProcess:
        """The worker `request` asks for, forked when the server gets to it (after it has
        collected). Already ended if the server is gone."""
        forked = ForkedProcess(request)
        with self._lock:
            if self._gone or self._requests is None:
                self._never_forked(forked)
                return forked
            self._waiting[(request.slot, request.incarnation)] = forked
            # If the server is gone, the reader settles the waiting ones.
            with contextlib.suppress(OSError):
                os.write(self._requests, request.encode())
        return forked

    def stop_forking(self) -> None:
        """Shutting down: what was asked for and not forked yet never will be (the server
        drops the requests still in the pipe), so nobody waits for those workers."""
        with self._lock:
            if self._requests is not None:
                with contextlib.suppress(OSError):
                    os.write(self._requests, STOP)
            waiting = list(self._waiting.values())
            self._cancelled.update(self._waiting)
            self._waiting.clear()
        for process in waiting:
            process.mark_ended(EXIT_ORPHANED)

    @property
    def gone(self) -> bool:
        """The server has ended: no worker can be forked any more."""
        return self._gone

    def close(self) -> None:
        """No more workers: the server ends once it has seen the channel close."""
        with self._lock:
            if self._requests is not None:
                with contextlib.suppress(OSError):
                    os.close(self._requests)
                self._requests = None

    def wait(self, timeout: float) -> None:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._reader.join(timeout)

    # -- the reply pipe ---------------------------------------------------------------------

    def _read(self) -> None:
        try:
            with os.fdopen(self._replies, "rb") as replies:
                for line in replies:
                    self._on_reply(line.decode(errors="replace").split())
        finally:
            self._settle()

    def _settle(self) -> None:
        """The server has ended: settle every worker still waiting on it."""
        returncode = self.process.wait()
        trace("fork server ended with %d", returncode)
        with self._lock:
            self._gone = True
            waiting = list(self._waiting.values())
            self._waiting.clear()
            forked = list(self._forked.values())
            self._forked.clear()
        for process in waiting:
            self._never_forked(process)
        for process in forked:
            # Still running, or ended unseen: its parent is gone and so is its exit status.
            # It leaves at its next heartbeat (its parent went away); poll() sees it go.
            process.mark_orphaned()

    def _on_reply(self, words: list[str]) -> None:
        if len(words) < 3 or not all(word.lstrip("-").isdigit() for word in words[2:]):
            trace("ignored a malformed reply from the fork server: %r", words)
            return
        with self._lock:
            if words[0] == "forked" and len(words) == 4:
                if (words[1], int(words[2])) in self._cancelled:
                    # Forked as the stop was on its way: it must not run anything.
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(int(words[3]), signal.SIGKILL)
                    return
                process = self._waiting.pop((words[1], int(words[2])), None)
                if process is not None:
                    process.mark_forked(int(words[3]))
                    self.forked_any = True
                    self._forked[int(words[3])] = process
                    trace("forked %s pid=%s", words[1], words[3])
            elif words[0] == "failed" and len(words) == 4:
                process = self._waiting.pop((words[1], int(words[2])), None)
                if process is not None:
                    _append(
                        process.request.log_path,
                        f"conveyor: the fork server could not fork this worker: "
                        f"{os.strerror(int(words[3]))}\n",
                    )
                    process.mark_ended(EXIT_ORPHANED)
            elif words[0] == "exited" and len(words) == 3:
                ended = self._forked.pop(int(words[1]), None)
                if ended is not None:
                    ended.mark_ended(int(words[2]))

    def _never_forked(self, process: ForkedProcess) -> None:
        """The server ended before forking this worker: the worker "fails" as the server did,
        with the server's output as its own, so the report says why."""
        code = self.process.poll()
        with contextlib.suppress(OSError):
            shutil.copyfile(self.log_path, process.request.log_path)
        process.mark_ended(code if code else EXIT_ORPHANED)


def _append(path: str, text: str) -> None:
    with contextlib.suppress(OSError), open(path, "a", encoding="utf-8") as log:
        log.write(text)
