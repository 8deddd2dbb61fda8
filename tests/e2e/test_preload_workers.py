"""The default start on Linux: one process imports pytest, and every worker is forked from it
before it configures (conveyor.preload_server).

What the project does when imported (its conftests, its plugins) must still run in each worker,
with that worker's own environment, as when every worker is a new interpreter; and losing the
preloaded process must lose no test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import (
    communicate_or_dump_stacks,
    conveyor_popen,
    process_alive,
    run_conveyor,
    wait_until,
)

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="workers are preloaded on Linux only"
)

RECORD_AT_IMPORT = """
import json, os, sys

with open({log!r}, "a") as log:
    log.write(json.dumps({{
        "worker": os.environ.get("PYTEST_XDIST_WORKER"),
        "pid": os.getpid(),
        "parent": os.getppid(),
        "group": os.getpgid(0),
        "conftest_modules": sorted(n for n in sys.modules if "conftest" in n and n != __name__),
    }}) + "\\n")
"""


def _records(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.parametrize("flags", [(), ("--spawn-workers",)])
def test_each_worker_imports_the_project_itself_with_its_own_environment(
    pytester: pytest.Pytester, flags: tuple[str, ...]
) -> None:
    log = pytester.path / "imports.log"
    pytester.makeconftest(RECORD_AT_IMPORT.format(log=str(log)))
    pytester.makepyfile(test_many="\n".join(f"def test_{i}(): pass" for i in range(9)))
    result = run_conveyor(pytester, "-n", "3", *flags)
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    records = _records(log)
    (controller,) = [r for r in records if r["worker"] is None]
    workers = {str(r["worker"]): r for r in records if r["worker"] is not None}
    assert sorted(workers) == ["gw0", "gw1", "gw2"]  # once each, with its own id
    for record in workers.values():
        assert record["group"] == record["pid"]  # a process group of its own
        assert record["conftest_modules"] == []  # nothing of the project imported before
    parents = {record["parent"] for record in workers.values()}
    if flags:
        assert parents == {controller["pid"]}  # each a new interpreter the controller started
    else:
        (parent,) = parents  # all forked from one process, which is not the controller
        assert parent != controller["pid"]
        assert parent not in {record["pid"] for record in workers.values()}


def test_losing_the_preloaded_process_mid_build_loses_no_test(pytester: pytest.Pytester) -> None:
    """Its workers leave (they watch their parent), their tests go back, and new workers are
    spawned in their place: every test is reported, and nothing counts as a crash."""
    mark = pytester.path / "killed.txt"
    pytester.makepyfile(
        test_kill=f"""
        import os, pathlib, signal, time
        import pytest

        def test_kills_the_process_its_worker_was_forked_from():
            mark = pathlib.Path({str(mark)!r})
            if not mark.exists():
                parent = os.getppid()
                mark.write_text(pathlib.Path(f"/proc/{{parent}}/cmdline").read_text())
                os.kill(parent, signal.SIGKILL)
            time.sleep(0.5)

        @pytest.mark.parametrize("i", range(6))
        def test_slow(i):
            time.sleep(0.5)
        """
    )
    result = run_conveyor(pytester, "-n", "2", "--lease-ttl", "3", "-p", "no:randomly")
    output = result.stdout.str() + result.stderr.str()
    assert "conveyor.worker" in mark.read_text()  # the preloaded process, not the controller
    assert result.ret == 0, output
    result.stdout.fnmatch_lines(["*7 passed*"])
    assert "crashed" not in output
    assert "conveyor's preloaded fork server) ended (killed by signal SIGKILL" in output


def test_start_up_code_of_the_users_runs_in_each_worker_with_its_own_id(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sitecustomize runs as the interpreter starts, before anything conveyor does: forked
    from one process it would run once, as no worker or as one, for all. With one, the workers
    are spawned, each running it with its own id."""
    site = pytester.mkdir("site")
    log = pytester.path / "start-up.log"
    (site / "sitecustomize.py").write_text(
        "import os, sys\n"
        "if 'conveyor.worker' in sys.orig_argv:  # not the controller, a worker's own env\n"
        f"    with open({str(log)!r}, 'a') as log:\n"
        "        log.write(os.environ.get('PYTEST_XDIST_WORKER', 'none') + '\\n')\n"
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    pytester.makepyfile(
        test_ids="""
        import os, pytest, sitecustomize

        @pytest.mark.parametrize("i", range(6))
        def test_start_up_saw_this_worker(i):
            assert os.environ["PYTEST_XDIST_WORKER"]
        """
    )
    result = run_conveyor(pytester, "-n", "2", "--dist", "test")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*6 passed*"])
    started = log.read_text().split()
    assert sorted(name for name in started if name != "none") == ["gw0", "gw1"]


def test_a_thread_started_in_c_before_the_fork_is_seen() -> None:
    """faulthandler's watchdog is a thread `threading` does not know about; a worker forked
    with one would wait forever on the watchdog's lock the first time it set a timeout."""
    script = (
        "import faulthandler\n"
        "faulthandler.dump_traceback_later(600)\n"
        "from conveyor.preload_server import why_not_fork\n"
        "print(why_not_fork())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert "a thread was running" in done.stdout, done.stdout + done.stderr
    quiet = subprocess.run(
        [sys.executable, "-c", script.split("\n", 2)[2]], capture_output=True, text=True
    )
    assert quiet.stdout.strip() == "None", quiet.stdout + quiet.stderr


def test_workers_of_a_lost_preloaded_process_start_no_more_tests(
    pytester: pytest.Pytester,
) -> None:
    """Killed while its workers collect, they are stopped at once: none goes on to start a
    test that its own next heartbeat would then cut short and send to run again."""
    started = pytester.path / "started.log"
    parents = pytester.path / "parents.log"
    pytester.makeconftest(
        f"""
        import os, time

        if os.environ.get("PYTEST_XDIST_WORKER"):
            with open({str(parents)!r}, "a") as log:
                log.write(f"{{os.getppid()}}\\n")
            time.sleep(3)
        """
    )
    pytester.makepyfile(
        test_slow=f"""
        import os, time
        import pytest

        @pytest.mark.parametrize("i", range(8))
        def test_slow(i):
            with open({str(started)!r}, "a") as log:
                log.write(f"{{i}}\\n")
            time.sleep(0.3)
        """
    )
    process = conveyor_popen(
        pytester.path, "run", "-n", "2", "--lease-ttl", "3", "-p", "no:randomly"
    )
    try:
        wait_until(lambda: parents.exists() and parents.read_text().count("\n") >= 1, "no worker")
        server = int(parents.read_text().split()[0])
        os.kill(server, signal.SIGKILL)
        output = communicate_or_dump_stacks(process, 120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "8 passed" in output
    runs = started.read_text().split()
    assert sorted(runs) == sorted(set(runs)), f"a test started twice: {runs}"


def test_fork_workers_and_spawn_workers_together_is_a_usage_error(
    pytester: pytest.Pytester,
) -> None:
    result = run_conveyor(pytester, "-n", "2", "--fork-workers", "--spawn-workers")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*--fork-workers and --spawn-workers*"])


def test_a_killed_supervisor_leaves_no_preloaded_process_behind(
    pytester: pytest.Pytester,
) -> None:
    """The preloaded process watches the supervisor; the workers watch it."""
    pids = pytester.mkdir("pids")
    pytester.makepyfile(
        test_slow=f"""
        import os, pathlib, time
        import pytest

        @pytest.mark.parametrize("i", range(2))
        def test_sleep(i):
            pathlib.Path({str(pids)!r}, f"{{os.getpid()}}-{{os.getppid()}}").write_text("")
            time.sleep(60)
        """
    )
    url = f"sqlite://{pytester.path / 'q.db'}"
    process = conveyor_popen(
        pytester.path,
        *("worker", "-n", "2", "--queue", url, "--build", "P1", "--lease-ttl", "3"),
        new_session=True,
    )
    try:
        wait_until(lambda: len(list(pids.iterdir())) == 2, "the workers never started")
        running = {int(pid) for path in pids.iterdir() for pid in path.name.split("-")}
    finally:
        process.kill()
        process.communicate()
    assert len(running) == 3  # two workers and the one process they were forked from
    wait_until(
        lambda: not any(process_alive(pid) for pid in running),
        "a worker or the preloaded process outlived the supervisor",
        timeout_s=30,
    )
