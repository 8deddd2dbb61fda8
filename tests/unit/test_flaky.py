"""Flaky events and scores, and the stores that keep them (pytest's cache and a real Redis)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import RedisServer

from conveyor.build_memory import MAX_EVENTS, BuildMemory, CacheMemory, RedisMemory
from conveyor.flaky import (
    HALF_LIFE_DAYS,
    KIND_FLIP,
    KIND_RETRY,
    TestOutcome,
    auto_quarantined,
    commit_record,
    events_of_build,
    flakiest,
    quarantine_events,
    summarise,
)
from conveyor.history import DirectoryCache, HistoryWarning

DAY = 86400.0


def test_a_pass_on_a_retry_is_a_flaky_event() -> None:
    outcomes = {
        "t.py::test_retry": TestOutcome("passed", reruns=1, message="ConnectionError: reset"),
        "t.py::test_failed_twice": TestOutcome("failed", reruns=1, message="AssertionError"),
        "t.py::test_ok": TestOutcome("passed"),
    }
    events = events_of_build(outcomes, [], build="b1", digest="d", ts=10.0)
    assert [(e["test"], e["kind"], e["message"]) for e in events] == [
        ("t.py::test_retry", KIND_RETRY, "ConnectionError: reset")
    ]


def test_an_outcome_flipped_at_the_same_commit_is_a_flaky_event() -> None:
    first = {
        "t.py::test_a": TestOutcome("failed", message="boom"),
        "t.py::test_b": TestOutcome("passed"),
        "t.py::test_skip": TestOutcome("skipped"),
    }
    earlier = [commit_record(first, build="b1", digest="d", ts=1.0)]
    again = {
        "t.py::test_a": TestOutcome("passed"),
        "t.py::test_b": TestOutcome("error", message="fixture broke"),
        "t.py::test_skip": TestOutcome("passed"),
    }
    events = events_of_build(again, earlier, build="b2", digest="d", ts=2.0)
    assert {(e["test"], e["kind"], e["message"]) for e in events} == {
        ("t.py::test_a", KIND_FLIP, "boom"),  # the failure's line, from the earlier build
        ("t.py::test_b", KIND_FLIP, "fixture broke"),
    }
    # Another collection: a test absent from the earlier record is unknown, not passed.
    assert [
        e["test"] for e in events_of_build(again, earlier, build="b2", digest="other", ts=2.0)
    ] == ["t.py::test_a"]
    # The same build reported again is not a flip against itself.
    assert events_of_build(first, earlier, build="b1", digest="d", ts=2.0) == []


def test_scores_halve_every_half_life_and_counts_stay() -> None:
    now = 100 * DAY
    events = [
        {"test": "t::a", "kind": KIND_RETRY, "ts": now, "message": "x"},
        {"test": "t::a", "kind": KIND_FLIP, "ts": now - HALF_LIFE_DAYS * DAY, "message": "y"},
        {"test": "t::b", "kind": KIND_RETRY, "ts": now - 2 * HALF_LIFE_DAYS * DAY},
        {"test": "t::c", "kind": "clean", "ts": now},  # no flaky event: not listed
        {"bad": True},
    ]
    summary = summarise(events, now)
    assert set(summary) == {"t::a", "t::b"}
    assert summary["t::a"].score == pytest.approx(1.5)
    assert (summary["t::a"].retries, summary["t::a"].flips, summary["t::a"].count) == (1, 1, 2)
    assert summary["t::a"].last_message == "x"
    assert summary["t::b"].score == pytest.approx(0.25)
    assert [t.test for t in flakiest(summary)] == ["t::a", "t::b"]
    assert auto_quarantined(summary, 1.0) == {"t::a": pytest.approx(1.5)}


def test_a_quarantined_test_leaves_after_clean_builds_in_a_row() -> None:
    events = [{"test": "t::a", "kind": KIND_RETRY, "ts": 1.0, "message": "m"}]
    passed = {"t::a": TestOutcome("passed")}
    released: list[str] = []
    for build in range(1, 4):
        summary = summarise(events, 10.0 + build)
        quarantined = auto_quarantined(summary, 0.5)
        assert quarantined == ({} if released else {"t::a": pytest.approx(1.0, abs=0.01)})
        more, released = quarantine_events(
            quarantined, passed, summary, release_after=2, build=f"b{build}", ts=10.0 + build
        )
        events += more
        if build == 1:
            assert not released
        if build == 2:
            assert released == ["t::a"]
    assert summarise(events, 20.0)["t::a"].score == 0  # only events after the release count
    # A failure while quarantined breaks the streak.
    summary = summarise([{"test": "t::b", "kind": KIND_RETRY, "ts": 1.0}], 2.0)
    failed = {"t::b": TestOutcome("failed", message="boom")}
    more, released = quarantine_events(
        {"t::b": 1.0}, failed, summary, release_after=1, build="b", ts=3.0
    )
    assert released == [] and [e["kind"] for e in more] == ["dirty"]


@pytest.fixture(params=["cache", "redis"])
def memory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BuildMemory]:
    if request.param == "cache":
        yield CacheMemory(DirectoryCache(tmp_path / ".pytest_cache"))
        return
    redis = pytest.importorskip("redis")
    server: RedisServer = request.getfixturevalue("redis_server")
    client = redis.Redis.from_url(server.url, decode_responses=True)
    yield RedisMemory(client, f"suite-{uuid.uuid4().hex[:8]}")
    client.close()


def test_a_build_is_recorded_once(memory: BuildMemory) -> None:
    assert memory.claim("b1") is True
    assert memory.claim("b1") is False
    assert memory.claim("b2") is True


def test_events_are_appended_and_bounded(memory: BuildMemory) -> None:
    memory.add_flaky_events([{"test": "t::a", "kind": KIND_RETRY, "ts": 1.0}])
    memory.add_flaky_events([{"test": "t::b", "kind": KIND_FLIP, "ts": 2.0}])
    assert [e["test"] for e in memory.flaky_events()] == ["t::a", "t::b"]
    memory.add_flaky_events(
        [{"test": f"t::{i}", "kind": KIND_RETRY, "ts": 3.0} for i in range(MAX_EVENTS)]
    )
    kept = memory.flaky_events()
    assert len(kept) == MAX_EVENTS and kept[0]["test"] == "t::0"


def test_builds_of_a_commit_and_build_costs(memory: BuildMemory) -> None:
    memory.add_commit_build("abc", {"build": "b1", "digest": "d", "outcomes": {}, "ts": 1.0})
    memory.add_commit_build("abc", {"build": "b2", "digest": "d", "outcomes": {}, "ts": 2.0})
    memory.add_commit_build("def", {"build": "b3", "digest": "d", "outcomes": {}, "ts": 3.0})
    assert sorted(r["build"] for r in memory.commit_builds("abc")) == ["b1", "b2"]
    assert memory.commit_builds("nope") == []
    memory.add_build({"workers": 2, "startup_s": 1.5})
    assert memory.builds() == [{"workers": 2, "startup_s": 1.5}]
    assert memory.setups() == {}
    memory.save_setups({"modules": {"m.py": 0.2}, "tests": {"m.py::t": 0.2}})
    assert memory.setups() == {"modules": {"m.py": 0.2}, "tests": {"m.py::t": 0.2}}


def test_records_that_are_not_objects_are_ignored_with_a_warning(tmp_path: Path) -> None:
    cache_dir = tmp_path / ".pytest_cache"
    target = cache_dir / "v" / "conveyor" / "builds"
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps([{"workers": 2}, "garbage", 3]))
    with pytest.warns(HistoryWarning, match="ignored 2 bad entries"):
        assert CacheMemory(DirectoryCache(cache_dir)).builds() == [{"workers": 2}]
