"""Replay: run, in one plain pytest process, exactly the tests one worker ran, in its order.

A test that fails only in a distributed run usually depends on what ran before it in the same
process. The queue keeps every worker's reservation order, so that process can be recreated.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

from conveyor.errors import UsageError
from conveyor.queue import Queue
from conveyor.unit_names import unit_names
from conveyor.xdist_compat import xdist_group_of


class ReplayOrder:
    """A pytest plugin that keeps only the given tests, in the given order, and says which of
    them no longer exist instead of dropping them silently."""

    def __init__(self, order: Sequence[str], outcomes_path: Path | None = None) -> None:
        self.order = list(dict.fromkeys(order))
        self.missing: list[str] = []
        self.outcomes_path = outcomes_path
        self.failed: set[str] = set()
        self.ran: set[str] = set()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.ran.add(report.nodeid)
        if report.failed:
            self.failed.add(report.nodeid)

    def pytest_sessionfinish(self) -> None:
        if self.outcomes_path is not None:
            outcomes = {n: ("failed" if n in self.failed else "passed") for n in self.ran}
            self.outcomes_path.write_text(json.dumps(outcomes), "utf-8")

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        # A build under --dist loadgroup named its grouped units by their group too.
        ids = [item.nodeid for item in items]
        grouped = unit_names(ids, [xdist_group_of(item) for item in items])
        by_id = dict(zip(unit_names(ids), items, strict=True))
        by_id.update(zip(grouped, items, strict=True))
        self.missing = [nodeid for nodeid in self.order if nodeid not in by_id]
        wanted = [by_id[nodeid] for nodeid in self.order if nodeid in by_id]
        kept = {id(item) for item in wanted}
        dropped = [item for item in items if id(item) not in kept]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = wanted

    def pytest_report_header(self) -> str:
        return f"conveyor replay: {len(self.order)} test(s) in the recorded order"

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.missing:
            return
        terminalreporter.write_sep("=", "conveyor replay", yellow=True)
        terminalreporter.write_line(
            f"{len(self.missing)} test(s) of the recorded order no longer exist:", yellow=True
        )
        for nodeid in self.missing[:50]:
            terminalreporter.write_line(f"  {nodeid}")
        if len(self.missing) == len(self.order):
            # Test ids are relative to pytest's rootdir, which the command line decides.
            terminalreporter.write_line(
                f"None of them was collected here, where pytest's rootdir is "
                f"{terminalreporter.config.rootpath}: if the build ran from another folder or "
                "with test paths (its rootdir then elsewhere), give `conveyor replay` the same "
                "folder and paths.",
                yellow=True,
            )


def recorded_id(given: str, recorded: Iterable[str]) -> str:
    """The build's own id for a test id given as pytest's summary writes it (relative to
    the folder a command ran in, where node ids are relative to pytest's rootdir): the one
    recorded id whose path ends as the given one does, or the other way round, with the same
    name after the path; the given id itself when none or several do."""
    path, sep, rest = given.partition("::")
    path = "/".join(part for part in path.split("/") if part not in (".", ".."))
    found = []
    for unit in recorded:
        if unit == given:
            return unit
        unit_path, unit_sep, unit_rest = unit.partition("::")
        if (unit_sep, unit_rest) != (sep, rest):
            continue
        if unit_path.endswith("/" + path) or path.endswith("/" + unit_path) or unit_path == path:
            found.append(unit)
    return found[0] if len(found) == 1 else given


def files_of(order: Sequence[str]) -> list[str]:
    """The files to collect: collecting whole files keeps module-level setup as it was."""
    return list(dict.fromkeys(nodeid.split("::", 1)[0] for nodeid in order))


def run_in_process(
    order: Sequence[str],
    pytest_args: Sequence[str],
    outcomes_path: Path | None = None,
    rootdir: str | None = None,
) -> int:
    """Run `order` in this process. Its ids are relative to the build's rootdir: where that is
    known (and still there) and the command line does not choose one, pytest is given it, and
    the files are found there, whatever folder this runs in."""
    plugin = ReplayOrder(order, outcomes_path)
    args = list(pytest_args)
    chosen = chosen_rootdir(args)
    base = Path(chosen) if chosen else None
    if base is None and rootdir and Path(rootdir).is_dir():
        base = Path(rootdir)
        args.append(f"--rootdir={base}")
    files = [str(base / f) if base is not None else f for f in files_of(order)]
    # -p no:randomly: a plugin that shuffles would defeat the point of replaying an order.
    args = ["-p", "no:randomly", *args, *[f for f in files if Path(f).exists()]]
    return int(pytest.main(args, plugins=[plugin]))


def chosen_rootdir(args: Sequence[str]) -> str | None:
    """The --rootdir a command line gives, if any."""
    for index, arg in enumerate(args):
        if arg.startswith("--rootdir="):
            return arg.partition("=")[2]
        if arg == "--rootdir" and index + 1 < len(args):
            return args[index + 1]
    return None


def recorded_rootdir(queue: Queue) -> str | None:
    """The folder the build's test ids are relative to, as its leader recorded it."""
    manifest = queue.manifest()
    rootdir = manifest.meta.get("rootdir") if manifest is not None else None
    return rootdir if isinstance(rootdir, str) else None


def worker_order(queue: Queue, worker: str) -> list[str]:
    """The units `worker` was handed, in order; `worker` may be the full worker id or its
    slot name (gw1) when that is unambiguous."""
    workers = queue.status().workers
    matches = [w for w in workers if w == worker or w.rsplit("/", 1)[-1] == worker]
    if len(matches) != 1:
        known = ", ".join(workers) or "none"
        reason = "matches several workers" if matches else "is not a worker of this build"
        raise UsageError(f"--worker {worker!r} {reason}; the build's workers: {known}.")
    return [lease.unit for lease in queue.reservations(matches[0])]


def read_order_file(path: Path) -> list[str]:
    try:
        lines = path.read_text("utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read the test order from {path}: {exc.strerror}.") from None
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]
