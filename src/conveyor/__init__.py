"""conveyor: a queue-based distributed test runner for pytest."""

from conveyor.errors import ConveyorError, QueueError, QueueUnavailable, UsageError

__all__ = ["ConveyorError", "QueueError", "QueueUnavailable", "UsageError", "__version__"]

__version__ = "0.1.0"
