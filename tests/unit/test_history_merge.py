"""The stored timing history merged entry by entry (conveyor.history_stream) must give what
merging it whole gives (conveyor.history.merge), whatever the file holds and wherever its
chunks are cut; a file of another shape is left to the whole merge."""

from __future__ import annotations

import json
import random
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from conftest import RedisServer

from conveyor.history import FORGET_AFTER_BUILDS, CacheHistory, merge, write_json
from conveyor.history_stream import merge_file
from conveyor.queue import open_queue


def stored_history(rng: random.Random, size: int, build: int) -> dict[str, Any]:
    ids = [f"tests/test_{rng.randrange(5)}.py::test_{i}[é-{rng.random():.3f}]" for i in range(size)]
    tests: dict[str, Any] = {
        nodeid: [round(rng.uniform(0, 3), 6), rng.randint(max(0, build - 30), build)]
        for nodeid in ids
    }
    return {"build": build, "tests": tests}


def both_ways(tmp_path: Path, stored: Any, durations: dict[str, float], chunk: int) -> Any:
    path = tmp_path / "durations"
    path.write_text(json.dumps(stored, ensure_ascii=False, separators=(",", ":")), "utf-8")
    expected = merge(json.loads(json.dumps(stored)), durations)
    assert merge_file(path, durations, chunk=chunk) == 0
    found = json.loads(path.read_text("utf-8"))
    assert found == expected
    return found


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_merged_entry_by_entry_as_merged_whole(tmp_path: Path, chunk: int) -> None:
    rng = random.Random(chunk)
    for round_ in range(5):
        stored = stored_history(rng, 60, build=25 + round_)
        ran = rng.sample(sorted(stored["tests"]), 30)
        durations = {nodeid: rng.uniform(0, 2) for nodeid in ran}
        durations |= {f"new.py::test_{i}": float(i) for i in range(5)}
        found = both_ways(tmp_path, stored, durations, chunk)
        assert found["build"] == stored["build"] + 1
        # Entries not seen for FORGET_AFTER_BUILDS builds are gone, the others kept.
        for nodeid, (_, last) in stored["tests"].items():
            if nodeid not in durations:
                assert (nodeid in found["tests"]) == (found["build"] - last <= FORGET_AFTER_BUILDS)


def test_no_file_yet_and_an_empty_history(tmp_path: Path) -> None:
    path = tmp_path / "durations"
    assert merge_file(path, {"t.py::a": 1.5, "t.py::bad": float("nan")}) == 0
    assert json.loads(path.read_text()) == {"build": 1, "tests": {"t.py::a": [1.5, 1]}}
    both_ways(tmp_path, {"build": 4, "tests": {}}, {"t.py::a": 2.0}, 3)


def test_bad_entries_are_left_out_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "durations"
    path.write_text(
        '{"build": 3, "tests": {"a": [1.0, 3], "b": "x", "c": [NaN, 2], "d": [1, true],'
        ' "e": [-1, 2], "f": [2, 3]}}'
    )
    assert merge_file(path, {"a": 3.0, "c": 1.0}, chunk=5) == 4
    assert json.loads(path.read_text()) == {
        "build": 4,
        "tests": {"a": [2.0, 4], "f": [2.0, 3], "c": [1.0, 4]},
    }


def test_a_test_id_that_is_not_utf8_is_written_and_read_back(tmp_path: Path) -> None:
    nodeid = "test_\udcff.py::test_a"  # a file name that is not UTF-8, as Python decodes it
    path = tmp_path / "durations"
    assert merge_file(path, {nodeid: 1.0}) == 0
    assert merge_file(path, {nodeid: 3.0}) == 0
    assert json.loads(path.read_text("utf-8"))["tests"] == {nodeid: [2.0, 2]}


@pytest.mark.parametrize(
    "text",
    [
        '{"tests": {"a": [1.0, 1]}, "build": 1}',  # another key order: someone else's writer
        '{"build": 1, "tests": {"a": [1.0, 1]}, "extra": 1}',
        '{"build": 1, "tests": {"a": [1.0, 1]}',  # cut short
        '{"build": 1, "tests": {"a": [1.0, 1]}} trailing',
        '{"build": 1.0, "tests": {}}',
        '{"build": 1, "tests": {"a" [1.0, 1]}}',
        '{"build": 1, "tests": {1: [1.0, 1]}}',
        '{"build": 08, "tests": {}}',  # json.loads refuses these: its shape is not conveyor's
        '{"build": 1,\u00a0"tests": {}}',
        '{"build": 1, "tests": {"a": [1.0, 1]\u2028}}',
        '{"build": 1, "tests": {"a": [1.0, 1]}}\x0c',
        # A test id twice: json.loads keeps the last entry, a stream would merge the first.
        '{"build": 1, "tests": {"a": [1.0, 1], "b": [1.0, 1], "a": [3.0, 1]}}',
        '{"build": 1, "tests": {"a": "x", "\\u0061": [3.0, 1]}}',
        # ... and so for a test this build did not run.
        '{"build": 1, "tests": {"b": [1.0, 1], "a": [1.0, 1], "b": [3.0, 1]}}',
        '{"build": 1, "tests": {"b": "x", "\\u0062": [3.0, 1]}}',
        "[1, 2]",
        "",
    ],
)
def test_a_file_of_another_shape_is_left_to_the_whole_merge(tmp_path: Path, text: str) -> None:
    path = tmp_path / "durations"
    path.write_text(text)
    assert merge_file(path, {"a": 2.0}, chunk=4) is None
    assert path.read_text() == text
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_not_utf8_is_left_to_the_whole_merge(tmp_path: Path) -> None:
    path = tmp_path / "durations"
    path.write_bytes(b'{"build": 1, "tests": {"\xff": [1.0, 1]}}')
    assert merge_file(path, {"a": 2.0}) is None


def test_pytest_cache_history_is_streamed_and_still_reads_as_before(
    pytester: pytest.Pytester,
) -> None:
    """Through pytest's own Cache: what the stream writes, cache.get reads; a file of another
    shape is merged whole, its bad entries warned about."""
    config = pytester.parseconfigure()
    store = CacheHistory(config.cache)
    store.record({"t.py::a": 1.0, "t.py::b": 2.0})
    store.record({"t.py::a": 3.0})
    assert store.load() == {"t.py::a": 2.0, "t.py::b": 2.0}
    assert config.cache is not None
    config.cache.set("conveyor/durations", {"tests": {"t.py::a": [1.0, 1], "t.py::c": 5}})
    with pytest.warns(UserWarning, match="ignored 1 bad entry"):
        store.record({"t.py::a": 3.0})
    assert store.load() == {"t.py::a": 2.0}


def test_redis_history_is_merged_in_batches(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = open_queue(str(redis_server.url), "history-batches")
    history = queue.history("batches")  # type: ignore[attr-defined]
    monkeypatch.setattr(history, "RECORD_BATCH", 3)
    first = {f"t.py::test_{i}": float(i) for i in range(10)}
    history.record(first)
    history.record({f"t.py::test_{i}": float(i) + 2 for i in range(0, 10, 2)} | {"t.py::x": 1.0})
    expected = {
        nodeid: seconds + (1.0 if i % 2 == 0 else 0.0)
        for i, (nodeid, seconds) in enumerate(first.items())
    }
    assert history.load() == expected | {"t.py::x": 1.0}
    queue.close()


def test_a_number_cut_by_a_chunk_is_read_whole(tmp_path: Path) -> None:
    """ "1" of "1.5" decodes too; read on before taking it, whatever the chunk size."""
    text = '{"build":1,"tests":{"a":1.5,"b":[0.125,1],"c":[1e-7,1],"d":[1e400,1]}}'
    for chunk in range(1, 40):
        path = tmp_path / f"durations-{chunk}"
        path.write_text(text)
        assert merge_file(path, {"b": 0.125}, chunk=chunk) == 2, chunk
        assert json.loads(path.read_text()) == {
            "build": 2,
            "tests": {"b": [0.125, 2], "c": [1e-7, 1]},
        }


def test_a_duration_beyond_any_float_is_a_bad_entry(tmp_path: Path) -> None:
    path = tmp_path / "durations"
    path.write_text('{"build":1,"tests":{"a":[1' + "0" * 400 + ',1],"b":[1.0,1]}}')
    assert merge_file(path, {}) == 1
    assert json.loads(path.read_text()) == {"build": 2, "tests": {"b": [1.0, 1]}}


def test_a_history_with_an_id_that_is_not_utf8_is_saved_whole_too(tmp_path: Path) -> None:
    """The whole merge (a file of another shape) writes with write_json, which wrote UTF-8
    text and failed on such an id: "timing history was not saved"."""
    nodeid = "test_\udcff.py::test_a"
    path = tmp_path / "durations"
    write_json(path, {"build": 1, "tests": {nodeid: [1.0, 1]}})
    assert json.loads(path.read_text("utf-8"))["tests"] == {nodeid: [1.0, 1]}


def test_the_merge_does_not_hold_the_ids_it_reads(tmp_path: Path) -> None:
    """The merge runs at the end of the build, when the controller holds the most: what it
    keeps per test while it runs must stay small next to the ids themselves (it kept every id
    it read back, about 250 bytes a test, and so pushed a million-test build past 1 GB)."""
    size = 20_000
    ids = [f"tests/unit/test_module_{i // 500:03d}.py::test_something_{i}" for i in range(size)]
    path = tmp_path / "durations"
    write_json(path, {"build": 3, "tests": {nodeid: [0.5, 3] for nodeid in ids}})
    durations = {nodeid: 0.25 for nodeid in ids}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        assert merge_file(path, durations, chunk=1 << 14) == 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (peak - before) / size < 150, f"{(peak - before) / size:.0f} bytes a test"
    assert json.loads(path.read_text())["tests"][ids[-1]] == [0.375, 4]
