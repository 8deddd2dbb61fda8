"""Timing history: how long each test took in earlier builds.

The next build uses it to serve the slowest tests first so that every worker ends at about the
same time. On one machine it lives in pytest's cache directory (next to --lf's data, so CI
systems that cache `.pytest_cache` keep it); distributed builds keep it in Redis, shared by every
machine and every build of the suite. Durations are smoothed over builds, and tests not seen for
a while are forgotten.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

# Weight of the newest measurement: recent builds matter most, one slow outlier does not rule.
SMOOTHING = 0.5
FORGET_AFTER_BUILDS = 20
CACHE_KEY = "conveyor/durations"


def smooth(previous: float | None, latest: float) -> float:
    return latest if previous is None else SMOOTHING * latest + (1 - SMOOTHING) * previous


def merge(stored: Mapping[str, Any], durations: Mapping[str, float]) -> dict[str, Any]:
    """The stored history ({"build": n, "tests": {id: [seconds, last_build]}}) updated with one
    build's durations; entries unseen for FORGET_AFTER_BUILDS builds are dropped."""
    build = int(stored.get("build", 0)) + 1
    tests: dict[str, list[float]] = {}
    for nodeid, entry in dict(stored.get("tests", {})).items():
        if isinstance(entry, list) and len(entry) == 2 and build - entry[1] <= FORGET_AFTER_BUILDS:
            tests[nodeid] = [float(entry[0]), int(entry[1])]
    for nodeid, seconds in durations.items():
        previous = tests.get(nodeid, [None])[0]
        tests[nodeid] = [round(smooth(previous, seconds), 6), build]
    return {"build": build, "tests": tests}


def durations_of(stored: Mapping[str, Any]) -> dict[str, float]:
    return {
        nodeid: float(entry[0])
        for nodeid, entry in dict(stored.get("tests", {})).items()
        if isinstance(entry, list) and entry
    }


class HistoryStore(Protocol):
    def load(self) -> dict[str, float]: ...

    def record(self, durations: Mapping[str, float]) -> None: ...


class CacheHistory:
    """History in pytest's cache (`.pytest_cache/v/conveyor/durations`)."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache

    def raw(self) -> dict[str, Any]:
        data = self.cache.get(CACHE_KEY, {})
        return data if isinstance(data, dict) else {}

    def load(self) -> dict[str, float]:
        return durations_of(self.raw())

    def record(self, durations: Mapping[str, float]) -> None:
        self.cache.set(CACHE_KEY, merge(self.raw(), durations))


def read_durations_file(path: Path) -> dict[str, float]:
    """Durations from a JSON file: conveyor's export ({"tests": {id: [seconds, build]}}) or
    pytest-split's `.test_durations` ({id: seconds})."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read durations from {path}: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("tests"), dict):
        return durations_of(data)
    if isinstance(data, dict) and all(isinstance(v, (int, float)) for v in data.values()):
        return {str(k): float(v) for k, v in data.items()}
    raise ValueError(
        f"{path} is neither a conveyor history export nor a pytest-split .test_durations file"
    )


class RedisHistory:
    """History in one Redis hash per suite (test id -> seconds), shared by every machine and
    every build of that suite; it expires when no build has written it for HISTORY_TTL_S."""

    HISTORY_TTL_S = 30 * 24 * 60 * 60

    def __init__(self, client: Any, key: str) -> None:
        self.client = client
        self.key = key

    def load(self) -> dict[str, float]:
        stored = self.client.hgetall(self.key) or {}
        durations = {}
        for nodeid, seconds in stored.items():
            try:
                durations[str(nodeid)] = float(seconds)
            except ValueError:
                continue  # not ours; ignore rather than fail the build
        return durations

    def record(self, durations: Mapping[str, float]) -> None:
        if not durations:
            return
        previous = self.load()
        merged = {
            nodeid: repr(round(smooth(previous.get(nodeid), seconds), 6))
            for nodeid, seconds in durations.items()
        }
        pipe = self.client.pipeline()
        pipe.hset(self.key, mapping=merged)
        pipe.expire(self.key, self.HISTORY_TTL_S)
        pipe.execute()


def history_store(where: str, config: Any, queue: Any) -> HistoryStore | None:
    """Where this build keeps its history: "cache" (pytest's cache directory), "redis:<suite>"
    (the build's Redis), or "off"."""
    if where == "cache":
        cache = getattr(config, "cache", None)
        return CacheHistory(cache) if cache is not None else None
    if where.startswith("redis:") and hasattr(queue, "history"):
        store: HistoryStore = queue.history(where[len("redis:") :])
        return store
    return None


class DirectoryCache:
    """pytest's cache directory layout (`<dir>/v/<key>` holding JSON), for the `conveyor
    history` command, which runs without a pytest session."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir

    def _path(self, key: str) -> Path:
        return self.cache_dir / "v" / key

    def get(self, key: str, default: Any) -> Any:
        try:
            return json.loads(self._path(key).read_text("utf-8"))
        except (OSError, ValueError):
            return default

    def set(self, key: str, value: Any) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value, indent=2, sort_keys=True), "utf-8")
