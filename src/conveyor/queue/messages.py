"""What every backend says in the same words: errors a caller may see whatever the queue, and
the event that stands for a stream entry conveyor did not write."""

from __future__ import annotations

from conveyor.errors import QueueError
from conveyor.queue.protocol import Event, EventKind

NOT_JSON = "event data is not valid JSON"
NO_KIND = "event has no kind"
RAW_KEPT = 200  # characters of an unreadable entry kept in the malformed event


def not_in_build(worker: str, verb: str, unit: str, build: str) -> QueueError:
    """A worker named a unit the manifest does not have (`verb`: completed, requeued)."""
    return QueueError(
        f"worker {worker!r} {verb} {unit!r}, which is not in build {build!r}; its collection "
        "does not match the manifest."
    )


def invalid_manifest(build: str, display_url: str, fix: str) -> QueueError:
    return QueueError(
        f"the manifest of build {build!r} in {display_url} is not valid; it was written by "
        f"something else. {fix}"
    )


def malformed(
    seq: int, worker: str | None, unit: str | None, error: str, raw: str, ts: float
) -> Event:
    """An entry the reader cannot decode, as an event it can report instead of crashing on."""
    data = {"error": error, "raw": raw[:RAW_KEPT]}
    return Event(seq, EventKind.MALFORMED, worker, unit, data, ts)
