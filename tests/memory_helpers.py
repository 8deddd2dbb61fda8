"""Running conveyor with pytest's cache on (where the build memory lives on one machine), in an
environment that says nothing of any CI: no commit variables, no step summary, unless given."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from conveyor.memory_plugin import CI_COMMIT_VARIABLES


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in CI_COMMIT_VARIABLES and name != "GITHUB_STEP_SUMMARY"
    }
    env.update(extra)
    return env


def conveyor(
    cwd: Path, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        cwd=cwd,
        env=dict(env) if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def output(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr
