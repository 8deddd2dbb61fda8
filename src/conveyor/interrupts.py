"""Ctrl-C and SIGTERM that are never lost.

Python raises KeyboardInterrupt wherever the main thread is when the signal arrives. Where that
is a finalizer (a `__del__`, or a weakref callback such as the one importlib's module locks
use), CPython prints "Exception ignored" and the interrupt is gone: a build cancelled by CI
would run on and end green. So the handler also records the signal; conveyor forgets the record
when it acts on the interrupt, and checks it at points where raising is safe (each turn of a
wait loop, the end of a command), raising once more what a finalizer swallowed.
"""

from __future__ import annotations

import signal
from types import FrameType

_unhandled: list[int] = []  # signals received that conveyor has not yet acted on


def install() -> None:
    """SIGINT and SIGTERM (CI cancelling a job) both raise KeyboardInterrupt, recorded. A
    SIGINT ignored by inheritance (a background job, nohup) stays ignored, as in any Python
    program."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    _unhandled.append(signum)
    raise KeyboardInterrupt


def acted_on() -> None:
    """Conveyor has handled the interrupt (stopped the build, or left it): forget it."""
    _unhandled.clear()


def lost() -> bool:
    """Whether an interrupt arrived that conveyor has not acted on."""
    return bool(_unhandled)


def raise_if_lost() -> None:
    """Raise, at a point where that is safe, an interrupt nothing acted on: one a finalizer
    swallowed, or one that code of the user's caught."""
    if _unhandled:
        raise KeyboardInterrupt
