"""Hung tests, flaky tests, slow tests on live workers, frozen workers and chaos."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import (
    communicate_or_dump_stacks,
    junit_outcomes,
    run_conveyor,
    run_plain,
    wait_until,
)

RERUN_ELEMENT = "rerunFailure"


def test_test_sleeping_for_an_hour_is_stopped_by_the_timeout(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_hang="""
        import time

        def test_sleeps_forever():
            time.sleep(3600)
        """,
        test_fine="\n".join(f"def test_{i}(): pass" for i in range(10)),
    )
    result = run_conveyor(pytester, "-n", "2", "--test-timeout", "2", "--junitxml=out.xml")
    assert result.ret == 1
    outcomes = junit_outcomes(pytester.path / "out.xml")
    assert outcomes.pop(("test_hang", "test_sleeps_forever")) == [("failure",)]
    assert all(value == [("passed",)] for value in outcomes.values()) and len(outcomes) == 10
    xml = (pytester.path / "out.xml").read_text()  # every test says where it ran, this one too
    assert xml.count('name="conveyor_worker" value="') == xml.count("<testcase ") == 11
    assert xml.count('name="conveyor_attempt" value="') == 11
    result.stdout.fnmatch_lines(
        [
            "*Timeout: worker gw? was stopped: the test ran longer than 2 s (--test-timeout)*",
            "*Timeout (0:00:02)!*",
            '*File "*test_hang.py", line 4 in test_sleeps_forever*',
            "*1 failed, 10 passed*",
        ]
    )


@pytest.mark.parametrize("start", ["default", "--spawn-workers"])
def test_what_a_timed_out_test_started_does_not_outlive_the_build(
    pytester: pytest.Pytester, start: str
) -> None:
    """A test stopped by its hard timeout never runs its teardown: a server it started (a
    dev server in werkzeug's suite) was left running, reparented to init, after the build."""
    pytester.makepyfile(
        test_server="""
        import subprocess, sys, time
        from pathlib import Path

        def test_starts_a_server_and_hangs():
            server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
            Path("server.pid").write_text(str(server.pid))
            try:
                time.sleep(3600)
            finally:
                server.kill()
        """
    )
    extra = [] if start == "default" else [start]
    result = run_conveyor(pytester, "-n", "2", "--test-timeout", "2", *extra)
    assert result.ret == 1, result.stdout.str()
    pid = int((pytester.path / "server.pid").read_text())
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), "the server the timed-out test started outlived the build"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@pytest.mark.parametrize(
    "blocking_call",
    ["signal.pause()", "PAIR[0].recv(1)"],
    ids=["signal-pause", "socket-recv"],
)
def test_test_blocked_in_c_code_is_stopped_by_the_timeout(
    pytester: pytest.Pytester, blocking_call: str
) -> None:
    pytester.makepyfile(
        test_blocked=f"""
        import signal, socket

        PAIR = socket.socketpair()

        def test_blocked():
            {blocking_call}
        """,
        test_fine="def test_ok(): pass",
    )
    result = run_conveyor(pytester, "-n", "2", "--test-timeout", "1")
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        ["*Timeout (0:00:01)!*", "*in test_blocked*", "*1 failed, 1 passed*"]
    )


def test_a_queue_slow_to_answer_at_a_teardown_is_not_the_tests_time(
    pytester: pytest.Pytester,
) -> None:
    """The next test's lease is asked for at this test's teardown (pytest needs it there to
    know which fixtures to keep), so a busy queue's wait fell inside the test's timeout: a
    test that passes at once was stopped as hung. Here another connection holds the queue's
    write lock for 3 s from the end of test_a, whose timeout is 2 s (the automatic timeout
    stops its clock the same way: tests/unit/test_worker_parts.py)."""
    queue = pytester.path / "queue.db"
    pytester.makepyfile(
        test_lock=f"""
        import sqlite3, threading, time

        def hold():
            conn = sqlite3.connect({str(queue)!r}, timeout=60, isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            time.sleep(3)
            conn.execute("COMMIT")

        def test_a():
            threading.Thread(target=hold).start()
            time.sleep(0.3)  # the lock is taken

        def test_b():
            pass
        """
    )
    result = run_conveyor(
        pytester, "-n", "1", "--queue", f"sqlite://{queue}", "--test-timeout", "2"
    )
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*2 passed*"])
    assert "Timeout" not in result.stdout.str()


def test_test_slower_than_the_lease_runs_exactly_once(pytester: pytest.Pytester) -> None:
    log = pytester.path / "runs.log"
    pytester.makepyfile(
        test_slow=f"""
        import time

        def test_slow():
            with open({str(log)!r}, "a") as handle:
                handle.write("ran\\n")
            time.sleep(3)

        def test_quick():
            pass
        """
    )
    result = run_conveyor(pytester, "-n", "2", "--lease-ttl", "0.6")
    assert result.ret == 0, result.stdout.str()
    assert log.read_text().splitlines() == ["ran"]
    assert "rejected" not in result.stdout.str()


FLAKY = """
import pathlib

STATE = pathlib.Path({state!r})

def test_flaky():
    if not STATE.exists():
        STATE.write_text("failed once")
        raise ConnectionError("the first attempt always fails")

def test_stable():
    pass
"""


def test_flaky_test_passes_on_its_retry(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_flaky=FLAKY.format(state=str(pytester.path / "state")))
    result = run_conveyor(pytester, "-n", "2", "--max-requeues", "1", "--junitxml=out.xml")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*R*",
            "*= flaky tests (passed on a retry) =*",
            "test_flaky.py::test_flaky passed on attempt 2",
            "*2 passed, 1 rerun*",
        ]
    )
    xml = (pytester.path / "out.xml").read_text()
    assert xml.count(f"<{RERUN_ELEMENT} ") == 1
    assert "ConnectionError: the first attempt always fails" in xml
    assert junit_outcomes(pytester.path / "out.xml")[("test_flaky", "test_flaky")] == [("passed",)]


def test_flaky_test_fails_without_retries(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_flaky=FLAKY.format(state=str(pytester.path / "state")))
    result = run_conveyor(pytester, "-n", "2")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*1 failed, 1 passed*"])
    assert "rerun" not in result.outlines[-1] and "RERUN" not in result.stdout.str()


def test_retry_on_filters_by_exception(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_flaky=FLAKY.format(state=str(pytester.path / "state")))
    result = run_conveyor(pytester, "-n", "2", "--max-requeues", "2", "--retry-on", "KeyError")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*1 failed, 1 passed*"])
    (pytester.path / "state").unlink()
    result = run_conveyor(
        pytester, "-n", "2", "--max-requeues", "2",
        "--retry-on", "KeyError", "--retry-on", "OSError",
    )  # fmt: skip
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*2 passed, 1 rerun*"])


def test_requeue_tolerance_caps_retries_build_wide(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_always="\n".join(f"def test_{i}():\n    assert False\n" for i in range(10))
    )
    result = run_conveyor(pytester, "-n", "2", "--max-requeues", "3", "--requeue-tolerance", "0.2")
    assert result.ret == 1
    # ceil(10 * 0.2) = 2 retries in the whole build, however many tests fail.
    result.stdout.fnmatch_lines(["*10 failed, 2 rerun*"])


def test_exitfirst_with_four_workers_lists_what_did_not_run(pytester: pytest.Pytester) -> None:
    body = "\n".join(f"def test_{i}():\n    import time; time.sleep(0.05)" for i in range(80))
    pytester.makepyfile(test_first="def test_boom():\n    assert False", test_many=body)
    result = run_conveyor(pytester, "-n", "4", "-x")
    assert result.ret == 1
    outcome = result.parseoutcomes()
    assert outcome["failed"] == 1
    not_run = 81 - outcome["failed"] - outcome.get("passed", 0)
    assert not_run > 0
    result.stdout.fnmatch_lines(
        [
            f"{not_run} test(s) have no result because the build was stopped*",
            "  test_many.py::test_*",
        ]
    )


def test_frozen_worker_loses_its_test_and_its_late_result_is_rejected(
    pytester: pytest.Pytester,
) -> None:
    state = pytester.path / "froze"
    pytester.makepyfile(
        test_freeze=f"""
        import os, pathlib, signal, subprocess, sys

        def test_freezes_first_time():
            state = pathlib.Path({str(state)!r})
            if not state.exists():
                state.write_text("frozen")
                # Someone else wakes us in 4 s; meanwhile heartbeats stop with the process.
                subprocess.Popen(["sh", "-c", f"sleep 4; kill -CONT {{os.getpid()}}"])
                os.kill(os.getpid(), signal.SIGSTOP)

        def test_other():
            pass
        """
    )
    result = run_conveyor(pytester, "-n", "2", "--lease-ttl", "1", "--junitxml=out.xml")
    assert result.ret == 0, result.stdout.str()
    assert junit_outcomes(pytester.path / "out.xml") == {
        ("test_freeze", "test_freezes_first_time"): [("passed",)],
        ("test_freeze", "test_other"): [("passed",)],
    }
    result.stdout.fnmatch_lines(
        [
            "*= conveyor =*",
            "a late result for test_freeze.py::test_freezes_first_time from worker gw? "
            "(attempt 1) was rejected: another attempt finished first.",
        ]
    )


def test_chaos_random_worker_kills_lose_and_duplicate_nothing(pytester: pytest.Pytester) -> None:
    """300 short tests on 4 workers while a worker is SIGKILLed every 0.3 s (the tests hold
    the build for at least 3.75 s of work, so several kills land whatever the machine)."""
    pids = pytester.path / "pids"
    pids.mkdir()
    pytester.makeconftest(
        f"""
        import os, pathlib

        def pytest_configure(config):
            if os.environ.get("PYTEST_XDIST_WORKER"):
                pathlib.Path({str(pids)!r}, str(os.getpid())).write_text("")
        """
    )
    # The tests take time only in the workers: plain pytest's run is the reference verdict,
    # and 15 s of sleeping there would tell nothing more.
    for module in range(6):
        pytester.makepyfile(
            **{
                f"test_chaos_{module}": "import os, time\n\n"
                "PAUSE = 0.05 if os.environ.get('PYTEST_XDIST_WORKER') else 0.0\n\n"
                + "\n".join(
                    f"def test_{i}():\n    time.sleep(PAUSE)\n    assert {i} % 17 != 3\n"
                    for i in range(50)
                )
            }
        )
    plain = run_plain(pytester, "--junitxml=plain.xml")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "conveyor", "run", "-n", "4", "-p", "no:cacheprovider",
            "--junitxml=chaos.xml", "--max-worker-restarts", "100", "--max-unit-crashes", "50",
        ],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    rng = random.Random(1234)
    kills = 0
    while kills < 12 and process.poll() is None:
        time.sleep(0.3)
        alive = [int(p.name) for p in pids.iterdir() if _alive(int(p.name))]
        if alive:
            os.kill(rng.choice(alive), signal.SIGKILL)
            kills += 1
    output = communicate_or_dump_stacks(process, 300)
    assert kills >= 3, output
    assert process.returncode == plain.ret, output
    assert junit_outcomes(pytester.path / "chaos.xml") == junit_outcomes(
        pytester.path / "plain.xml"
    )
    assert "killed by signal SIGKILL" in output


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and " Z " not in Path(f"/proc/{pid}/stat").read_text()


BROKEN_GW1 = """
import os

def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER") == "gw1":
        print("gw1 cannot start: no database for it", flush=True)
        os._exit(3)
"""


def test_a_worker_failing_at_start_is_shown_once_and_the_others_finish(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(BROKEN_GW1)
    pytester.makepyfile(test_ok="\n".join(f"def test_{i}(): pass" for i in range(10)))
    result = run_conveyor(pytester, "-n", "2")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*= conveyor =*",
            "worker gw1 exited with code 3 outside any test.",
            "  gw1 cannot start: no database for it",
            "*10 passed*",
        ]
    )
    assert result.stdout.str().count("worker gw1 exited with code 3") == 1


def test_max_worker_failures_aborts_the_build(pytester: pytest.Pytester) -> None:
    # gw1 fails once gw0 has run a test: the build has its tests by then, and most never run.
    ran = pytester.path / "gw0-ran-a-test"
    pytester.makeconftest(
        f"""
        import os, pathlib, time

        def pytest_configure(config):
            if os.environ.get("PYTEST_XDIST_WORKER") == "gw1":
                deadline = time.monotonic() + 60
                while not pathlib.Path({str(ran)!r}).exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
                print("gw1 cannot start: no database for it", flush=True)
                os._exit(3)
        """
    )
    pytester.makepyfile(
        test_slow="import pathlib, time\n"
        + "\n".join(
            f"def test_{i}():\n    pathlib.Path({str(ran)!r}).touch()\n    time.sleep(0.1)\n"
            for i in range(40)
        )
    )
    result = run_conveyor(pytester, "-n", "2", "--max-worker-failures", "0")
    assert result.ret == 3
    result.stdout.fnmatch_lines(
        ["*more than 0 worker(s) failed outside any test (--max-worker-failures)*"]
    )
    # The tests the aborted build never ran are listed and counted, as a stopped build's are.
    output = result.stdout.str()
    assert re.search(r"\d+ test\(s\) have no result because the build was stopped", output), output
    assert re.search(r"=+ (\d+ passed, )?\d+ not run in ", output), output


@pytest.mark.parametrize("ending", ["aborted", "interrupted"])
def test_a_build_that_ends_early_records_the_durations_of_what_ran(
    pytester: pytest.Pytester, ending: str
) -> None:
    """A build aborted (a worker failing with --max-worker-failures 0) or stopped (CI
    cancelling the job) still records the durations of the tests it ran: a build cancelled
    again and again must learn its slow tests as a finished one does."""
    ran = pytester.path / "ran-a-test"
    if ending == "aborted":
        pytester.makeconftest(
            f"""
            import os, pathlib, time

            def pytest_configure(config):
                if os.environ.get("PYTEST_XDIST_WORKER") == "gw1":
                    deadline = time.monotonic() + 60
                    ran = pathlib.Path({str(ran)!r})
                    while time.monotonic() < deadline:
                        if ran.exists() and len(ran.read_text().split()) >= 5:
                            break
                        time.sleep(0.02)
                    time.sleep(0.5)  # their results reach the controller
                    os._exit(3)
            """
        )
    pytester.makepyfile(
        test_slow="import pathlib, time\n"
        + "\n".join(
            f"def test_{i}():\n    time.sleep(0.1)\n"
            f"    with open({str(ran)!r}, 'a') as ran:\n        ran.write('{i}\\n')\n"
            for i in range(40)
        )
    )
    command = [sys.executable, "-m", "conveyor", "run", "-n", "2"]
    if ending == "aborted":
        command += ["--max-worker-failures", "0"]
    process = subprocess.Popen(
        command, cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if ending == "interrupted":
        wait_until(lambda: ran.exists() and len(ran.read_text().split()) >= 5, "no test ran")
        process.send_signal(signal.SIGTERM)
    output = communicate_or_dump_stacks(process, 300)
    assert process.returncode == (3 if ending == "aborted" else 2), output
    passed = re.search(r"=+ (\d+) passed.* in [\d.]+s =+", output)
    assert passed, output
    exported = pytester.run(sys.executable, "-m", "conveyor", "history", "export")
    assert exported.ret == 0, exported.stderr.str()
    recorded = json.loads(exported.stdout.str())
    assert len(recorded) == int(passed.group(1)), (recorded, output)
    assert all(name.startswith("test_slow.py::test_") for name in recorded)
    assert all(0.1 <= seconds < 30 for seconds in recorded.values()), recorded


def test_a_test_without_history_that_hangs_is_stopped_too(pytester: pytest.Pytester) -> None:
    """A first run (no timing history) used to give a hung test no timeout at all: the build
    waited on it until --stall-timeout and then aborted. Such a test now gets a long fixed
    timeout (15 min; the project's conftest shortens it here, in each worker) and fails with
    every thread's stack, while the rest of the build reports as usual."""
    pytester.makeconftest(
        """
        import conveyor.hard_timeout

        conveyor.hard_timeout.UNKNOWN_TEST_TIMEOUT_S = 2.0
        """
    )
    pytester.makepyfile(
        test_first="""
        import time

        def test_hangs():
            time.sleep(3600)

        def test_quick():
            pass
        """
    )
    result = pytester.run(sys.executable, "-m", "conveyor", "run", "-n", "2", timeout=120)
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "*Timeout: worker gw? was stopped: the test ran longer than 2 s (automatic for a test "
            "without timing history; --test-timeout SECONDS sets another, --test-timeout 0 none)*",
            "*in test_hangs*",
            "*1 failed, 1 passed*",
        ]
    )


def test_without_a_timeout_history_sets_one_per_test(pytester: pytest.Pytester) -> None:
    """60 s + 10 x the usual duration: a test that usually takes 0.1 s and now hangs is
    stopped after about 61 s instead of holding the build forever, and the failure says how
    to set another timeout or none. One that usually takes 0.1 s and now takes 15 s passes, as
    under plain pytest (a 10 s base failed such a test of networkx's)."""
    hang = pytester.path / "hang-now"
    pytester.makepyfile(
        test_usually_quick=f"""
        import os, time

        def test_usually_quick():
            time.sleep(3600 if os.path.exists({str(hang)!r}) else 0.1)

        def test_varies():
            time.sleep(15 if os.path.exists({str(hang)!r}) else 0.1)
        """
    )
    learn = pytester.run(sys.executable, "-m", "conveyor", "run", "-n", "2", timeout=120)
    assert learn.ret == 0
    hang.write_text("")
    result = pytester.run(sys.executable, "-m", "conveyor", "run", "-n", "2", timeout=120)
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "*Timeout: worker gw? was stopped: the test ran longer than 6* s (automatic, from "
            "timing history: 60 s + 10 x the test's usual time; --test-timeout SECONDS sets "
            "another, --test-timeout 0 none)*",
            "*1 failed, 1 passed*",
        ]
    )
