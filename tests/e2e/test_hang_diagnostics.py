"""A test that finds conveyor hung fails with where it hung: the processes' kernel wait
channels and the controller's Python stacks (pytest's faulthandler on SIGABRT), and leaves no
process behind. One hang in a stress run was seen once with nothing to go on."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import communicate_or_dump_stacks


def test_a_hung_run_fails_with_the_stacks_of_its_processes(pytester: pytest.Pytester) -> None:
    pid_file = pytester.path / "worker.pid"
    pytester.makepyfile(
        test_hang=f"""
        import os, pathlib, time

        def test_a():
            pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))
            time.sleep(120)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "run", "-n", "1", "-p", "no:cacheprovider"],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60  # the test hangs from its start, however slow that is
    while not pid_file.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(pytest.fail.Exception) as failed:
        communicate_or_dump_stacks(process, 5)
    message = str(failed.value)
    assert "conveyor.worker" in message  # every process, with what it waits in
    assert "Current thread" in message and "pytest_runtestloop" in message  # the stacks
    assert process.returncode is not None
    worker = int(pid_file.read_text())
    deadline = time.monotonic() + 10  # SIGKILL is delivered, not waited for
    while not _gone(worker):
        assert time.monotonic() < deadline, f"worker {worker} outlived the hung run"
        time.sleep(0.05)


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")
