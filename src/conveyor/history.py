"""Timing history: how long each test took in earlier builds.

The next build uses it to serve the slowest tests first so that every worker ends at about the
same time. On one machine it lives in pytest's cache directory (next to --lf's data, so CI
systems that cache `.pytest_cache` keep it); distributed builds keep it in Redis, shared by every
machine and every build of the suite. Durations are smoothed over builds, and tests not seen for
a while are forgotten.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

from conveyor.errors import QueueError

# Weight of the newest measurement: recent builds matter most, one slow outlier does not rule.
SMOOTHING = 0.5
FORGET_AFTER_BUILDS = 20
CACHE_KEY = "conveyor/durations"


class HistoryWarning(UserWarning):
    """Timing history held entries that are not durations; they were ignored."""


_warned: set[str] = set()


def warn_bad_entries(where: str, bad: int, what: str = "not a duration in seconds") -> None:
    """One warning per history location and process: a corrupt history is worth knowing
    about, never worth failing a build over (even where the suite turns warnings into errors)."""
    if not bad or where in _warned:
        return
    _warned.add(where)
    with warnings.catch_warnings():
        warnings.simplefilter("always", HistoryWarning)
        warnings.warn(
            f"conveyor: timing history in {where}: ignored {bad} bad "
            f"{'entry' if bad == 1 else 'entries'} ({what}); the rest is "
            "used, and the next build writes it back clean",
            HistoryWarning,
            stacklevel=2,
        )


def seconds_or_none(value: Any) -> float | None:
    """A duration in seconds: a finite, non-negative number (not a bool, not a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:  # an int beyond any float
        return None
    return value if math.isfinite(value) and value >= 0 else None


def clean(stored: Any) -> tuple[dict[str, Any], int]:
    """The valid part of a stored history ({"build": n, "tests": {id: [seconds, last_build]}})
    and how many bad entries were left out. Whatever the file holds, this never raises."""
    if not isinstance(stored, Mapping):
        return {"build": 0, "tests": {}}, 0 if stored in (None, {}) else 1
    bad = 0
    build = stored.get("build", 0)
    if isinstance(build, float) and build.is_integer():
        build = int(build)
    if isinstance(build, bool) or not isinstance(build, int) or build < 0:
        bad, build = 1, 0
    entries = stored.get("tests", {})
    if not isinstance(entries, Mapping):
        bad, entries = bad + 1, {}
    tests: dict[str, list[Any]] = {}
    for nodeid, entry in entries.items():
        valid = valid_entry(entry)
        if valid is None:
            bad += 1
            continue
        # The stored entry itself when it is already in shape: at a million tests a copy of
        # each is a hundred megabytes more at the end of the build.
        if entry[0] is not valid[0]:
            entry = list(valid)
        tests[str(nodeid)] = entry
    return {"build": build, "tests": tests}, bad


def valid_entry(entry: Any) -> tuple[float, int] | None:
    """A stored entry's (seconds, last build), or None where it is not one."""
    if isinstance(entry, list) and len(entry) == 2:
        seconds, last = seconds_or_none(entry[0]), entry[1]
        if seconds is not None and isinstance(last, int) and not isinstance(last, bool):
            return seconds, last
    return None


def smooth(previous: float | None, latest: float) -> float:
    return latest if previous is None else SMOOTHING * latest + (1 - SMOOTHING) * previous


def merge(stored: Any, durations: Mapping[str, float]) -> dict[str, Any]:
    """The stored history ({"build": n, "tests": {id: [seconds, last_build]}}) updated with one
    build's durations; entries unseen for FORGET_AFTER_BUILDS builds, and bad ones, are
    dropped."""
    valid, _bad = clean(stored)
    build = valid["build"] + 1
    tests: dict[str, list[Any]] = valid["tests"]  # updated in place: it is ours, not a copy
    for nodeid in [n for n, entry in tests.items() if forgotten(entry[1], build)]:
        del tests[nodeid]
    for nodeid, seconds in durations.items():
        latest = seconds_or_none(seconds)
        if latest is None:
            continue
        previous = tests.get(nodeid, [None])[0]
        tests[nodeid] = list(updated(previous, latest, build))
    return {"build": build, "tests": tests}


def forgotten(last_build: int, build: int) -> bool:
    """An entry not seen for FORGET_AFTER_BUILDS builds is dropped (its test is likely gone)."""
    return build - last_build > FORGET_AFTER_BUILDS


def updated(previous: float | None, latest: float, build: int) -> tuple[float, int]:
    """A test's entry after `build` ran it in `latest` seconds."""
    return round(smooth(previous, latest), 6), build


def durations_of(stored: Any) -> dict[str, float]:
    """{test id: seconds} from a stored history; bad entries are left out."""
    return {nodeid: entry[0] for nodeid, entry in clean(stored)[0]["tests"].items()}


class HistoryStore(Protocol):
    def load(self) -> dict[str, float]: ...

    def record(self, durations: Mapping[str, float]) -> None: ...


class CacheHistory:
    """History in pytest's cache (`.pytest_cache/v/conveyor/durations`)."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache

    def raw(self) -> dict[str, Any]:
        """The stored history without its bad entries (warned about once)."""
        valid, bad = clean(self.cache.get(CACHE_KEY, {}))
        self._warn(bad)
        return valid

    def _warn(self, bad: int) -> None:
        where = getattr(self.cache, "_cachedir", None) or getattr(self.cache, "cache_dir", "")
        warn_bad_entries(f"{where or 'the pytest cache'} ({CACHE_KEY})", bad)

    def load(self) -> dict[str, float]:
        return durations_of(self.raw())

    def record(self, durations: Mapping[str, float]) -> None:
        # Here, not at the top: the command imports this module before the workers start,
        # and conveyor.compat imports pytest.
        from conveyor.compat import cache_value_path
        from conveyor.history_stream import merge_file

        path = cache_value_path(self.cache, CACHE_KEY)
        if path is not None:
            bad = merge_file(path, durations)  # entry by entry, in conveyor's own shape
            if bad is not None:
                self._warn(bad)
                return
        merged = merge(self.raw(), durations)  # any other shape: whole
        if path is None:
            self.cache.set(CACHE_KEY, merged)
        else:
            write_json(path, merged)


def read_durations_file(path: Path) -> dict[str, float]:
    """Durations from a JSON file: conveyor's export ({"tests": {id: [seconds, build]}}) or
    pytest-split's `.test_durations` ({id: seconds})."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read durations from {path}: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("tests"), dict):
        valid, bad = clean(data)
        warn_bad_entries(str(path), bad)
        return durations_of(valid)
    if isinstance(data, dict) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in data.values()
    ):
        durations = {str(k): seconds_or_none(v) for k, v in data.items()}
        warn_bad_entries(str(path), sum(1 for v in durations.values() if v is None))
        return {k: v for k, v in durations.items() if v is not None}
    raise ValueError(
        f"{path} is neither a conveyor history export nor a pytest-split .test_durations file"
    )


T = TypeVar("T")


def call_redis(what: str, call: Callable[[], T]) -> T:
    """A Redis call without RedisQueue's boundary: redis-py's errors still become QueueError,
    the one family every caller of a history store catches."""
    try:
        return call()
    except Exception as exc:
        if type(exc).__module__.split(".")[0] != "redis":
            raise
        raise QueueError(f"Redis failed to {what}: {type(exc).__name__}: {exc}") from None


class RedisHistory:
    """History in one Redis hash per suite (test id -> seconds), shared by every machine and
    every build of that suite; it expires when no build has written it for HISTORY_TTL_S.
    Every call goes through `run` (RedisQueue's boundary: retries, and redis-py's errors
    translated into QueueError), so a history failure never fails a build."""

    HISTORY_TTL_S = 30 * 24 * 60 * 60
    RECORD_BATCH = 10_000  # test ids read back and written per round trip

    def __init__(
        self, client: Any, key: str, run: Callable[[str, Callable[[], Any]], Any] | None = None
    ) -> None:
        self.client = client
        self.key = key
        # Public: the build memory's keys beside this history go through the same boundary.
        self.call = self._run = run or call_redis

    def load(self) -> dict[str, float]:
        stored = self._run("read the timing history", lambda: self.client.hgetall(self.key))
        stored = stored or {}
        durations, bad = {}, 0
        for nodeid, text in stored.items():
            seconds = _stored_seconds(text)
            if seconds is None:
                bad += 1  # not a duration; ignored rather than failing the build
            else:
                durations[str(nodeid)] = seconds
        warn_bad_entries(f"Redis ({self.key})", bad)
        return durations

    def record(self, durations: Mapping[str, float]) -> None:
        """Merged in batches: the build's own tests are read back and written, never the
        whole hash (at a million tests, a third of a gigabyte at the end of the build)."""
        entries = iter(durations.items())
        while batch := list(itertools.islice(entries, self.RECORD_BATCH)):
            self._record_batch(batch)

    def _record_batch(self, batch: list[tuple[str, float]]) -> None:
        ids = [nodeid for nodeid, _ in batch]
        stored = self._run("read the timing history", lambda: self.client.hmget(self.key, ids))
        merged = {}
        for (nodeid, seconds), text in zip(batch, stored, strict=True):
            latest = seconds_or_none(seconds)
            if latest is not None:
                merged[nodeid] = repr(round(smooth(_stored_seconds(text), latest), 6))
        if not merged:
            return

        def save() -> Any:
            pipe = self.client.pipeline()
            pipe.hset(self.key, mapping=merged)
            pipe.expire(self.key, self.HISTORY_TTL_S)
            return pipe.execute()

        self._run("save the timing history", save)


def _stored_seconds(text: Any) -> float | None:
    """A Redis history value as seconds; None where it is absent or not a duration."""
    try:
        return seconds_or_none(float(text))
    except (TypeError, ValueError):
        return None


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
        write_json(path, value)


def write_json(path: Path, value: Any) -> None:
    """`value` as compact JSON, streamed to a temporary file beside `path` and moved over it:
    a reader never sees half a file, and a history of a million tests is not first built as
    one string (pytest's cache.set indents it, about 450 bytes a test while it is written)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("w", encoding="utf-8") as handle:
            # ASCII escapes, as pytest's cache.set writes: a test id that is not valid UTF-8
            # (a file name Python decoded with surrogate escapes) cannot be written otherwise.
            json.dump(value, handle, separators=(",", ":"))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
