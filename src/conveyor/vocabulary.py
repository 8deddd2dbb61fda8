"""The words processes of a build share: worker exit codes, event kinds outside the queue's
own, the supervisor's status-file states, the hard-timeout header. Modules import these from
here, never from the module of the process that uses them."""

from __future__ import annotations

from conveyor.queue.protocol import EVENT_WORKER_LEFT

__all__ = [
    "EVENT_SESSION_ENDED",
    "EVENT_SESSION_WARNING",
    "EVENT_WORKER_ERROR",
    "EVENT_WORKER_LEFT",
    "EVENT_WORKER_REFUSED",
    "EXIT_DONE",
    "EXIT_ORPHANED",
    "EXIT_REFUSED",
    "EXIT_SETUP_FAILED",
    "EXIT_STATE_LOST",
    "TIMEOUT_HEADER",
]

# Exit codes of a worker process, read by the supervisor. Test failures are not worker
# failures: the controller owns the build's exit status.
EXIT_DONE = 0
EXIT_REFUSED = 17  # collection differs from the manifest; restarting would not help
EXIT_ORPHANED = 18  # the supervisor went away
EXIT_STATE_LOST = 19  # the build vanished from the queue; restarting would re-create it
EXIT_SETUP_FAILED = 20  # --worker-setup failed; restarting would fail the same way

# Event kinds a worker publishes besides results.
EVENT_WORKER_REFUSED = "worker_refused"
EVENT_WORKER_ERROR = "worker_error"
EVENT_SESSION_WARNING = "session_warning"
# a worker's pytest ended its session: a usage error, pytest.exit(), KeyboardInterrupt
EVENT_SESSION_ENDED = "session_ended"

# The first line of a worker's hard-timeout file: "conveyor-timeout <seconds> <how>".
TIMEOUT_HEADER = "conveyor-timeout"
