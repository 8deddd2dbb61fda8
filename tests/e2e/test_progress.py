"""The live status line: on a terminal only, never in CI logs or files; live failures."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import junit_outcomes

SUITE = "import time\n\n" + "\n".join(
    f"def test_{i}():\n    time.sleep(0.05)\n    assert {i} != 7\n" for i in range(12)
)


def run_on_a_terminal(cwd: Path, *args: str, ci: bool = False) -> tuple[int, str]:
    """Run conveyor with a pseudo-terminal as stdout, as a person at a terminal would."""
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"TERM": "xterm", "COLUMNS": "120"}
    if ci:
        env["CI"] = "true"
    process = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "run", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        env=env,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return process.wait(timeout=120), b"".join(chunks).decode("utf-8", "replace")


def test_status_line_on_a_terminal_and_files_unchanged(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_live=SUITE)
    code, output = run_on_a_terminal(
        pytester.path, "-n", "2", "-p", "no:cacheprovider", "--junitxml=live.xml"
    )
    assert code == 1
    assert "worker(s) alive" in output and "/12 tests" in output
    assert "1 failed, 11 passed" in output
    outcomes = junit_outcomes(pytester.path / "live.xml")
    assert len(outcomes) == 12 and outcomes[("test_live", "test_7")] == [("failure",)]


def test_no_status_line_in_ci_or_without_a_terminal(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_live=SUITE)
    monkeypatch.setenv("CI", "true")
    result = pytester.run(
        sys.executable, "-m", "conveyor", "run", "-n", "2", "-q", "-p", "no:cacheprovider",
        "--junitxml=ci.xml",
    )  # fmt: skip
    assert result.ret == 1
    text = result.stdout.str()
    assert "worker(s) alive" not in text and "\x1b[" not in text
    assert result.outlines[0].startswith(".") or result.outlines[0].startswith("F")
    assert result.outlines[-1].startswith("1 failed, 11 passed")
    assert len(junit_outcomes(pytester.path / "ci.xml")) == 12
    # On a terminal too, CI=true turns it off.
    code, output = run_on_a_terminal(pytester.path, "-n", "2", "-p", "no:cacheprovider", ci=True)
    assert code == 1
    assert "worker(s) alive" not in output and "1 failed, 11 passed" in output


def test_failures_shown_as_they_happen(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_live=SUITE)
    result = pytester.run(
        sys.executable, "-m", "conveyor", "run", "-n", "2", "--show-failures-live",
        "-p", "no:cacheprovider",
    )  # fmt: skip
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        ["FAILED test_live.py::test_7 - assert 7 != 7", "*= FAILURES =*", "*1 failed, 11 passed*"]
    )


# A plugin that prints as results come (as pytest-instafail does), from its own hook and from a
# subclass of the terminal reporter that stands in for pytest's.
PRINTS_AS_RESULTS_COME = """
import pytest
from _pytest.terminal import TerminalReporter


class InstantReporter(TerminalReporter):
    def pytest_runtest_logreport(self, report):
        super().pytest_runtest_logreport(report)
        if report.failed:
            self.write_line(f"INSTANT FAILURE {report.nodeid}")


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    standard = config.pluginmanager.getplugin("terminalreporter")
    instant = InstantReporter(standard.config)
    config.pluginmanager.unregister(standard)
    config.pluginmanager.register(instant, "terminalreporter")


def pytest_runtest_logreport(report):
    if report.when == "call":
        reporter = report_config.pluginmanager.getplugin("terminalreporter")
        reporter.write_line(f"HOOK SAW {report.nodeid}")


def pytest_sessionstart(session):
    global report_config
    report_config = session.config
"""


def test_what_plugins_print_during_the_build_is_shown_above_the_status_line(
    pytester: pytest.Pytester,
) -> None:
    """The status line stands in for pytest's row of letters only: a plugin's own lines used
    to be dropped with the letters on a terminal (pytest-instafail and pytest-sugar showed no
    traceback at all)."""
    pytester.makepyfile(test_live=SUITE)
    pytester.makeconftest(PRINTS_AS_RESULTS_COME)
    code, output = run_on_a_terminal(pytester.path, "-n", "2", "-p", "no:cacheprovider")
    assert code == 1
    assert "worker(s) alive" in output
    assert "INSTANT FAILURE test_live.py::test_7" in output
    assert all(f"HOOK SAW test_live.py::test_{i}" in output for i in range(12))
    assert "test_live.py ." not in output  # the row of letters is still the status line's
    assert "1 failed, 11 passed" in output
