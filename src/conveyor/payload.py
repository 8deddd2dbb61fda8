"""Bounding what one test's report may carry through the queue.

A test that prints 40 MB would otherwise push that through the queue, into the controller's
memory and past Redis's largest bulk string. Each captured section keeps its head and tail and
says how much was cut, as a terminal scrollback would.
"""

from __future__ import annotations

from typing import Any

MAX_SECTION_CHARS = 1_000_000  # per captured section (stdout, stderr, log) of one phase
KEEP_EACH_END = MAX_SECTION_CHARS // 2


def cap_text(text: str, limit: int = MAX_SECTION_CHARS) -> str:
    if len(text) <= limit:
        return text
    keep = limit // 2
    cut = len(text) - 2 * keep
    return (
        f"{text[:keep]}\n\n[conveyor: {cut:,} characters of this output were cut; the first and "
        f"last {keep:,} are kept]\n\n{text[-keep:]}"
    )


def cap_report(data: dict[str, Any]) -> dict[str, Any]:
    """A serialised report with every captured section (and a plain-text longrepr) bounded."""
    sections = data.get("sections")
    if isinstance(sections, list):
        data["sections"] = [
            [section[0], cap_text(section[1])]
            if isinstance(section, (list, tuple))
            and len(section) == 2
            and isinstance(section[1], str)
            else section
            for section in sections
        ]
    if isinstance(data.get("longrepr"), str):
        data["longrepr"] = cap_text(data["longrepr"])
    return data
