"""Live progress for a person watching a terminal: tests done of all, failures so far, workers
alive, and the time left estimated from the rate so far (or from timing history).

It is on only where it helps and cannot hurt: stdout is a terminal, CI is not set, and pytest's
verbosity is the default. It then stands in for pytest's row of progress letters (the two would
fight over the same line); everything else, and every file pytest writes (--junitxml), is
unchanged. `--no-progress` keeps pytest's letters.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any, cast

import pytest


def wanted(config: pytest.Config, disabled: bool) -> bool:
    if disabled or os.environ.get("CI") or os.environ.get("TERM") == "dumb":
        return False
    if config.get_verbosity() != 0:
        return False
    return sys.stdout.isatty()


class LiveProgress:
    """A one-line status drawn with rich, refreshed as results arrive, removed at the end."""

    def __init__(self, total: int, estimate_s: float | None) -> None:
        from rich.console import Console
        from rich.live import Live

        self.total = total
        self.estimate_s = estimate_s
        self.started = time.monotonic()
        self.done = self.failed = self.alive = 0
        self._console = Console(file=sys.stdout)
        self._live = Live(self._render(), console=self._console, transient=True, auto_refresh=False)

    def __enter__(self) -> LiveProgress:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.stop()

    def update(self, *, done: int, failed: int, alive: int) -> None:
        if (done, failed, alive) != (self.done, self.failed, self.alive):
            self.done, self.failed, self.alive = done, failed, alive
            self._live.update(self._render(), refresh=True)

    def above(self) -> IO[str]:
        """A file whose lines are printed above the status line, as they come."""
        from rich.file_proxy import FileProxy

        return cast(IO[str], FileProxy(self._console, sys.stdout))

    def note(self, line: str) -> None:
        """A line printed above the status (e.g. a failure as it happens)."""
        self._console.print(line, markup=False, highlight=False)

    def _eta_s(self) -> float | None:
        elapsed = time.monotonic() - self.started
        if self.done and self.total:
            return max(0.0, elapsed / self.done * (self.total - self.done))
        if self.estimate_s is not None:
            return max(0.0, self.estimate_s - elapsed)
        return None

    def _render(self) -> Any:
        from rich.text import Text

        text = Text()
        text.append("conveyor ", style="bold")
        text.append(f"{self.done}/{self.total} tests")
        if self.total:
            text.append(f" ({100 * self.done // self.total}%)")
        text.append(" · ")
        text.append(f"{self.failed} failed", style="red" if self.failed else "green")
        text.append(f" · {self.alive} worker(s) alive")
        eta = self._eta_s()
        if eta is not None:
            text.append(f" · about {eta:.0f} s left")
        return text
