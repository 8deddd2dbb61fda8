"""What one test leaves behind in a pytest worker, gathered while it runs: its reports
(serialised as pytest serialises them, capped), its warnings, and the exception names it
raised (for --retry-on). A pytest plugin of the worker's session; reset before each test."""

from __future__ import annotations

import warnings
from collections.abc import Generator

import pytest

from conveyor.compat import settle_outcome, terminal_output_captured
from conveyor.payload import cap_report
from conveyor.queue.protocol import JSON
from conveyor.retry_policy import exception_names


def serialize_warning(message: warnings.WarningMessage, when: str, nodeid: str) -> JSON:
    category = message.category
    return {
        "message": str(message.message),
        "category": category.__name__,
        "category_module": category.__module__,
        "filename": message.filename,
        "lineno": message.lineno,
        "line": message.line,
        "when": when,
        "nodeid": nodeid,
    }


class OutcomeRecord:
    """One test's reports, warnings and raised exception names."""

    def __init__(self) -> None:
        self.reports: list[JSON] = []
        self.warnings: list[JSON] = []
        self.raised: set[str] = set()
        # Which reports were logged while the test's output was captured (a unittest
        # subTest's): plain pytest's terminal output for them goes into the capture.
        self.captured: list[int] = []
        self._config: pytest.Config | None = None

    def reset(self) -> None:
        self.reports, self.warnings, self.raised, self.captured = [], [], set(), []

    def pytest_configure(self, config: pytest.Config) -> None:
        self._config = config  # historic: called on registration, inside pytest_configure

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if call.excinfo is not None:
            self.raised |= exception_names(call.excinfo.value)
        return report

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        config = self._config
        assert config is not None
        settle_outcome(config, report)
        data = config.hook.pytest_report_to_serializable(config=config, report=report)
        if terminal_output_captured(config):
            self.captured.append(len(self.reports))
        self.reports.append(cap_report(data))

    def pytest_warning_recorded(
        self, warning_message: warnings.WarningMessage, when: str, nodeid: str
    ) -> None:
        if when == "runtest":
            self.warnings.append(serialize_warning(warning_message, when, nodeid))
