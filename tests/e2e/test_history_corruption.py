"""Timing history is an optimisation: whatever is in it, a build runs, reports truthfully and
exits as plain pytest would. Bad entries are dropped with one warning."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import RedisServer, require_redis_server

from conveyor.errors import QueueError
from conveyor.history import CacheHistory, DirectoryCache, durations_of, merge
from conveyor.queue.redis import RedisQueue, RetryPolicy

SUITE = {
    "test_one.py": "def test_a(): pass\ndef test_b(): pass\n",
    "test_two.py": "def test_c(): pass\n",
}
GOOD = {"test_one.py::test_a": [0.5, 1]}

CORRUPT: dict[str, Any] = {
    "not a number": {"build": 1, "tests": {**GOOD, "test_one.py::test_b": [1, "x"]}},
    "tests is a number": {"build": 1, "tests": 5},
    "NaN": {"build": 1, "tests": {**GOOD, "test_one.py::test_b": [math.nan, 1]}},
    "infinity": {"build": 1, "tests": {**GOOD, "test_two.py::test_c": [math.inf, 1]}},
    "negative": {"build": 1, "tests": {**GOOD, "test_one.py::test_b": [-3, 1]}},
    "string seconds": {"build": 1, "tests": {**GOOD, "test_one.py::test_b": ["1.5", 1]}},
    "short entry": {"build": 1, "tests": {**GOOD, "test_one.py::test_b": [1]}},
    "build is text": {"build": "seven", "tests": GOOD},
    "a list": [1, 2, 3],
    "a string": "durations",
}


def write_history(folder: Path, data: Any) -> None:
    path = folder / ".pytest_cache" / "v" / "conveyor" / "durations"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))  # writes NaN and Infinity as JSON's extensions do


def test_merge_and_durations_of_drop_bad_entries() -> None:
    for data in CORRUPT.values():
        durations = durations_of(data)
        assert all(math.isfinite(s) and s >= 0 for s in durations.values()), data
        merged = merge(data, {"test_two.py::test_c": 0.25})
        assert merged["tests"]["test_two.py::test_c"] == [0.25, merged["build"]]
        assert all(
            math.isfinite(seconds) and seconds >= 0 and isinstance(build, int)
            for seconds, build in merged["tests"].values()
        ), merged


def test_cache_history_warns_once_per_process(tmp_path: Path) -> None:
    write_history(tmp_path, CORRUPT["NaN"])
    store = CacheHistory(DirectoryCache(tmp_path / ".pytest_cache"))
    with pytest.warns(UserWarning, match=r"ignored 1 bad entry") as recorded:
        assert store.load() == {"test_one.py::test_a": 0.5}
        assert store.load() == {"test_one.py::test_a": 0.5}
        store.record({"test_one.py::test_b": 1.0})
    assert len(recorded) == 1
    assert store.load() == {"test_one.py::test_a": 0.5, "test_one.py::test_b": 1.0}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_a_build_with_corrupt_history_runs_and_reports(tmp_path: Path, case: str) -> None:
    for name, text in SUITE.items():
        (tmp_path / name).write_text(text)
    # The suite's own configuration turns warnings into errors; conveyor's must stay warnings.
    (tmp_path / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n")
    write_history(tmp_path, CORRUPT[case])
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "run", "-n", "2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "INTERNALERROR" not in output and "Traceback" not in output
    assert "nan" not in output.lower() and "inf s" not in output
    assert "3 passed" in done.stdout
    assert done.stdout.count("timing history") <= 2  # the estimate line, and one warning
    assert done.stdout.count("bad entr") == 1, done.stdout
    stored = json.loads(
        (tmp_path / ".pytest_cache" / "v" / "conveyor" / "durations").read_text(),
        parse_constant=lambda name: pytest.fail(f"history was saved with {name}"),
    )
    assert set(stored["tests"]) == {
        "test_one.py::test_a",
        "test_one.py::test_b",
        "test_two.py::test_c",
    }


def test_redis_history_ignores_values_that_are_not_durations(redis_server: RedisServer) -> None:
    queue = RedisQueue.from_url(redis_server.url, f"h-{uuid.uuid4().hex[:8]}")
    suite = f"suite-{uuid.uuid4().hex[:8]}"
    history = queue.history(suite)
    queue._client.hset(
        "conveyor:history:{" + suite + "}",
        mapping={"good": "1.5", "nan": "nan", "inf": "inf", "neg": "-2", "text": "abc"},
    )
    with pytest.warns(UserWarning, match="ignored 4 bad entries"):
        assert history.load() == {"good": 1.5}
    history.record({"new": 0.5})
    assert history.load() == {"good": 1.5, "new": 0.5}
    queue.close()


def test_a_redis_history_that_fails_never_fails_the_build(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """The history key holds another type (WRONGTYPE on every read and write): the build
    runs, passes and says the history was not saved."""
    for name, text in SUITE.items():
        (tmp_path / name).write_text(text)
    suite = f"suite-{uuid.uuid4().hex[:8]}"
    queue = RedisQueue.from_url(redis_server.url, "setup")
    queue._client.set("conveyor:history:{" + suite + "}", "not a hash")
    queue.close()
    done = subprocess.run(
        [
            sys.executable, "-m", "conveyor", "run", "-n", "2", "--queue", redis_server.url,
            "--build", f"b-{uuid.uuid4().hex[:8]}", "--history-key", suite,
            "-p", "no:cacheprovider",
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout
    assert "timing history was not saved" in done.stdout
    assert "WRONGTYPE" in done.stdout


def test_redis_history_errors_are_queue_errors(tmp_path: Path) -> None:
    """A history call that cannot reach Redis raises conveyor's QueueError, which every caller
    catches, not redis-py's own ConnectionError, which none does."""
    require_redis_server()
    server = RedisServer(tmp_path / "redis")
    server.start()
    queue = RedisQueue.from_url(server.url, "b1", retry=RetryPolicy(tries=1))
    history = queue.history("suite")
    history.record({"a": 1.0})
    server.stop()
    with pytest.raises(QueueError, match="cannot reach the Redis queue"):
        history.load()
    with pytest.raises(QueueError, match="cannot reach the Redis queue"):
        history.record({"a": 2.0})
    queue.close()


def test_the_history_is_written_whole_as_compact_json_that_pytests_cache_reads(
    pytester: pytest.Pytester,
) -> None:
    """pytest's cache.set builds the whole indented text first: about 450 bytes a test in the
    controller at the end of the build. The history is streamed to a temporary file instead,
    and moved into place (a reader never sees half of it)."""
    pytester.makepyfile(**{name[:-3]: text for name, text in SUITE.items()})
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-m", "conveyor", "run", "-n", "2", "-p", "no:randomly"],
            cwd=pytester.path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    folder = pytester.path / ".pytest_cache" / "v" / "conveyor"
    text = (folder / "durations").read_text()
    assert "\n" not in text and ": " not in text  # compact
    assert json.loads(text)["build"] == 2
    assert sorted(path.name for path in folder.iterdir() if path.name.startswith(".")) == []
    shown = pytester.runpytest("--cache-show", "conveyor/durations")
    shown.stdout.fnmatch_lines(["conveyor/durations contains:", "*test_one.py::test_a*"])
