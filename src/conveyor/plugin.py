"""The pytest11 entry point: what every pytest run gets once conveyor is installed.

It stays out of the way in a plain `pytest` run. The worker and controller modes are separate
plugin objects that `conveyor` registers explicitly when it starts a session, so nothing here
depends on environment variables leaking into tests that run pytest themselves.
"""

from __future__ import annotations

import pytest

from conveyor.environment import forget_outer_worker
from conveyor.xdist_compat import XdistStandIn


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    # A pytest that a test started inside a conveyor worker is not that worker: it runs as
    # if from a shell (no PYTEST_XDIST_WORKER, no CONVEYOR_WORKER inherited).
    forget_outer_worker()


def pytest_configure(config: pytest.Config) -> None:
    xdist = config.pluginmanager.get_plugin("xdist")
    if xdist is None or isinstance(xdist, XdistStandIn):
        config.pluginmanager.import_plugin("conveyor.fixtures")
