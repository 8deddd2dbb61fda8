"""Merging a build's durations into the stored history file one entry at a time.

The history is merged at the end of the build, when the controller holds the most. Parsed
whole, a stored history costs about 350 bytes a test (a dict entry, its key, a list and two
numbers each): a third of a gigabyte at a million tests. The file conveyor writes has one
shape, `{"build":N,"tests":{"id":[seconds,build],...}}`; it is read here entry by entry, in
chunks, and the merged history is written beside it as it goes, then moved over it. A file of
any other shape (written by hand or by another tool, or damaged) is left to the caller, which
merges it whole as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from conveyor.history import forgotten, seconds_or_none, updated, valid_entry

CHUNK_CHARS = 1 << 20
# JSON's own whitespace and integers only: \s and \d also match what json.loads refuses.
_SPACE_CHARS = r"[ \t\n\r]*"
_HEAD = re.compile(
    _SPACE_CHARS.join(["", "\\{", '"build"', ":", "(0|[1-9][0-9]*)", ",", '"tests"', ":", "\\{"])
)
_SPACE = re.compile(_SPACE_CHARS)
# A value this long is not one conveyor wrote: give up rather than hold the rest of the file.
LONGEST_VALUE_CHARS = 1 << 26
# A value ending this near the end of the text read so far may go on in the next chunk.
NUMBER_TAIL_CHARS = 32
_decode = json.JSONDecoder().raw_decode


class NotConveyorShaped(Exception):
    """The file is not in the shape conveyor writes; merge it whole instead."""


class _Reader:
    """JSON values read one at a time from a file, holding one chunk of its text at a time."""

    def __init__(self, handle: IO[str], chunk: int) -> None:
        self.handle = handle
        self.chunk = chunk
        self.text = ""
        self.pos = 0

    def _more(self) -> bool:
        """Read the next chunk onto what is left; False at the end of the file."""
        try:
            chunk = self.handle.read(self.chunk)
        except UnicodeDecodeError:
            raise NotConveyorShaped from None
        if not chunk:
            return False
        self.text = self.text[self.pos :] + chunk
        self.pos = 0
        return True

    def skip_space(self) -> None:
        while True:
            self.pos = _SPACE.match(self.text, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.text) or not self._more():
                return

    def head(self) -> int:
        """The stored build number, past the opening of the "tests" object."""
        while len(self.text) - self.pos < 256 and self._more():
            pass
        found = _HEAD.match(self.text, self.pos)
        if found is None:
            raise NotConveyorShaped
        self.pos = found.end()
        return int(found.group(1))

    def punctuation(self) -> str:
        self.skip_space()
        if self.pos >= len(self.text):
            raise NotConveyorShaped  # the file ends too early
        self.pos += 1
        return self.text[self.pos - 1]

    def value(self) -> Any:
        self.skip_space()
        while True:
            try:
                value, end = _decode(self.text, self.pos)
            except (ValueError, RecursionError):
                if len(self.text) - self.pos < LONGEST_VALUE_CHARS and self._more():
                    continue  # the value runs on into the next chunk
                raise NotConveyorShaped from None
            # A number cut by the chunk's end decodes too ("0.1" of "0.125", "1" of "1.5"):
            # near the end, read on and decode again.
            if end > len(self.text) - NUMBER_TAIL_CHARS and self._more():
                continue
            self.pos = end
            return value

    def at_end(self) -> bool:
        self.skip_space()
        return self.pos >= len(self.text)


def _entries(reader: _Reader) -> Iterator[tuple[str, Any]]:
    """The (test id, stored entry) pairs of the "tests" object, and its closing checked."""
    reader.skip_space()
    if reader.text[reader.pos : reader.pos + 1] == "}":
        reader.pos += 1
    else:
        while True:
            key = reader.value()
            if not isinstance(key, str) or reader.punctuation() != ":":
                raise NotConveyorShaped
            yield key, reader.value()
            separator = reader.punctuation()
            if separator == "}":
                break
            if separator != ",":
                raise NotConveyorShaped
    if reader.punctuation() != "}" or not reader.at_end():
        raise NotConveyorShaped


def _entry_text(nodeid: str, seconds: float, build: int) -> str:
    # ASCII escapes: a test id that is not valid UTF-8 (a lone surrogate) is written too.
    return f"{json.dumps(nodeid)}:[{seconds!r},{build}]"


def merge_file(
    path: Path, durations: Mapping[str, float], *, chunk: int = CHUNK_CHARS
) -> int | None:
    """Merge one build's durations into the history file at `path` as `history.merge` would,
    reading and writing it entry by entry. The number of bad entries left out, or None where
    the file is not in conveyor's shape (nothing is changed then)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.stream.tmp")
    bad = 0
    # This build's tests not met in the file yet: a set over the ledger's own strings, not
    # one of the ids decoded from the file (about 250 bytes a test at the end of the build).
    unmet = set(durations)
    refreshed: list[str] = []  # this build's tests whose stored entry was bad
    # A test id twice in the file: json.loads keeps its last entry, and this merge would take
    # the first. Such a file (conveyor never writes one) is merged whole. For this build's
    # tests `unmet` tells; for the others hashes suffice, since a collision only costs that
    # slower merge.
    others_read: set[int] = set()
    source: IO[str] | None = None
    try:
        with contextlib.suppress(FileNotFoundError):
            source = path.open(encoding="utf-8")
        reader = _Reader(source, chunk) if source is not None else None
        with temporary.open("w", encoding="utf-8") as out:
            build = (reader.head() if reader is not None else 0) + 1
            out.write(f'{{"build":{build},"tests":{{')
            separator = ""
            for nodeid, entry in _entries(reader) if reader is not None else iter(()):
                ran = nodeid in durations
                if ran:
                    if nodeid not in unmet:
                        raise NotConveyorShaped
                    unmet.discard(nodeid)
                elif hash(nodeid) in others_read:
                    raise NotConveyorShaped
                else:
                    others_read.add(hash(nodeid))
                stored = valid_entry(entry)
                if stored is None:
                    bad += 1
                    if ran:
                        refreshed.append(nodeid)
                    continue
                previous: float | None
                previous, last = stored
                if forgotten(last, build):
                    previous = None  # kept only if this build ran it again
                latest = seconds_or_none(durations.get(nodeid)) if ran else None
                if latest is not None:
                    text = _entry_text(nodeid, *updated(previous, latest, build))
                elif previous is not None:
                    text = _entry_text(nodeid, previous, last)
                else:
                    continue
                out.write(separator + text)
                separator = ","
            unmet.update(refreshed)
            for nodeid, seconds in durations.items():
                latest = seconds_or_none(seconds)
                if latest is not None and nodeid in unmet:
                    out.write(separator + _entry_text(nodeid, *updated(None, latest, build)))
                    separator = ","
            out.write("}}")
        os.replace(temporary, path)
    except NotConveyorShaped:
        return None
    finally:
        if source is not None:
            source.close()
        temporary.unlink(missing_ok=True)
    return bad
