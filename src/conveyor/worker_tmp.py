"""Each worker's own `--basetemp`.

pytest empties a given `--basetemp` when its session first asks for a temporary directory,
and names the directories in it from a counter of its own. Workers sharing one would empty
each other's directories and hand two tests the same one: a test whose file vanished failed
where plain pytest passes it. As under pytest-xdist, each worker takes a folder of its own
inside the one given (`BASETEMP/gw0`, ...); without `--basetemp` pytest's numbered folders
already keep the workers apart. A worker forked after collection (--fork-workers) was
configured as the process that collected, and takes its own folder once forked.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conveyor.environment import XDIST_WORKER

SHARED_BASETEMP = pytest.StashKey[Path]()


class OwnBasetemp:
    """Set before pytest's tmp_path plugin reads the option (its configure runs after)."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_configure(self, config: pytest.Config) -> None:
        given = config.option.basetemp
        name = os.environ.get(XDIST_WORKER)
        if not given or not name:
            return
        shared = Path(os.path.abspath(str(given)))
        shared.mkdir(parents=True, exist_ok=True)
        config.stash[SHARED_BASETEMP] = shared
        config.option.basetemp = str(shared / name)


def own_basetemp_once_forked(config: pytest.Config) -> None:
    """A forked worker's folder inside the --basetemp given, by its own name. Relies on the
    config's `_tmp_path_factory` and its `_given_basetemp` (pytest's tmpdir plugin), as
    compat.fresh_basetemp does."""
    shared = config.stash.get(SHARED_BASETEMP, None)
    factory = getattr(config, "_tmp_path_factory", None)
    name = os.environ.get(XDIST_WORKER)
    if shared is not None and factory is not None and name:
        factory._given_basetemp = shared / name
        factory._basetemp = None
