"""The memory of flaky tests across real builds: pytest's cache with the embedded SQLite queue,
and a real Redis shared by builds; auto-quarantine and its release; `conveyor plan` on both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import RedisServer
from memory_helpers import clean_env, conveyor, output

SUITE = """
import os
import pathlib

def test_flaky():
    mode = os.environ["MODE"]
    if mode == "retry":  # fails on the first attempt of each build, passes on the retry
        marker = pathlib.Path(os.environ["MARKER"])
        if not marker.exists():
            marker.write_text("failed once")
            raise AssertionError("first attempt fails")
    elif mode == "fail":
        raise AssertionError("fails today")

def test_ok():
    pass
"""

FLIP_SUITE = """
import os

def test_flip():
    assert os.environ["FLIP"] == "pass", "flips"
"""


def flaky_json(cwd: Path, *args: str) -> dict[str, dict[str, object]]:
    done = conveyor(cwd, "flaky", "--json", *args)
    assert done.returncode == 0, output(done)
    return {row["test"]: row for row in json.loads(done.stdout)}


def test_auto_quarantine_takes_a_flaky_test_and_lets_it_go_after_clean_builds(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_f=SUITE)
    cwd = pytester.path
    run = ("run", "-n", "1", "--max-requeues", "1")
    auto = ("--quarantine-auto", "0.5", "--quarantine-release", "2")

    done = conveyor(cwd, *run, env=clean_env(MODE="retry", MARKER="m1"))
    assert done.returncode == 0, output(done)
    recorded = flaky_json(cwd)["test_f.py::test_flaky"]
    assert (recorded["count"], recorded["retries"], recorded["flips"]) == (1, 1, 0)
    assert recorded["last_failure"] == "AssertionError: first attempt fails"

    done = conveyor(cwd, *run, *auto, env=clean_env(MODE="fail"))
    assert done.returncode == 0, output(done)  # quarantined automatically: failing is forgiven
    assert "QUARANTINED test_f.py::test_flaky - AssertionError: fails today" in output(done)
    assert "auto: flaky score 1.0" in output(done)

    done = conveyor(cwd, *run, *auto, env=clean_env(MODE="pass"))
    assert done.returncode == 0 and "left quarantine" not in output(done), output(done)
    done = conveyor(cwd, *run, *auto, env=clean_env(MODE="pass"))
    assert "test_f.py::test_flaky left quarantine: it passed 2 builds in a row" in output(done)

    done = conveyor(cwd, *run, *auto, env=clean_env(MODE="fail"))
    assert done.returncode == 1, output(done)  # out of quarantine: its failures count again

    listing = conveyor(cwd, "flaky")
    assert "test_f.py::test_flaky" in listing.stdout and "first attempt fails" in listing.stdout
    plan = conveyor(cwd, "plan", "--workers", "1,2", "--html", "plan.html")
    assert plan.returncode == 0, output(plan)
    # Five builds, the first without timing history: its cost is not a planned build's.
    assert "overheads from 4 recorded build(s) (start-up measured at 1 worker(s))" in plan.stdout
    assert "<- knee" in plan.stdout
    page = (cwd / "plan.html").read_text()
    assert "id='plan'" in page and "<canvas id='lanes'>" in page


def test_flaky_memory_on_redis_counts_retries_and_flips_once_per_build(
    pytester: pytest.Pytester, redis_server: RedisServer
) -> None:
    pytester.makepyfile(test_f=SUITE.replace("test_flaky", "test_retry"))
    pytester.makepyfile(test_flip=FLIP_SUITE)
    cwd = pytester.path
    key = f"suite-{cwd.name}"
    queue = ("--queue", redis_server.url, "--history-key", key)
    run = ("run", "-n", "2", "--max-requeues", "1", *queue)
    same_commit = {"GITHUB_SHA": "0123abc"}

    first = conveyor(
        cwd,
        *run,
        "--build",
        "B1",
        env=clean_env(MODE="retry", MARKER="m1", FLIP="fail", **same_commit),
    )
    assert first.returncode == 1, output(first)
    second = conveyor(
        cwd,
        *run,
        "--build",
        "B2",
        env=clean_env(MODE="retry", MARKER="m2", FLIP="pass", **same_commit),
    )
    assert second.returncode == 0, output(second)
    # Another report of B2 replays it; the build is not recorded twice.
    again = conveyor(cwd, "report", *queue, "--build", "B2")
    assert again.returncode == 0, output(again)

    found = flaky_json(cwd, *queue)
    assert set(found) == {"test_f.py::test_retry", "test_flip.py::test_flip"}
    retry = found["test_f.py::test_retry"]
    assert (retry["retries"], retry["flips"]) == (2, 0)
    flip = found["test_flip.py::test_flip"]
    assert (flip["flips"], flip["retries"]) == (1, 0)
    assert str(flip["last_failure"]).startswith("AssertionError: flips")

    # Both are flaky by now: quarantined automatically, test_flip's failure is forgiven.
    third = conveyor(
        cwd,
        *run,
        "--build",
        "B3",
        "--quarantine-auto",
        "0.5",
        env=clean_env(MODE="pass", FLIP="fail", **same_commit),
    )
    assert third.returncode == 0, output(third)
    assert "QUARANTINED test_flip.py::test_flip - AssertionError: flips" in output(third)

    plan = conveyor(cwd, "plan", "--workers", "1,2,4", "--json", *queue)
    assert plan.returncode == 0, output(plan)
    predicted = json.loads(plan.stdout)
    # The first build had no timing history: what it cost is not a planned build's.
    assert predicted["tests"] == 3 and predicted["recorded_builds"] == 2
    assert [row["workers"] for row in predicted["rows"]] == [1, 2, 4]


FROZEN_CLOCK_SUITE = """
import _pytest.timing
import pytest

FROZEN = 784_000_000.0  # 1994: freezegun freezes pytest's own clocks as well


@pytest.fixture
def frozen_clock(monkeypatch):
    monkeypatch.setattr(_pytest.timing, "time", lambda: FROZEN)
    monkeypatch.setattr(_pytest.timing, "perf_counter", lambda: FROZEN)
    yield


def test_in_1994(frozen_clock):
    pass


@pytest.mark.parametrize("n", range(20))
def test_now(n):
    pass
"""


def test_a_frozen_clock_does_not_enter_the_builds_recorded_cost(pytester: pytest.Pytester) -> None:
    """A test that froze time (freezegun) gave its setup report a start in 1994 and a stop
    now: the build's recorded cost held 32 years of testing, and `conveyor plan` predicted
    1.9 billion seconds for a suite of 21 trivial tests."""
    pytester.makepyfile(test_frozen=FROZEN_CLOCK_SUITE)
    cwd = pytester.path
    for _ in range(2):  # the second build, planned from history, records its cost
        done = conveyor(cwd, "run", "-n", "2", "-p", "no:randomly", env=clean_env())
        assert done.returncode == 0, output(done)
    plan = conveyor(cwd, "plan", "--workers", "1,2", "--json")
    assert plan.returncode == 0, output(plan)
    predicted = json.loads(plan.stdout)
    assert predicted["recorded_builds"] == 1
    for row in predicted["rows"]:
        assert row["predicted_wall_s"] < 600 and row["gap_s"] < 60, row
