"""The handshake between a worker and the build: the manifest the leader publishes, and the
check every other worker makes against it before it runs anything.

A worker runs tests only when it collected the same set of tests as the leader, from the same
code; otherwise it is refused (it says why, on the build's record and on stderr) and runs
nothing, since its results would stand for tests nobody else ran.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
import warnings
from typing import Any

import pytest

from conveyor.code_identity import describe_difference
from conveyor.compat import last_failed_status
from conveyor.errors import QueueError
from conveyor.ordered_suite import order_dependence
from conveyor.outcome_record import serialize_warning
from conveyor.queue import Queue
from conveyor.queue.protocol import JSON, Manifest, collection_digest
from conveyor.scheduling import DEFAULT_GROUPING, WHOLE_BY_GROUPING, plan
from conveyor.unit_names import XDIST_GROUPS_META
from conveyor.vocabulary import EVENT_WORKER_REFUSED
from conveyor.worker_settings import WorkerSettings

WAIT_POLL_S = 0.05


SAMPLE = 10  # test ids listed of those missing, and of those extra


def describe_mismatch(worker: str, leader: str, missing: list[str], extra: list[str]) -> str:
    """What differs, a test id a line (ids are long: on one line ten of them read as one)."""

    def sample(what: str, ids: list[str]) -> list[str]:
        more = f" (the first {SAMPLE})" if len(ids) > SAMPLE else ""
        return [f"{len(ids)} {what}{more}:", *(f"  {unit}" for unit in ids[:SAMPLE])]

    lines = [
        f"worker {worker} collected a different set of tests than {leader}, which published "
        "the build, and will not run any test. Make every machine run the same code with the "
        "same arguments, and make collection deterministic (no random or time-based "
        "parametrize); on one machine, --fork-workers collects once for every worker."
    ]
    if missing:
        lines += sample("missing here", missing)
    if extra:
        lines += sample("extra here", extra)
    return "\n".join(lines)


class CollectionRecord:
    """What a worker saw while collecting, for the manifest: counts, the reports of failed
    collectors and collection warnings (the controller replays them). A pytest plugin of
    the worker's session."""

    def __init__(self) -> None:
        self.collected = 0
        self.deselected = 0
        self.reports: list[JSON] = []
        self.warnings: list[JSON] = []
        self._config: pytest.Config | None = None

    def pytest_configure(self, config: pytest.Config) -> None:
        self._config = config  # historic: called on registration, inside pytest_configure

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        config = self._config
        if not report.passed and config is not None:
            data = config.hook.pytest_report_to_serializable(config=config, report=report)
            self.reports.append(data)

    def pytest_warning_recorded(
        self, warning_message: warnings.WarningMessage, when: str, nodeid: str
    ) -> None:
        # "config" warnings are emitted by the controller itself, which parses the same config.
        if when == "collect":
            self.warnings.append(serialize_warning(warning_message, when, nodeid))

    @pytest.hookimpl(trylast=True)
    def pytest_itemcollected(self, item: pytest.Item) -> None:
        self.collected += 1

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected += len(items)

    def meta(self, session: pytest.Session, units: list[str], **more: Any) -> JSON:
        return {
            "collected": self.collected,
            "selected": len(units),
            "deselected": self.deselected,
            "collect_errors": session.testsfailed,
            "collect_reports": self.reports,
            "collect_warnings": self.warnings,
            "lf_status": last_failed_status(session.config),
            "hash_seed": os.environ.get("PYTHONHASHSEED"),
            # Tells this build apart from one re-created under the same id after the queue
            # lost its state (a restarted Redis without persistence).
            "nonce": secrets.token_hex(8),
            **more,
        }


def serving_plan(
    record: CollectionRecord,
    session: pytest.Session,
    settings: WorkerSettings,
    collected: list[str],
    durations: dict[str, float],
    code: dict[str, str],
    leading: bool,
    workers: int,
) -> tuple[list[str], JSON]:
    """The order a leader publishes (slowest first, modules kept together, see
    conveyor.scheduling) for `workers` in the whole build (conveyor.fleet_size), and the
    manifest's meta. Workers that do not lead only check the set, so they skip the
    planning."""
    units, range_starts = collected, frozenset[str]()
    grouping = settings.grouping or DEFAULT_GROUPING  # resolved by the worker (addopts)
    whole = WHOLE_BY_GROUPING[grouping]
    in_order = order_dependence(session.items, session.config) if leading else None
    if in_order is not None:
        whole = "all"  # one worker, pytest's own order (conveyor.ordered_suite)
    order = _order(settings.order, session.config)
    if in_order is None and leading:
        serving = plan(
            collected,
            durations,
            order=order,
            grouping=grouping,
            workers=workers,
            seed=settings.seed,
        )
        units, range_starts = serving.order, serving.range_starts
    meta = record.meta(
        session,
        units,
        max_unit_crashes=settings.max_unit_crashes,
        code=code,
        range_starts=sorted(range_starts),
        # What the queue keeps on one worker, in its order, also when a gone worker's tests
        # go back to the queue (`scheduling.back_to_front_order`).
        whole=whole,
        # Whether timing history planned this build: what it cost is told apart by it (see
        # conveyor.capacity_plan.overheads_from).
        with_history=any(unit in durations for unit in collected),
        # Every worker's batches are sized for the build's workers, not its machine's.
        plan_workers=workers,
        # Whether unit names carry xdist_groups: a worker that joins names its units so too.
        **{XDIST_GROUPS_META: grouping == "group"},
        order=order,  # how the build was served (the order hint names it)
        # What test ids are relative to: `conveyor replay` and `bisect` collect from there.
        rootdir=str(session.config.rootpath),
    )
    if in_order is not None:
        meta["in_order"] = in_order  # the controller says why the build is not shared
    if units != collected:
        # The controller reports in collection order, whatever the serving order.
        rank = {unit: index for index, unit in enumerate(collected)}
        meta["collection_order"] = [rank[unit] for unit in units]
    return units, meta


class ManifestHandshake:
    def __init__(
        self, queue: Queue, worker_id: str, start_timeout_s: float, check_only: bool
    ) -> None:
        self.queue = queue
        self.worker_id = worker_id
        self.start_timeout_s = start_timeout_s
        self.check_only = check_only  # a check leaves no trace in the build's record
        self.refused = False

    def join_or_check(self, units: list[str], meta: JSON, code: dict[str, str]) -> bool:
        """Publish the manifest (this worker leads) or check against the published one.
        True when this worker may run the build's tests."""
        if not self.check_only and self.queue.populate(self.worker_id, units, meta):
            return True
        return self.matches(units, code)

    def matches(self, units: list[str], code: dict[str, str]) -> bool:
        manifest = self.wait_for_manifest()
        missing: list[str] = []
        extra: list[str] = []
        if manifest.digest == collection_digest(units):
            theirs = manifest.meta.get("code")
            other_code = describe_difference(code, theirs) if theirs else None
            if other_code is None:
                return True
            message = (
                f"worker {self.worker_id} collected the same tests as "
                f"{manifest.leader}, which published the build, from other code ({other_code}); "
                "this worker will not run any test. Make every machine of a build check out "
                "the same commit, or give each run of other code a build id of its own."
            )
        else:
            published = set(self.queue.units())
            mine = set(units)
            missing, extra = sorted(published - mine), sorted(mine - published)
            message = describe_mismatch(self.worker_id, manifest.leader, missing, extra)
        if not self.check_only:
            self.queue.publish(
                EVENT_WORKER_REFUSED,
                self.worker_id,
                {"message": message, "missing": missing[:50], "extra": extra[:50]},
            )
        self.refused = True
        print(f"conveyor: {message}", file=sys.stderr)
        return False

    def wait_for_manifest(self) -> Manifest:
        deadline = time.monotonic() + self.start_timeout_s
        while (manifest := self.queue.manifest()) is None:
            if time.monotonic() > deadline:
                raise QueueError(
                    f"no worker published the build's manifest within "
                    f"{self.start_timeout_s:.0f} s; is another worker still collecting?"
                )
            time.sleep(WAIT_POLL_S)
        return manifest


def _order(order: str, config: pytest.Config) -> str:
    """pytest's --ff and --nf put the last failures or the new tests first in its collection:
    slowest first would serve them anywhere (with -x, a failure seen last time late)."""
    asked = config.getoption("failedfirst", False) or config.getoption("newfirst", False)
    return "collected" if asked and order == "slowest" else order
