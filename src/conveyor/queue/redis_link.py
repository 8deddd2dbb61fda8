"""Reaching a Redis (or a Redis Cluster) from a queue URL, and the one boundary every call to it
goes through: connection failures are retried with backoff, and redis-py's errors become
conveyor's, with messages that name the (masked) URL and what to check.

A cluster is reached through redis-py's cluster client, which follows the slot map (MOVED,
failovers): chosen by the redis+cluster:// (rediss+cluster://) scheme, or when a redis:// URL
turns out to name a node of a cluster.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar
from urllib.parse import urlsplit

from conveyor.errors import QueueError, QueueUnavailable, QueueURLError
from conveyor.queue import mask_url, scrub

if TYPE_CHECKING:
    import redis
    import redis.cluster

T = TypeVar("T")
# A plain client, or redis-py's cluster client (which speaks to every node of a cluster).
Client: TypeAlias = "redis.Redis | redis.cluster.RedisCluster"

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
REACH_HINT = (
    "Check that redis-server is running there and reachable from this machine (host, port, "
    "firewall), for rediss:// the TLS certificates, and for a cluster that every master is up "
    "(cluster_state:ok)."
)
URL_FORMS = "redis://[user:password@]host:port/db, rediss://… or unix:///path/redis.sock"


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


DEFAULT_RETRY = RetryPolicy()


def import_redis() -> ModuleType:
    try:
        import redis
    except ImportError:
        raise QueueUnavailable(
            f"the redis package is not installed, so conveyor cannot use a Redis queue. "
            f"{INSTALL_HINT}"
        ) from None
    return redis


def where(url: str) -> str:
    """host:port (or the socket path) of a Redis URL, for messages; never the password."""
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return parts.path or "<no socket path>"
        return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
    except ValueError:
        return mask_url(url)


class RedisLink:
    """A client and the boundary around it. `translate` turns a script's own error replies
    (BUILD_LOST, NOT_IN_BUILD …) into the queue's exceptions; None leaves them generic."""

    def __init__(
        self,
        client: Client,
        display_url: str,
        retry: RetryPolicy,
        translate: Callable[[str], QueueError | None] = lambda reply: None,
    ) -> None:
        self.client = client
        self.display_url = display_url
        self.retry = retry
        self.redis = import_redis()
        self._translate_reply = translate

    def run(self, what: str, call: Callable[[], T]) -> T:
        """Run one command or script, retrying connection failures (and a server busy loading
        or running a long script) with backoff, and translate redis-py's errors into conveyor's.

        A retried write may already have been applied when its reply was lost; the build stays
        consistent. A repeated reserve or steal carries the same request id and gets the same
        leases back, so it leases nothing more; a repeated complete keeps the first result and
        reports it as a duplicate; a repeated populate answers False, and the caller checks the
        digest like any follower; a repeated requeue spends the unit's budget twice (at worst
        it answers REQUEUE_REFUSED and the failure is kept as the result); a repeated claim or
        heartbeat renews again; a repeated join, release or publish appends its event twice.

        On a cluster, redis-py's client follows MOVED and ASK itself; a cluster that is down or
        has a slot nobody serves for a moment (a failover) is ridden out like a lost connection."""
        started = time.monotonic()
        delays = self.retry.delays_s()
        tries = 0
        while True:
            tries += 1
            try:
                return call()
            except Exception as exc:
                if not (self._retryable(exc) and delays):
                    error = self._translate(what, exc, tries, time.monotonic() - started)
                    if error is None:
                        raise
                    raise error from None
                time.sleep(delays.pop(0))

    def _transient(self) -> tuple[type[Exception], ...]:
        exceptions = self.redis.exceptions
        return (
            self.redis.ConnectionError,
            self.redis.TimeoutError,
            exceptions.ClusterDownError,
            exceptions.SlotNotCoveredError,
        )

    def _retryable(self, exc: Exception) -> bool:
        if isinstance(exc, self.redis.AuthenticationError):
            return False
        busy = isinstance(exc, self.redis.ResponseError) and str(exc).startswith("BUSY ")
        return busy or isinstance(exc, self._transient())

    def _translate(self, what: str, exc: Exception, tries: int, took_s: float) -> Exception | None:
        """conveyor's error for `exc`, or None for an error that is not redis-py's."""
        redis, url = self.redis, self.display_url
        if isinstance(exc, redis.AuthenticationError):
            return QueueURLError(
                f"Redis at {where(url)} refused the credentials of the queue URL {url}: the "
                f"password (or user name) is wrong or missing ({exc}). Fix the user:password "
                "part of the URL."
            )
        if isinstance(exc, self._transient()):
            return QueueUnavailable(
                f"cannot reach the Redis queue {url} to {what}: {exc} (tried {tries} times "
                f"over {took_s:.1f}s). {REACH_HINT}"
            )
        if isinstance(exc, redis.exceptions.AskError):  # MovedError too: a plain client
            return QueueUnavailable(
                f"the Redis queue {url} is one node of a Redis Cluster and sent conveyor to "
                f"another ({exc}) to {what}; write the URL as redis+cluster://host:port so "
                "that conveyor uses the whole cluster."
            )
        if isinstance(exc, redis.ResponseError) and "DB index is out of range" in str(exc):
            return QueueURLError(
                f"Redis at {where(url)} has no database {url.rsplit('/', 1)[-1]!r} ({exc}): "
                "the number after the last / of the queue URL must be below the server's "
                "`databases` setting (16 unless configured), as in redis://host:port/0."
            )
        if isinstance(exc, redis.ResponseError):
            mine = self._translate_reply(str(exc))
            return mine or QueueError(f"the Redis queue {url} refused to {what}: {exc}")
        if isinstance(exc, (redis.RedisError, redis.exceptions.RedisClusterException)):
            return QueueError(f"the Redis queue {url} failed to {what}: {exc}")
        return None

    def in_cluster(self) -> bool:
        """Whether the server is a node of a Redis Cluster (INFO says cluster_enabled:1). A
        server that refuses INFO (an ACL without it) is taken for a plain one."""
        try:
            info = self.client.info("cluster")
        except self.redis.ResponseError:
            return False
        return str(info.get("cluster_enabled", "0")) == "1"

    def close(self) -> None:
        close(self.client)


def open_link(url: str, retry: RetryPolicy, tls: Mapping[str, str]) -> RedisLink:
    """Connect to `url` (redis://, rediss://, unix://, redis+cluster://, rediss+cluster://)
    and PING it, so a wrong URL fails here rather than halfway through a build. A redis:// or
    rediss:// URL that names a node of a cluster is served as the cluster."""
    scheme = url.split(":", 1)[0].lower()
    cluster = scheme in CLUSTER_SCHEMES
    link = RedisLink(_client(url, cluster, retry, tls), mask_url(url), retry)
    try:
        try:
            link.run("connect", link.client.ping)
        except TypeError as exc:
            # redis-py passes a query parameter it does not know on to the connection it
            # makes at the first command (`?timeout_s=5`), which then refuses it.
            if "unexpected keyword argument" not in str(exc):
                raise
            raise QueueURLError(
                f"the queue URL {link.display_url} has a query parameter Redis does not know "
                f"({scrub(str(exc), url)}); write it as {URL_FORMS}"
            ) from None
        if not cluster and scheme != "unix" and link.run("connect", link.in_cluster):
            # One node of a cluster holds only its own slots: every build whose slot lives on
            # another node would be answered MOVED. Serve it as the cluster it is.
            link.close()
            return open_link(f"{scheme}+cluster{url[len(scheme) :]}", retry, tls)
    except BaseException:
        link.close()
        raise
    return link


def _client(url: str, cluster: bool, retry: RetryPolicy, tls: Mapping[str, str]) -> Client:
    redis = import_redis()
    display_url = mask_url(url)
    scheme = url.split(":", 1)[0].lower()
    # redis-py's clients know redis:// and rediss:// only.
    server_url = scheme.removesuffix("+cluster") + url[len(scheme) :] if cluster else url
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
        # RedisLink.run retries whole operations itself; retrying inside redis-py as well
        # would multiply the waits.
        "retry": redis.retry.Retry(redis.backoff.NoBackoff(), 0),
        **tls,
    }
    try:
        if cluster:
            return _cluster_client(server_url, options, display_url, retry)
        client: Client = redis.Redis.from_url(server_url, **options)
        return client
    except (ValueError, TypeError) as exc:
        raise QueueURLError(
            f"the queue URL {display_url} is not a valid Redis URL ({scrub(str(exc), url)}); "
            f"write it as {URL_FORMS}"
        ) from None


def close(client: Client) -> None:
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
    redis = import_redis()
    from redis.cluster import RedisCluster

    delays = retry.delays_s()
    started = time.monotonic()
    while True:
        try:
            return RedisCluster.from_url(url, **options)
        except redis.AuthenticationError as exc:
            raise _cluster_refused(display_url, scrub(str(exc), url)) from None
        except (redis.exceptions.RedisClusterException, redis.RedisError) as exc:
            message = scrub(str(exc), url)
            error = _cluster_url_error(display_url, message)
            if error is not None:
                raise error from None
            if not delays:
                raise QueueUnavailable(
                    f"cannot reach the Redis Cluster queue {display_url}: {message} (tried "
                    f"over {time.monotonic() - started:.1f}s). {CLUSTER_HINT}"
                ) from None
            time.sleep(delays.pop(0))


def _cluster_refused(display_url: str, message: str) -> QueueURLError:
    return QueueURLError(
        f"the Redis Cluster at {where(display_url)} refused the credentials of the queue URL "
        f"{display_url}: the password (or user name) is wrong or missing ({message}). Fix the "
        "user:password part of the URL."
    )


def _cluster_url_error(display_url: str, message: str) -> QueueURLError | None:
    """The usage error behind a failure to make a cluster client, when it is one."""
    if "not enabled" in message:
        return QueueURLError(
            f"the queue URL {display_url} names a Redis Cluster, but the server at "
            f"{where(display_url)} is not part of one ({message}); write the URL as "
            "redis://host:port/db."
        )
    if "``db``" in message or "db" in message.split():
        return QueueURLError(
            f"the queue URL {display_url} names a database other than 0, and a Redis Cluster "
            "has only database 0; write it as redis+cluster://host:port/0."
        )
    if re.search(r"auth|password", message, re.IGNORECASE):
        return _cluster_refused(display_url, message)
    return None
