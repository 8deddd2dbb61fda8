"""Test files whose names are not UTF-8. Plain pytest runs them (Python decodes such a name with
surrogate escapes); conveyor must carry those test ids through its queues unchanged."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conveyor.queue import open_queue

NAME = os.fsdecode(b"test_caf\xe9.py")  # Latin-1 bytes: 'test_caf\udce9.py'


def make_suite(folder: Path) -> None:
    (folder / NAME).write_text("def test_ok(): pass\ndef test_bad(): assert 0\n")
    (folder / "test_plain.py").write_text("def test_p(): pass\n")


def run(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args, "-p", "no:cacheprovider", "-rA"],
        cwd=folder,
        capture_output=True,
        text=True,
        errors="surrogateescape",
        timeout=300,
    )


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_test_file_whose_name_is_not_utf8_runs_and_reports(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    make_suite(tmp_path)
    # (plain pytest's --junitxml cannot write such a name, so the summary is compared)
    plain = run(tmp_path, "pytest")
    assert plain.returncode == 1, plain.stdout
    queue = (
        request.getfixturevalue("redis_server").url
        if backend == "redis"
        else f"sqlite://{tmp_path / 'q.db'}"
    )
    ours = run(
        tmp_path, "conveyor", "run", "-n", "2", "--queue", queue,
        "--build", f"b-{uuid.uuid4().hex[:8]}",
    )  # fmt: skip
    output = ours.stdout + ours.stderr
    assert ours.returncode == 1, output
    assert "UnicodeEncodeError" not in output and "INTERNALERROR" not in output
    assert "1 failed, 2 passed" in ours.stdout
    for line in (f"PASSED {NAME}::test_ok", f"FAILED {NAME}::test_bad - assert 0"):
        assert line in plain.stdout
        assert line in ours.stdout


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_queues_carry_surrogate_escaped_ids_unchanged(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    url = (
        request.getfixturevalue("redis_server").url
        if backend == "redis"
        else f"sqlite://{tmp_path / 'q.db'}"
    )
    odd = f"{NAME}::test_ok"
    units = [odd, "test_plain.py::test_p", "plain-caf\u00e9"]
    queue = open_queue(url, f"s-{uuid.uuid4().hex[:8]}")
    assert queue.populate("w1", units, {})
    assert queue.units() == units
    leased = queue.reserve("w1", 3)
    assert [lease.unit for lease in leased.leases] == units
    assert queue.heartbeat("w1", units) == 3
    assert queue.complete("w1", [(odd, {"nodeid": odd})]) == [True]
    assert queue.complete("w1", [(odd, {"nodeid": odd})]) == [False]
    results = [event for event in queue.events(0) if event.kind == "result"]
    assert [(event.unit, event.data["nodeid"]) for event in results] == [(odd, odd)]
    assert [lease.unit for lease in queue.reservations("w1")] == units
    queue.close()
