"""One exception root, so callers can catch everything conveyor raises at the boundary.

Messages are written for the person at the terminal: what happened, which object, what to do.
"""

from __future__ import annotations

from typing import Any


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


class CommandLineRefused(UsageError):
    """A worker's pytest refused the command line while it collected (a path that does not
    exist, a malformed -k expression): the controller, which does not collect, ends as plain
    pytest would, with pytest's own message and exit code 4."""

    def __init__(self, messages: tuple[str, ...]) -> None:
        super().__init__(*messages)
        self.messages = messages


class SessionEnded(ConveyorError):
    """A worker's pytest session was ended by the project's own code while it collected
    (pytest.exit() in a hook): the controller ends its session the same way."""

    def __init__(self, ended: dict[str, Any]) -> None:
        super().__init__(str(ended.get("message", "")))
        self.ended = ended


class NodeSetupFailed(ConveyorError):
    """--node-setup failed on this machine, so it cannot take part in the build."""


class BuildAborted(ConveyorError):
    """The controller cannot follow the build any further (no worker left, nothing happened
    for too long, no manifest in time): the session ends with exit code 3 and this message."""
