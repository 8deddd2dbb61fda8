"""A fleet of "machines" on this one: each a separate process tree started at its own moment,
timed from the fleet's start to its own exit, and one of them killable mid-run the way a CI
node dies: every process it started, SIGKILLed at once, with no chance to clean up."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

POLL_S = 0.01
FLEET_TIMEOUT_S = 600.0
PASSED = re.compile(r"\b(\d+) passed\b")


@dataclass(frozen=True)
class MachineRun:
    index: int
    start_s: float  # from the fleet's start
    end_s: float
    exit_code: int
    killed: bool
    passed: int | None  # from pytest's summary line; None when it printed none
    output_tail: str


@dataclass(frozen=True)
class FleetRun:
    machines: tuple[MachineRun, ...]

    @property
    def wall_s(self) -> float:
        """From the first machine's start to the last machine's exit: the CI build's time."""
        return max(machine.end_s for machine in self.machines)

    @property
    def survivors(self) -> tuple[MachineRun, ...]:
        return tuple(machine for machine in self.machines if not machine.killed)


def passed_count(output: str) -> int | None:
    found = PASSED.findall(output)
    return int(found[-1]) if found else None


def descendants(root: int) -> list[int]:
    """Every live process below `root` (by parent pid in /proc), whatever session it is in:
    conveyor's supervisor starts its workers in sessions of their own."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields follow the last ")".
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def kill_machine(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the machine's process group and everything below it, children first found."""
    doomed = descendants(process.pid)
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def run_fleet(
    argvs: Sequence[list[str]],
    *,
    cwd: Path,
    env: Mapping[str, str],
    logs: Path,
    delays_s: Mapping[int, float] | None = None,
    kill: tuple[int, float] | None = None,
) -> FleetRun:
    """Start machine i's command `delays_s[i]` seconds after the fleet starts (its own process
    group; output to a file, never a pipe nobody reads), kill machine `kill[0]` `kill[1]`
    seconds after the start, and wait for all of them."""
    delays = dict(delays_s or {})
    logs.mkdir(parents=True, exist_ok=True)
    waiting = sorted(range(len(argvs)), key=lambda i: delays.get(i, 0.0))
    running: dict[int, tuple[subprocess.Popen[bytes], float, Path]] = {}
    finished: dict[int, MachineRun] = {}
    killed: set[int] = set()
    start = time.perf_counter()
    try:
        while len(finished) < len(argvs):
            now = time.perf_counter() - start
            while waiting and delays.get(waiting[0], 0.0) <= now:
                index = waiting.pop(0)
                log = logs / f"machine-{index}.log"
                with log.open("wb") as out:
                    process = subprocess.Popen(
                        argvs[index],
                        cwd=cwd,
                        env=dict(env),
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                running[index] = (process, now, log)
            if kill is not None and kill[0] in running and now >= kill[1] and kill[0] not in killed:
                kill_machine(running[kill[0]][0])
                killed.add(kill[0])
            for index, (process, started, log) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                end = time.perf_counter() - start
                tail = log.read_bytes()[-3000:].decode("utf-8", "replace")
                finished[index] = MachineRun(
                    index, started, end, code, index in killed, passed_count(tail), tail
                )
                del running[index]
            if now > FLEET_TIMEOUT_S:
                raise TimeoutError(f"the fleet ran longer than {FLEET_TIMEOUT_S:.0f}s")
            time.sleep(POLL_S)
    finally:
        for process, _, _ in running.values():
            kill_machine(process)
            process.wait()
    return FleetRun(tuple(finished[index] for index in range(len(argvs))))
