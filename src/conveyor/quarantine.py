"""The quarantine file (--quarantine FILE): tests whose failures do not fail the build, each
with a reason and an expiry date, so a quarantine is a decision with an end, not a way to
forget a test.

```toml
[[quarantine]]
test = "tests/test_net.py::test_dns_timeout"   # a test id; a parametrized test's base id
reason = "DNS in CI times out, #123"          #   quarantines all its parameters
expires = 2026-03-01                           # a TOML date; the last day it holds
```

A file that cannot be used is a usage error naming the file, the line and what is wrong. An
entry past its expiry date fails the build before any test runs, naming the file, the line and
the test: fix the test and remove the entry, or extend it on purpose.
"""

from __future__ import annotations

import datetime as dt
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conveyor.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, no-redef, unused-ignore]

KEYS = ("test", "reason", "expires")
EXAMPLE = '[[quarantine]]\ntest = "tests/test_x.py::test_y"\nreason = "why"\nexpires = 2026-03-01'


class QuarantineFileError(UsageError):
    """The quarantine file cannot be used as it is (exit code 4, like other usage errors)."""


@dataclass(frozen=True)
class Entry:
    test: str
    reason: str
    expires: dt.date
    path: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    def covers(self, nodeid: str) -> bool:
        return nodeid == self.test or nodeid.startswith(self.test + "[")


_HEADER = re.compile(r"^\s*\[\[\s*quarantine\s*\]\]")
_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")
_TOML_LINE = re.compile(r"at line (\d+)")


def _entry_lines(text: str) -> list[tuple[int, dict[str, int]]]:
    """Where each [[quarantine]] table starts, and the line of each of its keys (tomllib keeps
    no positions; these let every error point at a line)."""
    found: list[tuple[int, dict[str, int]]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if _HEADER.match(line):
            found.append((number, {}))
        elif found and (key := _KEY.match(line)):
            found[-1][1].setdefault(key.group(1), number)
    return found


def _date_hint(text: str, line: int) -> str:
    """What TOML's own message leaves out when the bad value is a date (2026-13-45, 31.12.2026):
    that `expires` takes a real date, written year-month-day."""
    lines = text.splitlines()
    bad = lines[line - 1] if 0 < line <= len(lines) else ""
    if bad.split("=", 1)[0].strip() != "expires":
        return ""
    return " 'expires' takes a real date written year-month-day, unquoted: expires = 2026-03-01."


def load(path: Path) -> list[Entry]:
    """The entries of a quarantine file, or QuarantineFileError saying file:line: what."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise QuarantineFileError(f"cannot read the quarantine file {path}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = _TOML_LINE.search(str(exc))
        line = int(where.group(1)) if where else 1
        raise QuarantineFileError(
            f"{path}:{line}: not valid TOML ({exc}).{_date_hint(text, line)} An entry looks "
            f"like:\n{EXAMPLE}"
        ) from None
    return parse(data, str(path), _entry_lines(text))


def parse(
    data: Mapping[str, Any], path: str, lines: Sequence[tuple[int, dict[str, int]]] = ()
) -> list[Entry]:
    """Entries from parsed TOML; `lines` (from the text) place each error on its line."""
    for key in data:
        if key != "quarantine":
            raise QuarantineFileError(
                f"{path}:{_top_line(lines)}: unknown key {key!r}; the file holds only "
                f"[[quarantine]] tables, e.g.:\n{EXAMPLE}"
            )
    tables = data.get("quarantine", [])
    if not isinstance(tables, list):
        raise QuarantineFileError(
            f"{path}:1: 'quarantine' must be a list of tables ([[quarantine]] ...)"
        )
    entries: list[Entry] = []
    seen: dict[str, Entry] = {}
    for index, table in enumerate(tables):
        header, keys = lines[index] if index < len(lines) else (1, {})
        entry = _entry(table, path, header, keys)
        if entry.test in seen:
            raise QuarantineFileError(
                f"{path}:{entry.line}: {entry.test!r} is already quarantined at "
                f"{seen[entry.test].where}; keep one entry per test."
            )
        seen[entry.test] = entry
        entries.append(entry)
    return entries


def _top_line(lines: Sequence[tuple[int, dict[str, int]]]) -> int:
    return 1 if not lines else max(1, lines[0][0] - 1)


def _entry(table: Any, path: str, header: int, keys: Mapping[str, int]) -> Entry:
    def fail(key: str | None, problem: str) -> QuarantineFileError:
        line = keys.get(key, header) if key else header
        return QuarantineFileError(f"{path}:{line}: {problem}")

    if not isinstance(table, dict):
        raise fail(None, "each quarantine entry must be a table with test, reason and expires.")
    for key in table:
        if key not in KEYS:
            raise fail(key, f"unknown key {key!r} (an entry has test, reason and expires).")
    for key in KEYS:
        if key not in table:
            raise fail(None, f"the entry has no {key!r} (it needs test, reason and expires).")
    test, reason = table["test"], table["reason"]
    if not isinstance(test, str) or not test.strip():
        raise fail("test", f"'test' must be a test id such as \"tests/test_x.py::test_y\", got "
                   f"{test!r}.")  # fmt: skip
    if not isinstance(reason, str) or not reason.strip():
        raise fail("reason", "'reason' must say why the test is quarantined (a non-empty text).")
    return Entry(test.strip(), reason.strip(), _date(table["expires"], fail), path, header)


def _date(value: Any, fail: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise fail("expires", f"'expires' must be a date such as 2026-03-01, got {value!r}.")


def expired(entries: Sequence[Entry], today: dt.date) -> list[Entry]:
    """Entries past their last day."""
    return [entry for entry in entries if entry.expires < today]


def refuse_expired(entries: Sequence[Entry], today: dt.date) -> None:
    """An expired entry fails the build loudly, before it runs, naming every expired entry."""
    late = expired(entries, today)
    if not late:
        return
    lines = [
        f"{entry.where}: the quarantine of {entry.test} expired on {entry.expires.isoformat()} "
        f"(reason: {entry.reason})."
        for entry in late
    ]
    raise QuarantineFileError(
        "\n".join(lines) + "\nFix the test and remove its entry, or extend 'expires' on purpose."
    )


@dataclass(frozen=True)
class Quarantine:
    """Who is quarantined in this build: the file's entries and the automatic ones."""

    entries: tuple[Entry, ...] = ()
    auto: Mapping[str, float] = field(default_factory=dict)  # test -> flaky score

    def __bool__(self) -> bool:
        return bool(self.entries or self.auto)

    def entry_of(self, nodeid: str) -> Entry | None:
        return next((entry for entry in self.entries if entry.covers(nodeid)), None)

    def reason(self, nodeid: str) -> str | None:
        """Why this test is quarantined, or None when it is not."""
        entry = self.entry_of(nodeid)
        if entry is not None:
            return f"{entry.reason} (until {entry.expires.isoformat()}, {entry.where})"
        if nodeid in self.auto:
            return f"auto: flaky score {self.auto[nodeid]:.1f}"
        return None
