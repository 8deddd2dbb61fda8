"""What conveyor remembers of earlier builds besides durations: flaky events, the outcomes of
each build of a commit, and what a build cost besides its tests (start-up, tail).

It lives where the timing history lives: pytest's cache directory for the embedded queue, Redis
(keys beside the suite's timing history, same hash tag) for shared ones. Everything is written
append-only (one record per build or per event, never a read-modify-write of a shared record),
so builds of one suite that finish at the same moment on different machines lose nothing; what
a command shows is computed when it reads. Each store keeps a bounded tail of records.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from conveyor.errors import QueueError
from conveyor.history import RedisHistory, call_redis, warn_bad_entries

JSON = dict[str, Any]
# What reading or writing the memory may raise; the memory only ever informs a build, so
# callers note these and go on.
MEMORY_ERRORS = (QueueError, OSError, ValueError)
MAX_EVENTS = 5000
MAX_BUILDS = 50
MAX_COMMITS = 20  # cache only; Redis lets a commit's record expire
MAX_CLAIMED = 200
MEMORY_TTL_S = RedisHistory.HISTORY_TTL_S

NOT_A_RECORD = "not a JSON object"
EVENTS_KEY = "conveyor/flaky"
COMMITS_KEY = "conveyor/commits"
BUILDS_KEY = "conveyor/builds"
SETUPS_KEY = "conveyor/setups"


class BuildMemory(Protocol):
    def claim(self, build: str) -> bool:
        """True for the first caller for this build id: one report records a build once, however
        many machines report it, and a replayed build is not recorded again."""
        ...

    def flaky_events(self) -> list[JSON]: ...

    def add_flaky_events(self, events: Sequence[JSON]) -> None: ...

    def commit_builds(self, commit: str) -> list[JSON]:
        """Records of earlier builds of `commit` ({"build", "digest", "outcomes", "ts"})."""
        ...

    def add_commit_build(self, commit: str, record: JSON) -> None: ...

    def builds(self) -> list[JSON]:
        """Recent builds' costs besides their tests ({"workers", "startup_s", ...})."""
        ...

    def add_build(self, record: JSON) -> None: ...

    def setups(self) -> JSON:
        """What module setups cost (capacity_plan.Setups as JSON); rewritten by each build,
        like the timing history."""
        ...

    def save_setups(self, setups: JSON) -> None: ...


def _records(items: Any, where: str) -> list[JSON]:
    """The JSON objects of a stored list; anything else is left out (warned about once)."""
    if not isinstance(items, list):
        warn_bad_entries(where, 0 if items in (None, {}, []) else 1, NOT_A_RECORD)
        return []
    kept = [item for item in items if isinstance(item, dict)]
    warn_bad_entries(where, len(items) - len(kept), NOT_A_RECORD)
    return kept


class CacheMemory:
    """In pytest's cache (`.pytest_cache/v/conveyor/flaky`, `.../commits`, `.../builds`)."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache

    def _get(self, key: str, default: Any) -> Any:
        return self.cache.get(key, default)

    def _events_doc(self) -> JSON:
        doc = self._get(EVENTS_KEY, {})
        return doc if isinstance(doc, dict) else {}

    def claim(self, build: str) -> bool:
        doc = self._events_doc()
        claimed = [b for b in doc.get("claimed", []) if isinstance(b, str)]
        if build in claimed:
            return False
        doc["claimed"] = [*claimed, build][-MAX_CLAIMED:]
        self.cache.set(EVENTS_KEY, doc)
        return True

    def flaky_events(self) -> list[JSON]:
        return _records(self._events_doc().get("events", []), f"the pytest cache ({EVENTS_KEY})")

    def add_flaky_events(self, events: Sequence[JSON]) -> None:
        if not events:
            return
        doc = self._events_doc()
        doc["events"] = [*self.flaky_events(), *events][-MAX_EVENTS:]
        self.cache.set(EVENTS_KEY, doc)

    def _commits(self) -> dict[str, list[JSON]]:
        doc = self._get(COMMITS_KEY, {})
        if not isinstance(doc, dict):
            return {}
        return {str(c): _records(r, f"the pytest cache ({COMMITS_KEY})") for c, r in doc.items()}

    def commit_builds(self, commit: str) -> list[JSON]:
        return self._commits().get(commit, [])

    def add_commit_build(self, commit: str, record: JSON) -> None:
        commits = self._commits()
        commits[commit] = [*commits.get(commit, []), record][-MAX_BUILDS:]

        def newest(item: tuple[str, list[JSON]]) -> float:
            return max((float(r.get("ts", 0) or 0) for r in item[1]), default=0.0)

        kept = sorted(commits.items(), key=newest)[-MAX_COMMITS:]
        self.cache.set(COMMITS_KEY, dict(kept))

    def builds(self) -> list[JSON]:
        return _records(self._get(BUILDS_KEY, []), f"the pytest cache ({BUILDS_KEY})")

    def add_build(self, record: JSON) -> None:
        self.cache.set(BUILDS_KEY, [*self.builds(), record][-MAX_BUILDS:])

    def setups(self) -> JSON:
        stored = self._get(SETUPS_KEY, {})
        return stored if isinstance(stored, dict) else {}

    def save_setups(self, setups: JSON) -> None:
        self.cache.set(SETUPS_KEY, setups)


class RedisMemory:
    """In Redis, beside the suite's timing history (`conveyor:history:{suite}:...`): lists of
    events and builds, one hash per commit, one key per claimed build. Every key expires when
    nothing wrote it for MEMORY_TTL_S. Calls go through the queue's boundary (retries, errors
    as QueueError), like the timing history's."""

    def __init__(
        self, client: Any, suite: str, run: Callable[[str, Callable[[], Any]], Any] | None = None
    ) -> None:
        self.client = client
        self.prefix = "conveyor:history:{" + suite + "}:"
        self._run = run or call_redis

    def _append(self, what: str, key: str, items: Sequence[JSON], keep: int) -> None:
        def save() -> Any:
            pipe = self.client.pipeline()
            pipe.rpush(key, *(json.dumps(item, separators=(",", ":")) for item in items))
            pipe.ltrim(key, -keep, -1)
            pipe.expire(key, MEMORY_TTL_S)
            return pipe.execute()

        if items:
            self._run(what, save)

    def _list(self, what: str, key: str) -> list[JSON]:
        raw = self._run(what, lambda: self.client.lrange(key, 0, -1)) or []
        return _decoded(raw, f"Redis ({key})")

    def claim(self, build: str) -> bool:
        key = self.prefix + "claimed:" + build
        return bool(
            self._run(
                "claim the build's record",
                lambda: self.client.set(key, "1", nx=True, ex=MEMORY_TTL_S),
            )
        )

    def flaky_events(self) -> list[JSON]:
        return self._list("read the flaky tests' record", self.prefix + "flaky")

    def add_flaky_events(self, events: Sequence[JSON]) -> None:
        self._append("save flaky events", self.prefix + "flaky", events, MAX_EVENTS)

    def commit_builds(self, commit: str) -> list[JSON]:
        key = self.prefix + "commit:" + commit
        raw = self._run("read the commit's builds", lambda: self.client.hvals(key)) or []
        return _decoded(raw, f"Redis ({key})")

    def add_commit_build(self, commit: str, record: JSON) -> None:
        key = self.prefix + "commit:" + commit

        def save() -> Any:
            pipe = self.client.pipeline()
            pipe.hset(key, str(record.get("build", "")), json.dumps(record, separators=(",", ":")))
            pipe.expire(key, MEMORY_TTL_S)
            return pipe.execute()

        self._run("save the build's outcomes", save)

    def builds(self) -> list[JSON]:
        return self._list("read the recorded builds", self.prefix + "builds")

    def add_build(self, record: JSON) -> None:
        self._append("record the build", self.prefix + "builds", [record], MAX_BUILDS)

    def setups(self) -> JSON:
        key = self.prefix + "setups"
        text = self._run("read module setups", lambda: self.client.get(key))
        found = _decoded([text] if text else [], f"Redis ({key})")
        return found[0] if found else {}

    def save_setups(self, setups: JSON) -> None:
        key, text = self.prefix + "setups", json.dumps(setups, separators=(",", ":"))
        self._run("save module setups", lambda: self.client.set(key, text, ex=MEMORY_TTL_S))


def _decoded(raw: Sequence[Any], where: str) -> list[JSON]:
    found, bad = [], 0
    for text in raw:
        try:
            item = json.loads(text)
        except (TypeError, ValueError):
            item = None
        if isinstance(item, dict):
            found.append(item)
        else:
            bad += 1
    warn_bad_entries(where, bad, NOT_A_RECORD)
    return found


def memory_store(where: str, config: Any, queue: Any) -> BuildMemory | None:
    """Where this build's memory lives, beside its timing history (see history_store)."""
    if where == "cache":
        cache = getattr(config, "cache", None)
        return CacheMemory(cache) if cache is not None else None
    if where.startswith("redis:") and hasattr(queue, "history"):
        history: RedisHistory = queue.history(where[len("redis:") :])
        return RedisMemory(history.client, where[len("redis:") :], history.call)
    return None
