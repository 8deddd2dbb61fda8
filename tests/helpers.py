"""Running conveyor and plain pytest on the same generated suite, and comparing their verdicts."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

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
