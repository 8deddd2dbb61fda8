"""Running conveyor and plain pytest on the same generated suite, and comparing their verdicts."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.fleet import descendants

OUTCOME_TAGS = ("failure", "error", "skipped")


def junit_outcomes(path: Path) -> dict[tuple[str, str], list[tuple[str, ...]]]:
    """(classname, name) -> the outcome elements of its test case(s). pytest itself writes
    two <testcase> elements for a test that fails and then errors in teardown."""
    outcomes: dict[tuple[str, str], list[tuple[str, ...]]] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        key = (case.get("classname", ""), case.get("name", ""))
        tags = tuple(sorted(child.tag for child in case if child.tag in OUTCOME_TAGS))
        outcomes.setdefault(key, []).append(tags or ("passed",))
    return {key: sorted(value) for key, value in outcomes.items()}


def junit_totals(path: Path) -> dict[str, str]:
    suite = ET.parse(path).getroot().find("testsuite")
    assert suite is not None
    return {key: suite.get(key, "") for key in ("tests", "errors", "failures", "skipped")}


def run_plain(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.run(
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args, timeout=300
    )


def run_conveyor(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.run(
        sys.executable, "-m", "conveyor", "run", "-p", "no:cacheprovider", *args, timeout=300
    )


SUMMARY_WORDS = ("passed", "failed", "error", "skipped", "deselected", "no tests ran", "xfailed")


def summary_line(result: pytest.RunResult) -> str | None:
    """The final '== 1 failed, 2 passed in 0.12s ==' line without the time, if any."""
    for line in reversed(result.outlines):
        if " in " in line and any(word in line for word in SUMMARY_WORDS):
            return line.strip("= ").rsplit(" in ", 1)[0]
    return None


def assert_same_verdict(
    pytester: pytest.Pytester, *args: str, workers: int = 3
) -> tuple[pytest.RunResult, pytest.RunResult]:
    """Plain pytest and conveyor agree on every test's outcome, the totals and the exit code."""
    plain = run_plain(pytester, "--junitxml=plain.xml", *args)
    ours = run_conveyor(pytester, "-n", str(workers), "--junitxml=conveyor.xml", *args)
    assert ours.ret == plain.ret, ours.stdout.str() + ours.stderr.str()
    if (pytester.path / "plain.xml").exists():
        assert junit_outcomes(pytester.path / "conveyor.xml") == junit_outcomes(
            pytester.path / "plain.xml"
        )
        assert junit_totals(pytester.path / "conveyor.xml") == junit_totals(
            pytester.path / "plain.xml"
        )
    assert summary_line(ours) == summary_line(plain)
    return plain, ours


def conveyor_process(
    cwd: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m conveyor ARGS -p no:cacheprovider` in `cwd`, to its end, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args, "-p", "no:cacheprovider"],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def conveyor_popen(cwd: Path, *args: str, new_session: bool = False) -> subprocess.Popen[str]:
    """`python -m conveyor ARGS` in `cwd`, started and left running: stdout piped, stderr
    folded in (read it with communicate_or_dump_stacks). A new session keeps a signal sent to
    the test's process group away from it."""
    return subprocess.Popen(
        [sys.executable, "-m", "conveyor", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=new_session,
    )


def wait_until(condition: Callable[[], object], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def process_alive(pid: int) -> bool:
    """Running: a zombie (ended, not yet reaped) or a vanished process is not."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def communicate_or_dump_stacks(process: subprocess.Popen[str], timeout: float) -> str:
    """The output of a conveyor process started with stdout=PIPE (stderr folded in), once it
    ends. One still running after `timeout` seconds is hung: the test fails with what every
    process of it waits in (the kernel's wait channel) and the controller's Python stacks,
    printed by pytest's faulthandler on SIGABRT, so that a hang seen once says where it was.
    Its workers are stopped first (a dead one would be replaced) and killed at the end."""
    try:
        output, _ = process.communicate(timeout=timeout)
        return str(output)
    except subprocess.TimeoutExpired:
        pass
    workers = descendants(process.pid)
    states = "\n".join(_process_state(pid) for pid in [process.pid, *workers])
    _signal_all(workers, signal.SIGSTOP)
    _signal_all([process.pid], signal.SIGABRT)
    try:
        output, _ = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        _signal_all([process.pid], signal.SIGKILL)
        output, _ = process.communicate()
    finally:
        _signal_all(workers, signal.SIGKILL)
    pytest.fail(
        f"hung for {timeout} s; its processes then:\n{states}\nand its output, with the "
        f"controller's stacks:\n{output}",
        pytrace=False,
    )


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _process_state(pid: int) -> str:
    """pid, state, what the kernel says it waits in, and its command line."""
    proc = Path("/proc", str(pid))
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        wchan = (proc / "wchan").read_text().strip() or "-"
        argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return f"{pid}: gone"
    return f"{pid} {state} waiting in {wchan}: {argv[:200]}"
