"""Turning what the queue carries back into pytest's own objects, for the controller to replay.

Nothing here is imported or executed on the word of the queue: reports go through pytest's own
deserialisation hook, and a warning class that is not builtin becomes a look-alike class of the
same name.
"""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

import pytest

from conveyor.compat import CollectErrorRepr, restore_subtest_context
from conveyor.unit_names import id_of_unit


class Deselected:
    """Stands in for a deselected item: the terminal only counts them."""

    def __init__(self, index: int) -> None:
        self.nodeid = f"<deselected #{index}>"


def report_from_json(config: pytest.Config, raw: Mapping[str, Any]) -> Any:
    """pytest's own deserialisation, plus the tuples that JSON turned into lists."""
    report = config.hook.pytest_report_from_serializable(config=config, data=raw)
    if report is None:
        raise ValueError("not a pytest report")
    if isinstance(getattr(report, "location", None), list):
        report.location = tuple(report.location)
    if isinstance(report.longrepr, list):
        report.longrepr = tuple(report.longrepr)
    if isinstance(report, pytest.CollectReport) and isinstance(report.longrepr, str):
        # A collection error's text was a CollectErrorRepr before it became JSON; as a str
        # the short summary would append it (" - ImportError while importing ...") where
        # plain pytest shows only "ERROR test_x.py".
        report.longrepr = CollectErrorRepr(report.longrepr)
    restore_subtest_context(report, raw)
    return report


def warning_category(name: str) -> type[Warning]:
    """The warning's class by name when it is a builtin one; otherwise a look-alike class of
    the same name."""
    builtin = (
        __builtins__.get(name)
        if isinstance(__builtins__, dict)
        else getattr(__builtins__, name, None)
    )
    if isinstance(builtin, type) and issubclass(builtin, Warning):
        return builtin
    candidates: list[type[Warning]] = [pytest.PytestWarning]
    candidates += pytest.PytestWarning.__subclasses__()
    for candidate in candidates:
        if candidate.__name__ == name:
            return candidate
    return type(name, (Warning,), {})


def warning_message(data: Mapping[str, Any]) -> warnings.WarningMessage:
    category = warning_category(str(data.get("category", "UserWarning")))
    return warnings.WarningMessage(
        message=category(str(data.get("message", ""))),
        category=category,
        filename=str(data.get("filename", "")),
        lineno=int(data.get("lineno") or 0),
        line=data.get("line"),
    )


def crash_reports(
    unit: str, worker: str | None, data: Mapping[str, Any]
) -> list[pytest.TestReport]:
    """A test that took its worker down too often, or timed out, as pytest reports a failed
    test: its call failed, naming the cause and showing the worker's last output (or every
    thread's stack at the timeout), then its teardown, which is where --junitxml closes a
    test case and writes its properties."""
    failed = _crash_failure(id_of_unit(unit), worker, data)  # the test's id, not the unit's
    teardown = pytest.TestReport(
        nodeid=failed.nodeid,
        location=failed.location,
        keywords={},
        outcome="passed",
        longrepr=None,
        when="teardown",
    )
    return [failed, teardown]


def _crash_failure(unit: str, worker: str | None, data: Mapping[str, Any]) -> pytest.TestReport:
    cause = data.get("cause", {})
    if cause.get("timeout"):
        text = (
            f"Timeout: {cause.get('reason', 'the test ran too long')}; the worker was "
            "replaced.\n"
            "\nThe stacks of every thread when the time ran out:\n"
            + str(cause.get("output_tail", ""))
        )
    else:
        text = (
            f"worker {cause.get('worker', worker)} crashed while running this test: "
            f"{cause.get('reason', 'unknown cause')}.\n"
            f"The test took down {data.get('crashes', 1)} worker(s) and was not retried again.\n"
        )
        if cause.get("output_tail"):
            text += "\nLast output of the worker:\n" + str(cause["output_tail"])
    path, _, rest = unit.partition("::")
    return pytest.TestReport(
        nodeid=unit,
        location=(path, None, rest or path),
        keywords={},
        outcome="failed",
        longrepr=text,
        when="call",
    )


def rerun_failure_element(attempt: Any) -> ET.Element:
    """A <rerunFailure> element for a failed attempt that was retried (Maven Surefire's form,
    which CI dashboards read)."""
    crash = getattr(attempt.longrepr, "reprcrash", None)
    message = crash.message if crash is not None else str(attempt.longrepr)[:200]
    element = ET.Element(
        "rerunFailure",
        message=message.splitlines()[0] if message else "",
        type=message.split(":", 1)[0] if message else "",
    )
    element.text = str(attempt.longrepr)
    return element
