"""Where a worker's temporary folders go: inside one folder per build, as under pytest-xdist.

Plain pytest gives each session one numbered folder (`pytest-of-USER/pytest-N`, linked as
`pytest-current`), and at its end removes the folders of sessions older than the last three
(`tmp_path_retention_count`, `tmp_path_retention_policy`). Left to itself, each worker made
a numbered folder of its own, and the workers, ending, removed each other's: a failed test's
`tmp_path` was gone once the build ended, and a build used up the retention of several. The
controller therefore makes the build's numbered folder as plain pytest makes its own, before
the workers need it, and each of its workers takes `FOLDER/gwN` in it, the folder being
passed on in the workers' input. It is asked for only when a test first wants a temporary
folder, so a worker starts without waiting for its controller. On a machine of workers
alone (`conveyor worker`), the first worker that needs a folder makes the numbered folder as
pytest would and notes it for the others, who take theirs in it (conveyor.machine_lock).

A given `--basetemp` is emptied by pytest when its session first asks for a temporary
folder, and the folders in it are named from a counter of the session's own: workers sharing
one emptied each other's and handed two tests the same folder. Each worker takes a folder of
its own inside it (`BASETEMP/gw0`, ...). A worker forked after collection (--fork-workers)
was configured as the process that collected, and takes its own folder once forked.

Relies on pytest's tmpdir plugin: the config's `_tmp_path_factory`, its `getbasetemp()`, and
its `_basetemp`, `_given_basetemp` and `_retention_policy`.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conveyor.environment import XDIST_WORKER
from conveyor.machine_lock import machine_lock

SHARED_BASETEMP = pytest.StashKey[Path]()
# The workers' input key that carries the build's numbered folder on this machine.
BUILD_FOLDER_KEY = "conveyor_basetemp"


def build_folder(config: pytest.Config) -> str | None:
    """The controller's numbered folder for the build, made now as plain pytest makes its own
    (the retention of earlier ones included), or None where the user gave --basetemp."""
    factory: Any = getattr(config, "_tmp_path_factory", None)
    if config.option.basetemp or factory is None:
        return None
    try:
        return str(factory.getbasetemp())
    except OSError:
        # Where the folder cannot be made (a temporary root not writable, owned by another
        # user), each worker tries on its own, and a test asking for one fails as in plain
        # pytest, rather than the whole build failing before it starts.
        return None


def removes_build_folder(config: pytest.Config) -> bool:
    """Whether the controller's end removes the build's folder (retention policy "failed" or
    "none"): its workers must have left it first."""
    factory: Any = getattr(config, "_tmp_path_factory", None)
    made = factory is not None and getattr(factory, "_basetemp", None) is not None
    return made and getattr(factory, "_retention_policy", "all") != "all"


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


def in_build_folder(config: pytest.Config, machine_run_folder: Path | None = None) -> None:
    """Make the worker's first request for its base folder take `FOLDER/<its name>` in the
    folder its controller made, or, on a machine of workers alone, in the one the first worker
    of the machine made. A worker forked after another chose already chooses again. Called once
    pytest's tmpdir plugin configured; not where the user gave --basetemp."""
    factory: Any = getattr(config, "_tmp_path_factory", None)
    if factory is None or config.stash.get(SHARED_BASETEMP, None) is not None:
        return
    if "getbasetemp" in vars(factory):
        return
    pytests_own = factory.getbasetemp
    chosen_for: list[str] = []

    def getbasetemp() -> Path:
        name = os.environ.get(XDIST_WORKER)
        if chosen_for and chosen_for[0] != name:
            factory._basetemp = factory._given_basetemp = None
            chosen_for.clear()
        if factory._basetemp is None and factory._given_basetemp is None and name:
            if machine_run_folder is None:
                folder = _controllers_folder(config)
            else:
                folder = _machines_folder(machine_run_folder, factory, pytests_own)
            if folder is not None:
                factory._given_basetemp = _unused_folder(folder, name)
                chosen_for.append(name)
        result: Path = pytests_own()
        return result

    factory.getbasetemp = getbasetemp


def _unused_folder(folder: Path, name: str) -> Path:
    """`FOLDER/<name>`, or `<name>.2`, `<name>.3`, ... (as its log is named) when a worker of
    that name left one: a worker replaced after a crash, whose test's files are worth a look."""
    for incarnation in itertools.count(1):
        candidate = folder / (name if incarnation == 1 else f"{name}.{incarnation}")
        try:
            candidate.mkdir(mode=0o700)
        except FileExistsError:
            continue
        return candidate
    raise AssertionError("unreachable")


def _machines_folder(run_folder: Path, factory: Any, make: Callable[[], Path]) -> Path | None:
    """The build's numbered folder on a machine of workers alone: made by the first worker
    that needs one, as pytest makes its own (the retention of earlier ones included), and
    noted for the others. None where pytest removes every numbered folder as the session that
    made it ends (retention policy "none": the others would still be working in it) or where
    it cannot be made (each worker then tries on its own, as in plain pytest)."""
    if getattr(factory, "_retention_policy", "all") == "none":
        return None
    note = run_folder / "build-folder"
    with machine_lock(run_folder):
        noted = note.read_text("utf-8") if note.exists() else ""
        if noted and Path(noted).is_dir():
            return Path(noted)
        try:
            folder = make()
        except OSError:
            return None
        note.write_text(str(folder), "utf-8")
        # This worker too works in FOLDER/<its name>: its session's end then leaves the
        # folder where the others still work (pytest removes the folder it made itself when
        # that session passed, under the "failed" policy).
        factory._basetemp = None
        return folder


def _controllers_folder(config: pytest.Config) -> Path | None:
    """The build's folder from the workers' input (waiting for the controller to publish it,
    if it has not yet), or None: no controller published one in time."""
    workerinput: Any = getattr(config, "workerinput", None)
    try:
        value = workerinput[BUILD_FOLDER_KEY]
    except (KeyError, TypeError):
        return None
    folder = Path(str(value))
    return folder if folder.is_dir() else None


def own_basetemp_once_forked(config: pytest.Config) -> None:
    """A forked worker's folder inside the --basetemp given, by its own name."""
    shared = config.stash.get(SHARED_BASETEMP, None)
    factory = getattr(config, "_tmp_path_factory", None)
    name = os.environ.get(XDIST_WORKER)
    if shared is not None and factory is not None and name:
        factory._given_basetemp = shared / name
        factory._basetemp = None
