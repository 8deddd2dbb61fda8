"""pytest-randomly under conveyor: one seed for every worker, plain pytest's values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import RedisServer
from helpers import communicate_or_dump_stacks, conveyor_popen, run_conveyor, run_plain

RANDOM_VALUES = """
import random

def test_a():
    print("VALUE a", random.random())

def test_b():
    print("VALUE b", random.random())

def test_c():
    print("VALUE c", random.random())
"""


def values(text: str) -> dict[str, str]:
    return dict(re.findall(r"VALUE (\w) ([0-9.]+)", text))


def worker_logs(path: Path) -> str:
    return "".join(log.read_text() for log in sorted(path.glob("*.log")))


def test_randomly_merely_installed_uses_one_seed_and_plain_values(
    with_plugins: pytest.Pytester, start: str
) -> None:
    with_plugins.makepyfile(test_values=RANDOM_VALUES)
    plain = run_plain(with_plugins, "-s", "-p", "randomly", "--randomly-seed=4321")
    ours = run_conveyor(
        with_plugins, "-n", "2", "-s", "--randomly-seed=4321", "--worker-logs", "logs"
    )
    assert ours.ret == plain.ret == 0, ours.stdout.str() + ours.stderr.str()
    expected = values(plain.stdout.str())
    assert len(expected) == 3
    assert values(worker_logs(with_plugins.path / "logs")) == expected


def test_randomly_without_a_seed_still_gives_every_worker_the_same_one(
    with_plugins: pytest.Pytester,
) -> None:
    with_plugins.makepyfile(test_values=RANDOM_VALUES)
    ours = run_conveyor(with_plugins, "-n", "3", "-s", "--worker-logs", "logs", "-v")
    assert ours.ret == 0, ours.stdout.str() + ours.stderr.str()
    seed = re.search(r"Using --randomly-seed=(\d+)", ours.stdout.str())
    assert seed is not None
    plain = run_plain(with_plugins, "-s", f"--randomly-seed={seed.group(1)}")
    assert values(worker_logs(with_plugins.path / "logs")) == values(plain.stdout.str())


def test_randomly_can_be_turned_off(with_plugins: pytest.Pytester) -> None:
    with_plugins.makepyfile(test_values=RANDOM_VALUES)
    ours = run_conveyor(with_plugins, "-n", "2", "-p", "no:randomly")
    assert ours.ret == 0 and "randomly-seed" not in ours.stdout.str()


def test_every_machine_of_a_shared_build_uses_the_same_seed(
    with_plugins: pytest.Pytester, redis_server: RedisServer
) -> None:
    """Two machines on one build, no seed given: one seed in both reports, and every test,
    whichever machine ran it, got the values plain pytest gives with that seed."""
    with_plugins.makepyfile(
        test_values="import random, time\n"
        + "".join(
            f"\ndef test_{name}():\n    time.sleep(0.3)\n    print('VALUE {name}', random.random())"
            for name in "abcdefghijkl"
        )
    )
    queue = ("--queue", redis_server.url, "--build", "seeded")
    machines = []
    for node in ("ma", "mb"):
        args = ("-n", "1", "-s", "-p", "no:cacheprovider", "--node-id", node)
        logs = ("--worker-logs", f"logs-{node}")
        machines.append(conveyor_popen(with_plugins.path, "run", *args, *queue, *logs))
    outputs = [communicate_or_dump_stacks(machine, 120) for machine in machines]
    assert [machine.returncode for machine in machines] == [0, 0], outputs
    seeds = {m.group(1) for out in outputs for m in re.finditer(r"randomly-seed=(\d+)", out)}
    assert len(seeds) == 1, outputs
    ran = {node: values(worker_logs(with_plugins.path / f"logs-{node}")) for node in ("ma", "mb")}
    assert all(ran.values()), ran  # both machines ran tests
    plain = run_plain(with_plugins, "-s", f"--randomly-seed={seeds.pop()}")
    assert {**ran["ma"], **ran["mb"]} == values(plain.stdout.str())
