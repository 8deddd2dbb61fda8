"""Whether a failed attempt goes back to the queue for another worker (--retries,
--retry-on, --requeue-tolerance), and sending it there."""

from __future__ import annotations

from collections.abc import Sequence

from conveyor.queue import Queue
from conveyor.queue.protocol import ALREADY_DONE, JSON, REQUEUED


def exception_names(error: BaseException) -> set[str]:
    """Class names (with their bases) of an exception and of everything in its chain, so that
    `--retry-on ConnectionError` also matches a ConnectionRefusedError raised from another."""
    names: set[str] = set()
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        names.update(cls.__name__ for cls in type(current).__mro__)
        current = current.__cause__ or current.__context__
    return names


class RetryPolicy:
    def __init__(self, max_requeues: int, retry_on: Sequence[str], tolerance: float) -> None:
        self.max_requeues = max_requeues
        self.retry_on = frozenset(retry_on)
        self.tolerance = tolerance

    def wants_retry(self, reports: Sequence[JSON], raised: set[str]) -> bool:
        """A failed attempt is retried when retries are on and, with --retry-on, it raised
        one of the named exceptions."""
        if self.max_requeues <= 0:
            return False
        if not any(report.get("outcome") == "failed" for report in reports):
            return False
        return not self.retry_on or bool(self.retry_on & raised)

    def requeue(self, queue: Queue, worker: str, unit: str, payload: JSON) -> bool:
        """True when the failed attempt went back to the queue (or the unit is already done
        elsewhere); False when the retry budget is spent and this result is final."""
        answer = queue.requeue(
            worker, unit, payload, max_requeues=self.max_requeues, tolerance=self.tolerance
        )
        return answer in (REQUEUED, ALREADY_DONE)
