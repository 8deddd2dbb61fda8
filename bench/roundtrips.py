"""Redis round trips per test: how many commands a conveyor build sends per test.

Runs suite (a), 2,000 trivial tests, on 2 workers against a throwaway redis-server and reads
`INFO commandstats` before and after. Run with `python -m bench.roundtrips`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import redis

from bench.redis_server import redis_server_binary, throwaway_redis
from bench.suites import trivial


def command_counts(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(values["calls"]) for name, values in stats.items()}


def main() -> int:
    binary = redis_server_binary()
    if binary is None:
        print("redis-server is not installed (apt-get install -y redis-server)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="conveyor-roundtrips-") as folder:
        root = Path(folder)
        suite = trivial(root / "suite", quick=False)
        with throwaway_redis(binary, root / "redis") as url:
            client = redis.Redis.from_url(url, decode_responses=True)
            before = command_counts(client)
            subprocess.run(
                [
                    sys.executable, "-m", "conveyor", "run", "-n", "2", "-q",
                    "-p", "no:cacheprovider", "--queue", url, "--build", uuid.uuid4().hex,
                ],
                cwd=suite.path,
                check=True,
                stdout=subprocess.DEVNULL,
                env={k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"},
            )  # fmt: skip
            after = command_counts(client)
    calls = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    calls = {name: count for name, count in sorted(calls.items()) if count > 0}
    total = sum(calls.values())
    print(
        f"{suite.test_count} tests, 2 workers: {total} Redis commands in all, "
        f"{total / suite.test_count:.2f} per test"
    )
    for name, count in calls.items():
        print(f"  {name:>12}: {count:6d}  ({count / suite.test_count:.3f} per test)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
