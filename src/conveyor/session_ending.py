"""How a worker's pytest ended its session before the work was done, told to the build as one
event (EVENT_SESSION_ENDED) so that the controller, which neither collects nor runs tests, ends
its own session the same way plain pytest would have ended.

Three endings come from pytest itself rather than from a fault of the worker: the command line
refused while collecting (a path that does not exist, a malformed -k: a usage error, exit 4),
`pytest.exit()` called by a test or a hook (its message and return code), and a test that
raised KeyboardInterrupt (exit 2). None of them is a worker failure, and none is retried.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NoReturn

from conveyor.queue.protocol import JSON, Event

if TYPE_CHECKING:  # pytest is imported where an ending is made or acted on, not to read one
    import pytest

EndingKind = Literal["usage_error", "exit", "interrupt"]
KINDS: tuple[EndingKind, ...] = ("usage_error", "exit", "interrupt")


@dataclass(frozen=True)
class SessionEnding:
    kind: EndingKind
    worker: str
    unit: str | None  # the test that ended it; None while collecting
    messages: tuple[str, ...]
    returncode: int | None = None  # pytest.exit(returncode=...)
    collected: int | None = None  # tests collected when it ended while collecting

    @classmethod
    def of(
        cls, worker: str, unit: str | None, ending: BaseException, collected: int | None = None
    ) -> SessionEnding:
        """The ending a worker's pytest raised: pytest.UsageError, pytest.exit's exception or
        KeyboardInterrupt."""
        import pytest

        if isinstance(ending, pytest.UsageError):
            messages = tuple(str(arg) for arg in ending.args)
            return cls("usage_error", worker, unit, messages, collected=collected)
        if isinstance(ending, pytest.exit.Exception):
            return cls("exit", worker, unit, (str(ending.msg),), ending.returncode, collected)
        return cls("interrupt", worker, unit, ("KeyboardInterrupt",), collected=collected)

    @classmethod
    def from_event(cls, event: Event) -> SessionEnding | None:
        """The ending an event tells, or None where its data is not one (garbage in the queue
        is ignored rather than trusted)."""
        data = event.data
        kind, unit, messages, code, collected = (
            data.get(k) for k in ("kind", "unit", "messages", "returncode", "collected")
        )
        if event.worker is None or kind not in KINDS or not isinstance(messages, list):
            return None
        return cls(
            kind,
            event.worker,
            unit if isinstance(unit, str) else None,
            tuple(str(m) for m in messages),
            _integer(code),
            _integer(collected),
        )

    @property
    def data(self) -> JSON:
        """The event's data (the worker is the event's own field)."""
        return {
            "kind": self.kind,
            "unit": self.unit,
            "messages": list(self.messages),
            "returncode": self.returncode,
            "collected": self.collected,
        }

    @property
    def message(self) -> str:
        return "\n".join(self.messages)

    @property
    def reason(self) -> str:
        """Why the build stopped, as the queue records it."""
        return f"{self.unit or 'collection'} ended the session: {self.message}"

    def end(self, session: pytest.Session) -> NoReturn:
        """End the controller's session as this ended the worker's."""
        import pytest

        if self.kind == "usage_error":
            raise pytest.UsageError(*self.messages)
        if self.kind == "exit":
            pytest.exit(self.message, returncode=self.returncode)
        raise session.Interrupted(f"KeyboardInterrupt raised in {self.unit or 'a worker'}")


def _integer(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
