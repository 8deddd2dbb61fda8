"""Where conveyor relies on pytest's behaviour beyond its documented API, each place saying
what it relies on, so a new pytest version has one module to check."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

SUBTEST_REPORT_TYPE = "SubTestReport"  # _pytest.subtests.SubtestReport._to_json's marker


def settle_outcome(config: pytest.Config, report: pytest.TestReport) -> None:
    """Let pytest decide a test's final outcome where the state it decides from lives.

    pytest 9's subtests plugin fails a passed test that had failed subtests inside its
    `pytest_report_teststatus`, from a count stashed in the config of the process that ran the
    test; the controller that replays the report has no such count. Asking the hook in the
    worker applies that decision to the report before it is serialised."""
    if report.when == "call" and type(report) is pytest.TestReport:
        config.hook.pytest_report_teststatus(report=report, config=config)


def restore_subtest_context(report: Any, raw: Mapping[str, Any]) -> None:
    """pytest's SubtestContext applies saferepr to its kwargs on creation, deserialisation
    included, so `n=1` would read `n='1'` after a round trip; put back the values as sent
    (relies on SubtestContext being a frozen dataclass with a `kwargs` field)."""
    if raw.get("_report_type") != SUBTEST_REPORT_TYPE:
        return
    context = getattr(report, "context", None)
    sent = raw.get("_subtest.context", {}).get("kwargs")
    if context is not None and isinstance(sent, dict) and hasattr(context, "kwargs"):
        object.__setattr__(context, "kwargs", dict(sent))


def forward_rerun_reports(pluginmanager: pytest.PytestPluginManager) -> None:
    """pytest-rerunfailures logs a rerun attempt's report on a worker only when it finds the
    pytest-xdist distribution (`works_with_current_xdist()`); otherwise the attempt vanishes
    and no "R" or "N rerun" is shown. A conveyor worker forwards every report, so without
    xdist installed it is told the worker can (relies on that module-level function)."""
    module: Any = pluginmanager.get_plugin("rerunfailures")
    check = getattr(module, "works_with_current_xdist", None)
    if check is not None and not check():
        module.works_with_current_xdist = lambda: True


def remap_coverage_paths(pluginmanager: pytest.PytestPluginManager) -> None:
    """pytest-cov's distributed master adds each remote worker's checkout to the `[paths]
    source` aliases of the coverage object it measures with, but combines with another one
    (`combining_cov`), so data from another checkout would be reported under its own paths.
    Give the combining object the same aliases (relies on CovPlugin.cov_controller holding
    `cov` and `combining_cov`, coverage.Coverage objects with `config.paths`)."""
    plugin = pluginmanager.get_plugin("_cov")
    controller = getattr(plugin, "cov_controller", None)
    measuring = getattr(controller, "cov", None)
    combining = getattr(controller, "combining_cov", None)
    if measuring is None or combining is None or measuring is combining:
        return
    aliases = list(measuring.config.paths.get("source", []))
    if len(aliases) > 1:
        combining.config.paths["source"] = aliases


def add_short_option(group: Any, short: str, long: str, **attrs: Any) -> None:
    """pytest reserves lowercase short options for itself (`group.addoption` refuses them);
    `-n` is pytest-xdist's, added through the group's private `_addoption` as xdist does, and
    conveyor adds it only where xdist is not installed."""
    group._addoption(short, long, **attrs)
