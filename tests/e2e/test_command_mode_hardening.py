"""Command mode against hostile or broken input: verdicts that JUnit cannot hide, unit names
that must stay data, units nobody collected, and JUnit files with nonsense in them."""

from __future__ import annotations

import re
import sys
import uuid
from pathlib import Path

import redis
from conftest import RedisServer
from helpers import conveyor_process as conveyor
from helpers import junit_outcomes

from conveyor.queue.redis import RedisQueue

PASSING_CASE_THEN_EXIT = """
import os, signal, sys, time
unit, target = sys.argv[1], sys.argv[2]
open(target, "w").write(
    '<testsuite name="s" tests="1"><testcase classname="c" name="fine" time="0.01"/></testsuite>'
)
sys.stdout.flush()
if unit == "segv-code":
    sys.exit(139)
if unit == "signal":
    os.kill(os.getpid(), signal.SIGKILL)
if unit == "hang":
    time.sleep(3600)
"""


def test_a_failing_process_fails_its_unit_whatever_its_junit_says(tmp_path: Path) -> None:
    (tmp_path / "unit.py").write_text(PASSING_CASE_THEN_EXIT)
    done = conveyor(
        tmp_path, "run", "-n", "3", "--command", f"{sys.executable} unit.py {{unit}} {{junit}}",
        "--units-from", "-", "--test-timeout", "3", "--junitxml=out.xml",
        stdin="segv-code\nsignal\nhang\nclean\n",
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    outcomes = junit_outcomes(tmp_path / "out.xml")
    for unit in ("segv-code", "signal", "hang"):
        # The unit itself is a failed test, beside the passing case its JUnit listed.
        assert outcomes[("", unit)] == [("failure",)], outcomes
        assert outcomes[(f"{unit}.c", "fine")] == [("passed",)], outcomes
    assert ("", "clean") not in outcomes
    assert outcomes[("clean.c", "fine")] == [("passed",)]
    assert "exited with code 139" in done.stdout
    assert "killed by signal SIGKILL" in done.stdout
    assert "Timeout: the unit ran longer than 3 s" in done.stdout
    assert re.search(r"3 failed, 4 passed in", done.stdout), done.stdout


ECHO_ARGS = """
import sys
open("received.txt", "a").write(repr(sys.argv[1:]) + "\\n")
"""


def test_placeholders_are_substituted_in_one_pass(tmp_path: Path) -> None:
    (tmp_path / "echo_args.py").write_text(ECHO_ARGS)
    units = ["x{junit_dir}y", "{worker}", "{unit}{junit}"]
    done = conveyor(
        tmp_path, "run", "-n", "1", "--command", f"{sys.executable} echo_args.py {{unit}}",
        "--units-from", "-", stdin="\n".join(units) + "\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    received = (tmp_path / "received.txt").read_text().splitlines()
    assert sorted(received) == sorted(repr([unit]) for unit in units)


NASTY_UNITS = [
    "$(touch PWNED1)",
    "`touch PWNED2`",
    '"; touch PWNED3; echo "',
    "'; touch PWNED4; echo '",
    "x{junit_dir}y",
    "two  spaces\tand a tab",
    "*",
]


def test_shell_mode_never_splices_values_into_the_script(tmp_path: Path) -> None:
    """With --shell each placeholder stands for a variable, quoted for where it stands (bare,
    inside double quotes, inside single quotes); no value ever becomes part of the script."""
    commands = [
        'echo "unit=[{unit}]"',
        "echo unit=[{unit}]",
        "echo 'unit=[{unit}]'",
        "printf 'unit=[%s]\\n' {unit}",
    ]
    for command in commands:
        (tmp_path / "out.txt").unlink(missing_ok=True)
        done = conveyor(
            tmp_path, "run", "-n", "2", "--shell", "--command", f"{command} >> out.txt",
            "--units-from", "-", stdin="\n".join(NASTY_UNITS) + "\n",
        )  # fmt: skip
        assert done.returncode == 0, command + done.stdout + done.stderr
        assert not list(tmp_path.glob("PWNED*")), command
        written = sorted((tmp_path / "out.txt").read_text().splitlines())
        assert written == sorted(f"unit=[{unit}]" for unit in NASTY_UNITS), command


BAD_ATTRIBUTES = """
import sys
unit, target = sys.argv[1], sys.argv[2]
bad = {"abc": 'time="abc"', "nan": 'time="nan"', "negative": 'time="-5"', "inf": 'time="inf"'}
open(target, "w").write(
    f'<testsuite name="s" tests="2"><testcase classname="c" name="odd" {bad[unit]}/>'
    '<testcase classname="c" name="fine" time="0.5"/></testsuite>'
)
"""


def test_junit_with_nonsense_attributes_counts_them_as_zero_with_a_warning(
    tmp_path: Path,
) -> None:
    (tmp_path / "unit.py").write_text(BAD_ATTRIBUTES)
    done = conveyor(
        tmp_path, "run", "-n", "2", "--command", f"{sys.executable} unit.py {{unit}} {{junit}}",
        "--units-from", "-", "--junitxml=out.xml", "--max-worker-restarts", "0",
        stdin="abc\nnan\nnegative\ninf\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "crashed" not in done.stdout
    assert re.search(r"8 passed, 4 warnings in", done.stdout), done.stdout
    assert "time='abc' of test case c.odd is not a duration in seconds; counted as 0" in done.stdout
    assert re.search(r'time="0(\.0+)?"', (tmp_path / "out.xml").read_text())


def test_a_unit_the_worker_did_not_collect_is_refused_not_run(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Whoever can write to the Redis can add a unit id to a build's pending set; a command
    worker must not run it (it would be a command line chosen by someone else)."""
    (tmp_path / "unit.py").write_text("import sys\nopen('ran-' + sys.argv[1], 'w').close()\n")
    build = f"inject-{uuid.uuid4().hex[:8]}"
    queue = RedisQueue.from_url(redis_server.url, build)
    queue.populate("elsewhere", ["u1", "u2"], {"max_unit_crashes": 2, "mode": "command"})
    queue.close()
    client = redis.Redis.from_url(redis_server.url)
    client.zadd(f"conveyor:{{{build}}}:pending", {"injected": -5})
    client.close()
    done = conveyor(
        tmp_path, "run", "-n", "1", "--queue", redis_server.url, "--build", build,
        "--command", f"{sys.executable} unit.py {{unit}}", "--units-from", "-",
        "--junitxml=out.xml", "--worker-logs", "logs",
        stdin="u1\nu2\n",
    )  # fmt: skip
    assert not (tmp_path / "ran-injected").exists()
    assert (tmp_path / "ran-u1").exists() and (tmp_path / "ran-u2").exists()
    assert done.returncode not in (0, 5), done.stdout + done.stderr
    refusal = "was handed 'injected', which it did not collect; it was not run"
    assert refusal in done.stdout
    assert refusal in (tmp_path / "logs" / "gw0.log").read_text()
    outcomes = junit_outcomes(tmp_path / "out.xml")
    assert outcomes[("", "u1")] == outcomes[("", "u2")] == [("passed",)]
    assert outcomes.get(("", "injected"), [("error",)]) != [("passed",)]


# A plugin of the controller's that reads what workers send back (as pytest-cov does).
NODES_DOWN = """
def pytest_testnodedown(node, error):
    with open("nodes-down.txt", "a") as log:
        log.write(f"{node.gateway.id} {error!r}\\n")
"""


def test_a_command_worker_says_its_last_so_the_report_does_not_wait_for_it(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """On a shared queue the controller waits (up to 30 s) for each worker's output before
    the summary; a command worker never sent any, so every such build on Redis waited the
    whole 30 s when a plugin that reads it was installed, and then called the worker lost."""
    (tmp_path / "unit.py").write_text("import sys\n")
    (tmp_path / "conftest.py").write_text(NODES_DOWN)
    done = conveyor(
        tmp_path, "run", "-n", "2", "--queue", redis_server.url,
        "--build", f"last-word-{uuid.uuid4().hex[:8]}",
        "--command", f"{sys.executable} unit.py {{unit}}", "--units-from", "-",
        stdin="u1\nu2\nu3\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = (tmp_path / "nodes-down.txt").read_text().splitlines()
    # Each worker that joined went down having said its last, none lost (a worker that only
    # started once the build was over may not have joined at all).
    assert lines and all(line.endswith(" None") for line in lines), lines
