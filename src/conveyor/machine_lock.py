"""What one worker of a machine running only `conveyor worker` does for all of them.

Such a machine has no controller to do first what must be done once (make the build's
temporary folder, empty a results folder). The first worker that needs it does it under a lock
on a file of the machine's run folder, which its `conveyor worker` made and removes, and notes
what it did there for the others.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

# Looked up once: a test that patches fcntl.flock (filelock's do) must not reach this lock,
# taken while tests run.
_flock = fcntl.flock


@contextlib.contextmanager
def machine_lock(run_folder: Path) -> Iterator[None]:
    """Held by one worker of the machine at a time."""
    with open(run_folder / "machine.lock", "a") as lock:
        _flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            _flock(lock.fileno(), fcntl.LOCK_UN)
