"""`worker_id` and `testrun_uid` as pytest-xdist defines them, for suites written for xdist
that run under conveyor (or plainly) without xdist installed: "master" outside a worker.

Module-level fixtures: pytest 9 deprecates fixtures defined as methods of a plugin object.
"""

from __future__ import annotations

import os

import pytest

from conveyor.environment import XDIST_TESTRUNUID, XDIST_WORKER


@pytest.fixture(scope="session")
def worker_id() -> str:
    return os.environ.get(XDIST_WORKER, "master")


@pytest.fixture(scope="session")
def testrun_uid() -> str:
    return os.environ.get(XDIST_TESTRUNUID, "")
