"""The runners compared on each suite, as command lines."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Every contender gets these: no .pytest_cache side effects, quiet output. conveyor keeps its
# cache: on the embedded queue its timing history lives there (the warm-up run writes it).
COMMON_ARGS = ("-p", "no:cacheprovider", "-q")
CONVEYOR_ARGS = ("-q",)
XDIST_MODES = ("load", "worksteal", "loadfile", "loadscope")


@dataclass(frozen=True)
class Contender:
    """One runner; `argv` builds a fresh command line per run (Redis needs a new build id)."""

    name: str
    argv: Callable[[], list[str]]
    is_xdist: bool = False
    is_conveyor: bool = False


def _pytest(*extra: str) -> list[str]:
    return [sys.executable, "-m", "pytest", *COMMON_ARGS, *extra, "."]


def _conveyor(workers: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "conveyor",
        "run",
        "-n",
        str(workers),
        *extra,
        *CONVEYOR_ARGS,
        ".",
    ]


def _xdist(workers: int, mode: str) -> Contender:
    return Contender(
        f"xdist-{mode}", lambda: _pytest("-n", str(workers), "--dist", mode), is_xdist=True
    )


def _conveyor_redis(workers: int, url: str) -> Contender:
    def argv() -> list[str]:
        build = f"bench-{uuid.uuid4().hex[:12]}"
        return _conveyor(workers, "--queue", url, "--build", build)

    return Contender("conveyor-redis", argv, is_conveyor=True)


def _fork_probe(workers: int) -> Contender:
    script = str(Path(__file__).with_name("fork_probe.py"))
    return Contender(
        "fork-probe", lambda: [sys.executable, script, "-n", str(workers), *COMMON_ARGS, "."]
    )


def contenders(workers: int, redis_url: str | None, *, fork_probe: bool = False) -> list[Contender]:
    """Plain pytest first: it is the reference for exit codes and ratios."""
    lineup = [Contender("pytest", _pytest)]
    lineup += [_xdist(workers, mode) for mode in XDIST_MODES]
    lineup.append(Contender("conveyor-sqlite", lambda: _conveyor(workers), is_conveyor=True))
    # A first run: without pytest's cache the embedded queue has no timing history to read
    # (and writes none), so every run is what a new project's first build is.
    lineup.append(Contender("conveyor-first", lambda: _conveyor(workers, "-p", "no:cacheprovider")))
    # --spawn-workers: every worker a new interpreter (the default forks them, unconfigured,
    # from one process that imported pytest; conveyor.preload_server).
    lineup.append(
        Contender("conveyor-spawn", lambda: _conveyor(workers, "--spawn-workers"), is_conveyor=True)
    )
    lineup.append(
        Contender(
            "conveyor-spawn-first",
            lambda: _conveyor(workers, "--spawn-workers", "-p", "no:cacheprovider"),
        )
    )
    # --fork-workers: the suite is collected once and the workers forked from that process.
    lineup.append(
        Contender("conveyor-fork", lambda: _conveyor(workers, "--fork-workers"), is_conveyor=True)
    )
    lineup.append(
        Contender(
            "conveyor-fork-first",
            lambda: _conveyor(workers, "--fork-workers", "-p", "no:cacheprovider"),
        )
    )
    # Slowest first without module grouping: what module order costs on a suite (it keeps
    # order-dependent suites passing; see conveyor.scheduling).
    lineup.append(
        Contender(
            "conveyor-fork-by-test",
            lambda: _conveyor(workers, "--fork-workers", "--dist", "test"),
            is_conveyor=True,
        )
    )
    if redis_url is not None:
        lineup.append(_conveyor_redis(workers, redis_url))
    if fork_probe:
        lineup.append(_fork_probe(workers))
    return lineup
