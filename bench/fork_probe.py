"""`python -m bench.fork_probe -n W PYTEST_ARGS`: the floor of "collect once, fork the workers".

Not a runner: a measurement of a direction (issue: start-up and overhead). One pytest process
imports, configures and collects; then it forks W children, and child k runs every W-th test
(k, k + W, ...) through pytest's own protocol, its reports going through the hooks as a worker's
would. No queue, no results sent anywhere, no report replayed: what is left is what forking
after collection could at best cost. POSIX only (it forks). The parent prints `N passed` (the
children's sum) as its last line, so `python -m bench --fork-probe` checks it like any runner.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest


class ForkAfterCollection:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.passed = 0
        self.failed = 0

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        readers = [self._fork(session, k) for k in range(self.workers)]
        for reader in readers:
            with os.fdopen(reader) as pipe:
                passed, failed = (int(part) for part in pipe.read().split())
            self.passed += passed
            self.failed += failed
        while True:
            try:
                os.wait()
            except ChildProcessError:
                break
        return True

    def _fork(self, session: pytest.Session, k: int) -> int:
        reader, writer = os.pipe()
        if os.fork():
            os.close(writer)
            return reader
        os.close(reader)
        mine = session.items[k :: self.workers]
        for index, item in enumerate(mine):
            following = mine[index + 1] if index + 1 < len(mine) else None
            item.config.hook.pytest_runtest_protocol(item=item, nextitem=following)
        os.write(writer, f"{self.passed} {self.failed}".encode())
        os._exit(0)

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.failed:
            self.failed += 1
        elif report.passed and report.when == "call":
            self.passed += 1


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "-n" or not argv[1].isdigit():
        print("usage: python -m bench.fork_probe -n WORKERS [PYTEST_ARGS...]", file=sys.stderr)
        return 2
    probe = ForkAfterCollection(int(argv[1]))
    pytest.main(argv[2:], plugins=[probe])
    print(f"fork probe: {probe.passed} passed, {probe.failed} failed", flush=True)
    return 1 if probe.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
