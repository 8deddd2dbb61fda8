"""Setup hooks (--node-setup, --worker-setup): user commands run through the shell, since they
are the user's own lines (`pip install -r requirements.txt && createdb app_$CONVEYOR_WORKER`)."""

from __future__ import annotations

import subprocess


def run_shell(command: str) -> tuple[int, str]:
    """Exit code and combined output of `sh -c command`; nothing is read from the terminal."""
    done = subprocess.run(
        ["sh", "-c", command],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    return done.returncode, done.stdout.decode("utf-8", "replace")
