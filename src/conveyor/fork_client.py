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
from collections.abc import Mapping, Sequence
from pathlib import Path

from conveyor.fork_server import CHANNEL_ENV, ForkRequest
from conveyor.trace import event
from conveyor.vocabulary import EXIT_ORPHANED

trace = event("fork")


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
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                self.mark_ended(EXIT_ORPHANED)
            except PermissionError:
                pass
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self._orphaned:
            while self.poll() is None and not self._ended.wait(0.05):
                pass
        if not self._ended.wait(timeout) or self.returncode is None:
            raise subprocess.TimeoutExpired(f"forked worker {self.request.slot}", timeout or 0.0)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.pid is not None and self.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signum)

    def mark_forked(self, pid: int) -> None:
        self.pid = pid

    def mark_orphaned(self) -> None:
        self._orphaned = True

    def mark_ended(self, returncode: int) -> None:
        self.returncode = returncode
        self._ended.set()


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
        self._reader = threading.Thread(
            target=self._read, name="conveyor-fork-replies", daemon=True
        )
        self._reader.start()
        trace("fork server started, pid=%d", self.process.pid)

    @property
    def pid(self) -> int:
        return self.process.pid

    def fork(self, request: ForkRequest) -> ForkedProcess:
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

    def close(self) -> None:
        """No more workers: the server ends once it has seen the channel close."""
        with self._lock:
            if self._requests is not None:
                with contextlib.suppress(OSError):
                    os.close(self._requests)
                self._requests = None

    def terminate(self) -> None:
        self.close()
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGTERM)

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
        with os.fdopen(self._replies, "rb") as replies:
            for line in replies:
                self._on_reply(line.decode(errors="replace").split())
        returncode = self.process.wait()
        trace("fork server ended with %d", returncode)
        with self._lock:
            self._gone = True
            waiting = list(self._waiting.values())
            self._waiting.clear()
            forked = list(self._forked.values())
        for process in waiting:
            self._never_forked(process)
        for process in forked:
            # Still running, or ended unseen: its parent is gone and so is its exit status.
            # It leaves at its next heartbeat (its parent went away); poll() sees it go.
            process.mark_orphaned()

    def _on_reply(self, words: list[str]) -> None:
        with self._lock:
            if len(words) == 4 and words[0] == "forked":
                process = self._waiting.pop((words[1], int(words[2])), None)
                if process is not None:
                    process.mark_forked(int(words[3]))
                    self._forked[int(words[3])] = process
                    trace("forked %s pid=%s", words[1], words[3])
            elif len(words) == 3 and words[0] == "exited":
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
