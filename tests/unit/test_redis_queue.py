"""What only the Redis backend has: key layout and expiry, connection errors, TLS and unix
sockets, and losing a build's keys mid-build. The shared contract is in test_queue_conformance."""

from __future__ import annotations

import re
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import (
    FakeClock,
    RedisCluster,
    RedisServer,
    TlsRedis,
    free_port,
    require_redis_server,
)
from redis_proxy import CLOSE, SILENCE, ReplyDroppingProxy

from conveyor.errors import BuildStateLost, QueueError, QueueUnavailable, QueueURLError
from conveyor.queue import open_queue
from conveyor.queue.protocol import (
    EVENT_UNIT_CRASHED,
    EVENT_WORKER_LOST,
    EXHAUSTED,
    LEASED,
    REQUEUED,
    Lease,
)
from conveyor.queue.redis import RedisQueue, RetryPolicy, _script_source

QUICK = RetryPolicy(tries=2, first_delay_s=0.05, budget_s=0.5)


def units(n: int) -> list[str]:
    return [f"tests/test_mod.py::test_{i}" for i in range(n)]


@pytest.fixture
def build_id() -> str:
    return f"build-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test's own, for tests that flush or restart it."""
    require_redis_server()
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def build_keys(client: redis.Redis, build: str) -> list[str]:
    return sorted(client.scan_iter(match=f"conveyor:{{{build}}}:*"))


def test_every_key_shares_the_build_hash_tag_and_expires(
    redis_server: RedisServer, build_id: str, clock: FakeClock
) -> None:
    queue = RedisQueue.from_url(redis_server.url, build_id, clock=clock, ttl_s=600)
    queue.join("gw0", {"host": "here", "pid": 1})
    queue.join("gw1", {"host": "here", "pid": 2})  # keeps last_seen when gw0 is released
    queue.populate("gw0", units(3), {"range_starts": units(3)[:1]})  # a split module
    queue.reserve("gw0", 3)
    queue.reserve("gw1", 1)  # nothing for it; gw0 is not released yet: its marks remain
    queue.complete("gw0", [(units(3)[0], {"outcome": "passed"})])
    queue.requeue("gw0", units(3)[2], {"attempt": 1}, max_requeues=1, tolerance=-1)
    queue.release("gw0", {"culprit": units(3)[1]})
    queue.reserve("gw1", 1)  # marks gw1 in the split module
    queue.publish("note", None, {})
    queue.stop("done")
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    keys = build_keys(client, build_id)
    assert {key.split(":", 2)[2] for key in keys} >= {
        "meta", "units", "attempts", "crashes", "pending", "workers", "worker_info",
        "last_seen", "seq", "events", "reservations:gw0", "requeues", "forward_ranks",
        "forward_marks",
    }  # fmt: skip
    for key in keys:
        # Redis Cluster hashes only what is between the first { and the next }.
        assert key[key.index("{") + 1 : key.index("}")] == build_id
        assert 0 < client.pttl(key) <= 600_000, key
    client.close()
    queue.close()


def test_each_write_pushes_expiry_back(
    redis_server: RedisServer, build_id: str, clock: FakeClock
) -> None:
    queue = RedisQueue.from_url(redis_server.url, build_id, clock=clock, ttl_s=600)
    queue.populate("gw0", units(2), {})
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    for key in build_keys(client, build_id):
        client.pexpire(key, 5_000)
    queue.heartbeat("gw0", [])
    assert all(client.pttl(key) > 500_000 for key in build_keys(client, build_id))
    client.close()
    queue.close()


def test_requeue_counts_per_unit_and_build_wide_and_refuses_strangers(
    redis_server: RedisServer, build_id: str, clock: FakeClock
) -> None:
    queue = RedisQueue.from_url(redis_server.url, build_id, clock=clock)
    queue.populate("gw0", units(3), {})
    first, second, _ = (lease.unit for lease in queue.reserve("gw0", 3).leases)
    for unit in (first, second, first):
        assert queue.requeue("gw0", unit, {}, max_requeues=5, tolerance=-1) == REQUEUED
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    assert client.hgetall(f"conveyor:{{{build_id}}}:requeues") == {first: "2", second: "1"}
    assert client.hget(f"conveyor:{{{build_id}}}:meta", "requeues") == "3"
    # The last one requeued is the last one pending.
    assert client.zrange(f"conveyor:{{{build_id}}}:pending", 0, -1) == [second, first]
    seq = int(client.get(f"conveyor:{{{build_id}}}:seq") or 0)
    with pytest.raises(QueueError, match="not in build"):
        queue.requeue("gw0", "tests/test_other.py::test_x", {}, max_requeues=5, tolerance=-1)
    assert int(client.get(f"conveyor:{{{build_id}}}:seq") or 0) == seq  # refusing wrote nothing
    client.close()
    queue.close()


def test_reservations_keep_each_workers_order(redis_server: RedisServer, build_id: str) -> None:
    queue = RedisQueue.from_url(redis_server.url, build_id)
    queue.populate("gw0", units(4), {})
    queue.reserve("gw0", 1)
    queue.reserve("gw1", 2)
    queue.reserve("gw0", 1)
    assert queue.reservations("gw0") == [Lease(units(4)[0], 1), Lease(units(4)[3], 1)]
    assert queue.reservations("gw1") == [Lease(units(4)[1], 1), Lease(units(4)[2], 1)]
    assert queue.reservations("gw9") == []
    queue.close()


def test_foreign_stream_entry_is_reported_as_malformed(
    redis_server: RedisServer, build_id: str
) -> None:
    queue = RedisQueue.from_url(redis_server.url, build_id)
    queue.populate("gw0", units(1), {})
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.xadd(
        f"conveyor:{{{build_id}}}:events", {"kind": "x", "data": "{oops", "ts": "1"}, "50-0"
    )
    client.xadd(f"conveyor:{{{build_id}}}:events", {"junk": "1"}, "51-0")
    events = queue.events(0)
    assert [(event.seq, event.kind) for event in events[-2:]] == [
        (50, "malformed"),
        (51, "malformed"),
    ]
    assert events[-2].data["raw"] == "{oops"
    client.close()
    queue.close()


def test_odd_unit_names_and_causes_come_back_exactly(
    redis_server: RedisServer, build_id: str
) -> None:
    odd = ['t.py::test[a"b]', "t.py::test[\\x]", "t.py::test[é/ü ✓]", "t.py::test[{x}]"]
    cause = {"culprit": odd[0], "empty_list": [], "empty_map": {}, "t": 0.12345678901234567}
    queue = RedisQueue.from_url(redis_server.url, build_id)
    queue.populate("gw0", odd, {"max_unit_crashes": 1})
    assert queue.units() == odd
    queue.reserve("gw0", 4)
    released = queue.release("gw0", cause)
    assert {(r.unit, r.finalised) for r in released} == {(u, u == odd[0]) for u in odd}
    by_kind = {event.kind: event for event in queue.events(0)}
    assert by_kind[EVENT_UNIT_CRASHED].unit == odd[0]
    assert by_kind[EVENT_UNIT_CRASHED].data == {"attempt": 1, "crashes": 1, "cause": cause}
    assert by_kind[EVENT_WORKER_LOST].data["cause"] == cause
    assert sorted(by_kind[EVENT_WORKER_LOST].data["requeued"]) == sorted(odd[1:])
    again = queue.reserve("gw1", 4)
    assert sorted(lease.unit for lease in again.leases) == sorted(odd[1:])
    queue.complete("gw1", [(unit, {"outcome": "passed"}) for unit in odd[1:]])
    assert queue.status().finished
    queue.release("gw1", {})  # holds nothing: "requeued" must stay a JSON list
    assert queue.events(0)[-1].data == {"cause": {}, "requeued": []}
    queue.close()


def test_wrong_password_names_the_host_and_hides_the_password(tmp_path: Path) -> None:
    require_redis_server()
    server = RedisServer(tmp_path / "redis", "--requirepass", "right-one")
    server.start()
    try:
        url = f"redis://:s3cr3t-wrong@127.0.0.1:{server.port}/0"
        with pytest.raises(QueueUnavailable) as caught:
            open_queue(url, "b")
        message = str(caught.value)
        assert "s3cr3t" not in message
        assert f"127.0.0.1:{server.port}" in message
        assert "***" in message
        assert "password" in message
        with pytest.raises(QueueUnavailable, match="password"):
            open_queue(f"redis://127.0.0.1:{server.port}/0", "b")  # none given
        good = open_queue(f"redis://:right-one@127.0.0.1:{server.port}/0", "b")
        assert good.display_url == f"redis://:***@127.0.0.1:{server.port}/0"
        good.close()
    finally:
        server.stop()


def test_unreachable_server_fails_fast_and_names_the_url() -> None:
    url = f"redis://:s3cr3t@127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    with pytest.raises(QueueUnavailable) as caught:
        open_queue(url, "b")  # the default retry policy
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "redis://:***@127.0.0.1:" in message
    assert "s3cr3t" not in message
    assert "redis-server is running" in message


def test_missing_redis_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(QueueUnavailable, match=r"pip install 'conveyor\[redis\]'"):
        open_queue("redis://127.0.0.1:1/0", "b")


def test_tls_options_need_a_rediss_url(redis_server: RedisServer) -> None:
    with pytest.raises(QueueUnavailable, match="rediss://"):
        RedisQueue.from_url(redis_server.url, "b", ssl_ca_certs="/nonexistent/ca.pem")


def test_flushall_mid_build_raises_build_state_lost(
    own_server: RedisServer, build_id: str, clock: FakeClock
) -> None:
    queue = RedisQueue.from_url(own_server.url, build_id, clock=clock)
    queue.populate("gw0", units(3), {})
    queue.reserve("gw0", 1)
    client = redis.Redis.from_url(own_server.url)
    client.flushall()
    client.close()
    for operation in (
        lambda: queue.reserve("gw0", 1),
        lambda: queue.heartbeat("gw0", units(3)[:1]),
        lambda: queue.complete("gw0", [(units(3)[0], {})]),
        lambda: queue.release("gw0", {}),
        lambda: queue.join("gw1", {}),
        lambda: queue.publish("note", None, {}),
        lambda: queue.stop("ctrl-c"),
        queue.status,
        queue.units,
        lambda: queue.events(0),
    ):
        with pytest.raises(BuildStateLost, match="vanished"):
            operation()
    assert queue.manifest() is None
    client = redis.Redis.from_url(own_server.url, decode_responses=True)
    assert build_keys(client, build_id) == []  # refusing wrote nothing
    client.close()
    # A process that never saw the build cannot tell loss from "not populated yet" except where
    # the build is needed.
    fresh = RedisQueue.from_url(own_server.url, build_id, clock=clock)
    assert not fresh.status().populated
    with pytest.raises(BuildStateLost):
        fresh.reserve("gw1", 1)
    fresh.close()
    queue.close()


def test_restart_without_persistence_is_retried_then_reported_lost(
    own_server: RedisServer, build_id: str
) -> None:
    queue = RedisQueue.from_url(own_server.url, build_id)
    queue.populate("gw0", units(2), {})
    assert queue.reserve("gw0", 1).state == LEASED
    own_server.restart()  # same port; the pooled connection is dead and the scripts are gone
    with pytest.raises(BuildStateLost):
        queue.heartbeat("gw0", units(2)[:1])
    queue.close()


def test_server_gone_for_good_raises_queue_unavailable(
    own_server: RedisServer, build_id: str
) -> None:
    queue = RedisQueue.from_url(own_server.url, build_id, retry=QUICK)
    queue.populate("gw0", units(1), {})
    own_server.stop()
    with pytest.raises(QueueUnavailable, match="cannot reach the Redis queue"):
        queue.reserve("gw0", 1)
    queue.close()


def test_unix_socket(tmp_path: Path, build_id: str) -> None:
    require_redis_server()
    socket_path = tmp_path / "redis.sock"
    server = RedisServer(tmp_path / "redis", "--unixsocket", str(socket_path))
    server.start()
    try:
        queue = open_queue(f"unix://{socket_path}", build_id)
        queue.populate("gw0", units(1), {})
        assert queue.reserve("gw0", 1).state == LEASED
        queue.complete("gw0", [(units(1)[0], {})])
        assert queue.reserve("gw0", 1).state == EXHAUSTED
        queue.close()
    finally:
        server.stop()


def test_tls_with_a_ca_from_the_url_or_a_keyword(tls_redis: TlsRedis, build_id: str) -> None:
    certs_ca = tls_redis.ca
    url = tls_redis.url
    from_query = open_queue(f"{url}?ssl_ca_certs={certs_ca}", build_id)
    assert from_query.populate("gw0", units(1), {})
    from_query.close()
    from_keyword = RedisQueue.from_url(url, build_id, ssl_ca_certs=str(certs_ca))
    manifest = from_keyword.manifest()
    assert manifest is not None and manifest.leader == "gw0"
    from_keyword.close()
    with pytest.raises(QueueUnavailable, match=re.escape("rediss://127.0.0.1")):
        RedisQueue.from_url(url, build_id, retry=QUICK)  # the CA is unknown


def load_script(server: RedisServer, name: str) -> bytes:
    """Load one of conveyor's scripts into `server` and return its SHA: the EVALSHA a proxy
    then drops the reply of is applied, not answered NOSCRIPT."""
    client = redis.Redis.from_url(server.url)
    sha = client.script_load(_script_source(name))
    client.close()
    return str(sha).encode()


@pytest.mark.parametrize("mode", [SILENCE, CLOSE])
def test_a_lost_reply_to_reserve_leaks_no_lease(
    redis_server: RedisServer, build_id: str, clock: FakeClock, mode: str
) -> None:
    """reserve.lua runs on the server, its reply is lost (a socket timeout, a dropped
    connection) and the call is retried: the retry gets the same reservation back, so no unit
    is left leased to a worker that does not know it holds it."""
    trigger = load_script(redis_server, "reserve")
    with ReplyDroppingProxy(redis_server.port, trigger, mode) as proxy:
        client = redis.Redis.from_url(
            proxy.url,
            decode_responses=True,
            socket_timeout=1.0,
            retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
        )
        queue = RedisQueue(client, build_id, display_url=proxy.url, clock=clock)
        queue.populate("gw0", units(4), {})
        reservation = queue.reserve("gw0", 2)
        assert proxy.dropped == 1, "the proxy should have lost one reply"
        assert [lease.unit for lease in reservation.leases] == units(4)[:2]
        status = queue.status()
        assert (status.leased, status.pending) == (2, 2)
        assert queue.reservations("gw0") == list(reservation.leases)
        queue.close()


@pytest.mark.parametrize("scheme", ["redis+cluster", "redis"])
def test_a_cluster_serves_builds_whose_slots_live_on_any_node(
    redis_cluster: RedisCluster, scheme: str
) -> None:
    """The URL names one node; builds (and timing histories) whose slots live on every master
    work, through redis+cluster:// and through a redis:// URL recognised as a cluster's."""
    seed = redis_cluster.ports[0]
    for port in redis_cluster.ports:
        build = redis_cluster.build_on(port)
        queue = open_queue(f"{scheme}://127.0.0.1:{seed}/0", build)
        assert queue.populate("gw0", units(3), {}) is True
        leases = queue.reserve("gw0", 3).leases
        assert queue.heartbeat("gw0", [lease.unit for lease in leases]) == 3
        queue.complete("gw0", [(lease.unit, {"outcome": "passed"}) for lease in leases])
        assert queue.status().finished
        assert [event.kind for event in queue.events(0)][-1] == "finished"
        suite = "suite"
        while redis_cluster.port_of_key("conveyor:history:{" + suite + "}") == port:
            suite += "x"
        history = queue.history(suite)  # type: ignore[attr-defined]
        history.record({units(3)[0]: 1.5})
        assert history.load()[units(3)[0]] > 0
        queue.close()
        for node in redis_cluster.ports:  # one hash tag: every key of the build on one master
            found = redis_cluster.cli(node, "KEYS", f"conveyor:{{{build}}}:*").split()
            assert bool(found) == (node == port), (node, port, found)


def test_cluster_urls_that_cannot_work_say_why(
    redis_cluster: RedisCluster, redis_server: RedisServer, build_id: str
) -> None:
    port = redis_cluster.ports[0]
    with pytest.raises(QueueURLError, match="not part of one"):
        open_queue(f"redis+cluster://127.0.0.1:{redis_server.port}/0", build_id)
    with pytest.raises(QueueURLError, match="only database 0"):
        open_queue(f"redis+cluster://127.0.0.1:{port}/3", build_id)
    started = time.monotonic()
    with pytest.raises(QueueUnavailable, match="cannot reach the Redis Cluster") as caught:
        RedisQueue.from_url(f"redis+cluster://:s3cr3t@127.0.0.1:{free_port()}/0", "b", retry=QUICK)
    assert time.monotonic() - started < 10
    assert "s3cr3t" not in str(caught.value) and "***" in str(caught.value)


def test_a_plain_client_sent_elsewhere_by_a_cluster_says_to_use_the_cluster_scheme(
    redis_cluster: RedisCluster,
) -> None:
    """A user that may not run INFO cannot be told to be on a cluster in advance; the MOVED
    reply then becomes a message that says what to write, not a traceback."""
    seed, elsewhere, _ = redis_cluster.ports
    redis_cluster.cli(seed, "ACL", "SETUSER", "no-info", "on", ">pw", "~*", "+@all", "-info")
    queue = open_queue(f"redis://no-info:pw@127.0.0.1:{seed}/0", redis_cluster.build_on(elsewhere))
    with pytest.raises(QueueUnavailable, match=r"redis\+cluster://host:port"):
        queue.manifest()
    queue.close()
