"""The pytest11 entry point: what every pytest run gets once conveyor is installed.

It stays out of the way in a plain `pytest` run. The worker and controller modes are separate
plugin objects that `conveyor` registers explicitly when it starts a session, so nothing here
depends on environment variables leaking into tests that run pytest themselves.

Without pytest-xdist installed (or with `-p no:xdist`), `pytest -n N|auto [--dist MODE]` runs
the build on conveyor: tox and nox configurations, IDE run configurations and CI scripts switch
by changing one dependency. With pytest-xdist installed, `-n` stays xdist's.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conveyor.compat import add_short_option
from conveyor.environment import forget_outer_worker
from conveyor.xdist_compat import XdistStandIn, xdist_installed

# Set in the `conveyor run` that `pytest -n` hands over to, so that it never hands over again.
FRONT_ENV = "CONVEYOR_FROM_PYTEST_N"


def xdist_active(pluginmanager: pytest.PytestPluginManager) -> bool:
    """pytest-xdist installed and not turned off with `-p no:xdist`."""
    return xdist_installed() and not pluginmanager.is_blocked("xdist")


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    if xdist_active(pluginmanager):
        return
    group = parser.getgroup("conveyor", "distributed runs (conveyor, as pytest-xdist's -n)")
    add_short_option(
        group,
        "-n",
        "--numprocesses",
        dest="numprocesses",
        default=None,
        metavar="N",
        help="run the tests in N worker processes with conveyor ('auto': one per CPU; "
        "0: in this process). Same as `conveyor run -n N`.",
    )
    group.addoption(
        "--dist",
        dest="dist",
        default="no",
        help="what one conveyor worker keeps together: module (default), class, test (xdist's "
        "load, worksteal), file (loadfile), scope (loadscope) or group (loadgroup).",
    )
    group.addoption(
        "--maxprocesses",
        dest="maxprocesses",
        type=int,
        default=None,
        help="at most this many worker processes with -n auto.",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    # A pytest that a test started inside a conveyor worker is not that worker: it runs as
    # if from a shell (no PYTEST_XDIST_WORKER, no CONVEYOR_WORKER inherited).
    forget_outer_worker()


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    """`pytest -n N` without pytest-xdist: hand the whole invocation to `conveyor run`."""
    if xdist_active(config.pluginmanager) or os.environ.get(FRONT_ENV):
        return None
    if hasattr(config, "workerinput"):
        return None
    workers = config.getoption("numprocesses", None)
    if workers in (None, "0", 0):
        return None
    args = list(config.invocation_params.args)
    if not any(arg == "-n" or arg.startswith(("-n", "--numprocesses")) for arg in args):
        args = ["-n", str(workers), *args]  # from addopts or PYTEST_ADDOPTS
    env = {**os.environ, FRONT_ENV: "1"}
    return subprocess.call([sys.executable, "-m", "conveyor", "run", *args], env=env)


def pytest_configure(config: pytest.Config) -> None:
    xdist = config.pluginmanager.get_plugin("xdist")
    if xdist is None or isinstance(xdist, XdistStandIn):
        config.pluginmanager.import_plugin("conveyor.fixtures")
