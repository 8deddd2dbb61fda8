"""The worker's heartbeat thread on real queues: it renews the leases the worker knows it holds,
and only those, on the real clock."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conveyor.heartbeat import Heartbeat
from conveyor.queue import Queue, open_queue
from conveyor.queue.protocol import EVENT_LEASE_EXPIRED

UNITS = [f"test_m.py::test_{i}" for i in range(3)]
TTL_S = 0.6  # the heartbeat renews every 0.2 s


@pytest.fixture(params=["sqlite", "redis"])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'queue.db'}"
    return str(request.getfixturevalue("redis_server").url)


def test_the_heartbeat_renews_only_the_leases_the_worker_knows(
    queue_url: str, tmp_path: Path
) -> None:
    """A lease the worker was granted without learning of it (the reply to its reserve was
    lost) expires and goes to another worker; the ones it knows stay its own however long."""
    build = f"build-{tmp_path.name}"
    queue: Queue = open_queue(queue_url, build, lease_ttl_s=TTL_S)
    queue.populate("gw0", UNITS, {})
    known, leaked = (lease.unit for lease in queue.reserve("gw0", 2).leases)
    heartbeat = Heartbeat(queue, "gw0", TTL_S, held=lambda: [known])
    heartbeat.start()
    try:
        time.sleep(5 * TTL_S)
        other = open_queue(queue_url, build, lease_ttl_s=TTL_S)
        taken = [lease.unit for lease in other.reserve("gw1", 3).leases]
        other.close()
    finally:
        heartbeat.stop()
        heartbeat.join()
    assert heartbeat.error is None
    assert taken == [leaked, UNITS[2]]  # the leaked lease came back first; `known` did not
    expired = [event.unit for event in queue.events(0) if event.kind == EVENT_LEASE_EXPIRED]
    assert expired == [leaked]
    queue.close()
