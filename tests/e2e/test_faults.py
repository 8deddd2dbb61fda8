"""Workers that die, tests that crash them, bad input, Ctrl-C: clear messages, nothing lost."""

from __future__ import annotations

import collections
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import RedisServer, require_redis_server
from helpers import (
    assert_same_verdict,
    communicate_or_dump_stacks,
    conveyor_popen,
    junit_outcomes,
    run_conveyor,
    wait_until,
)


def test_worker_killed_mid_test_has_its_test_rerun_and_reported_once(
    pytester: pytest.Pytester, start: str
) -> None:
    marker = pytester.path / "killed-once"
    collections = pytester.path / "collections.log"
    pytester.makeconftest(
        f"""
        import os

        def pytest_collection_finish(session):
            if os.environ.get("PYTEST_XDIST_WORKER"):  # a worker, not the controller
                with open({str(collections)!r}, "a") as log:
                    log.write("collected\\n")
        """
    )
    pytester.makepyfile(
        test_kill=f"""
        import os, pathlib, signal

        def test_dies_once():
            marker = pathlib.Path({str(marker)!r})
            if not marker.exists():
                marker.write_text("killed")
                os.kill(os.getpid(), signal.SIGKILL)
        """,
        test_rest="\n".join(f"def test_{i}(): pass" for i in range(20)),
    )
    result = run_conveyor(pytester, "-n", "2", "--junitxml=out.xml", "-rA")
    assert marker.exists()
    assert result.ret == 0, result.stdout.str()
    outcomes = junit_outcomes(pytester.path / "out.xml")
    assert outcomes[("test_kill", "test_dies_once")] == [("passed",)]
    assert len(outcomes) == 21
    result.stdout.fnmatch_lines(
        [
            "*= conveyor =*",
            "worker gw? killed by signal SIGKILL (9) while running test_kill.py::test_dies_once*",
            "*21 passed*",
        ]
    )
    # Spawned, the replacement collects again; forked, it starts from the one collection.
    assert len(collections.read_text().split()) == (1 if start == "fork" else 3)


@pytest.mark.parametrize("dist", ["module", "loadfile"])
def test_a_class_cut_short_by_a_dead_worker_goes_on_in_its_own_order(
    pytester: pytest.Pytester, dist: str
) -> None:
    """The tests a dead worker held go back to the queue; those of its class must run on the
    next worker in their order, since they may depend on the ones before them. They came back
    backwards, so the test after the crash ran before the one that crashed."""
    marker = pytester.path / "killed-once"
    pytester.makepyfile(
        test_ordered=f"""
        import os, pathlib, signal

        class TestOrdered:
            seen = []

            def test_a(self):
                TestOrdered.seen.append("a")

            def test_b(self):
                marker = pathlib.Path({str(marker)!r})
                if not marker.exists():
                    marker.write_text("killed")
                    os.kill(os.getpid(), signal.SIGKILL)
                TestOrdered.seen.append("b")

            def test_c(self):
                assert TestOrdered.seen[-1:] == ["b"], TestOrdered.seen

            def test_d(self):
                assert TestOrdered.seen[-1:] == ["b"], TestOrdered.seen
        """
    )
    result = run_conveyor(pytester, "-n", "1", "--dist", dist, "--junitxml=out.xml", "-rA")
    assert marker.exists()
    assert result.ret == 0, result.stdout.str()
    outcomes = junit_outcomes(pytester.path / "out.xml")
    assert len(outcomes) == 4, outcomes
    assert all(value == [("passed",)] for value in outcomes.values()), outcomes


def test_test_that_segfaults_every_time_fails_naming_the_signal(
    pytester: pytest.Pytester, start: str
) -> None:
    """Forked too: faulthandler writes to the worker's own log, whose tail the report shows."""
    pytester.makepyfile(
        test_crash="""
        import ctypes

        def test_segfault():
            ctypes.string_at(0)
        """,
        test_fine="\n".join(f"def test_{i}(): pass" for i in range(10)),
    )
    result = run_conveyor(pytester, "-n", "2", "--junitxml=out.xml")
    assert result.ret == 1
    outcomes = junit_outcomes(pytester.path / "out.xml")
    assert outcomes.pop(("test_crash", "test_segfault")) == [("failure",)]
    assert all(value == [("passed",)] for value in outcomes.values())
    assert len(outcomes) == 10
    result.stdout.fnmatch_lines(
        [
            "*crashed while running this test: worker gw? killed by signal SIGSEGV (11)*",
            "*took down 2 worker(s)*",
            "*Segmentation fault*",
            "FAILED test_crash.py::test_segfault*",
            "*1 failed, 10 passed*",
        ]
    )


def test_module_fixture_set_up_once_per_run_of_consecutive_tests(
    pytester: pytest.Pytester,
) -> None:
    log = pytester.path / "events.log"
    for module in ("alpha", "beta", "gamma"):
        pytester.makepyfile(
            **{
                f"test_{module}": f"""
                import os
                import pytest

                def record(line):
                    with open({str(log)!r}, "a") as handle:
                        handle.write(os.environ["PYTEST_XDIST_WORKER"] + " " + line + "\\n")

                @pytest.fixture(scope="module")
                def expensive():
                    record("setup {module}")
                    yield

                @pytest.mark.parametrize("i", range(12))
                def test_uses_fixture(expensive, i):
                    record("test {module}")
                """
            }
        )
    result = run_conveyor(pytester, "-n", "3")
    assert result.ret == 0, result.stdout.str()
    setups: collections.Counter[tuple[str, str]] = collections.Counter()
    runs: collections.Counter[tuple[str, str]] = collections.Counter()
    last_module: dict[str, str] = {}
    tests = 0
    for line in log.read_text().splitlines():
        worker, kind, module = line.split()
        if kind == "setup":
            setups[worker, module] += 1
        else:
            tests += 1
            if last_module.get(worker) != module:
                runs[worker, module] += 1
            last_module[worker] = module
    assert tests == 36
    assert sum(setups.values()) >= 3
    for key, count in setups.items():
        assert count <= runs[key], (key, setups, runs)


@pytest.mark.parametrize("value", ["-1", "abc", "1.5"])
def test_bad_worker_count_is_a_usage_error(pytester: pytest.Pytester, value: str) -> None:
    pytester.makepyfile(test_ok="def test_fine(): pass")
    result = run_conveyor(pytester, "-n", value)
    assert result.ret == 4
    result.stderr.fnmatch_lines(
        [
            "conveyor: error: -n expects a number of worker processes (0 or more) or 'auto', "
            f"got '{value}'*"
        ]
    )


def test_zero_workers_runs_plain_pytest_in_process(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_ok="def test_fine(): pass\ndef test_bad(): assert 0")
    result = run_conveyor(pytester, "-n", "0")
    assert result.ret == 1
    assert "conveyor:" not in result.stdout.str()
    result.stdout.fnmatch_lines(["*1 failed, 1 passed*"])


def test_unwritable_queue_path_is_a_clear_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_ok="def test_fine(): pass")
    not_a_dir = pytester.path / "plain-file"
    not_a_dir.write_text("")
    result = run_conveyor(pytester, "-n", "2", "--queue", f"sqlite://{not_a_dir}/queue.db")
    assert result.ret == 4
    result.stderr.fnmatch_lines(
        [f"conveyor: error: cannot open the queue sqlite://{not_a_dir}/queue.db: *--queue*"]
    )
    directory = pytester.mkdir("a-directory")
    result = run_conveyor(pytester, "-n", "2", "--queue", f"sqlite://{directory}")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["conveyor: error: cannot open the queue *writable file*"])


def test_unknown_queue_scheme_is_a_clear_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_ok="def test_fine(): pass")
    result = run_conveyor(pytester, "--queue", "http://user:secret@example.invalid/q")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*unknown scheme 'http'*sqlite:///path/to/queue.db*"])
    assert "secret" not in result.stderr.str()


# The test both workers collect lasts long enough that the build cannot end before the second
# worker has compared its collection: a refusal that comes after the build's end is not
# reported (a known race between a quick build and a slow collection).
MISMATCHED = """
import os, time

def test_everywhere():
    time.sleep(2)

if os.environ.get("PYTEST_XDIST_WORKER") == "gw1":
    def test_only_on_gw1():
        pass
"""


def test_mismatched_collection_is_refused_with_the_difference(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_mismatch=MISMATCHED)
    result = run_conveyor(pytester, "-n", "2")
    assert result.ret == 3, result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*= conveyor =*",
            "worker gw? collected a different set of tests than gw?, which published the build,"
            " and will not run any test.*",
            "1 * here:",
            "  test_mismatch.py::test_only_on_gw1",
        ]
    )
    # The tests that ran passed, the build did not: its last line is not pytest's green one.
    assert re.search(r"\d passed, 1 conveyor error in ", result.outlines[-1]), result.outlines[-1]


def test_a_refusal_said_just_as_the_build_ended_is_reported(pytester: pytest.Pytester) -> None:
    """The build of one quick test ended on the leader's worker while the other was still
    collecting; that worker refused between the controller's last look at the queue and
    its wait for late workers, which then had none to wait for, and the refusal was never
    read: exit 0, no word of it (seen under load in CI). The controller is made to be that
    late here: its wait starts 3 s after the build's end."""
    pytester.makeconftest(
        """
        import time
        from conveyor import supervisor

        _wait = supervisor.Supervisor.wait_for_stragglers

        def _late(self, *args, **kwargs):
            time.sleep(3)
            return _wait(self, *args, **kwargs)

        supervisor.Supervisor.wait_for_stragglers = _late
        """
    )
    pytester.makepyfile(
        test_mismatch="""
        import os, time

        def test_everywhere():
            pass

        if os.environ.get("PYTEST_XDIST_WORKER") == "gw1":
            time.sleep(1)

            def test_only_on_gw1():
                pass
        """
    )
    result = run_conveyor(pytester, "-n", "2", "-p", "no:randomly")
    assert result.ret == 3, result.stdout.str()
    result.stdout.fnmatch_lines(["worker gw1 collected a different set of tests than gw0*"])


def test_a_refused_worker_is_counted_on_a_red_last_line_too(pytester: pytest.Pytester) -> None:
    """A build that failed on a test ended on plain pytest's red line, which left out the
    worker refused for its different collection."""
    pytester.makepyfile(test_mismatch=MISMATCHED + "\ndef test_fails():\n    assert 0\n")
    result = run_conveyor(pytester, "-n", "2")
    assert result.ret == 1, result.stdout.str()
    assert re.search(r"1 failed, \d passed, 1 conveyor error in ", result.outlines[-1]), (
        result.outlines[-1]
    )


def test_os_exit_0_in_a_test_is_a_crash_of_that_test(pytester: pytest.Pytester) -> None:
    """Exit code 0 without the worker's own "done" is not a finished worker."""
    pytester.makepyfile(
        test_exit="""
        import os

        def test_exits_quietly():
            os._exit(0)
        """,
        test_fine="\n".join(f"def test_{i}(): pass" for i in range(6)),
    )
    result = run_conveyor(pytester, "-n", "2", "--junitxml=out.xml")
    assert result.ret == 1, result.stdout.str()
    outcomes = junit_outcomes(pytester.path / "out.xml")
    assert outcomes.pop(("test_exit", "test_exits_quietly")) == [("failure",)]
    assert all(value == [("passed",)] for value in outcomes.values()) and len(outcomes) == 6
    result.stdout.fnmatch_lines(
        [
            "*crashed while running this test: worker gw? exited with code 0 before finishing*",
            "FAILED test_exit.py::test_exits_quietly*",
            "*1 failed, 6 passed*",
        ]
    )


def test_ctrl_c_stops_workers_and_prints_the_partial_summary(
    pytester: pytest.Pytester, start: str
) -> None:
    """An interrupt during the build, once the controller replays results (an interrupt
    while it is still starting is tests/e2e/test_rerun.py's)."""
    started, following = pytester.path / "started", pytester.path / "following"
    sleepers = "".join(f"def test_sleep_{i}():\n    time.sleep(0.5)\n\n" for i in range(40))
    pytester.makepyfile(
        test_slow="import pathlib, time\n\n"
        f"def test_first():\n    pathlib.Path({str(started)!r}).write_text('yes')\n\n" + sleepers
    )
    pytester.makeconftest(
        "import os, pathlib\n\n"
        "def pytest_runtest_logreport(report):\n"
        "    if not os.environ.get('CONVEYOR_WORKER'):\n"
        f"        pathlib.Path({str(following)!r}).write_text('yes')\n"
    )
    process = conveyor_popen(pytester.path, "run", "-n", "2", "-p", "no:cacheprovider")
    deadline = time.monotonic() + 60
    while not (started.exists() and following.exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    output = communicate_or_dump_stacks(process, 60)
    assert process.returncode == 2, output
    assert "KeyboardInterrupt" in output
    assert "passed" in output.splitlines()[-1]
    assert "have no result because the build was stopped" in output


def test_ctrl_c_while_the_controller_waits_for_the_manifest_keeps_the_results(
    pytester: pytest.Pytester,
) -> None:
    """An interrupt as the controller waits for the manifest, the workers having queued the
    suite and run tests already: their results are this build's. They were rejected as tests
    "no worker of this build collected", and the summary said no tests ran."""
    ran = pytester.mkdir("ran")
    pytester.makepyfile(
        test_slow="import pathlib, time\n\n"
        + "".join(
            f"def test_{i}():\n    pathlib.Path({str(ran)!r}, '{i}').touch()\n"
            "    time.sleep(0.2)\n\n"
            for i in range(40)
        )
    )
    # The controller is made to see Ctrl-C at that moment: while it waits for the manifest,
    # once five tests have run.
    pytester.makeconftest(
        f"""
        import os, pathlib, time

        if not os.environ.get("CONVEYOR_WORKER"):
            from conveyor.build_follower import BuildFollower

            def interrupted_while_waiting(self):
                deadline = time.monotonic() + 60
                while len(list(pathlib.Path({str(ran)!r}).iterdir())) < 5:
                    assert time.monotonic() < deadline, "no test ran"
                    time.sleep(0.02)
                raise KeyboardInterrupt

            BuildFollower.wait_for_manifest = interrupted_while_waiting
        """
    )
    result = run_conveyor(pytester, "-n", "2")
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == 2, output
    assert "was rejected" not in output, output
    assert "INTERNALERROR" not in output, output
    passed = int(re.search(r"(\d+) passed", output.splitlines()[-1]).group(1))  # type: ignore[union-attr]
    assert passed >= 5, output
    assert "have no result because the build was stopped" in output, output


@pytest.mark.parametrize("order", ["before", "after"])
def test_a_plugin_failing_while_it_reports_an_interrupt_still_ends_as_interrupted(
    pytester: pytest.Pytester, order: str
) -> None:
    """pytest's own terminal reporter raises TypeError for a Ctrl-C that lands in a frame
    without a line number; the error escaped pytest.main and conveyor ended with a traceback
    and exit code 1. Whether the failing hook ran before conveyor's or after it, the build is
    stopped and the session ends as interrupted (exit 2)."""
    pytester.makepyfile(test_many="\n".join(f"def test_{i}(): pass" for i in range(20)))
    pytester.makeconftest(
        f"""
        import os, pytest

        if not os.environ.get("CONVEYOR_WORKER"):
            def pytest_sessionstart(session):
                raise KeyboardInterrupt  # Ctrl-C as the controller's session starts

            @pytest.hookimpl(trylast={order == "after"})
            def pytest_keyboard_interrupt(excinfo):
                raise TypeError("unsupported operand type(s) for -: 'NoneType' and 'int'")
        """
    )
    result = run_conveyor(pytester, "-n", "2")
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == 2, output
    assert "Traceback" not in output, output
    assert "interrupted" in output, output


def test_ctrl_c_with_the_queue_unusable_stops_the_workers_and_says_so(
    pytester: pytest.Pytester,
) -> None:
    """Stopping an interrupted build goes through the queue. Where the queue fails just then,
    the session still ends as interrupted, with what happened said plainly, no INTERNALERROR
    and no worker left running the suite."""
    queue = pytester.path / "q.db"
    ran = pytester.mkdir("ran")
    pytester.makepyfile(
        test_slow="import os, pathlib, time\n\n"
        + "".join(
            f"def test_{i}():\n"
            f"    pathlib.Path({str(ran)!r}, '{i}').touch()\n"
            "    time.sleep(0.2)\n\n"
            for i in range(40)
        )
    )
    pytester.makeconftest(
        f"""
        import os, sqlite3

        def pytest_runtest_logreport(report):
            if os.environ.get("CONVEYOR_WORKER") or report.when != "call":
                return
            with sqlite3.connect({str(queue)!r}, timeout=30) as conn:
                for table in ("builds", "units", "events", "workers", "reservations"):
                    conn.execute(f"DROP TABLE {{table}}")
                    conn.execute(f"CREATE TABLE {{table}} (something_else TEXT)")
            raise KeyboardInterrupt  # Ctrl-C, as the controller replays its first result
        """
    )
    result = run_conveyor(pytester, "-n", "2", "--queue", f"sqlite://{queue}")
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == 2, output
    assert "INTERNALERROR" not in output, output
    assert "could not stop the build through its queue" in output, output
    assert "workers are stopped" in output, output
    settled = len(list(ran.iterdir()))
    time.sleep(1.0)
    assert len(list(ran.iterdir())) == settled < 40, "a worker ran on after the interrupt"


def test_ctrl_c_as_the_session_ends_does_not_hang(pytester: pytest.Pytester, start: str) -> None:
    """An interrupt while the controller waits for its workers to leave, every result already
    in and reported: the wait once counted the workers as running forever (the watch thread
    had been stopped). It must end, exit 2, and say what happened."""
    finishing, leaving = pytester.path / "finishing", pytester.path / "leaving"
    pytester.makepyfile(test_quick="def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    pytester.makeconftest(
        f"""
        import os, pathlib, time

        def pytest_sessionfinish(session):
            if not os.environ.get("CONVEYOR_WORKER"):
                pathlib.Path({str(finishing)!r}).write_text("yes")

        def pytest_unconfigure(config):
            if os.environ.get("CONVEYOR_WORKER"):
                pathlib.Path({str(leaving)!r}).write_text("yes")
                time.sleep(4)  # a slow teardown: the controller waits for it
        """
    )
    process = conveyor_popen(pytester.path, "run", "-n", "1", "-p", "no:cacheprovider")
    wait_until(lambda: finishing.exists() and leaving.exists(), "the session's end", 120)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    output = communicate_or_dump_stacks(process, 60)
    assert process.returncode == 2, output
    assert "INTERNALERROR" not in output, output
    # The report came first (the workers end their sessions while it is printed): it is
    # whole, and the interrupt stops only the workers' teardown, never to a green exit.
    assert "2 passed" in output, output
    assert (
        "interrupted while the workers ended their sessions: the report above is complete" in output
    ), output
    assert "running tests finish first" not in output, output  # none was running


def test_ctrl_c_while_the_workers_collect_stops_them_before_any_test_runs(
    pytester: pytest.Pytester, start: str
) -> None:
    """An interrupt before any worker has queued the suite cannot mark a build that does not
    exist yet: the workers are stopped instead, or they would queue and run all of it."""
    collecting, ran = pytester.path / "collecting", pytester.mkdir("ran")
    pytester.makeconftest(
        f"""
        import os, pathlib, time

        def pytest_collection_finish(session):
            if os.environ.get("PYTEST_XDIST_WORKER"):
                pathlib.Path({str(collecting)!r}).write_text("yes")
                time.sleep(3)
        """
    )
    pytester.makepyfile(
        test_many=f"""
        import os, pathlib, pytest

        @pytest.mark.parametrize("i", range(20))
        def test_one(i):
            pathlib.Path({str(ran)!r}, str(i)).write_text("")
        """
    )
    process = conveyor_popen(pytester.path, "run", "-n", "2", "-p", "no:cacheprovider")
    deadline = time.monotonic() + 60
    while not collecting.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    output = communicate_or_dump_stacks(process, 60)
    assert process.returncode == 2, output
    assert list(ran.iterdir()) == [], output  # the suite did not run behind the interrupt
    assert "no test had been queued yet, so none will run" in output


@pytest.mark.parametrize("command", ["worker", "report"])
def test_joining_a_build_needs_its_id(pytester: pytest.Pytester, command: str) -> None:
    result = pytester.run(
        sys.executable, "-m", "conveyor", command, "--queue", f"sqlite://{pytester.path}/q.db"
    )
    assert result.ret == 4
    result.stderr.fnmatch_lines(["conveyor: error: a shared queue needs a build id*--build ID*"])


def test_worker_and_report_need_a_queue(pytester: pytest.Pytester) -> None:
    result = pytester.run(sys.executable, "-m", "conveyor", "report", "--build", "b1")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["conveyor: error: `conveyor report` needs --queue URL*"])


def test_a_property_json_cannot_carry_is_reported_as_plain_pytest_writes_it(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_props="""
        import datetime

        def test_when(record_property):
            record_property("when", datetime.datetime(2026, 1, 2, 3, 4, 5))
            record_property("tags", {"only"})
        """
    )
    _plain, ours = assert_same_verdict(pytester, "-o", "junit_family=legacy", workers=2)
    assert ours.ret == 0
    xml = (pytester.path / "conveyor.xml").read_text()
    assert 'name="when" value="2026-01-02 03:04:05"' in xml
    assert 'name="tags" value="{\'only\'}"' in xml


def test_huge_test_output_is_cut_to_its_head_and_tail(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_loud="""
        import sys

        def test_loud():
            sys.stdout.write("HEAD" + "x" * 6_000_000 + "TAIL")
            assert False
        """
    )
    result = run_conveyor(pytester, "-n", "1")
    assert result.ret == 1
    text = result.stdout.str()
    assert "HEAD" in text and "TAIL" in text
    assert "characters of this output were cut" in text
    assert len(text) < 2_500_000


def test_a_queue_file_destroyed_mid_build_is_a_clear_error_not_an_internal_one(
    pytester: pytest.Pytester,
) -> None:
    started = pytester.path / "started"
    first = (
        "import pathlib, time\n\n"
        f"def test_first():\n    pathlib.Path({str(started)!r}).write_text('yes')\n"
        "    time.sleep(1)\n\n"
    )
    later = "".join(f"def test_{i}():\n    time.sleep(0.2)\n\n" for i in range(10))
    pytester.makepyfile(test_slow=first + later)
    queue = pytester.path / "q.db"
    process = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "run", "-n", "1", "-p", "no:cacheprovider",
         "-p", "no:randomly", "--queue", f"sqlite://{queue}", "--build", "GONE"],
        cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not started.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # Overwritten in place (another program writing there). The write-ahead log's index
    # (-shm) too: with only the database and the log overwritten, SQLite may go on from what
    # its processes hold in memory and never read the garbage (the build then ends green, its
    # results all real), which made this test's outcome depend on timing.
    for suffix in ("", "-wal", "-shm"):
        with Path(f"{queue}{suffix}").open("r+b") as handle:
            handle.write(b"not a database at all" * 100)
    output = communicate_or_dump_stacks(process, 120)
    assert process.returncode == 3, output
    assert "INTERNALERROR" not in output and "Traceback" not in output, output
    assert "conveyor:" in output


# In the controller's pytest_configure, before conveyor's own: the Redis server goes away.
REDIS_GONE_CONFTEST = """
import os, signal

def pytest_configure(config):
    if not os.environ.get("CONVEYOR_WORKER"):
        os.kill({pid}, signal.SIGKILL)
"""


def test_a_queue_gone_while_the_controller_configures_is_a_clear_error(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """The controller reads the build's state and publishes the workers' input in its
    pytest_configure: a queue lost there was an INTERNALERROR with a traceback, and the
    workers already started were left to find out for themselves."""
    require_redis_server()
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        assert server.process is not None
        pytester.makeconftest(REDIS_GONE_CONFTEST.format(pid=server.process.pid))
        pytester.makepyfile(test_ok="def test_fine(): pass")
        result = run_conveyor(pytester, "-n", "1", "--queue", server.url, "--build", "GONE")
    finally:
        server.stop()
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == 3, output
    assert "INTERNALERROR" not in output and "Traceback" not in output, output
    assert "cannot reach the Redis queue" in output, output
    assert "1 passed" not in output, output


def test_conveyor_debug_traces_queue_operations_and_worker_lives(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_DEBUG", "1")
    pytester.makepyfile(test_two="def test_a(): pass\ndef test_b(): pass")
    result = run_conveyor(pytester, "-n", "1", "--worker-logs", "logs")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*2 passed*"])
    assert "conveyor-trace" not in result.stdout.str()  # user-facing output unchanged
    controller = result.stderr.str()
    assert "conveyor-trace" in controller and "conveyor.queue events(" in controller
    worker = (pytester.path / "logs" / "gw0.log").read_text()
    for expected in ("conveyor.queue reserve(", "conveyor.worker gw0 joined", "promised next"):
        assert expected in worker, worker


def test_a_report_too_large_for_the_queue_fails_its_test_with_a_clear_message(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_big="""
        def test_huge_property(record_property):
            record_property("blob", "x" * 40_000_000)

        def test_fine():
            pass
        """
    )
    result = run_conveyor(pytester, "-n", "1", "--junitxml=out.xml")
    assert result.ret == 1, result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*the report of this test was * MiB, more than a result may carry*",
            "*1 failed, 1 passed*",
        ]
    )
    assert "Broken pipe" not in result.stdout.str() + result.stderr.str()
