"""Signals and cleanup: a stopped or orphaned conveyor leaves no process running tests and no
lease held."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
from helpers import communicate_or_dump_stacks, conveyor_popen, process_alive, wait_until

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
