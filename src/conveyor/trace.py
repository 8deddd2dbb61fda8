"""A trace of what conveyor does underneath, for finding out why a build behaved as it did:
every queue operation with its duration, leases and promises, and each worker's life.

Off by default; `CONVEYOR_DEBUG=1` turns it on for every process of a build (workers inherit
the variable; their trace goes to their log, see --worker-logs). It is conveyor's own switch:
pytest's `--debug` stays pytest's. User-facing output never changes with it.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

DEBUG_ENV = "CONVEYOR_DEBUG"
log = logging.getLogger("conveyor")


def enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def configure() -> None:
    """Send conveyor's log records to this process's stderr when tracing is on (once per
    process). The stream is a copy of file descriptor 2 taken now, at the process's start:
    pytest's output capture later redirects descriptor 2, and a trace line written while a
    test runs must not land among that test's captured output."""
    if not enabled() or any(getattr(h, "conveyor", False) for h in log.handlers):
        return
    stream = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1, encoding="utf-8")
    handler = logging.StreamHandler(stream)
    handler.conveyor = True  # type: ignore[attr-defined]
    handler.setFormatter(
        logging.Formatter("conveyor-trace t=%(created).3f pid=%(process)d %(name)s %(message)s")
    )
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False


def follow_stderr() -> None:
    """Point the trace at what descriptor 2 is now: a forked worker's own log, not the log of
    the fork server it was forked from."""
    for handler in log.handlers:
        stream = getattr(handler, "stream", None)
        if getattr(handler, "conveyor", False) and stream is not None:
            stream.flush()
            os.dup2(2, stream.fileno())


class TracedQueue:
    """Any queue backend, each operation logged with its arguments' gist and its duration."""

    def __init__(self, queue: Any) -> None:
        self._queue = queue
        self._log = log.getChild("queue")

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._queue, name)
        if not callable(attribute) or name.startswith("_"):
            return attribute

        @functools.wraps(attribute)
        def traced(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                result = attribute(*args, **kwargs)
            except Exception as exc:
                self._log.debug("%s%s raised %r", name, _gist(args), exc)
                raise
            took = (time.perf_counter() - started) * 1000
            self._log.debug("%s%s -> %s (%.1f ms)", name, _gist(args), _gist_of(result), took)
            return result

        return traced

    def iter_events(self, after: int = 0, page: int = 1000) -> Iterator[Any]:
        """As `Queue.iter_events`, paging through the traced `events`: each page is a line."""
        events = self.__getattr__("events")
        while batch := events(after, page):
            yield from batch
            after = batch[-1].seq


def _gist(args: tuple[Any, ...]) -> str:
    return "(" + ", ".join(_gist_of(arg) for arg in args) + ")"


def _gist_of(value: Any) -> str:
    if isinstance(value, (list, tuple)) and len(value) > 3:
        return f"[{len(value)} items]"
    if isinstance(value, dict):
        return "{" + ", ".join(sorted(map(str, value)))[:80] + "}"
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


QueueT = TypeVar("QueueT")


def traced_queue(queue: QueueT) -> QueueT:
    """`queue` itself, or wrapped in a TracedQueue (same interface) when tracing is on."""
    configure()
    return cast(QueueT, TracedQueue(queue)) if enabled() else queue


def event(logger_name: str) -> Callable[..., None]:
    """A function that logs one line of a component's life (`event("worker")("joined")`)."""
    child = log.getChild(logger_name)
    return lambda message, *args: child.debug(message, *args)
