"""Many simulated workers against one real Redis build, on a simulated clock.

Each simulated worker is a small state machine that does what a conveyor worker process does
with the queue (see `conveyor.worker.WorkerPlugin` and `conveyor.lease_stream.LeaseStream`):
join; reserve a batch sized by the worker's policy; "run" each test by moving its own clock on by
the test's drawn duration; at a test's teardown reserve the next one if its hand is empty; send
results in batches (64, or 0.1 s after the last send) and read the build status after each send;
poll every 50 ms while the queue says wait; heartbeat its leases every 5 s; leave when the build
is exhausted. The queue calls are real (`RedisQueue`, its Lua scripts, a real server); only the
tests are simulated, so a run takes as long as the queue calls take, not as long as the tests.

Scheduling is discrete-event: the coordinator takes every event due within a short window of
simulated time and runs them at once on a pool of threads, each thread with its own Redis
connection and its own clock (the event's simulated time), so Redis sees many clients at once.
Every call's real latency is charged to the worker's simulated clock (a worker waits for its
reserve and its complete), so the simulated makespan includes the queue's cost.

A new verb (a steal, a claim) is one more method on `SimWorker` that calls `step.call("verb",
...)`, and its name in VERBS so that the report lists it.
"""

from __future__ import annotations

import heapq
import sys
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bench.scale_workload import Workload
from conveyor.batch_policy import MAX_BATCH, batch_size
from conveyor.lease_stream import WAIT_POLL_S
from conveyor.queue.protocol import EXHAUSTED, JSON, LEASED, Lease, Queue
from conveyor.queue.redis import RedisQueue
from conveyor.result_outbox import FLUSH_INTERVAL_S, FLUSH_MAX_RESULTS

T = TypeVar("T")
Entry = tuple[float, int, int, str]  # (due simulated s, tie-breaker, worker index, action)
PROGRESS_EVERY_S = 10.0
VERBS = ("join", "reserve", "complete", "status", "heartbeat", "publish")
HEARTBEAT_S = 5.0  # conveyor.worker.Heartbeat: min(5 s, lease ttl / 3)
RECENT_DURATIONS = 16  # WorkerPlugin keeps this many for its typical test duration
# Threads waiting for the GIL after their reply would add up to 5 ms (the default switch
# interval) to every latency measured; a shorter interval keeps the client's share small.
SWITCH_INTERVAL_S = 0.0005


class Recorder:
    """Latency of every queue call, per verb, in seconds (appends are atomic under the GIL)."""

    def __init__(self) -> None:
        self.latencies: dict[str, array[float]] = {verb: array("d") for verb in VERBS}

    def add(self, verb: str, seconds: float) -> None:
        self.latencies.setdefault(verb, array("d")).append(seconds)


class _ThreadClock(threading.local):
    now = 0.0


class Step:
    """One event of one simulated worker, run on a pool thread. Its queue calls happen at the
    simulated time `now`, and each call's real latency moves `now` on."""

    def __init__(
        self, queue: Queue, clock: _ThreadClock, recorder: Recorder, now: float, charge: bool
    ) -> None:
        self.queue = queue
        self.now = now
        self._clock = clock
        self._recorder = recorder
        self._charge = charge

    def call(self, verb: str, operation: Callable[[Queue], T]) -> T:
        self._clock.now = self.now
        start = time.perf_counter()
        result = operation(self.queue)
        elapsed = time.perf_counter() - start
        self._recorder.add(verb, elapsed)
        if self._charge:
            self.now += elapsed
        return result


def result_payload(unit: str, attempt: int, started: float, duration: float) -> JSON:
    """What a worker stores for a passed test: the shape and size (about 1.2 kB) of pytest's
    own serialised setup, call and teardown reports."""
    path, _, name = unit.partition("::")
    location = [path, 0, name]
    keywords = {name: 1, path.rsplit("/", 1)[-1]: 1, "tests": 1, "": 1}
    reports = []
    clock = started
    for when, share in (("setup", 0.0), ("call", 1.0), ("teardown", 0.0)):
        stop = clock + duration * share
        reports.append(
            {
                "$report_type": "TestReport",
                "nodeid": unit,
                "location": location,
                "keywords": keywords,
                "outcome": "passed",
                "longrepr": None,
                "when": when,
                "user_properties": [],
                "sections": [],
                "duration": stop - clock,
                "start": clock,
                "stop": stop,
            }
        )
        clock = stop
    return {
        "nodeid": unit,
        "location": location,
        "reports": reports,
        "warnings": [],
        "attempt": attempt,
        "started": started,
        "duration": duration,
    }


@dataclass
class SimWorker:
    """One simulated worker process: what it holds and what its policies remember."""

    name: str
    workload: Workload
    worker_count: int
    hand: deque[Lease] = field(default_factory=deque)
    running: Lease | None = None
    outbox: list[tuple[Lease, float, float]] = field(default_factory=list)
    last_flush_s: float = 0.0
    pending: int = 0
    affinity: int = 0
    exhausted: bool = False
    finished_s: float | None = None
    last_result_s: float = 0.0
    queue_s: float = 0.0  # simulated seconds spent waiting on queue calls
    wait_polls: int = 0
    tests: int = 0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_DURATIONS))

    # -- policy (mirrors WorkerPlugin._batch with timing history) -------------------------

    def _scope_run_after(self, unit: str) -> int:
        order, workload = self.workload.order, self.workload
        position = workload.positions.get(unit)
        if position is None or workload.grouping == "test":
            return 0
        scope = workload.scope_key(unit)
        run = 0
        for following in order[position + 1 : position + 1 + MAX_BATCH]:
            if workload.scope_key(following) != scope:
                break
            run += 1
        return run

    def batch(self) -> int:
        """How many units the next reservation asks for: the rest of the module run at the
        front of the queue (at most MAX_BATCH), else `conveyor.worker.batch_size`."""
        typical = sum(self.recent) / len(self.recent) if self.recent else None
        run = self.affinity
        if not run:
            position = self.workload.total - self.pending
            if 0 <= position < self.workload.total:
                run = 1 + self._scope_run_after(self.workload.order[position])
        if run <= 1:
            return batch_size(self.pending, self.worker_count, typical)
        return min(run, MAX_BATCH)

    def held(self) -> list[str]:
        """What the heartbeat renews: the running test, the reserved ones, unsent results."""
        running = [self.running.unit] if self.running is not None else []
        unsent = [lease.unit for lease, _, _ in self.outbox]
        return running + [lease.unit for lease in self.hand] + unsent

    # -- actions: each takes a Step and returns the worker's next (due, action) -----------

    def start(self, step: Step) -> list[tuple[float, str]]:
        step.call("join", lambda q: q.join(self.name, {"host": "sim", "pid": 0}))
        return [(step.now, "refill")]

    def _reserve(self, step: Step) -> str:
        want = self.batch()
        reservation = step.call("reserve", lambda q: q.reserve(self.name, want))
        self.pending = reservation.pending
        if reservation.state == LEASED:
            self.hand.extend(reservation.leases)
            self.affinity = self._scope_run_after(reservation.leases[-1].unit)
        elif reservation.state == EXHAUSTED:
            self.exhausted = True
        return reservation.state

    def _flush(self, step: Step, *, force: bool = False) -> None:
        if not self.outbox:
            return
        due = step.now - self.last_flush_s >= FLUSH_INTERVAL_S
        if not (force or due or len(self.outbox) >= FLUSH_MAX_RESULTS):
            return
        batch, self.outbox = self.outbox, []
        results = [
            (lease.unit, result_payload(lease.unit, lease.attempt, started, seconds))
            for lease, started, seconds in batch
        ]
        step.call("complete", lambda q: q.complete(self.name, results))
        self.last_result_s = step.now
        self.last_flush_s = step.now
        step.call("status", lambda q: q.status())

    def _leave(self, step: Step) -> list[tuple[float, str]]:
        self._flush(step, force=True)
        step.call("publish", lambda q: q.publish("worker_left", self.name, {"reason": "done"}))
        self.finished_s = step.now
        return []

    def _run_next(self, step: Step) -> list[tuple[float, str]]:
        self.running = self.hand.popleft()
        return [(step.now + self.workload.seconds[self.running.unit], "test_done")]

    def refill(self, step: Step) -> list[tuple[float, str]]:
        """The hand is empty: reserve until something comes, or the build is exhausted."""
        state = self._reserve(step)
        if state == LEASED:
            return self._run_next(step)
        if state == EXHAUSTED:
            return self._leave(step)
        self.wait_polls += 1
        self._flush(step, force=True)  # others may be waiting on these results
        return [(step.now + WAIT_POLL_S, "refill")]

    def test_done(self, step: Step) -> list[tuple[float, str]]:
        lease = self.running
        assert lease is not None
        seconds = self.workload.seconds[lease.unit]
        if not self.hand and not self.exhausted:
            self._reserve(step)  # pytest asks for the next item at this test's teardown
        self.running = None
        self.tests += 1
        self.recent.append(seconds)
        self.outbox.append((lease, step.now - seconds, seconds))
        self._flush(step)
        if self.hand:
            return self._run_next(step)
        if self.exhausted:
            return self._leave(step)
        return [(step.now, "refill")]


def _bind(function: Callable[..., T], *args: Any) -> Callable[[], T]:
    return lambda: function(*args)


ACTIONS: dict[str, Callable[[SimWorker, Step], list[tuple[float, str]]]] = {
    "start": SimWorker.start,
    "refill": SimWorker.refill,
    "test_done": SimWorker.test_done,
}


@dataclass
class SimResult:
    """What one simulated build did, in simulated seconds unless named real."""

    workers: list[SimWorker]
    recorder: Recorder
    real_s: float
    steps: int
    stopped_by_budget: bool

    @property
    def finished(self) -> bool:
        return all(worker.finished_s is not None for worker in self.workers)

    @property
    def makespan_s(self) -> float:
        """From the start to the last result stored."""
        return max((worker.last_result_s for worker in self.workers), default=0.0)


class Simulation:
    """The coordinator: a heap of (due, seq, worker, action) and a pool of connections."""

    def __init__(
        self,
        *,
        url: str,
        build: str,
        workload: Workload,
        workers: int,
        connections: int,
        window_s: float,
        budget_s: float,
        lease_ttl_s: float,
        epoch: float,
        charge_latency: bool = True,
    ) -> None:
        """`charge_latency` False: queue calls take no simulated time, so the makespan shows
        the scheduling policy alone, apart from how fast this machine answers."""
        self._charge = charge_latency
        self._url, self._build = url, build
        self._lease_ttl_s = lease_ttl_s
        self._epoch = epoch
        self.workload = workload
        self.workers = [SimWorker(f"sim-{i:04d}", workload, workers) for i in range(workers)]
        for worker in self.workers:
            worker.pending = workload.total
        self.recorder = Recorder()
        self._connections = connections
        self._window_s = window_s
        self._budget_s = budget_s
        self._local = threading.local()
        self._opened: list[RedisQueue] = []
        self._lock = threading.Lock()
        self._seq = 0

    def _queue(self) -> tuple[Queue, _ThreadClock]:
        """This pool thread's own connection, whose clock is this thread's simulated time."""
        found: tuple[Queue, _ThreadClock] | None = getattr(self._local, "queue", None)
        if found is None:
            clock = _ThreadClock()
            queue = RedisQueue.from_url(
                self._url,
                self._build,
                lease_ttl_s=self._lease_ttl_s,
                clock=lambda: self._epoch + clock.now,
            )
            with self._lock:
                self._opened.append(queue)
            found = self._local.queue = (queue, clock)
        return found

    def _main_action(self, worker: SimWorker, action: str, due: float) -> list[tuple[float, str]]:
        queue, clock = self._queue()
        step = Step(queue, clock, self.recorder, due, self._charge)
        follow = ACTIONS[action](worker, step)
        worker.queue_s += step.now - due
        return follow

    def _heartbeat(self, worker: SimWorker, held: list[str], due: float) -> list[tuple[float, str]]:
        """On its own thread in a real worker: it moves nobody's clock, and is periodic."""
        queue, clock = self._queue()
        Step(queue, clock, self.recorder, due, self._charge).call(
            "heartbeat", lambda q: q.heartbeat(worker.name, held)
        )
        return []

    def _step(self, pool: ThreadPoolExecutor, due_now: list[Entry], heap: list[Entry]) -> None:
        """Run every event of one window at once; queue what each worker does next."""
        # The heartbeat threads' snapshots first, before any action of this window runs.
        tasks: list[tuple[int | None, Callable[[], list[tuple[float, str]]]]] = []
        for due, _, index, action in due_now:
            worker = self.workers[index]
            if action != "hb":
                tasks.append((index, _bind(self._main_action, worker, action, due)))
            elif worker.finished_s is None:
                tasks.append((None, _bind(self._heartbeat, worker, worker.held(), due)))
                self._push(heap, due + HEARTBEAT_S, index, "hb")
        futures = [(owner, pool.submit(task)) for owner, task in tasks]
        for owner, future in futures:
            follow = future.result()
            if owner is not None:
                for next_due, next_action in follow:
                    self._push(heap, next_due, owner, next_action)

    def _push(self, heap: list[Entry], due: float, index: int, action: str) -> None:
        self._seq += 1
        heapq.heappush(heap, (due, self._seq, index, action))

    def run(self, progress: Callable[[str], None] = lambda line: None) -> SimResult:
        heap: list[Entry] = []
        for index in range(len(self.workers)):
            self._push(heap, 0.0, index, "start")
            # Real workers start at different moments: spread their heartbeats over a period.
            self._push(heap, HEARTBEAT_S * (index + 1) / len(self.workers), index, "hb")
        previous = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        started = last_report = time.perf_counter()
        steps, stopped = 0, False
        try:
            with ThreadPoolExecutor(self._connections, thread_name_prefix="sim") as pool:
                while heap and not all(w.finished_s is not None for w in self.workers):
                    if time.perf_counter() - started > self._budget_s:
                        stopped = True
                        break
                    horizon = heap[0][0] + self._window_s
                    due_now: list[Entry] = []
                    while heap and heap[0][0] < horizon:
                        due_now.append(heapq.heappop(heap))
                    self._step(pool, due_now, heap)
                    steps += 1
                    if time.perf_counter() - last_report > PROGRESS_EVERY_S:
                        last_report = time.perf_counter()
                        done = sum(w.tests for w in self.workers)
                        progress(
                            f"simulated {due_now[-1][0]:.1f}s, {done:,} tests run, "
                            f"{last_report - started:.0f}s real"
                        )
        finally:
            sys.setswitchinterval(previous)
            for queue in self._opened:
                queue.close()
        return SimResult(self.workers, self.recorder, time.perf_counter() - started, steps, stopped)
