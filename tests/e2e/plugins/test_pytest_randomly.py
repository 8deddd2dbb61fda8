"""pytest-randomly under conveyor: one seed for every worker, plain pytest's values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import run_conveyor, run_plain

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
