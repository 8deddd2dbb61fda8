"""Bounding what one test's report may carry through the queue.

A test that prints 40 MB would otherwise push that through the queue, into the controller's
memory and past Redis's largest bulk string. Each captured section keeps its head and tail and
says how much was cut, as a terminal scrollback would.
"""

from __future__ import annotations

from typing import Any

from conveyor.queue.protocol import dumps

MAX_SECTION_CHARS = 1_000_000  # per captured section (stdout, stderr, log) of one phase
MAX_PAYLOAD_BYTES = 32 * 1024 * 1024  # one test's whole result, far below Redis's bulk limit
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


def bounded_payload(payload: dict[str, Any], limit: int = MAX_PAYLOAD_BYTES) -> dict[str, Any]:
    """`payload` itself, or, when it is larger than the queue should carry (a property of
    tens of MB, an enormous assertion diff), a payload whose one failed report says so: the
    result is charged to its test, never to the queue or the controller."""
    if not _may_be_large(payload):
        return payload  # the common case, a quiet test: no second encoding on the hot path
    size = len(dumps(payload).encode("utf-8", "surrogatepass"))
    if size <= limit:
        return payload
    nodeid = str(payload.get("nodeid", ""))
    location = payload.get("location") or [nodeid, None, nodeid]
    message = (
        f"conveyor: the report of this test was {size / 2**20:.1f} MiB, more than a result "
        f"may carry through the queue ({limit / 2**20:.0f} MiB); it was replaced by this "
        "message. Large values in record_property, captured output or assertion messages "
        "make reports this large."
    )
    report: dict[str, Any] = {
        "$report_type": "TestReport",
        "nodeid": nodeid,
        "location": location,
        "keywords": {},
        "outcome": "failed",
        "longrepr": message,
        "when": "call",
        "user_properties": [],
        "sections": [],
        "duration": float(payload.get("duration") or 0.0),
        "start": 0.0,
        "stop": 0.0,
    }
    return {**payload, "reports": [report], "warnings": []}


def _may_be_large(payload: dict[str, Any]) -> bool:
    """Whether a payload carries anything of unbounded size: a failure's text, captured
    output, user properties or warnings. Reports of quiet passing tests are small."""
    if payload.get("warnings"):
        return True
    return any(
        report.get("longrepr") or report.get("sections") or report.get("user_properties")
        for report in payload.get("reports", [])
        if isinstance(report, dict)
    )
