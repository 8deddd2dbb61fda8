"""--fork-workers: the suite is collected once and every worker is forked from that process.

Each forked worker must still be a worker of its own (its id, its process group, its log, its
crash report), and a replacement for a crashed one is forked like the first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import RedisServer
from helpers import (
    communicate_or_dump_stacks,
    conveyor_popen,
    junit_outcomes,
    process_alive,
    run_conveyor,
    run_plain,
    wait_until,
)

from conveyor.queue import open_queue
from conveyor.worker_exit import SESSION_END

COUNT_COLLECTIONS = """
import os

def pytest_collection_finish(session):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a worker, not the controller
        with open({log!r}, "a") as log:
            log.write(f"{{os.getpid()}}\\n")
"""

HOLD_INPUT = """
import pytest

HELD = {}

def pytest_configure(config):
    HELD["input"] = getattr(config, "workerinput", None)  # as plugins keep it

@pytest.fixture
def held_input():
    return HELD["input"]
"""

RECORD_WHO = """
import json, os, time
import pytest

@pytest.mark.parametrize("i", range(12))
def test_who(i, worker_id, held_input):
    time.sleep(0.05)
    with open({log!r}, "a") as log:
        log.write(json.dumps({{
            "fixture": worker_id,
            "held": held_input["workerid"],
            "env": os.environ["PYTEST_XDIST_WORKER"],
            "pid": os.getpid(),
            "parent": os.getppid(),
            "group": os.getpgid(0),
        }}) + "\\n")
"""


def _collections(log: Path) -> int:
    return len(log.read_text().split()) if log.exists() else 0


@pytest.mark.parametrize(("flags", "collections"), [((), 3), (("--fork-workers",), 1)])
def test_the_workers_collect_once_when_forked(
    pytester: pytest.Pytester, flags: tuple[str, ...], collections: int
) -> None:
    log = pytester.path / "collections.log"
    pytester.makeconftest(COUNT_COLLECTIONS.format(log=str(log)))
    pytester.makepyfile(
        **{f"test_m{m}": "\n".join(f"def test_{i}(): pass" for i in range(10)) for m in range(3)}
    )
    result = run_conveyor(pytester, "-n", "3", *flags)
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*30 passed*"])
    assert _collections(log) == collections


def test_each_forked_worker_is_a_worker_of_its_own(pytester: pytest.Pytester) -> None:
    log = pytester.path / "who.log"
    pytester.makeconftest(HOLD_INPUT)
    pytester.makepyfile(test_who=RECORD_WHO.format(log=str(log)))
    result = run_conveyor(pytester, "-n", "3", "--fork-workers", "-p", "no:randomly")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == 12
    for record in records:
        assert record["fixture"] == record["env"]  # the worker id plugins see is its own
        assert record["held"] == record["env"]  # also in the workerinput kept at configure
        assert record["group"] == record["pid"]  # its own process group, as when spawned
    by_worker = {record["env"]: record["pid"] for record in records}
    assert len(set(by_worker.values())) == len(by_worker)  # one process per worker id
    servers = {record["parent"] for record in records}
    assert len(servers) == 1  # all forked from the one process that collected
    assert servers.isdisjoint(record["pid"] for record in records)


def test_a_suite_that_fails_to_load_fails_as_it_does_without_forking(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest("import no_such_module_for_the_fork_server")
    pytester.makepyfile(test_ok="def test_fine(): pass")
    plain = run_plain(pytester)
    spawned = run_conveyor(pytester, "-n", "2")
    forked = run_conveyor(pytester, "-n", "2", "--fork-workers")
    assert forked.ret == spawned.ret == plain.ret != 0
    forked.stderr.fnmatch_lines(["*no_such_module_for_the_fork_server*"])


def test_worker_logs_keep_each_forked_workers_output_apart(pytester: pytest.Pytester) -> None:
    """What a worker writes outside pytest's capture lands in its own log, not in the fork
    server's: the server never ends a session, so it writes nothing at the end."""
    pytester.makeconftest(
        """
        import os, sys

        def pytest_unconfigure(config):
            who = os.environ.get("PYTEST_XDIST_WORKER", "the controller")
            sys.stderr.write(f"ended as {who}\\n")
        """
    )
    pytester.makepyfile(test_many="\n".join(f"def test_{i}(): pass" for i in range(8)))
    logs = pytester.path / "logs"
    result = run_conveyor(pytester, "-n", "2", "--fork-workers", "--worker-logs", str(logs))
    assert result.ret == 0, result.stdout.str()
    assert sorted(path.name for path in logs.iterdir()) == ["fork-server.log", "gw0.log", "gw1.log"]
    # Each after the line where its session's end begins, which is shown after the report.
    mark = SESSION_END.decode()
    assert (logs / "gw0.log").read_text() == f"{mark}ended as gw0\n"
    assert (logs / "gw1.log").read_text() == f"{mark}ended as gw1\n"
    assert "ended as" not in (logs / "fork-server.log").read_text()
    assert "conveyor: worker gw0 wrote this as its pytest session ended:" in result.stderr.str()


def test_fork_workers_with_command_mode_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = run_conveyor(
        pytester, "-n", "1", "--fork-workers", "--command", "true {unit}", "--units", "x"
    )
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*--fork-workers*--command*"])


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param(("--fork-workers",), id="forked-after-collection"),
        pytest.param(
            (),
            id="preloaded",
            marks=pytest.mark.skipif(
                not sys.platform.startswith("linux"), reason="preloaded on Linux only"
            ),
        ),
    ],
)
def test_the_fork_server_leaves_no_process_behind(
    pytester: pytest.Pytester, flags: tuple[str, ...]
) -> None:
    """The workers and the process they were forked from are all gone once the run ends."""
    pids = pytester.path / "pids.log"
    pytester.makepyfile(
        test_pid=f"""
        import os

        def test_pid():
            with open({str(pids)!r}, "a") as log:
                log.write(f"{{os.getpid()}} {{os.getppid()}}\\n")
        """
    )
    result = run_conveyor(pytester, "-n", "2", *flags)
    assert result.ret == 0, result.stdout.str()
    worker, server = (int(pid) for pid in pids.read_text().split())
    for pid in (worker, server):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.redis
def test_forked_workers_on_a_redis_queue_agree_with_plain_pytest(
    pytester: pytest.Pytester, redis_server: RedisServer
) -> None:
    """Each forked worker opens its own connection: none crosses the fork."""
    pytester.makepyfile(
        test_mix="""
        import pytest

        @pytest.mark.parametrize("i", range(15))
        def test_pass(i): pass

        def test_fail(): assert 0

        @pytest.mark.skip(reason="no")
        def test_skip(): pass
        """
    )
    plain = run_plain(pytester, "--junitxml=plain.xml")
    ours = run_conveyor(
        pytester,
        "-n",
        "3",
        "--fork-workers",
        "--queue",
        redis_server.url,
        "--build",
        "fork-redis",
        "--junitxml=ours.xml",
    )
    assert ours.ret == plain.ret == 1, ours.stdout.str() + ours.stderr.str()
    assert junit_outcomes(pytester.path / "ours.xml") == junit_outcomes(pytester.path / "plain.xml")


def test_worker_setup_runs_once_in_each_forked_worker_with_its_id(
    pytester: pytest.Pytester,
) -> None:
    """Not in the fork server: a setup per worker id (a database each) must run once per
    worker, or gw0's would run twice."""
    ran = pytester.path / "setups.log"
    pytester.makepyfile(test_many="\n".join(f"def test_{i}(): pass" for i in range(12)))
    setup = f'echo "$CONVEYOR_WORKER" >> {ran}'
    result = run_conveyor(pytester, "-n", "3", "--fork-workers", "--worker-setup", setup)
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    assert sorted(ran.read_text().split()) == ["gw0", "gw1", "gw2"]


def test_a_fork_server_killed_mid_build_fails_the_build_naming_it(
    pytester: pytest.Pytester,
) -> None:
    """Its workers cannot go on (they watch their parent) nor be replaced: the build ends
    non-zero, says why, and charges no test with a crash it did not cause."""
    pytester.makepyfile(
        test_kill="""
        import os, signal, time
        import pytest

        def test_kills_the_fork_server():
            os.kill(os.getppid(), signal.SIGKILL)
            time.sleep(0.5)

        @pytest.mark.parametrize("i", range(10))
        def test_slow(i):
            time.sleep(1.5)
        """
    )
    result = run_conveyor(
        pytester, "-n", "2", "--fork-workers", "--lease-ttl", "3", "-p", "no:randomly"
    )
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == 3, output
    assert "the fork server (killed by signal SIGKILL (9)) ended" in output
    assert "crashed while running" not in output
    assert "10 passed" not in output


def test_a_conftest_that_ignores_sigchld_does_not_hang_the_build(
    pytester: pytest.Pytester,
) -> None:
    """With SIGCHLD ignored the kernel would reap the workers before the fork server could
    learn how they ended; the server restores the default before it forks."""
    pytester.makeconftest("import signal\nsignal.signal(signal.SIGCHLD, signal.SIG_IGN)")
    pytester.makepyfile(test_many="\n".join(f"def test_{i}(): pass" for i in range(6)))
    result = run_conveyor(pytester, "-n", "2", "--fork-workers")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*6 passed*"])


SLEEPERS_RECORDING_PIDS = """
import os, pathlib, time
import pytest

@pytest.mark.parametrize("i", range(2))
def test_sleep(i):
    pathlib.Path({pids!r}, f"{{os.getpid()}}-{{os.getppid()}}").write_text("")
    time.sleep(60)
"""


def _start_worker(cwd: Path, url: str, build: str) -> subprocess.Popen[str]:
    return conveyor_popen(
        cwd,
        *("worker", "-n", "2", "--fork-workers", "--queue", url, "--build", build),
        *("--lease-ttl", "3", "-p", "no:randomly"),
        new_session=True,
    )


def _running(pids: Path) -> set[int]:
    """The forked workers running a test, and their fork server."""
    found: set[int] = set()
    for path in pids.iterdir():
        found.update(int(pid) for pid in path.name.split("-"))
    return found


def test_sigterm_stops_the_forked_workers_and_returns_their_tests(
    pytester: pytest.Pytester,
) -> None:
    pids = pytester.mkdir("pids")
    pytester.makepyfile(test_slow=SLEEPERS_RECORDING_PIDS.format(pids=str(pids)))
    url = f"sqlite://{pytester.path / 'q.db'}"
    process = _start_worker(pytester.path, url, "F1")
    queue = open_queue(url, "F1")
    wait_until(lambda: len(list(pids.iterdir())) == 2, "the workers never started their tests")
    running = _running(pids)
    assert len(running) == 3  # two workers and the server they were forked from
    process.send_signal(signal.SIGTERM)
    output = communicate_or_dump_stacks(process, 60)
    assert process.returncode == 2, output
    assert "went back to the queue" in output
    assert not any(process_alive(pid) for pid in running)
    status = queue.status()
    assert status.leased == 0 and status.pending == 2  # back at once, not after the lease
    queue.close()


def test_a_killed_supervisor_leaves_no_forked_process_behind(pytester: pytest.Pytester) -> None:
    """The fork server watches the supervisor; the workers watch the server."""
    pids = pytester.mkdir("pids")
    pytester.makepyfile(test_slow=SLEEPERS_RECORDING_PIDS.format(pids=str(pids)))
    url = f"sqlite://{pytester.path / 'q.db'}"
    process = _start_worker(pytester.path, url, "F2")
    try:
        wait_until(lambda: len(list(pids.iterdir())) == 2, "the workers never started")
        running = _running(pids)
    finally:
        process.kill()
        process.communicate()
    wait_until(
        lambda: not any(process_alive(pid) for pid in running),
        "a forked worker or its server outlived the supervisor",
        timeout_s=30,
    )


def test_a_stream_kept_at_import_is_still_sys_stdout_in_a_forked_worker(
    pytester: pytest.Pytester,
) -> None:
    """A test module that keeps `sys.stdout` at import (colorama's tests do) keeps pytest's
    capture object, as in a plain run: the forked worker's capture is the same object."""
    pytester.makepyfile(
        test_kept="""
        import sys

        orig_stdout, orig_stderr = sys.stdout, sys.stderr

        def test_same_streams():
            assert sys.stdout is orig_stdout
            assert sys.stderr is orig_stderr
        """,
        test_other="\n".join(f"def test_{i}(): pass" for i in range(4)),
    )
    plain = run_plain(pytester)
    ours = run_conveyor(pytester, "-n", "2", "--fork-workers")
    assert plain.ret == ours.ret == 0, ours.stdout.str()


def test_each_forked_worker_captures_only_its_own_output(pytester: pytest.Pytester) -> None:
    """Each worker's capture files are its own: the server's, shared, would mix what two
    workers' tests print at the same time."""
    pytester.makepyfile(
        test_talk="""
        import os, sys, time
        import pytest

        @pytest.mark.parametrize("i", range(6))
        def test_talk(i):
            for _ in range(40):
                print(f"out-{i}")
                os.write(2, f"err-{i}\\n".encode())
                time.sleep(0.005)
            assert False
        """
    )
    result = run_conveyor(
        pytester, "-n", "3", "--fork-workers", "--junitxml=out.xml", "-o", "junit_logging=all"
    )
    assert result.ret == 1
    for case in ET.parse(pytester.path / "out.xml").getroot().iter("testcase"):
        i = case.get("name", "")[len("test_talk[") : -1]
        for tag, kind in (("system-out", "out"), ("system-err", "err")):
            text = case.findtext(tag) or ""
            printed = [word for word in text.split() if word.startswith(("out-", "err-"))]
            assert printed == [f"{kind}-{i}"] * 40, (i, text)


def test_a_collection_that_differs_per_process_is_one_collection_when_forked(
    pytester: pytest.Pytester,
) -> None:
    """Test ids made from the process (a pid, the time) differ between spawned workers,
    which are then refused, with a pointer to --fork-workers; forked, there is one."""
    pytester.makepyfile(
        test_pid="""
        import os, pytest

        @pytest.mark.parametrize("pid", [os.getpid()])
        def test_pid(pid): pass

        def test_other(): pass
        """
    )
    spawned = run_conveyor(pytester, "-n", "2")
    assert spawned.ret == 3, spawned.stdout.str()
    spawned.stdout.fnmatch_lines(["*collected a different set of tests*--fork-workers*"])
    forked = run_conveyor(pytester, "-n", "2", "--fork-workers")
    assert forked.ret == 0, forked.stdout.str()
    forked.stdout.fnmatch_lines(["*2 passed*"])
