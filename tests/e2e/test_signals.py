"""Signals and cleanup: a stopped or orphaned conveyor leaves no process running tests and no
lease held."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
from helpers import (
    communicate_or_dump_stacks,
    conveyor_popen,
    process_alive,
    run_conveyor,
    wait_until,
)

from conveyor.queue import open_queue


def test_sigterm_to_conveyor_worker_stops_its_workers_and_returns_their_tests(
    pytester: pytest.Pytester,
) -> None:
    pids = pytester.mkdir("pids")
    pytester.makeconftest(
        f"""
        import os, pathlib

        def pytest_configure(config):
            if hasattr(config, "workerinput"):
                pathlib.Path({str(pids)!r}, str(os.getpid())).write_text("")
        """
    )
    pytester.makepyfile(test_slow="import time\n\ndef test_a():\n    time.sleep(60)\n")
    url = f"sqlite://{pytester.path / 'q.db'}"
    process = conveyor_popen(
        pytester.path, "worker", "-n", "1", "--queue", url, "--build", "W1", new_session=True
    )
    queue = open_queue(url, "W1")
    wait_until(lambda: queue.status().leased == 1, "the worker never took its test")
    workers = [int(p.name) for p in pids.iterdir()]
    process.send_signal(signal.SIGTERM)
    output = communicate_or_dump_stacks(process, 60)
    assert process.returncode == 2, output
    assert "went back to the queue" in output
    assert workers and not any(process_alive(pid) for pid in workers)
    status = queue.status()
    assert status.leased == 0 and status.pending == 1  # back at once, not after the lease
    queue.close()


def test_a_command_worker_whose_controller_is_killed_stops_at_once(
    pytester: pytest.Pytester,
) -> None:
    ran = pytester.mkdir("ran")
    script = pytester.path / "unit.py"
    script.write_text(
        "import os, sys, time\n"
        f"open(os.path.join({str(ran)!r}, sys.argv[1]), 'w').write(str(os.getpid()))\n"
        "time.sleep(2)\n"
    )
    units = "\n".join(f"u{i}" for i in range(20)) + "\n"
    (pytester.path / "units.txt").write_text(units)
    controller = conveyor_popen(
        pytester.path, "run", "-n", "1", "--command", f"{sys.executable} {script} {{unit}}",
        "--units-from", "units.txt", new_session=True,
    )  # fmt: skip
    wait_until(lambda: any(ran.iterdir()), "no unit started")
    os.killpg(controller.pid, 0)  # still there
    controller.kill()  # SIGKILL: no handler runs in the controller
    controller.communicate(timeout=60)
    time.sleep(1.5)
    started = sorted(p.name for p in ran.iterdir())
    unit_pids = [int(p.read_text()) for p in ran.iterdir() if p.read_text()]
    assert not any(process_alive(pid) for pid in unit_pids), started
    time.sleep(2.5)
    assert sorted(p.name for p in ran.iterdir()) == started  # nothing ran after the kill


# Sends the controller (never a worker) a signal from inside a finalizer, where CPython prints
# "Exception ignored" for the KeyboardInterrupt it raises and drops it: the way an interrupt
# that lands in importlib's module-lock callback, say, is lost.
SWALLOWED_INTERRUPT = """
import os, signal

class SendsTheSignalFromAFinalizer:
    def __del__(self):
        os.kill(os.getpid(), signal.{signal})
        for _ in range(100_000):
            pass  # the handler runs here, inside __del__

sent = []

def _in_the_controller(config):
    if not hasattr(config, "workerinput") and not sent:
        sent.append(True)
        SendsTheSignalFromAFinalizer()

def pytest_configure(config):
    if {hook!r} == "pytest_configure":
        _in_the_controller(config)

def pytest_runtest_logreport(report):
    if {hook!r} == "pytest_runtest_logreport" and report.when == "call":
        _in_the_controller(_config[0])

def pytest_terminal_summary(config):
    if {hook!r} == "pytest_terminal_summary":
        _in_the_controller(config)

_config = []

def pytest_sessionstart(session):
    _config.append(session.config)
"""

# SIGINT as a terminal delivers it, whatever the disposition this test run inherited (a job
# started in the background by a shell ignores SIGINT, and so would conveyor).
WITH_DEFAULT_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, '-m', 'conveyor', *sys.argv[1:]])"
)


@pytest.mark.parametrize(
    ("hook", "signum"),
    [
        ("pytest_configure", "SIGINT"),
        ("pytest_runtest_logreport", "SIGINT"),
        ("pytest_runtest_logreport", "SIGTERM"),
    ],
)
def test_an_interrupt_swallowed_by_a_finalizer_still_stops_the_build(
    pytester: pytest.Pytester, hook: str, signum: str
) -> None:
    pytester.makeconftest(SWALLOWED_INTERRUPT.format(hook=hook, signal=signum))
    pytester.makepyfile(
        "import time, pytest\n\n"
        "@pytest.mark.parametrize('i', range(12))\n"
        "def test_slow(i):\n    time.sleep(0.5)\n"
    )
    result = pytester.run(
        sys.executable, "-c", WITH_DEFAULT_SIGINT, "run", "-n", "2", "-p", "no:cacheprovider",
        timeout=300,
    )  # fmt: skip
    output = result.stdout.str() + result.stderr.str()
    assert "Exception ignored" in output  # the interrupt was swallowed where it landed
    assert result.ret == 2, output
    assert "12 passed" not in output  # stopped, not run to the end
    assert "stopping" in output, output


def test_an_interrupt_swallowed_as_the_build_ends_is_not_a_green_build(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(
        SWALLOWED_INTERRUPT.format(hook="pytest_terminal_summary", signal="SIGTERM")
    )
    pytester.makepyfile("def test_a():\n    pass\n")
    result = run_conveyor(pytester, "-n", "1")
    output = result.stdout.str() + result.stderr.str()
    # Held while the report is written (it used to be raised in the finalizer and lost
    # there): the report is whole, and the run is still not a green one.
    assert result.ret == 2, output
    assert "interrupted as it ended, after the report above" in output


INTERRUPTED_TWICE = """
import os, signal

def _controller(config):
    return not hasattr(config, "workerinput") and "PYTEST_XDIST_WORKER" not in os.environ

_sent = []
_config = []

def pytest_sessionstart(session):
    _config.append(session.config)

def pytest_runtest_logreport(report):
    if report.when != "call" or not _controller(_config[0]) or len(_sent) == 2:
        return
    # The first result replayed; then, for the build that stops, the next one: the stop
    # replays what the workers had stored (results come in batches).
    if not _sent or {second!r} == "while the build stops":
        _sent.append(report.nodeid)
        os.kill(os.getpid(), signal.SIGINT)

def pytest_terminal_summary(config):
    if {second!r}.startswith("while the report is written") and _controller(config):
        os.kill(os.getpid(), signal.SIGINT)
        if {second!r}.endswith("and again"):
            os.kill(os.getpid(), signal.SIGINT)
"""


@pytest.mark.parametrize(
    ("second", "queue"),
    [
        ("while the report is written", "embedded"),
        ("while the report is written and again", "embedded"),
        ("while the build stops", "shared"),
    ],
)
def test_ctrl_c_pressed_twice_still_reports_what_has_no_result(
    pytester: pytest.Pytester, second: str, queue: str
) -> None:
    """A second Ctrl-C just after the first cut the handling of the first short: the report
    lost its list of tests without a result, the session's end was taken for a start-up
    ("interrupted while starting"), or the exit's garbage collection ended in a traceback
    and 130. Once begun, stopping the build and writing its report finish; a third press
    would still stop them."""
    pytester.makeconftest(INTERRUPTED_TWICE.format(second=second))
    pytester.makepyfile(
        "import time, pytest\n\n"
        "@pytest.mark.parametrize('i', range(300))\n"
        "def test_quick(i):\n    time.sleep(0.01)\n"
    )
    shared = ("--queue", f"sqlite://{pytester.path / 'q.db'}", "--build", "B1")
    result = pytester.run(
        sys.executable, "-c", WITH_DEFAULT_SIGINT, "run", "-n", "2", "-p", "no:cacheprovider",
        *(shared if queue == "shared" else ()), timeout=300,
    )  # fmt: skip
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == 2, output
    assert "Traceback" not in output, output
    assert "interrupted while starting" not in output, output
    assert "interrupted as it ended" not in output, output
    if second.endswith("and again"):  # pressed a third time: the report is cut short
        assert "interrupted again while the report was written" in output, output
    else:
        assert "have no result because the build was stopped" in output, output
        assert "!! KeyboardInterrupt !!" in output, output


def test_a_stopped_builds_short_summary_is_in_collection_order(
    pytester: pytest.Pytester,
) -> None:
    """Results arrive as they finish; a finished build's summary lists them as plain pytest
    does, and so now does a stopped one's (its SKIPPED lines came in completion order)."""
    pytester.makeconftest(
        """
        import os, signal

        _skipped = []

        def pytest_runtest_logreport(report):
            if report.when == "call" and report.skipped and "PYTEST_XDIST_WORKER" not in os.environ:
                _skipped.append(report.nodeid)
                if len(_skipped) == 2:
                    os.kill(os.getpid(), signal.SIGINT)
        """
    )
    pytester.makepyfile(
        test_a="import time, pytest\n\ndef test_late():\n"
        "    time.sleep(1)\n    pytest.skip('late')\n",
        test_b="import pytest\n\ndef test_early():\n    pytest.skip('early')\n",
        test_c="import time, pytest\n\n@pytest.mark.parametrize('i', range(20))\n"
        "def test_slow(i):\n    time.sleep(0.5)\n",
    )
    result = pytester.run(
        sys.executable, "-c", WITH_DEFAULT_SIGINT, "run", "-n", "2", "-p", "no:cacheprovider",
        "-p", "no:randomly", "-rs", timeout=300,
    )  # fmt: skip
    output = result.stdout.str()
    assert result.ret == 2, output
    skipped = [line for line in result.stdout.lines if line.startswith("SKIPPED")]
    assert skipped == [
        "SKIPPED [1] test_a.py:5: late",
        "SKIPPED [1] test_b.py:4: early",
    ], output


def test_in_process_a_test_that_handles_its_own_interrupt_passes_as_in_pytest(
    pytester: pytest.Pytester,
) -> None:
    """`-n 0` is plain pytest in conveyor's process: an interrupt a test raises and handles
    itself is the test's business, not a cancelled run."""
    pytester.makepyfile(
        """
        import os, signal, time

        def test_handles_ctrl_c():
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            except KeyboardInterrupt:
                pass
        """
    )
    result = pytester.run(
        sys.executable, "-c", WITH_DEFAULT_SIGINT, "run", "-n", "0", "-p", "no:cacheprovider",
        timeout=120,
    )  # fmt: skip
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*1 passed*"])


def test_a_worker_machine_says_when_another_machine_stopped_the_build(
    pytester: pytest.Pytester,
) -> None:
    """Another machine's Ctrl-C stops a shared build (as `queue.stop` does here): a
    `conveyor worker` said "done." as if the build had finished."""
    pytester.makepyfile(
        test_slow="\n".join(f"def test_{i}():\n    __import__('time').sleep(1)\n" for i in range(5))
    )
    url = f"sqlite://{pytester.path / 'q.db'}"
    process = conveyor_popen(pytester.path, "worker", "-n", "1", "--queue", url, "--build", "S1")
    queue = open_queue(url, "S1")
    wait_until(lambda: queue.status().leased >= 1, "the worker never took a test")
    queue.stop("interrupted")
    output = communicate_or_dump_stacks(process, 60)
    assert process.returncode == 0, output
    assert "conveyor worker: the build was stopped before it finished (interrupted)." in output
    assert "conveyor worker: done." not in output
    queue.close()
