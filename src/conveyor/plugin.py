"""The pytest11 entry point: what every pytest run gets once conveyor is installed.

It stays out of the way in a plain `pytest` run. The worker and controller modes are separate
plugin objects that `conveyor` registers explicitly when it starts a session, so nothing here
depends on environment variables leaking into tests that run pytest themselves.
"""

from __future__ import annotations

import os

import pytest

from conveyor.environment import forget_outer_worker

XDIST_WORKER_ENV = "PYTEST_XDIST_WORKER"


class XdistCompatibleFixtures:
    """`worker_id` and `testrun_uid` as pytest-xdist defines them, for suites written for xdist
    that run under conveyor without xdist installed ("master" outside a worker)."""

    @pytest.fixture(scope="session")
    def worker_id(self) -> str:
        return os.environ.get(XDIST_WORKER_ENV, "master")

    @pytest.fixture(scope="session")
    def testrun_uid(self) -> str:
        return os.environ.get("PYTEST_XDIST_TESTRUNUID", "")


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    # A pytest that a test started inside a conveyor worker is not that worker: it runs as
    # if from a shell (no PYTEST_XDIST_WORKER, no CONVEYOR_WORKER inherited).
    forget_outer_worker()


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistCompatibleFixtures(), "conveyor-xdist-fixtures")
