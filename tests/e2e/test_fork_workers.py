"""--fork-workers: the suite is collected once and every worker is forked from that process.

Each forked worker must still be a worker of its own (its id, its process group, its log, its
crash report), and a replacement for a crashed one is forked like the first."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import RedisServer
from helpers import junit_outcomes, run_conveyor, run_plain

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


def test_a_forked_worker_killed_mid_test_is_replaced_by_a_new_fork(
    pytester: pytest.Pytester,
) -> None:
    marker = pytester.path / "killed-once"
    log = pytester.path / "collections.log"
    pytester.makeconftest(COUNT_COLLECTIONS.format(log=str(log)))
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
    result = run_conveyor(pytester, "-n", "2", "--fork-workers", "--junitxml=out.xml")
    assert marker.exists()
    assert result.ret == 0, result.stdout.str()
    outcomes = junit_outcomes(pytester.path / "out.xml")
    assert outcomes[("test_kill", "test_dies_once")] == [("passed",)]
    assert len(outcomes) == 21
    result.stdout.fnmatch_lines(
        [
            "worker gw? killed by signal SIGKILL (9) while running test_kill.py::test_dies_once*",
            "*21 passed*",
        ]
    )
    assert _collections(log) == 1  # the replacement was forked, not started afresh


def test_a_forked_worker_that_segfaults_shows_its_own_stack(pytester: pytest.Pytester) -> None:
    """faulthandler writes to the worker's own log after the fork, so the report shows the
    crash's stack as it does for a spawned worker."""
    pytester.makepyfile(
        test_crash="""
        import ctypes

        def test_segfault():
            ctypes.string_at(0)
        """,
        test_fine="\n".join(f"def test_{i}(): pass" for i in range(10)),
    )
    result = run_conveyor(pytester, "-n", "2", "--fork-workers", "--junitxml=out.xml")
    assert result.ret == 1
    outcomes = junit_outcomes(pytester.path / "out.xml")
    assert outcomes.pop(("test_crash", "test_segfault")) == [("failure",)]
    assert all(value == [("passed",)] for value in outcomes.values())
    result.stdout.fnmatch_lines(
        [
            "*crashed while running this test: worker gw? killed by signal SIGSEGV (11)*",
            "*Segmentation fault*",
            "*test_crash.py*test_segfault*",
            "*1 failed, 10 passed*",
        ]
    )


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
    assert (logs / "gw0.log").read_text().strip() == "ended as gw0"
    assert (logs / "gw1.log").read_text().strip() == "ended as gw1"
    assert "ended as" not in (logs / "fork-server.log").read_text()


def test_fork_workers_with_command_mode_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = run_conveyor(
        pytester, "-n", "1", "--fork-workers", "--command", "true {unit}", "--units", "x"
    )
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*--fork-workers*--command*"])


def test_the_fork_server_leaves_no_process_behind(pytester: pytest.Pytester) -> None:
    pids = pytester.path / "pids.log"
    pytester.makepyfile(
        test_pid=f"""
        import os

        def test_pid():
            with open({str(pids)!r}, "a") as log:
                log.write(f"{{os.getpid()}} {{os.getppid()}}\\n")
        """
    )
    result = run_conveyor(pytester, "-n", "2", "--fork-workers")
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
