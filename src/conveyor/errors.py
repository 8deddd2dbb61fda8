"""One exception root, so callers can catch everything conveyor raises at the boundary.

Messages are written for the person at the terminal: what happened, which object, what to do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conveyor.session_ending import SessionEnding


class ConveyorError(Exception):
    """Base of every error conveyor raises on purpose."""


class UsageError(ConveyorError):
    """The command line or configuration is wrong; exit code 4 like pytest's usage errors."""


class QueueError(ConveyorError):
    """The queue could not do what was asked (bad URL, bad state, garbage in the queue)."""


class QueueUnavailable(QueueError):
    """The queue cannot be reached or opened at all."""


class QueueURLError(QueueUnavailable, UsageError):
    """The queue URL itself is wrong (scheme, syntax, path, credentials): a usage error, exit
    code 4, where a queue that exists but cannot be used (unreachable, not a conveyor queue, the
    build lost) is exit code 3."""


class BuildStateLost(QueueError):
    """The build's keys vanished while processes were still working on it."""


class CollectionMismatch(ConveyorError):
    """This worker collected a different set of tests than the build's manifest."""


class SessionEnded(ConveyorError):
    """A worker's pytest ended its session while it collected, before the build had a manifest
    (the command line refused, pytest.exit() in a hook): the controller, which does not
    collect, ends its own session the same way, with pytest's message and exit code."""

    def __init__(self, ending: SessionEnding) -> None:
        super().__init__(ending.message)
        self.ending = ending


class NodeSetupFailed(ConveyorError):
    """--node-setup failed on this machine, so it cannot take part in the build."""


class BuildAborted(ConveyorError):
    """The controller cannot follow the build any further (no worker left, nothing happened
    for too long, no manifest in time): the session ends with exit code 3 and this message."""
