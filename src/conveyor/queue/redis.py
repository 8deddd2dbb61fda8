"""The distributed queue: one Redis (or Valkey) shared by the workers of a build on many machines.

Every operation is one Lua script from `redis_scripts/`, so it is atomic on the server, and every
key of a build carries the `{build}` hash tag, so a Redis Cluster keeps them in one slot and a
script may use them together. A cluster is reached through redis-py's cluster client, which
follows the slot map (MOVED, failovers): chosen by the redis+cluster:// (rediss+cluster://)
scheme, or when a redis:// URL turns out to name a node of a cluster. The caller's clock travels
in the script arguments: lease deadlines are data, and tests move time by hand. Redis may lose a
build (restart without persistence, FLUSHALL, eviction, expiry); then every operation that needs
the build raises BuildStateLost instead of quietly starting an empty one.
"""

from __future__ import annotations

import functools
import json
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, cast
from urllib.parse import urlsplit

from conveyor.errors import BuildStateLost, QueueError, QueueUnavailable, QueueURLError
from conveyor.history import RedisHistory
from conveyor.queue import mask_url, scrub
from conveyor.queue.protocol import (
    ALREADY_DONE,
    JSON,
    LEASED,
    REQUEUE_REFUSED,
    REQUEUED,
    BuildStatus,
    Event,
    Lease,
    Manifest,
    Released,
    Reservation,
    collection_digest,
    dumps,
    release_event_kind,
)

if TYPE_CHECKING:
    import redis
    import redis.cluster

T = TypeVar("T")
# A plain client, or redis-py's cluster client (which speaks to every node of a cluster).
Client: TypeAlias = "redis.Redis | redis.cluster.RedisCluster"
ScriptArg = str | int | float
# The client decodes replies (decode_responses=True); redis-py's types do not know that.
Strings = list[str]

DEFAULT_MAX_UNIT_CRASHES = 2
DEFAULT_TTL_S = 24 * 60 * 60
CONNECT_TIMEOUT_S = 2.0
# Long enough for populate with a very large manifest, which runs in one script.
SOCKET_TIMEOUT_S = 30.0
INSTALL_HINT = "Install Redis support with: pip install 'conveyor[redis]'"
# Schemes of a Redis Cluster: any one node's address; the client discovers the others.
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
CLUSTER_HINT = (
    "Check that the cluster's nodes run and are reachable from this machine (host, port, "
    "firewall) and that `redis-cli -p PORT cluster info` says cluster_state:ok."
)

# Order matters: it is the KEYS[1..12] layout every write script expects (see _lib.lua).
BUILD_KEYS = (
    "meta",
    "units",
    "attempts",
    "crashes",
    "pending",
    "leases",
    "owner",
    "workers",
    "worker_info",
    "last_seen",
    "seq",
    "events",
)
WRITE_SCRIPTS = (
    "populate",
    "join",
    "reserve",
    "heartbeat",
    "complete",
    "requeue",
    "release",
    "hand_back",
    "stop",
    "resume",
    "publish",
)
READ_SCRIPTS = ("status", "events")
LIB_SCRIPT = "_lib"


@dataclass(frozen=True)
class RetryPolicy:
    """How long to ride out a blip (failover, restart, dropped connection) before giving up."""

    tries: int = 5
    first_delay_s: float = 0.25
    budget_s: float = 5.0

    def delays_s(self) -> list[float]:
        """Sleep before each retry: doubling, cut off where the total would pass the budget."""
        delays: list[float] = []
        for index in range(max(self.tries, 1) - 1):
            delay = self.first_delay_s * 2**index
            if sum(delays) + delay > self.budget_s:
                break
            delays.append(delay)
        return delays


class _NotInBuild(QueueError):
    """complete.lua refused result number `index`: its unit is not in the manifest."""

    def __init__(self, index: int) -> None:
        super().__init__(f"result {index} names a unit outside the manifest")
        self.index = index


def _import_redis() -> ModuleType:
    try:
        import redis
    except ImportError:
        raise QueueUnavailable(
            f"the redis package is not installed, so conveyor cannot use a Redis queue. "
            f"{INSTALL_HINT}"
        ) from None
    return redis


@functools.cache
def _script_source(name: str) -> str:
    """Read a script once per process; write scripts get the shared prelude in front."""
    folder = resources.files("conveyor.queue").joinpath("redis_scripts")
    source = folder.joinpath(f"{name}.lua").read_text("utf-8")
    if name in WRITE_SCRIPTS:
        return folder.joinpath(f"{LIB_SCRIPT}.lua").read_text("utf-8") + "\n" + source
    return source


def _dumps(data: Mapping[str, Any]) -> str:
    return dumps(data)


def _where(url: str) -> str:
    """host:port (or the socket path) of a Redis URL, for messages; never the password."""
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return parts.path or "<no socket path>"
        return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
    except ValueError:
        return mask_url(url)


class RedisQueue:
    """Queue backend on Redis: every process of a build, on any machine, shares its keys."""

    def __init__(
        self,
        client: Client,
        build: str,
        *,
        display_url: str,
        lease_ttl_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        ttl_s: float = DEFAULT_TTL_S,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        if not build:
            # "conveyor:{}:…" has an empty hash tag, which would scatter a build over a cluster.
            raise QueueError("the build id is empty; give the build a name")
        self._redis = _import_redis()
        self._client = client
        self.build = build
        self.display_url = display_url
        self.lease_ttl_s = lease_ttl_s
        self.ttl_s = ttl_s
        self._clock = clock
        self._retry = retry
        self._prefix = "conveyor:{" + build + "}:"
        self._keys = [self._prefix + name for name in BUILD_KEYS]
        self._scripts = {
            name: client.register_script(_script_source(name))
            for name in (*WRITE_SCRIPTS, *READ_SCRIPTS)
        }
        # Set once this object has seen the build populated. From then on a missing build means
        # its keys were lost, not that the leader is still collecting.
        self._seen_populated = False

    @classmethod
    def from_url(
        cls,
        url: str,
        build: str,
        *,
        lease_ttl_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        ttl_s: float = DEFAULT_TTL_S,
        retry: RetryPolicy = RetryPolicy(),
        ssl_ca_certs: str | None = None,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
    ) -> RedisQueue:
        """Connect to `url` (redis://, rediss://, unix://, or redis+cluster:// and
        rediss+cluster:// for a Redis Cluster) and PING it, so a wrong URL fails here rather
        than halfway through a build. A redis:// or rediss:// URL that names a node of a cluster
        is served as the cluster. TLS files may also come as URL query parameters."""
        redis = _import_redis()
        display_url = mask_url(url)
        scheme = url.split(":", 1)[0].lower()
        cluster = scheme in CLUSTER_SCHEMES
        # redis-py's clients know redis:// and rediss:// only.
        server_url = scheme.removesuffix("+cluster") + url[len(scheme) :] if cluster else url
        tls = {
            name: value
            for name, value in (
                ("ssl_ca_certs", ssl_ca_certs),
                ("ssl_certfile", ssl_certfile),
                ("ssl_keyfile", ssl_keyfile),
            )
            if value is not None
        }
        if tls and not server_url.lower().startswith("rediss://"):
            raise QueueURLError(
                f"TLS options ({', '.join(tls)}) were given for the queue {display_url}, which "
                "does not use TLS; write the URL as rediss://host:port/db."
            )
        options: dict[str, Any] = {
            "decode_responses": True,
            # A test id may hold lone surrogates (a test file whose name is not UTF-8, decoded
            # with surrogate escapes): it travels as its original bytes and comes back unchanged.
            "encoding_errors": "surrogateescape",
            "socket_connect_timeout": CONNECT_TIMEOUT_S,
            "socket_timeout": SOCKET_TIMEOUT_S,
            # RedisQueue retries whole operations itself (see _run); retrying inside redis-py
            # as well would multiply the waits.
            "retry": redis.retry.Retry(redis.backoff.NoBackoff(), 0),
            **tls,
        }
        client: Client
        try:
            if cluster:
                client = _cluster_client(server_url, options, display_url, retry)
            else:
                client = redis.Redis.from_url(server_url, **options)
        except (ValueError, TypeError) as exc:
            raise QueueURLError(
                f"the queue URL {display_url} is not a valid Redis URL ({scrub(str(exc), url)}); "
                "write it as redis://[user:password@]host:port/db, rediss://… or "
                "unix:///path/redis.sock"
            ) from None
        try:
            queue = cls(
                client,
                build,
                display_url=display_url,
                lease_ttl_s=lease_ttl_s,
                clock=clock,
                ttl_s=ttl_s,
                retry=retry,
            )
            queue._run("connect", client.ping)
            if not cluster and scheme != "unix" and queue._run("connect", queue._in_cluster):
                # One node of a cluster holds only its own slots: every build whose slot lives
                # on another node would be answered MOVED. Serve it as the cluster it is.
                _close(client)
                return cls.from_url(
                    f"{scheme}+cluster{url[len(scheme) :]}",
                    build,
                    lease_ttl_s=lease_ttl_s,
                    clock=clock,
                    ttl_s=ttl_s,
                    retry=retry,
                    ssl_ca_certs=ssl_ca_certs,
                    ssl_certfile=ssl_certfile,
                    ssl_keyfile=ssl_keyfile,
                )
        except BaseException:
            _close(client)
            raise
        return queue

    def _in_cluster(self) -> bool:
        """Whether the server is a node of a Redis Cluster (INFO says cluster_enabled:1). A
        server that refuses INFO (an ACL without it) is taken for a plain one."""
        try:
            info = self._client.info("cluster")
        except self._redis.ResponseError:
            return False
        return str(info.get("cluster_enabled", "0")) == "1"

    # -- talking to Redis -----------------------------------------------------------------

    def _run(self, what: str, call: Callable[[], T]) -> T:
        """Run one command or script, retrying connection failures (and a server busy loading
        or running a long script) with backoff, and translate redis-py's errors into conveyor's
        at this one boundary.

        A retried write may already have been applied when its reply was lost; the build stays
        consistent. A repeated reserve carries the same request id and gets the same reservation
        back (reserve.lua keeps each worker's last one), so it leases nothing more; a repeated
        complete keeps the first result and reports it as a duplicate; a repeated populate
        answers False, and the caller checks the digest like any follower; a repeated requeue
        spends the unit's budget twice (at worst it answers REQUEUE_REFUSED and the failure is
        kept as the result); a repeated join, release or publish appends its event twice.

        On a cluster, redis-py's client follows MOVED and ASK itself; a cluster that is down or
        has a slot nobody serves for a moment (a failover) is ridden out like a lost connection."""
        redis = self._redis
        exceptions = redis.exceptions
        transient = (
            redis.ConnectionError,
            redis.TimeoutError,
            exceptions.ClusterDownError,
            exceptions.SlotNotCoveredError,
        )
        started = time.monotonic()
        delays = self._retry.delays_s()
        tries = 0
        while True:
            tries += 1
            try:
                return call()
            except redis.AuthenticationError as exc:
                raise QueueURLError(
                    f"Redis at {_where(self.display_url)} refused the credentials of the queue "
                    f"URL {self.display_url}: the password (or user name) is wrong or missing "
                    f"({exc}). Fix the user:password part of the URL."
                ) from None
            except transient as exc:
                if not delays:
                    raise QueueUnavailable(
                        f"cannot reach the Redis queue {self.display_url} to {what}: {exc} "
                        f"(tried {tries} times over {time.monotonic() - started:.1f}s). Check "
                        "that redis-server is running there and reachable from this machine "
                        "(host, port, firewall), for rediss:// the TLS certificates, and for a "
                        "cluster that every master is up (cluster_state:ok)."
                    ) from None
                time.sleep(delays.pop(0))
            except exceptions.AskError as exc:  # MovedError too: a plain client on a cluster
                raise QueueUnavailable(
                    f"the Redis queue {self.display_url} is one node of a Redis Cluster and "
                    f"sent conveyor to another ({exc}) to {what}; write the URL as "
                    "redis+cluster://host:port so that conveyor uses the whole cluster."
                ) from None
            except redis.ResponseError as exc:
                if not (str(exc).startswith("BUSY ") and delays):
                    raise self._translate(what, exc) from None
                time.sleep(delays.pop(0))
            except (redis.RedisError, exceptions.RedisClusterException) as exc:
                raise QueueError(
                    f"the Redis queue {self.display_url} failed to {what}: {exc}"
                ) from None

    def _translate(self, what: str, exc: Exception) -> QueueError:
        message = str(exc)
        if message.startswith("BUILD_LOST"):
            return self._lost()
        if message.startswith("NOT_IN_BUILD "):
            return _NotInBuild(int(message.split()[1]))
        return QueueError(f"the Redis queue {self.display_url} refused to {what}: {message}")

    def _lost(self) -> BuildStateLost:
        return BuildStateLost(
            f"build {self.build!r} vanished from the Redis queue {self.display_url} while it was "
            "running: its keys are gone (Redis restarted without persistence, was flushed, "
            f"evicted keys under maxmemory, or the build sat idle longer than {self.ttl_s:.0f}s). "
            "Start the build again; to survive restarts enable persistence (appendonly yes) and "
            "set maxmemory-policy noeviction."
        )

    def _write(self, name: str, *args: ScriptArg, extra_keys: Sequence[str] = ()) -> Any:
        """Run a write script with the build's keys and the (now, ttl_ms) arguments it expects."""
        script = self._scripts[name]
        keys = [*self._keys, *extra_keys]
        argv: list[ScriptArg] = [repr(float(self._clock())), int(self.ttl_s * 1000), *args]
        return self._run(name, lambda: script(keys=keys, args=argv))

    def _key(self, name: str) -> str:
        return self._prefix + name

    def _exists(self) -> bool:
        return bool(self._run("read the manifest", lambda: self._client.exists(self._key("meta"))))

    def _must_exist(self) -> str:
        return "1" if self._seen_populated else "0"

    def history(self, suite: str) -> RedisHistory:
        """The timing history of `suite`, shared by every build of it on this Redis."""
        return RedisHistory(self._client, "conveyor:history:{" + suite + "}", run=self._run)

    def close(self) -> None:
        _close(self._client)

    # -- protocol -------------------------------------------------------------------------

    def populate(self, leader: str, units: Sequence[str], meta: Mapping[str, Any]) -> bool:
        unique = list(dict.fromkeys(units))
        became_leader = self._write(
            "populate",
            leader,
            collection_digest(unique),
            _dumps(meta),
            int(meta.get("max_unit_crashes", DEFAULT_MAX_UNIT_CRASHES)),
            _dumps({"total": len(unique)}),
            *unique,
        )
        self._seen_populated = True
        return bool(became_leader)

    def manifest(self) -> Manifest | None:
        fields = self._run(
            "read the manifest",
            lambda: self._client.hmget(self._key("meta"), ["leader", "digest", "total", "meta"]),
        )
        leader, digest, total, meta = cast("list[str | None]", fields)
        if leader is None:
            return None
        self._seen_populated = True
        try:
            if digest is None or total is None or meta is None:
                raise ValueError("incomplete manifest")
            return Manifest(leader=leader, digest=digest, total=int(total), meta=json.loads(meta))
        except ValueError:
            raise QueueError(
                f"the manifest of build {self.build!r} in {self.display_url} is not valid; its "
                "keys were written by something else. Use a fresh build id or database."
            ) from None

    def units(self) -> list[str]:
        found = cast(
            Strings,
            self._run("read the units", lambda: self._client.lrange(self._key("units"), 0, -1)),
        )
        # An empty build has no units list either; only a missing manifest means loss.
        if not found and self._seen_populated and not self._exists():
            raise self._lost()
        return found

    def join(self, worker: str, info: Mapping[str, Any]) -> None:
        self._write("join", self._must_exist(), worker, _dumps(info))

    def reserve(self, worker: str, max_units: int, request_id: str | None = None) -> Reservation:
        # Made here, not per try: _run's retries of this call must carry the same id.
        request = request_id if request_id is not None else uuid.uuid4().hex
        reply = self._write(
            "reserve",
            worker,
            max(1, max_units),
            repr(float(self._clock()) + self.lease_ttl_s),
            request,
            extra_keys=[self._key(f"reservations:{worker}"), self._key("reserve_requests")],
        )
        self._seen_populated = True
        state, pending, *flat = reply
        leases = tuple(Lease(unit, int(attempt)) for unit, attempt in _pairs(flat))
        if state == LEASED:
            return Reservation(LEASED, leases, int(pending))
        return Reservation(state)

    def heartbeat(self, worker: str, units: Sequence[str]) -> int:
        deadline = repr(float(self._clock()) + self.lease_ttl_s)
        held = int(self._write("heartbeat", worker, deadline, *dict.fromkeys(units)))
        self._seen_populated = True
        return held

    def complete(self, worker: str, results: Sequence[tuple[str, JSON]]) -> list[bool]:
        args: list[str] = []
        for unit, payload in results:
            args += [unit, _dumps(payload)]
        try:
            flags = self._write("complete", worker, *args)
        except _NotInBuild as refused:
            unit = results[refused.index][0]
            raise QueueError(
                f"worker {worker!r} completed {unit!r}, which is not in build "
                f"{self.build!r}; its collection does not match the manifest."
            ) from None
        self._seen_populated = True
        return [bool(flag) for flag in flags]

    def requeue(
        self, worker: str, unit: str, payload: JSON, *, max_requeues: int, tolerance: float
    ) -> str:
        try:
            answer = self._write(
                "requeue",
                worker,
                unit,
                _dumps(payload),
                _dumps({"attempt": payload.get("attempt")}),
                int(max_requeues),
                repr(float(tolerance)),
                extra_keys=[self._key("requeues")],
            )
        except _NotInBuild:
            raise QueueError(
                f"worker {worker!r} requeued {unit!r}, which is not in build {self.build!r}."
            ) from None
        self._seen_populated = True
        if answer not in (REQUEUED, REQUEUE_REFUSED, ALREADY_DONE):
            raise QueueError(f"the Redis queue {self.display_url} answered requeue with {answer!r}")
        return str(answer)

    def release(self, worker: str, cause: Mapping[str, Any]) -> list[Released]:
        """Take back a dead worker's leases. Only `cause["culprit"]` (the unit it was running,
        when known) is charged a crash; the units it merely held go back untouched. With
        `cause["final"]` the culprit is finalised at once, whatever its crash count."""
        culprit = cause.get("culprit")
        if not isinstance(culprit, str):
            culprit = None  # unknown: nothing is charged a crash
        reply = self._write(
            "release",
            worker,
            "0" if culprit is None else "1",
            culprit or "",
            _dumps(cause),
            "1" if cause.get("final") else "0",
            release_event_kind(cause),
        )
        self._seen_populated = True
        return [
            Released(reply[i], int(reply[i + 1]), int(reply[i + 2]), bool(reply[i + 3]))
            for i in range(0, len(reply), 4)
        ]

    def hand_back(self, worker: str, units: Sequence[str], reason: str) -> list[str]:
        cause = {"reason": reason, "orderly": True}
        returned = self._write("hand_back", worker, _dumps(cause), *units)
        self._seen_populated = True
        return [str(unit) for unit in returned]

    def publish(self, kind: str, worker: str | None, data: Mapping[str, Any]) -> None:
        self._write(
            "publish",
            self._must_exist(),
            kind,
            "0" if worker is None else "1",
            worker or "",
            _dumps(data),
        )

    def events(self, after: int, limit: int = 1000) -> list[Event]:
        if limit == 0:
            return []
        script = self._scripts["events"]
        keys = [self._key("meta"), self._key("events")]
        # A negative limit means "no limit", as in SQL.
        args = [max(after, 0) + 1, limit if limit > 0 else 2**62]
        exists, entries = self._run("read events", lambda: script(keys=keys, args=args))
        if exists:
            self._seen_populated = True
        elif self._seen_populated:
            raise self._lost()
        return [_event(entry_id, fields) for entry_id, fields in entries]

    def stop(self, reason: str) -> None:
        self._write("stop", self._must_exist(), reason, _dumps({"reason": reason}))

    def resume(self, reason: str) -> bool:
        resumed = bool(self._write("resume", reason))
        self._seen_populated = True
        return resumed

    def status(self) -> BuildStatus:
        script = self._scripts["status"]
        keys = [self._key(name) for name in ("meta", "pending", "leases", "workers")]
        reply = self._run("read the build status", lambda: script(keys=keys))
        if not reply:
            if self._seen_populated:
                raise self._lost()
            return BuildStatus(populated=False)
        self._seen_populated = True
        total, pending, leased, stop_reason, workers = reply
        return BuildStatus(
            populated=True,
            total=int(total),
            done=int(total) - int(pending) - int(leased),
            pending=int(pending),
            leased=int(leased),
            stop_reason=stop_reason,
            workers=tuple(workers),
        )

    def reservations(self, worker: str) -> list[Lease]:
        """The order in which `worker` was handed its units (for replay and bisect)."""
        key = self._key(f"reservations:{worker}")
        flat = cast(
            Strings, self._run("read reservations", lambda: self._client.lrange(key, 0, -1))
        )
        return [Lease(unit, int(attempt)) for unit, attempt in _pairs(flat)]


def _close(client: Client) -> None:
    """Close a client and its sockets. The cluster client's close leaves each node's connection
    pool open (redis-py made those pools itself), so they are disconnected here."""
    nodes = client.get_nodes() if hasattr(client, "get_nodes") else []
    client.close()
    for node in nodes:
        if node.redis_connection is not None:
            node.redis_connection.connection_pool.disconnect()


def _cluster_client(
    url: str, options: Mapping[str, Any], display_url: str, retry: RetryPolicy
) -> redis.cluster.RedisCluster:
    """redis-py's cluster client for `url` (redis:// or rediss://, any node of the cluster).
    It reads the slot map when it is made, so an unreachable cluster is retried here."""
    redis = _import_redis()
    from redis.cluster import RedisCluster

    delays = retry.delays_s()
    started = time.monotonic()
    while True:
        try:
            return RedisCluster.from_url(url, **options)
        except redis.AuthenticationError as exc:
            raise QueueURLError(
                f"the Redis Cluster at {_where(display_url)} refused the credentials of the "
                f"queue URL {display_url}: the password (or user name) is wrong or missing "
                f"({scrub(str(exc), url)}). Fix the user:password part of the URL."
            ) from None
        except (redis.exceptions.RedisClusterException, redis.RedisError) as exc:
            message = scrub(str(exc), url)
            if "not enabled" in message:
                raise QueueURLError(
                    f"the queue URL {display_url} names a Redis Cluster, but the server at "
                    f"{_where(display_url)} is not part of one ({message}); write the URL as "
                    "redis://host:port/db."
                ) from None
            if "``db``" in message or "db" in message.split():
                raise QueueURLError(
                    f"the queue URL {display_url} names a database other than 0, and a Redis "
                    "Cluster has only database 0; write it as redis+cluster://host:port/0."
                ) from None
            if re.search(r"auth|password", message, re.IGNORECASE):
                raise QueueURLError(
                    f"the Redis Cluster at {_where(display_url)} refused the credentials of "
                    f"the queue URL {display_url} ({message}). Fix the user:password part of "
                    "the URL."
                ) from None
            if not delays:
                raise QueueUnavailable(
                    f"cannot reach the Redis Cluster queue {display_url}: {message} (tried "
                    f"over {time.monotonic() - started:.1f}s). {CLUSTER_HINT}"
                ) from None
            time.sleep(delays.pop(0))


def _pairs(flat: Sequence[str]) -> list[tuple[str, str]]:
    """[a, 1, b, 2] -> [(a, 1), (b, 2)]: how Redis replies with pairs."""
    return list(zip(flat[::2], flat[1::2], strict=True))


def _event(entry_id: str, flat: Sequence[str]) -> Event:
    """One stream entry as an Event; an entry conveyor did not write becomes kind "malformed"
    so a reader reports it instead of crashing on it."""
    fields = dict(_pairs(flat))
    seq = int(entry_id.split("-", 1)[0])
    worker, unit, raw = fields.get("worker"), fields.get("unit"), fields.get("data", "")
    try:
        ts = float(fields.get("ts", "0"))
    except ValueError:
        ts = 0.0
    try:
        payload = json.loads(raw)
        kind = fields["kind"]
    except (KeyError, ValueError):
        error = "event data is not valid JSON" if "kind" in fields else "event has no kind"
        return Event(seq, "malformed", worker, unit, {"error": error, "raw": raw[:200]}, ts)
    return Event(seq, kind, worker, unit, payload, ts)
