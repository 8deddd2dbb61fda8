"""The distributed queue: one Redis (or Valkey) shared by the workers of a build on many machines.

Every operation is one Lua script from `redis_scripts/`, so it is atomic on the server, and every
key of a build carries the `{build}` hash tag, so a Redis Cluster keeps them in one slot and a
script may use them together (`redis_keys`). `redis_link` connects and is the error boundary.
The caller's clock travels in the script arguments: lease deadlines are data, and tests move
time by hand. Redis may lose a build (restart without persistence, FLUSHALL, eviction, expiry);
then every operation that needs the build raises BuildStateLost instead of quietly starting an
empty one. queue/memory.py is the specification the scripts follow.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

from conveyor.errors import BuildStateLost, QueueError
from conveyor.history import RedisHistory
from conveyor.queue import forward, redis_keys
from conveyor.queue.messages import invalid_manifest, not_in_build
from conveyor.queue.protocol import (
    EVENTS_PAGE,
    JSON,
    LEASE_TTL_S,
    MAX_UNIT_CRASHES,
    BuildStatus,
    Event,
    Lease,
    Manifest,
    Queue,
    Released,
    RequeueAnswer,
    Reservation,
    ReservationState,
    collection_digest,
    culprit_of,
    dumps,
    release_event_kind,
)
from conveyor.queue.redis_link import DEFAULT_RETRY, Client, RedisLink, RetryPolicy, open_link
from conveyor.scheduling import check_whole, whole_of

# Kept importable under their old names.
_script_source = redis_keys.script_source
DEFAULT_MAX_UNIT_CRASHES = MAX_UNIT_CRASHES
__all__ = ["DEFAULT_TTL_S", "RedisQueue", "RetryPolicy"]

T = TypeVar("T")
DEFAULT_TTL_S = 24 * 60 * 60


class _NotInBuild(QueueError):
    """A script refused result number `index`: its unit is not in the manifest."""

    def __init__(self, index: int) -> None:
        super().__init__(f"result {index} names a unit outside the manifest")
        self.index = index


class RedisQueue(Queue):
    """Queue backend on Redis: every process of a build, on any machine, shares its keys."""

    def __init__(
        self,
        client: Client,
        build: str,
        *,
        display_url: str,
        lease_ttl_s: float = LEASE_TTL_S,
        clock: Callable[[], float] = time.time,
        ttl_s: float = DEFAULT_TTL_S,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        if not build:
            # "conveyor:{}:…" has an empty hash tag, which would scatter a build over a cluster.
            raise QueueError("the build id is empty; give the build a name")
        self._client = client
        self._link = RedisLink(client, display_url, retry, self._script_error)
        self.build = build
        self.display_url = display_url
        self.lease_ttl_s = lease_ttl_s
        self.ttl_s = ttl_s
        self._clock = clock
        self._key = redis_keys.BuildKeys(build)
        self._scripts = redis_keys.register(client)
        # Set once this object has seen the build populated. From then on a missing build means
        # its keys were lost, not that the leader is still collecting.
        self._seen_populated = False

    @classmethod
    def from_url(
        cls,
        url: str,
        build: str,
        *,
        lease_ttl_s: float = LEASE_TTL_S,
        clock: Callable[[], float] = time.time,
        ttl_s: float = DEFAULT_TTL_S,
        retry: RetryPolicy = DEFAULT_RETRY,
        ssl_ca_certs: str | None = None,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
    ) -> RedisQueue:
        """Connect to `url` and check it answers (see `redis_link.open_link`). TLS files may
        also come as URL query parameters."""
        given = {"ssl_ca_certs": ssl_ca_certs, "ssl_certfile": ssl_certfile}
        tls = {k: v for k, v in {**given, "ssl_keyfile": ssl_keyfile}.items() if v is not None}
        link = open_link(url, retry, tls)
        try:
            return cls(
                link.client,
                build,
                display_url=link.display_url,
                lease_ttl_s=lease_ttl_s,
                clock=clock,
                ttl_s=ttl_s,
                retry=retry,
            )
        except BaseException:
            link.close()
            raise

    # -- talking to Redis -----------------------------------------------------------------

    def _run(self, what: str, call: Callable[[], T]) -> T:
        return self._link.run(what, call)

    def _script_error(self, reply: str) -> QueueError | None:
        """The queue's error for a script's own error reply (see each script's header)."""
        if reply.startswith("BUILD_LOST"):
            return self._lost()
        if reply.startswith("NOT_IN_BUILD "):
            return _NotInBuild(int(reply.split()[1]))
        return None

    def _lost(self) -> BuildStateLost:
        return lost(self.build, self.display_url, self.ttl_s)

    def _write(self, name: str, *args: str | float, extra_keys: Sequence[str] = ()) -> Any:
        """Run a write script with the build's keys and the (now, ttl_ms) arguments it expects;
        every write script raises BUILD_LOST on a missing build unless it is told otherwise."""
        script = self._scripts[name]
        keys = [*self._key.common, *extra_keys]
        argv = [repr(float(self._clock())), int(self.ttl_s * 1000), *args]
        reply = self._run(name, lambda: script(keys=keys, args=argv))
        self._seen_populated = self._seen_populated or name not in ("join", "publish", "stop")
        return reply

    def _read(self, name: str, keys: Sequence[str], *args: str | int) -> Any:
        script = self._scripts[name]
        return self._run(f"read {name}", lambda: script(keys=keys, args=args))

    def _must_exist(self) -> str:
        return "1" if self._seen_populated else "0"

    def _deadline(self) -> str:
        return repr(float(self._clock()) + self.lease_ttl_s)

    def history(self, suite: str) -> RedisHistory:
        """The timing history of `suite`, shared by every build of it on this Redis."""
        return RedisHistory(self._client, "conveyor:history:{" + suite + "}", run=self._run)

    def close(self) -> None:
        self._link.close()

    # -- protocol -------------------------------------------------------------------------

    def populate(self, leader: str, units: Sequence[str], meta: Mapping[str, Any]) -> bool:
        unique = list(dict.fromkeys(units))
        crashes = int(meta.get("max_unit_crashes", MAX_UNIT_CRASHES))
        digest, total = collection_digest(unique), dumps({"total": len(unique)})
        # Ranks travel as digits aligned with the units ("-": none): a unit name may hold
        # lone surrogates, which JSON would not carry byte for byte.
        rank_of = forward.ranks(unique, meta)
        whole, ranks = whole_of(meta), ",".join(str(rank_of.get(u, "-")) for u in unique)
        args = (leader, digest, dumps(meta), crashes, total, whole, ranks)
        return bool(self._write("populate", *args, *unique))

    def manifest(self) -> Manifest | None:
        fields = ["leader", "digest", "total", "meta"]
        found = self._run(
            "read the manifest", lambda: self._client.hmget(self._key("meta"), fields)
        )
        if found[0] is not None:
            self._seen_populated = True
        return _manifest(cast("list[str | None]", found), self.build, self.display_url)

    def units(self) -> list[str]:
        key, meta = self._key("units"), self._key("meta")
        found = self._run("read the units", lambda: self._client.lrange(key, 0, -1))
        # An empty build has no units list either; only a missing manifest means loss.
        if not found and self._seen_populated:
            exists = self._run("read the manifest", lambda: self._client.exists(meta))
            self._check_exists(bool(exists))
        return cast("list[str]", found)

    def join(self, worker: str, info: Mapping[str, Any]) -> None:
        self._write("join", self._must_exist(), worker, dumps(info))

    def reserve(
        self,
        worker: str,
        max_units: int,
        request_id: str | None = None,
        *,
        whole: str = "class",
    ) -> Reservation:
        return self._lease("reserve", worker, max_units, request_id, whole)

    def steal(
        self,
        thief: str,
        max_units: int,
        request_id: str | None = None,
        *,
        whole: str = "class",
    ) -> Reservation:
        return self._lease("steal", thief, max_units, request_id, whole)

    def _lease(
        self, script: str, worker: str, max_units: int, request_id: str | None, whole: str
    ) -> Reservation:
        check_whole(whole)
        # Made here, not per try: the boundary's retries of this call must carry the same id.
        request = request_id if request_id is not None else uuid.uuid4().hex
        extra = [self._key.reservations(worker), self._key("reserve_requests")]
        if script == "steal":
            extra.append(self._key("stolen"))
        args = (worker, max(1, max_units), self._deadline(), request, whole)
        state, pending, *flat = self._write(script, *args, extra_keys=extra)
        leases = tuple(Lease(unit, int(attempt)) for unit, attempt in redis_keys.pairs(flat))
        if state == ReservationState.LEASED:
            return Reservation(ReservationState.LEASED, leases, int(pending))
        return Reservation(ReservationState(state))

    def heartbeat(self, worker: str, units: Sequence[str]) -> int:
        return int(self._write("heartbeat", worker, self._deadline(), *dict.fromkeys(units)))

    def claim(self, worker: str, units: Sequence[str]) -> list[str]:
        return list(self._write("claim", worker, self._deadline(), *dict.fromkeys(units)))

    def complete(self, worker: str, results: Sequence[tuple[str, JSON]]) -> list[bool]:
        args = [part for unit, payload in results for part in (unit, dumps(payload))]
        try:
            flags = self._write("complete", worker, *args)
        except _NotInBuild as refused:
            raise not_in_build(worker, "completed", results[refused.index][0], self.build) from None
        return [bool(flag) for flag in flags]

    def requeue(
        self, worker: str, unit: str, payload: JSON, *, max_requeues: int, tolerance: float
    ) -> RequeueAnswer:
        rejected = dumps({"attempt": payload.get("attempt")})
        budgets = (int(max_requeues), repr(float(tolerance)))
        try:
            answer = self._write(
                "requeue", worker, unit, dumps(payload), rejected, *budgets,
                extra_keys=[self._key("requeues")],
            )  # fmt: skip
        except _NotInBuild:
            raise not_in_build(worker, "requeued", unit, self.build) from None
        try:
            return RequeueAnswer(answer)
        except ValueError:
            raise QueueError(
                f"the Redis queue {self.display_url} answered requeue with {answer!r}"
            ) from None

    def release(self, worker: str, cause: Mapping[str, Any]) -> list[Released]:
        culprit = culprit_of(cause)  # None: unknown, nothing is charged a crash
        final = "1" if cause.get("final") else "0"
        kind = release_event_kind(cause)
        has_culprit = "0" if culprit is None else "1"
        reply = self._write(
            "release", worker, has_culprit, culprit or "", dumps(cause), final, kind
        )
        return [
            Released(reply[i], int(reply[i + 1]), int(reply[i + 2]), bool(reply[i + 3]))
            for i in range(0, len(reply), 4)
        ]

    def hand_back(self, worker: str, units: Sequence[str], reason: str) -> list[str]:
        cause = dumps({"reason": reason, "orderly": True})
        return [
            str(unit) for unit in self._write("hand_back", worker, cause, *dict.fromkeys(units))
        ]

    def publish(self, kind: str, worker: str | None, data: Mapping[str, Any]) -> None:
        has_worker = "0" if worker is None else "1"
        self._write("publish", self._must_exist(), kind, has_worker, worker or "", dumps(data))

    def events(self, after: int, limit: int = EVENTS_PAGE) -> list[Event]:
        if limit == 0:
            return []
        keys = [self._key("meta"), self._key("events")]
        # A negative limit means "no limit", as in SQL.
        exists, entries = self._read(
            "events", keys, max(after, 0) + 1, limit if limit > 0 else 2**62
        )
        self._check_exists(bool(exists))
        return [redis_keys.event(entry_id, fields) for entry_id, fields in entries]

    def _check_exists(self, exists: bool) -> None:
        if exists:
            self._seen_populated = True
        elif self._seen_populated:
            raise self._lost()

    def stop(self, reason: str) -> None:
        self._write("stop", self._must_exist(), reason, dumps({"reason": reason}))

    def resume(self, reason: str) -> bool:
        return bool(self._write("resume", reason))

    def status(self) -> BuildStatus:
        keys = [self._key(name) for name in ("meta", "pending", "leases", "workers")]
        reply = self._read("status", keys)
        self._check_exists(bool(reply))
        if not reply:
            return BuildStatus(populated=False)
        total, pending, leased, stop_reason, workers = reply
        done = int(total) - int(pending) - int(leased)
        return BuildStatus(
            True, int(total), done, int(pending), int(leased), stop_reason, tuple(workers)
        )

    def reservations(self, worker: str) -> list[Lease]:
        keys = [self._key.reservations(worker), self._key("stolen")]
        flat = self._read("reservations", keys, worker)
        return [Lease(unit, int(attempt)) for unit, attempt in redis_keys.pairs(flat)]


def lost(build: str, display_url: str, ttl_s: float) -> BuildStateLost:
    return BuildStateLost(
        f"build {build!r} vanished from the Redis queue {display_url} while it was running: its "
        "keys are gone (Redis restarted without persistence, was flushed, evicted keys under "
        f"maxmemory, or the build sat idle longer than {ttl_s:.0f}s). Start the build again; to "
        "survive restarts enable persistence (appendonly yes) and set maxmemory-policy noeviction."
    )


def _manifest(fields: list[str | None], build: str, display_url: str) -> Manifest | None:
    leader, digest, total, meta = fields
    if leader is None:
        return None
    try:
        if digest is None or total is None or meta is None:
            raise ValueError("incomplete manifest")
        return Manifest(leader=leader, digest=digest, total=int(total), meta=json.loads(meta))
    except ValueError:
        fix = "Use a fresh build id or database."
        raise invalid_manifest(build, display_url, fix) from None
