"""A whole build through a connection that loses the reply to one reserve: the worker's retry
gets the same reservation back, nothing leaks, and the build finishes at once instead of
waiting for --stall-timeout on a lease the heartbeat would renew forever."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import redis
from conftest import RedisServer
from redis_proxy import CLOSE, ReplyDroppingProxy

from conveyor.queue import open_queue
from conveyor.queue.protocol import EVENT_LEASE_EXPIRED, EVENT_LEASED
from conveyor.queue.redis import _script_source

SUITE = {
    f"test_part_{module}.py": "\n".join(f"def test_{module}_{i}():\n    pass\n" for i in range(4))
    for module in range(3)
}


def test_a_lost_reply_to_reserve_leaks_nothing_and_the_build_finishes(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    for name, body in SUITE.items():
        (tmp_path / name).write_text(body)
    client = redis.Redis.from_url(redis_server.url)
    # Loaded beforehand, so the EVALSHA whose reply is lost has run (not answered NOSCRIPT).
    trigger = str(client.script_load(_script_source("reserve"))).encode()
    client.close()
    build = f"lost-reply-{uuid.uuid4().hex[:10]}"
    with ReplyDroppingProxy(redis_server.port, trigger, CLOSE) as proxy:
        result = subprocess.run(
            [
                sys.executable, "-m", "conveyor", "run", "-n", "1",
                "--queue", proxy.url, "--build", build,
                "--lease-ttl", "3", "--stall-timeout", "25",
                "-p", "no:cacheprovider",
            ],
            cwd=tmp_path,
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=120,
        )  # fmt: skip
        assert proxy.dropped == 1, "the proxy should have lost one reply"
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "12 passed" in output.splitlines()[-1], output
    queue = open_queue(redis_server.url, build)
    events = queue.events(0, limit=-1)
    queue.close()
    assert [event for event in events if event.kind == EVENT_LEASE_EXPIRED] == []
    leased = [u for event in events if event.kind == EVENT_LEASED for u in event.data["units"]]
    assert sorted(leased) == sorted(set(leased)), "a unit was leased twice"
