"""How many units a worker asks the queue for at a time, and when it hands a run back.

Pure policy, no queue and no pytest: it sees the build's serving order, the grouping, whether
timing history exists, and the durations this worker has measured so far.

- A module's run of tests goes to one worker whole, so its fixtures are set up once. With
  timing history the leader has already split the modules too long for balance into ranges
  (each held together); without it the run is cut to about AFFINITY_TARGET_S of work by the
  durations seen so far (nothing seen yet: one unit), and to half this worker's share of the
  units left (pending / 2 workers), so that a run's unknown slow tail is spread over the
  workers.
- A reservation never ends inside a class (unless --dist test allows it); the queue enforces
  it, since the worker's view of the queue's front is as old as its last reply.
- Outside such runs, tiny tests travel in batches and slow ones alone, and batches shrink near
  the end so that the tail stays balanced.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet

from conveyor.queue import Queue
from conveyor.scheduling import (
    DEFAULT_GROUPING,
    WHOLE_BY_GROUPING,
    estimate,
    kept_together,
    range_keys,
    scope_of,
    whole_of,
)
from conveyor.worker_settings import WorkerSettings

MAX_BATCH = 32
BATCH_TARGET_S = 0.25  # work a batch should hold, by the durations seen so far
AFFINITY_TARGET_S = 2.0  # work of a module's run kept together when nothing else says so
GIVE_BACK_AFTER_S = 0.5  # without history, a test this slow hands the rest of its run back
CLAIM_AHEAD_S = 0.5  # work claimed ahead of the running test (claimed leases cannot be stolen)
MAX_CLAIM = 64


def batch_size(pending: int, worker_count: int, typical_test_s: float | None = None) -> int:
    """How many units to reserve at once: tiny tests travel in batches (fewer round trips),
    slow ones alone (a batch of slow tests would pin them to one worker), and batches shrink
    near the end so that the tail stays balanced across workers."""
    if typical_test_s is None:
        return 1  # nothing seen yet: the first units served may be the slowest of the build
    share = pending // max(1, 4 * worker_count)
    if typical_test_s > 0:
        share = min(share, int(BATCH_TARGET_S / typical_test_s))
    return max(1, min(MAX_BATCH, share))


class BatchRule:
    """The build-wide part of the rule, the same for every worker (and for `conveyor plan`'s
    simulation): the serving order, its runs and classes."""

    def __init__(
        self,
        order: Sequence[str],
        range_starts: frozenset[str],
        *,
        grouping: str,
        worker_count: int,
        has_history: bool,
        expected_s: Mapping[str, float] | None = None,
        whole: str | None = None,
        known: AbstractSet[str] | None = None,
    ) -> None:
        """`expected_s`: each test's expected duration (timing history's estimate), if any.
        `whole`: what the queue keeps on one worker, as the build's manifest says (by default
        what the grouping keeps). `known`: the tests timing history has timed (None: all of
        them); the others' estimates are guesses (their module's median), and a new module of
        slow tests must not go to one worker on such a guess."""
        self.order = list(order)
        self.expected_s = dict(expected_s or {})
        self._known = known
        self.grouping = grouping
        self.whole = whole or WHOLE_BY_GROUPING[grouping]
        self.worker_count = worker_count
        self.has_history = has_history
        self._positions = {unit: index for index, unit in enumerate(self.order)}
        self._range_of = range_keys(self.order, range_starts, grouping)

    def size(self, pending: int, *, affinity: int, typical_test_s: float | None) -> int:
        """How many units to ask for with `pending` units left (as the last reply said), the
        worker's `affinity` (units left of its current run) and its recent typical duration."""
        return self.to_group_end(pending, self._within_runs(pending, affinity, typical_test_s))

    def _within_runs(self, pending: int, affinity: int, typical: float | None) -> int:
        run = affinity or self.run_at_front(pending)
        if run <= 1 and self.expected_s:
            return self._by_expected_work(pending)
        if run <= 1:
            return batch_size(pending, self.worker_count, typical)
        if self.has_history and self._all_known(pending, run):
            return min(run, MAX_BATCH)
        if typical is None:
            return 1
        # Without history nothing says a run's later tests are as quick as its first ones: a
        # run of slow tests behind quick ones (the slow tests last in a module) must not go
        # to one worker whole while the others run dry, so a reservation takes no more than
        # half its share of what is left: the other half stays at the queue's front, where
        # any worker takes it going forward, whereas a steal may not send a worker that has
        # passed it back (queue/forward.py).
        fair_share = -(-pending // max(1, 2 * self.worker_count))
        by_work = int(AFFINITY_TARGET_S / max(typical, 1e-6))
        return max(1, min(run, MAX_BATCH, fair_share, by_work))

    def is_known(self, unit: str) -> bool:
        """Whether timing history has timed `unit` (its expected duration is not a guess)."""
        return self._known is None or unit in self._known

    def _all_known(self, pending: int, run: int) -> bool:
        """Whether timing history has timed every test of the `run` at the queue's front."""
        start = max(0, len(self.order) - pending)
        return all(self.is_known(unit) for unit in self.order[start : start + min(run, MAX_BATCH)])

    def _by_expected_work(self, pending: int) -> int:
        """With timing history, a batch holds about BATCH_TARGET_S of expected work from the
        front of the queue as this worker last saw it: the front has moved on since, to tests
        no slower (the queue serves the slowest first), so the batch errs on the small side,
        and a batch never holds a slow test behind another one."""
        start = max(0, len(self.order) - pending)
        count, work = 0, 0.0
        for unit in self.order[start : start + MAX_BATCH]:
            if count and not self.is_known(unit):
                break  # an untimed test may be slow: never held behind another
            count += 1
            work += self.expected_s.get(unit, 0.0)
            if work >= BATCH_TARGET_S:
                break
        tail_share = pending // max(1, 4 * self.worker_count)  # small batches near the end
        return max(1, min(count, tail_share or 1))

    def to_group_end(self, pending: int, want: int) -> int:
        """A reservation never ends inside a class: a class's tests (a unittest TestCase, a
        class with class-scoped fixtures, tests that depend on an earlier one) run on one
        worker, in order. --dist test (pytest-xdist's load) lets a class be split; --dist file
        and scope keep a whole file or scope together (`scheduling.whole_key`).

        The queue itself extends a reservation to its group's end (`Queue.reserve`), since
        `pending` is as old as the last reply; here the size says what the reservation will
        hold, for the run that follows and for `conveyor plan`'s simulation."""
        start = len(self.order) - pending
        if not 0 <= start < len(self.order):
            return want
        end = start + max(1, want)
        while 0 < end < len(self.order) and kept_together(
            self.order[end - 1], self.order[end], self.whole
        ):
            end += 1
        return end - start

    def run_after(self, unit: str) -> int:
        """How many units follow `unit` in the serving order within its module (or class, or
        range of a split module): the next reservation takes them all, so one worker runs
        them in a row and sets their fixtures up once."""
        position = self._positions.get(unit)
        if position is None or self.grouping == "test":
            return 0
        scope = self.scope_key(unit)
        run = 0
        for following in self.order[position + 1 : position + 1 + MAX_BATCH]:
            if self.scope_key(following) != scope:
                break
            run += 1
        return run

    def run_at_front(self, pending: int) -> int:
        """The module run that the queue is about to serve: units are served in the published
        order, so with `pending` units left the front is at position total - pending."""
        position = len(self.order) - pending
        if not 0 <= position < len(self.order):
            return 0
        return 1 + self.run_after(self.order[position])

    def scope_key(self, unit: str) -> str:
        return self._range_of.get(unit) or scope_of(unit, self.grouping)


class BatchPolicy:
    """One worker's use of the rule: what it has run so far and the run it is in."""

    def __init__(self, rule: BatchRule) -> None:
        self.rule = rule
        self.recent_durations: deque[float] = deque(maxlen=16)
        self.affinity = 0  # units of the last reservation's run still to come
        self._last_known = True  # whether timing history had timed the test that ran last

    # -- what the worker tells it -----------------------------------------------------------

    def reserved(self, last_unit: str) -> None:
        """A reservation ended with `last_unit`: the next one takes the rest of its run."""
        self.affinity = self.rule.run_after(last_unit)

    def ran(self, duration_s: float, unit: str | None = None) -> None:
        self.recent_durations.append(duration_s)
        self._last_known = unit is None or self.rule.is_known(unit)

    def handed_back(self) -> None:
        self.affinity = 0

    # -- what it answers --------------------------------------------------------------------

    def batch(self, pending: int) -> int:
        """How many units the next reservation asks for, with `pending` units in the queue."""
        return self.rule.size(pending, affinity=self.affinity, typical_test_s=self.typical_test_s())

    def should_give_back(self) -> bool:
        """Without history (or for a test it has not timed: a new module), a run of tests
        that turn out slow goes back to the queue: other workers may be idle."""
        last = self.recent_durations[-1] if self.recent_durations else 0.0
        untimed = not self.rule.has_history or not self._last_known
        return untimed and last > GIVE_BACK_AFTER_S

    def rest_of_group(self, unit: str, unstarted: Sequence[str]) -> int:
        """How many of `unstarted` (in running order) the queue keeps with `unit` (its class,
        or its file or scope under --dist file or scope): a hand-back keeps them here."""
        count, last = 0, unit
        for following in unstarted:
            if not kept_together(last, following, self.rule.whole):
                break
            count, last = count + 1, following
        return count

    def claim_ahead(self, upcoming: Sequence[str]) -> int:
        """How many of the `upcoming` leases (in running order) to claim at once: the one
        about to run, the one pytest is promised next, and tests beyond while their expected
        work stays within CLAIM_AHEAD_S. Tiny tests so share a round trip, and the rest of a
        run of slow ones is left for idle workers to steal. A test's expected duration comes
        from timing history; without history nothing is claimed beyond the promise: the
        quick tests this worker ran lately say nothing of the next ones (slow tests after
        quick ones in a module), and what is claimed cannot be stolen."""
        count = min(2, len(upcoming))
        if not self.rule.expected_s:
            return max(1, count)
        ahead = 0.0
        typical = self.typical_test_s()
        for unit in upcoming[2:MAX_CLAIM]:
            if not self.rule.is_known(unit):
                break  # untimed, as without history: left for idle workers to steal
            ahead += self.rule.expected_s.get(unit, typical if typical is not None else 1.0)
            if ahead > CLAIM_AHEAD_S:
                break
            count += 1
        return max(1, count)

    def typical_test_s(self) -> float | None:
        """How long this worker's recent tests took. The queue serves the slowest first, so
        the recent past overestimates what comes next: batches err on the small side."""
        if self.recent_durations:
            return sum(self.recent_durations) / len(self.recent_durations)
        return None


def policy_for(queue: Queue, settings: WorkerSettings, durations: dict[str, float]) -> BatchPolicy:
    """A pytest worker's policy for the build it joined: the published order and ranges, and
    the expected duration of each test from timing history (if any)."""
    manifest = queue.manifest()
    starts = manifest.meta.get("range_starts", []) if manifest else []
    planned = manifest.meta.get("plan_workers") if manifest else None
    workers = planned if isinstance(planned, int) and planned >= 1 else settings.worker_count
    order = queue.units()
    rule = BatchRule(
        order,
        frozenset(starts),
        grouping=settings.grouping or DEFAULT_GROUPING,
        worker_count=max(workers, settings.worker_count),
        has_history=bool(durations),
        expected_s=estimate(order, durations) if durations else None,
        # The leader's: one worker for an order-dependent suite (conveyor.ordered_suite).
        whole=whole_of(manifest.meta) if manifest else None,
        known=durations.keys(),
    )
    return BatchPolicy(rule)
