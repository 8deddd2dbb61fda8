"""A small Python API for running any test framework on conveyor's queue.

A worker joins a build, publishes the units (or checks that it has the same ones as the worker
that did), takes them one at a time under a lease that a background thread keeps alive, and
completes each with a `Result`. `conveyor report` (or `BuildResults`) shows them like pytest
results: terminal summary, --junitxml, exit code. conveyor's own command mode is built on this.

    from conveyor.api import Result, WorkerSession

    with WorkerSession.connect("sqlite:///tmp/q.db", build="b1", worker_id="w1") as session:
        session.populate(["features/login.feature", "features/cart.feature"])
        for unit in session:
            ok = run_my_framework(unit.name)
            session.complete(unit, Result("passed" if ok else "failed"))
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from conveyor.errors import CollectionMismatch, QueueError
from conveyor.heartbeat import Heartbeat
from conveyor.lease_stream import LeaseStream
from conveyor.queue import Queue, open_queue
from conveyor.queue.protocol import (
    EVENT_RESULT,
    EVENT_UNIT_CRASHED,
    EVENT_WORKER_LEFT,
    EVENT_WORKER_OUTPUT,
    JSON,
    LEASE_TTL_S,
    REQUEUED,
    collection_digest,
)

OUTCOMES = ("passed", "failed", "skipped", "error")
WAIT_POLL_S = 0.05


@dataclass
class Case:
    """One test case inside a unit (e.g. read from the JUnit XML the unit's command wrote)."""

    name: str
    outcome: str = "passed"
    classname: str = ""
    duration_s: float = 0.0
    message: str = ""
    output: str = ""


@dataclass
class Result:
    """The outcome of one unit. With `cases`, the report lists the cases instead of the unit;
    a unit that failed although none of its cases did is listed beside them, as failed."""

    outcome: str
    duration_s: float = 0.0
    message: str = ""
    output: str = ""
    cases: list[Case] = field(default_factory=list)
    timed_out: bool = False  # a hang is not retried: it would hang the next worker too
    warnings: list[str] = field(default_factory=list)  # shown in the warnings summary

    def __post_init__(self) -> None:
        for outcome in [self.outcome, *(case.outcome for case in self.cases)]:
            if outcome not in OUTCOMES:
                raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")

    @property
    def failed(self) -> bool:
        return self.outcome in ("failed", "error") or any(
            case.outcome in ("failed", "error") for case in self.cases
        )


@dataclass(frozen=True)
class Unit:
    """A unit handed to this worker; `attempt` counts how often it has been handed out."""

    name: str
    attempt: int


def _report_json(nodeid: str, outcome: str, duration_s: float, message: str, output: str) -> JSON:
    """A test report in the form `pytest_report_to_serializable` gives a pytest TestReport,
    so the controller rebuilds and shows it exactly like a pytest result. Written out here
    so that this module, meant for any framework, does not import pytest."""
    path = nodeid.split("::", 1)[0]
    longrepr: Any = None
    if outcome in ("failed", "error"):
        longrepr = message or "failed"
    elif outcome == "skipped":
        longrepr = [path, 0, f"Skipped: {message or 'skipped'}"]
    return {
        "$report_type": "TestReport",
        "nodeid": nodeid,
        "location": [path, None, nodeid],
        "keywords": {},
        "outcome": "failed" if outcome == "error" else outcome,
        "longrepr": longrepr,
        "when": "setup" if outcome == "error" else "call",
        "user_properties": [],
        "sections": [["Captured output", output]] if output else [],
        "duration": duration_s,
    }


def _warning_json(unit: str, text: str) -> JSON:
    return {
        "message": text,
        "category": "UserWarning",
        "filename": unit,
        "lineno": 0,
        "line": None,
        "when": "runtest",
        "nodeid": unit,
    }


def _cases_json(unit: str, result: Result) -> list[JSON]:
    cases = list(result.cases)
    if result.outcome in ("failed", "error") and not any(
        case.outcome in ("failed", "error") for case in cases
    ):
        # Only the cases are listed, so a unit that failed with nothing but passing cases
        # is listed as a case of its own: its failure is never hidden behind them.
        cases.append(Case("", result.outcome, message=result.message, output=result.output))
    listed = []
    for case in cases:
        nodeid = "::".join(part for part in (unit, case.classname, case.name) if part)
        report = _report_json(nodeid, case.outcome, case.duration_s, case.message, case.output)
        listed.append({"nodeid": nodeid, "reports": [report]})
    return listed


def result_payload(unit: str, result: Result, attempt: int, started: float) -> JSON:
    """What a worker stores for a unit: the unit's own report, or one report per case."""
    report = _report_json(unit, result.outcome, result.duration_s, result.message, result.output)
    payload: JSON = {
        "nodeid": unit,
        "location": [unit, None, unit],
        "attempt": attempt,
        "started": started,
        "duration": result.duration_s,
        "warnings": [_warning_json(unit, text) for text in result.warnings],
        "reports": [report],
    }
    if result.cases:
        payload["cases"] = _cases_json(unit, result)
    return payload


class WorkerSession:
    """One worker's view of a build: populate, iterate units, complete or requeue them."""

    def __init__(self, queue: Queue, worker_id: str, *, lease_ttl_s: float = LEASE_TTL_S) -> None:
        self.queue = queue
        self.worker_id = worker_id
        # Units handed out and not yet completed or requeued: the leases the heartbeat renews.
        self._held: dict[str, None] = {}
        self._held_lock = threading.Lock()
        self._heartbeat = Heartbeat(queue, worker_id, lease_ttl_s, held=self._held_units)
        self._joined = False  # joined the build: leaving, it says its last
        # The same reserve loop as a pytest worker's, one unit at a time: units are the
        # caller's own names (files, suites), so the queue reads no class into them.
        self._stream = LeaseStream(
            queue,
            worker_id,
            batch=lambda pending: 1,
            check=self._heartbeat.check,
            whole="none",
        )
        self._started: dict[str, float] = {}

    @classmethod
    def connect(
        cls,
        queue_url: str,
        *,
        build: str,
        worker_id: str | None = None,
        lease_ttl_s: float = LEASE_TTL_S,
    ) -> WorkerSession:
        worker = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        return cls(
            open_queue(queue_url, build, lease_ttl_s=lease_ttl_s), worker, lease_ttl_s=lease_ttl_s
        )

    def populate(self, units: Sequence[str], meta: Mapping[str, Any] | None = None) -> bool:
        """Publish the units if no worker has yet (True: this worker is the leader); else
        check that this worker has the same set, and raise CollectionMismatch if not."""
        full_meta = {"selected": len(units), "collected": len(units), **(meta or {})}
        if self.queue.populate(self.worker_id, units, full_meta):
            return True
        manifest = self.queue.manifest()
        if manifest is not None and manifest.digest != collection_digest(units):
            published, mine = set(self.queue.units()), set(units)
            raise CollectionMismatch(
                f"worker {self.worker_id} has other units than the build: "
                f"{len(published - mine)} missing here, {len(mine - published)} extra "
                f"(e.g. {sorted(published ^ mine)[:5]}); it will not work on this build."
            )
        return False

    def __iter__(self) -> Iterator[Unit]:
        """Units for this worker until the build is exhausted (or stopped)."""
        self.queue.join(self.worker_id, {"host": socket.gethostname(), "pid": os.getpid()})
        self._joined = True
        if not self._heartbeat.is_alive():
            self._heartbeat.start()
        for lease in self._stream:
            with self._held_lock:
                self._held[lease.unit] = None
            self._started[lease.unit] = time.time()
            yield Unit(lease.unit, lease.attempt)

    def complete(self, unit: Unit, result: Result) -> bool:
        """Store the unit's result; False when another attempt already finished it."""
        payload = result_payload(unit.name, result, unit.attempt, self._started.pop(unit.name, 0))
        stored = self.queue.complete(self.worker_id, [(unit.name, payload)])[0]
        self._release(unit.name)
        return stored

    def requeue(
        self, unit: Unit, result: Result, *, max_requeues: int, tolerance: float = -1.0
    ) -> bool:
        """Send a failed attempt back for a retry if the budgets allow (True); otherwise the
        caller completes the unit with this result."""
        payload = result_payload(unit.name, result, unit.attempt, self._started.get(unit.name, 0))
        answer = self.queue.requeue(
            self.worker_id, unit.name, payload, max_requeues=max_requeues, tolerance=tolerance
        )
        if answer == REQUEUED:
            self._started.pop(unit.name, None)
            self._release(unit.name)
        return answer == REQUEUED

    def _held_units(self) -> list[str]:
        """Units handed out and not yet completed, and those reserved but not handed out."""
        with self._held_lock:
            return [*self._held, *self._stream.unstarted()]

    def _release(self, unit: str) -> None:
        with self._held_lock:
            self._held.pop(unit, None)

    def close(self) -> None:
        self._heartbeat.stop()
        if self._joined:
            self._joined = False
            with contextlib.suppress(QueueError):
                self.queue.publish(EVENT_WORKER_LEFT, self.worker_id, {"reason": "closed"})
                # Its last word, as a pytest worker's workeroutput is: a controller whose
                # plugins read workers' output (pytest-cov) waited for it up to 30 s.
                self.queue.publish(EVENT_WORKER_OUTPUT, self.worker_id, {"output": {}})
        self.queue.close()

    def __enter__(self) -> WorkerSession:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True)
class FinalResult:
    """A unit's final result as the build recorded it."""

    unit: str
    worker: str | None
    outcome: str
    payload: JSON


class BuildResults:
    """The controller side: follow a build and read each unit's final result."""

    def __init__(self, queue_url: str, build: str) -> None:
        self.queue = open_queue(queue_url, build)

    def __iter__(self) -> Iterator[FinalResult]:
        """Final results as they arrive, until the build is finished."""
        cursor = 0
        while True:
            page = self.queue.events(cursor)
            for event in page:
                cursor = event.seq
                if event.kind == EVENT_RESULT and event.unit:
                    yield FinalResult(event.unit, event.worker, _outcome(event.data), event.data)
                elif event.kind == EVENT_UNIT_CRASHED and event.unit:
                    yield FinalResult(event.unit, event.worker, "crashed", event.data)
                elif event.kind == "finished":
                    return
            if not page:
                time.sleep(WAIT_POLL_S)

    def close(self) -> None:
        self.queue.close()


def _outcome(payload: JSON) -> str:
    reports = [r for case in payload.get("cases", []) for r in case.get("reports", [])]
    reports = reports or payload.get("reports", [])
    outcomes = {str(report.get("outcome")) for report in reports}
    if "failed" in outcomes:
        return "failed"
    return "passed" if "passed" in outcomes else next(iter(outcomes), "passed")


__all__ = ["BuildResults", "Case", "FinalResult", "Result", "Unit", "WorkerSession"]
