"""Ctrl-C and SIGTERM that are never lost.

Python raises KeyboardInterrupt wherever the main thread is when the signal arrives. Where that
is a finalizer (a `__del__`, or a weakref callback such as the one importlib's module locks
use), CPython prints "Exception ignored" and the interrupt is gone: a build cancelled by CI
would run on and end green. So the handler also records the signal; conveyor forgets the record
when it acts on the interrupt, and checks it at points where raising is safe (each turn of a
wait loop, the end of a command), raising once more what a finalizer swallowed.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
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
    _received.append(signum)
    global _held
    if _holding and _held == 0:
        _held += 1  # recorded: lost() tells whoever looks once the held work is done
        return
    raise KeyboardInterrupt


_holding = False  # in `held`: the first interrupt is recorded, not raised
_held = 0  # interrupts recorded since `held` began


def hold() -> None:
    """From now until `release`, work that must finish once begun (noting which tests have
    no result, writing the report, the exit): the first interrupt that arrives is recorded,
    not raised, so pressing Ctrl-C twice in quick succession does not cut that work in half
    (`lost` tells afterwards). A second one is raised, so that nothing stuck there becomes
    impossible to stop."""
    global _holding, _held
    if not _holding:
        _holding, _held = True, 0


def release() -> None:
    global _holding
    _holding = False


@contextlib.contextmanager
def held() -> Iterator[None]:
    """`hold` for the work inside (nested in a hold, it changes nothing)."""
    outer = _holding
    hold()
    try:
        yield
    finally:
        if not outer:
            release()


_received: list[int] = []  # every signal received, acted on or not


def received() -> str:
    """ " (SIGTERM)" for the last signal received, for a message that says why the build
    stops (CI cancelling a job sends SIGTERM; another session's kill, too); "" if none."""
    if not _received:
        return ""
    return f" ({signal.Signals(_received[-1]).name})"


def acted_on() -> None:
    """Conveyor has handled the interrupt (stopped the build, or left it): forget it."""
    _unhandled.clear()


def lost() -> bool:
    """Whether an interrupt arrived that conveyor has not acted on."""
    return bool(_unhandled)


def raise_if_lost() -> None:
    """Raise, at a point where that is safe, an interrupt nothing acted on: one a finalizer
    swallowed, or one that code of the user's caught."""
    if _unhandled and not _holding:
        raise KeyboardInterrupt
