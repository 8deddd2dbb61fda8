"""Command mode: any test framework's units run as commands on conveyor's queue."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import RedisServer
from helpers import conveyor_process as conveyor
from helpers import junit_outcomes


def script(folder: Path, name: str, body: str) -> None:
    (folder / name).write_text("#!/bin/sh\n" + body + "\n")


def test_shell_script_tests_pass_fail_hang_and_flake(tmp_path: Path) -> None:
    tests = tmp_path / "tests"
    tests.mkdir()
    state = tmp_path / "flaky-state"
    script(tests, "pass.sh", "exit 0")
    script(tests, "fail.sh", 'echo "disk is full"; exit 3')
    script(tests, "hang.sh", "sleep 3600")
    script(tests, "flaky.sh", f'[ -f "{state}" ] && exit 0; touch "{state}"; exit 1')
    done = conveyor(
        tmp_path, "run", "-n", "3", "--command", "sh {unit}", "--units", "tests/*.sh",
        "--test-timeout", "2", "--max-requeues", "1", "--junitxml=out.xml",
    )  # fmt: skip
    assert done.returncode == 1, done.stdout
    assert junit_outcomes(tmp_path / "out.xml") == {
        ("", "tests.fail.sh"): [("failure",)],
        ("", "tests.flaky.sh"): [("passed",)],
        ("", "tests.hang.sh"): [("failure",)],
        ("", "tests.pass.sh"): [("passed",)],
    }
    assert "Timeout: the unit ran longer than 2 s (--test-timeout)" in done.stdout
    assert "disk is full" in done.stdout
    assert "tests/flaky.sh passed on attempt 2" in done.stdout
    assert re.search(r"2 failed, 2 passed, 2 rerun in", done.stdout)


JUNIT_WRITER = """
import sys
unit, target = sys.argv[1], sys.argv[2]
cases = "".join(
    f'<testcase classname="{unit}" name="case{i}" time="0.01">'
    + ('<failure message="case 2 broke">trace</failure>' if i == 2 else "")
    + "</testcase>"
    for i in range(3)
)
open(target, "w").write(f'<testsuite name="s" tests="3">{cases}</testsuite>')
sys.exit(1 if "broken" in unit else 0)
"""


def test_junit_written_by_the_command_lists_individual_cases(tmp_path: Path) -> None:
    (tmp_path / "writer.py").write_text(JUNIT_WRITER)
    units = "spec_a\nspec_broken\n"
    done = conveyor(
        tmp_path, "run", "-n", "2", "--command", f"{sys.executable} writer.py {{unit}} {{junit}}",
        "--units-from", "-", "--junitxml=merged.xml", "-rA",
        stdin=units,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout
    outcomes = junit_outcomes(tmp_path / "merged.xml")
    assert len(outcomes) == 6
    assert outcomes[("spec_broken.spec_broken", "case2")] == [("failure",)]
    assert outcomes[("spec_a.spec_a", "case0")] == [("passed",)]
    assert "FAILED spec_broken::spec_broken::case2 - case 2 broke" in done.stdout
    assert re.search(r"2 failed, 4 passed in", done.stdout)


def test_unit_names_are_single_arguments_and_never_executed(tmp_path: Path) -> None:
    echo_args = tmp_path / "args.py"
    echo_args.write_text(
        "import sys, pathlib\n"
        "pathlib.Path(sys.argv[1] + '.out').parent.mkdir(exist_ok=True)\n"
        "open('received.txt', 'a').write(repr(sys.argv[1:]) + '\\n')\n"
    )
    nasty = [
        "name with spaces",
        'quote\'s "double"',
        "$(touch PWNED)",
        "semi; touch PWNED2",
        "`touch PWNED3`",
    ]
    done = conveyor(
        tmp_path, "run", "-n", "2", "--command", f"{sys.executable} {echo_args} {{unit}}",
        "--units-from", "-",
        stdin="\n".join(nasty) + "\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    received = sorted((tmp_path / "received.txt").read_text().splitlines())
    assert received == sorted(repr([unit]) for unit in nasty)
    assert not list(tmp_path.glob("PWNED*"))
    # With --shell the values are quoted for the shell, still never executed.
    shell = conveyor(
        tmp_path, "run", "-n", "1", "--shell", "--command", "echo {unit} > /dev/null",
        "--units-from", "-",
        stdin="\n".join(nasty) + "\n",
    )  # fmt: skip
    assert shell.returncode == 0, shell.stdout
    assert not list(tmp_path.glob("PWNED*"))


def test_worker_setup_gets_distinct_ids_and_a_failing_setup_is_shown(tmp_path: Path) -> None:
    ids = tmp_path / "ids"
    ids.mkdir()
    script(tmp_path, "unit.sh", "exit 0")
    done = conveyor(
        tmp_path, "run", "-n", "3", "--command", "sh unit.sh", "--units-from", "-",
        "--worker-setup", f'touch "{ids}/$CONVEYOR_WORKER-$PYTEST_XDIST_WORKER_COUNT"',
        stdin="a\nb\nc\nd\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in ids.iterdir()) == ["gw0-3", "gw1-3", "gw2-3"]
    failing = conveyor(
        tmp_path, "run", "-n", "2", "--command", "sh unit.sh", "--units-from", "-",
        "--worker-setup", 'echo "createdb failed for $CONVEYOR_WORKER"; exit 7',
        stdin="a\nb\n",
    )  # fmt: skip
    assert failing.returncode == 3
    assert "failed its --worker-setup" in failing.stdout
    assert "createdb failed for gw" in failing.stdout


def test_worker_setup_in_pytest_mode_and_node_setup(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    (tmp_path / "test_x.py").write_text("def test_a(): pass\ndef test_b(): pass\n")
    done = conveyor(
        tmp_path, "run", "-n", "2",
        "--node-setup", f'touch "{marks}/node"',
        "--worker-setup", f'touch "{marks}/$CONVEYOR_WORKER"',
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in marks.iterdir()) == ["gw0", "gw1", "node"]
    broken = conveyor(tmp_path, "run", "-n", "2", "--node-setup", "echo no compiler; exit 2")
    assert broken.returncode == 3
    assert "--node-setup exited with code 2" in broken.stderr
    assert "no compiler" in broken.stderr


def test_command_mode_across_two_machines_with_one_killed_mid_unit(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    (tmp_path / "unit.py").write_text(
        "import os, sys, time, uuid\n"
        f"open(os.path.join({str(runs)!r}, uuid.uuid4().hex), 'w').write(sys.argv[1])\n"
        "time.sleep(0.3)\n"
    )
    units = "\n".join(f"unit-{i}" for i in range(24)) + "\n"
    (tmp_path / "units.txt").write_text(units)
    build = f"cmd-{uuid.uuid4().hex[:8]}"
    common = [
        "--queue", redis_server.url, "--build", build, "--lease-ttl", "1",
        "--command", f"{sys.executable} unit.py {{unit}}", "--units-from", "units.txt",
    ]  # fmt: skip
    doomed = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", "-n", "2", *common],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while len(list(runs.iterdir())) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait()
    survivor = conveyor(tmp_path, "run", "-n", "2", *common, "--junitxml=out.xml")
    assert survivor.returncode == 0, survivor.stdout + survivor.stderr
    outcomes = junit_outcomes(tmp_path / "out.xml")
    assert sorted(name for _, name in outcomes) == sorted(f"unit-{i}" for i in range(24))
    assert all(value == [("passed",)] for value in outcomes.values())
    assert "24 passed" in survivor.stdout


def test_api_example_from_the_docs_runs(tmp_path: Path) -> None:
    """The complete example in docs/api.md is executed as written."""
    doc = (Path(__file__).parents[2] / "docs" / "api.md").read_text()
    example = doc.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "example.py").write_text(example)
    done = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 units: 2 passed, 1 failed" in done.stdout


@pytest.mark.parametrize("args", [["--units", "nothing/*.x"], ["--units-from", "missing.txt"]])
def test_command_mode_bad_units_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    done = conveyor(tmp_path, "run", "-n", "1", "--command", "true {unit}", *args)
    assert done.returncode == 4
    assert "conveyor: error:" in done.stderr


def test_replay_of_a_command_mode_worker_runs_its_units_in_order(tmp_path: Path) -> None:
    log = tmp_path / "ran.log"
    (tmp_path / "unit.sh").write_text(f'echo "$1" >> "{log}"\n[ "$1" != "u3" ]\n')
    queue = f"sqlite://{tmp_path / 'q.db'}"
    common = ["--queue", queue, "--build", "cmd-replay"]
    done = conveyor(
        tmp_path, "run", "-n", "1", *common, "--command", "sh unit.sh {unit}",
        "--units-from", "-", "--order", "collected",
        stdin="u1\nu2\nu3\nu4\n",
    )  # fmt: skip
    assert done.returncode == 1
    log.unlink()
    replayed = subprocess.run(
        [
            sys.executable, "-m", "conveyor", "replay", *common, "--worker", "gw0",
            "--command", "sh unit.sh {unit}",
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert replayed.returncode == 1
    assert log.read_text().split() == ["u1", "u2", "u3", "u4"]
    assert "conveyor replay: u3: failed (exit 1)" in replayed.stdout
    assert "conveyor replay: 4 unit(s), 1 failed" in replayed.stdout
