"""A pytest or conveyor run that a test starts inside a conveyor worker behaves as if started
from a shell: it is not a worker of the outer build (the project's own suite does this)."""

from __future__ import annotations

import pytest
from helpers import run_conveyor

OUTER = """
import os
import subprocess
import sys
from pathlib import Path

INNER = Path(__file__).parent / "inner"


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", *args, "-p", "no:cacheprovider", str(INNER)],
        capture_output=True, text=True, timeout=120,
    )


def test_outer_is_a_worker():
    assert os.environ["PYTEST_XDIST_WORKER"].startswith("gw")


def test_nested_pytest_runs_as_from_a_shell():
    result = run("pytest", "-q")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "INNER worker_id=master xdist=None conveyor=None" in result.stdout, result.stdout


def test_nested_conveyor_runs_as_from_a_shell():
    result = run("conveyor", "run", "-n", "1", "-q")
    assert result.returncode == 0, result.stdout + result.stderr
    # The inner controller is no worker of ours: its terminal summary runs its conftest.
    assert "INNER-REPORT" in result.stdout, result.stdout
"""

INNER_CONFTEST = """
import os


def pytest_terminal_summary(terminalreporter):
    if os.environ.get("CONVEYOR_WORKER") is None:
        terminalreporter.write_line("INNER-REPORT")
"""

INNER_TEST = """
import os


def test_identity(worker_id):
    print(
        f"INNER worker_id={worker_id} xdist={os.environ.get('PYTEST_XDIST_WORKER')} "
        f"conveyor={os.environ.get('CONVEYOR_WORKER')}"
    )
"""


def test_runs_started_by_tests_do_not_inherit_the_workers_identity(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_outer=OUTER)
    inner = pytester.mkdir("inner")
    (inner / "conftest.py").write_text(INNER_CONFTEST)
    (inner / "test_inner.py").write_text(INNER_TEST)
    pytester.makeini("[pytest]\naddopts = -s\n")
    result = run_conveyor(pytester, "-n", "2", "test_outer.py")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*3 passed*"])


def test_worker_settings_never_reach_the_environment(pytester: pytest.Pytester) -> None:
    """The queue URL (password included) reaches workers through a file only their user can
    read, removed once read; /proc/<pid>/environ shows no settings."""
    pytester.makepyfile(
        test_env="""
        import os

        def test_environment_holds_no_settings():
            environ = open(f"/proc/{os.getpid()}/environ", "rb").read().decode()
            assert "s3cr3t" not in environ
            assert "CONVEYOR_WORKER_SETTINGS" not in os.environ
        """
    )
    queue = f"sqlite://{pytester.path / 'q.db'}?password=s3cr3t"
    result = run_conveyor(pytester, "-n", "1", "--queue", queue, "--build", "S1")
    assert result.ret in (0, 4), result.stdout.str() + result.stderr.str()
    if result.ret == 4:  # the URL form is refused; use a plain one to check the handover
        result = run_conveyor(pytester, "-n", "1", "--queue", f"sqlite://{pytester.path}/s3cr3t.db")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
