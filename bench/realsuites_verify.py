"""Whose is a difference: the suite's, or conveyor's?

A test that failed under conveyor but passed under plain pytest is run again by plain pytest,
in one process, in the order the worker that failed it ran its tests (`conveyor replay`). If
plain pytest fails it too, the suite depends on the order of its tests (one test leaves state
behind that a later one reads), which any runner that splits the suite can expose; `conveyor
bisect`'s search then names the test that leaves it. If plain pytest passes it in that order,
nothing explains the difference but conveyor, and it must be treated as a wrong verdict.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.realsuites_junit import Difference
from conveyor.bisect import FAILS_ALONE, FOUND, bisect
from conveyor.queue import open_queue
from conveyor.replay import worker_order

FAILED_OUTCOMES = ("failed", "error")
MAX_WORKERS_CHECKED = 4  # each costs one replay, and one bisect (about log2(tests) replays)
REPLAY_TIMEOUT_S = 900.0

# tests -> {test id: "passed" | "failed"} of one plain pytest process, None if it did not run.
Replayer = Callable[[list[str]], dict[str, str] | None]


@dataclass(frozen=True)
class Verdict:
    """What plain pytest said of one difference when given the worker's order."""

    test: str  # the JUnit key, as in Difference.test
    reproduced: bool | None  # None: not checked
    detail: str

    def line(self) -> str:
        if self.reproduced is None:
            return f"not checked: {self.detail}"
        if self.reproduced:
            return f"the suite's own order dependence: {self.detail}"
        return f"NOT reproduced by plain pytest, conveyor's until shown otherwise: {self.detail}"


def junit_key(nodeid: str) -> str:
    """A test id as pytest's --junitxml names it (classname::name), the key JUnit XML gives
    the comparison."""
    path, bracket, params = nodeid.partition("[")
    names = path.split("::")
    names[0] = re.sub(r"\.py$", "", names[0].replace("/", "."))
    names[-1] += bracket + params
    return "::".join([".".join(names[:-1]), names[-1]])


def _wrongly_failed(found: Sequence[Difference]) -> list[Difference]:
    return [
        diff
        for diff in found
        if diff.plain == "passed" and any(kind in diff.other for kind in FAILED_OUTCOMES)
    ]


def _recorded(
    queue_url: str, build: str
) -> tuple[dict[str, tuple[str, str]], dict[str, list[str]]]:
    """JUnit key -> (test id, worker that last ran it); worker -> its order of tests."""
    queue = open_queue(queue_url, build)
    try:
        ran_by: dict[str, tuple[str, str]] = {}
        cursor = 0
        while page := queue.events(cursor, 2000):
            for event in page:
                if event.kind == "result" and event.unit and event.worker:
                    ran_by[junit_key(event.unit)] = (event.unit, event.worker)
            cursor = page[-1].seq
        workers = {worker for _, worker in ran_by.values()}
        return ran_by, {worker: worker_order(queue, worker) for worker in workers}
    finally:
        queue.close()


def plain_replayer(
    python: Path, folder: Path, pytest_args: Sequence[str], env: dict[str, str]
) -> Replayer:
    """One fresh plain pytest process per call, with the project's python in its folder."""

    def replay(tests: list[str]) -> dict[str, str] | None:
        with tempfile.TemporaryDirectory(prefix="realsuites-verify-") as scratch:
            order, outcomes = Path(scratch) / "order.txt", Path(scratch) / "outcomes.json"
            order.write_text("\n".join(tests) + "\n", "utf-8")
            argv = [str(python), "-m", "conveyor", "replay", "--from-file", str(order)]
            argv += ["--outcomes", str(outcomes), "-q", "-p", "no:cacheprovider"]
            try:
                subprocess.run(
                    [*argv, *pytest_args],
                    cwd=folder,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=REPLAY_TIMEOUT_S,
                    check=False,
                )
                seen: dict[str, str] = json.loads(outcomes.read_text("utf-8"))
            except (OSError, ValueError, subprocess.TimeoutExpired):
                return None
        return seen

    return replay


def _explain_worker(
    worker: str, order: list[str], victims: list[tuple[Difference, str]], replay: Replayer
) -> list[Verdict]:
    """One replay of the worker's order up to its last victim, then a bisect of the first
    victim plain pytest failed too."""
    last = max(order.index(nodeid) for _, nodeid in victims)
    seen = replay(order[: last + 1])
    if seen is None:
        return [
            Verdict(diff.test, None, f"the replay of {worker}'s order did not run")
            for diff, _ in victims
        ]
    verdicts, culprit_named = [], False
    for diff, nodeid in victims:
        position = order.index(nodeid)
        if seen.get(nodeid) != "failed":
            detail = f"it passed after the {position} tests {worker} ran before it"
            verdicts.append(Verdict(diff.test, False, detail))
            continue
        detail = f"plain pytest fails it too after the {position} tests {worker} ran before it"
        if not culprit_named:
            culprit_named = True
            detail += _culprit(order[:position], nodeid, replay)
        verdicts.append(Verdict(diff.test, True, detail))
    return verdicts


def _culprit(before: list[str], victim: str, replay: Replayer) -> str:
    def fails_last(tests: list[str]) -> bool | None:
        seen = replay(tests)
        outcome = seen.get(tests[-1]) if seen is not None else None
        return None if outcome is None else outcome == "failed"

    found = bisect(before, victim, fails_last)
    if found.verdict == FOUND:
        return f"; after {found.culprit} alone it fails ({found.runs} replays)"
    if found.verdict == FAILS_ALONE:
        return "; it fails alone under plain pytest too"
    return "; no single earlier test is enough to make it fail"


def explain(
    found: Sequence[Difference], queue_url: str, build: str, replay: Replayer
) -> list[Verdict]:
    """A verdict for each test conveyor failed and plain pytest passed."""
    victims = _wrongly_failed(found)
    if not victims:
        return []
    ran_by, orders = _recorded(queue_url, build)
    by_worker: dict[str, list[tuple[Difference, str]]] = {}
    verdicts = []
    for diff in victims:
        if diff.test not in ran_by:
            verdicts.append(Verdict(diff.test, None, "no result for it in the queue's record"))
            continue
        nodeid, worker = ran_by[diff.test]
        by_worker.setdefault(worker, []).append((diff, nodeid))
    for index, (worker, group) in enumerate(sorted(by_worker.items())):
        if index >= MAX_WORKERS_CHECKED:
            verdicts += [
                Verdict(d.test, None, f"only {MAX_WORKERS_CHECKED} workers are replayed")
                for d, _ in group
            ]
            continue
        verdicts += _explain_worker(worker, orders[worker], group, replay)
    return verdicts
