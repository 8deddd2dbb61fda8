"""Live logs (`--log-cli-level`, `log_cli = true`) of tests that ran in workers.

A plain run prints each test's log records under its name as they come, in "live log setup",
"live log call" and "live log teardown" sections. A worker has no terminal, so they went to
its log file (as under pytest-xdist). A worker now keeps each test's records, with the phase
each came in, for the test's result (`LiveLogRecorder`, in place of pytest's live handler);
the controller hands them to its own live handler just before it reports that phase
(`LiveLogReplay`), so they read as in a plain run, test by test as results arrive.
"""

from __future__ import annotations

import logging
from typing import Any

from conveyor.queue.protocol import JSON

# What one test's result carries at most: a test that logs without end must not fill the
# queue (a result above the payload limit is replaced by a failure).
MAX_RECORDS = 2000
MAX_CHARS = 400_000
_PLAIN = (str, int, float, bool, type(None))


class LiveLogRecorder(logging.Handler):
    """A worker's stand-in for pytest's live log handler: what pytest calls on it (`reset`,
    `set_when`), and each record kept, with its phase, until `take`."""

    def __init__(self) -> None:
        super().__init__()
        self._when: str | None = None
        self._records: list[JSON] = []
        self._chars = 0
        self._left_out = 0

    def reset(self) -> None:
        pass

    def set_when(self, when: str | None) -> None:
        self._when = when

    def emit(self, record: logging.LogRecord) -> None:
        if len(self._records) >= MAX_RECORDS or self._chars >= MAX_CHARS:
            self._left_out += 1
            return
        data = _serializable(record)
        self._chars += len(str(data.get("msg", ""))) + len(str(data.get("exc_text") or ""))
        self._records.append({"when": self._when, "record": data})

    def take(self) -> JSON | None:
        """The records of the test that just ran, for its result; None when it logged none."""
        if not self._records and not self._left_out:
            return None
        taken = {"records": self._records, "left_out": self._left_out}
        self._records, self._chars, self._left_out = [], 0, 0
        return taken


def _serializable(record: logging.LogRecord) -> JSON:
    """The record's attributes as JSON, its message formatted and its exception as text: a
    format may name any attribute (or an `extra` one)."""
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    data: JSON = {}
    for key, value in record.__dict__.items():
        if key in ("args", "exc_info", "msg"):
            continue
        data[key] = value if isinstance(value, _PLAIN) else repr(value)
    data["msg"] = record.getMessage()
    return data


class LiveLogReplay:
    """The controller's side: a test's records through its own live handler (pytest's,
    set up from the same options), each phase's just before that phase's report."""

    def __init__(self, handler: Any) -> None:
        self._handler = handler

    def before(self, report: Any, recorded: object) -> None:
        when = getattr(report, "when", None)
        if not isinstance(recorded, dict) or when is None:
            return
        records = [
            entry["record"]
            for entry in recorded.get("records", [])
            if isinstance(entry, dict)
            and isinstance(entry.get("record"), dict)
            and _phase(entry.get("when")) == when
        ]
        left_out = recorded.get("left_out") if when == "teardown" else 0
        if not records and not left_out:
            return
        self._handler.set_when(when)
        for data in records:
            self._handler.handle(logging.makeLogRecord(data))
        if isinstance(left_out, int) and left_out > 0:
            note = logging.makeLogRecord(
                {
                    "name": "conveyor",
                    "levelno": logging.WARNING,
                    "levelname": "WARNING",
                    "msg": f"{left_out} more live log record(s) of this test were left out "
                    "(too many to carry with its result)",
                }
            )
            self._handler.handle(note)


def _phase(when: object) -> str:
    """Records logged between phases (at the test's start or end) go with its teardown."""
    return when if when in ("setup", "call") else "teardown"
