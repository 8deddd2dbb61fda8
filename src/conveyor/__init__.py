"""conveyor: a queue-based distributed test runner for pytest.

PYTEST_DONT_REWRITE: conveyor is imported before pytest starts (it starts pytest), so pytest
cannot rewrite its asserts and would warn about it in every run.
"""

from conveyor.errors import ConveyorError, QueueError, QueueUnavailable, UsageError

__all__ = ["ConveyorError", "QueueError", "QueueUnavailable", "UsageError", "__version__"]

__version__ = "0.1.0"
