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
OFF = logging.CRITICAL + 1  # tracing off: no record is even made

_handler: logging.Handler | None = None  # where the trace goes, once `configure` turned it on
_loggers: dict[str, logging.Logger] = {}


def enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def trace_logger(name: str) -> logging.Logger:
    """A logger of conveyor's trace, kept outside `logging`'s registry: the trace is never
    part of the project's own logging. A registered logger's records reach the handlers a test
    or the project puts on the root logger, or, when it does not propagate, pytest's capture
    handler (which pytest attaches to every such logger), and so a captured-log section that
    plain pytest never shows."""
    logger = _loggers.get(name)
    if logger is None:
        logger = _loggers[name] = logging.Logger(name, OFF if _handler is None else logging.DEBUG)
        logger.propagate = False
        if _handler is not None:
            logger.addHandler(_handler)
    return logger


def configure() -> None:
    """Send the trace to this process's stderr when tracing is on (once per process). The
    stream is a copy of file descriptor 2 taken now, at the process's start: pytest's output
    capture later redirects descriptor 2, and a trace line written while a test runs must not
    land among that test's captured output."""
    global _handler
    if not enabled() or _handler is not None:
        return
    stream = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1, encoding="utf-8")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        logging.Formatter("conveyor-trace t=%(created).3f pid=%(process)d %(name)s %(message)s")
    )
    _handler = handler
    for logger in _loggers.values():
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)


def follow_stderr() -> None:
    """Point the trace at what descriptor 2 is now: a forked worker's own log, not the log of
    the fork server it was forked from."""
    stream = getattr(_handler, "stream", None)
    if stream is not None:
        stream.flush()
        os.dup2(2, stream.fileno())


class TracedQueue:
    """Any queue backend, each operation logged with its arguments' gist and its duration."""

    def __init__(self, queue: Any) -> None:
        self._queue = queue
        self._log = trace_logger("conveyor.queue")

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
    logger = trace_logger(f"conveyor.{logger_name}")
    return lambda message, *args: logger.debug(message, *args)
