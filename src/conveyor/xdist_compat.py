"""pytest-xdist's plugin protocol, run by conveyor's controller and workers.

A conveyor worker looks like an xdist worker (`config.workerinput`), so plugins written for
xdist (pytest-cov, pytest-randomly, pytest-rerunfailures, ...) believe they run in one. That is
a promise: they also find the controller half of the protocol. The controller calls
`pytest_xdist_setupnodes` and `pytest_configure_node(node)`, where those plugins put what their
workers read; that input travels through the queue to every worker before it configures. Each
worker's `config.workeroutput` travels back, and the controller calls
`pytest_testnodedown(node, error)` with it before the terminal summary.

Without pytest-xdist installed, conveyor registers the same hook specifications and a stand-in
named "xdist", since plugins look for that name before they take part in the protocol.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conveyor.compat import remap_coverage_paths
from conveyor.queue.protocol import EVENT_WORKER_INPUT, EVENT_WORKER_OUTPUT

# What conveyor itself puts into each worker's workerinput; the rest comes from plugins.
OWN_INPUT_KEYS = ("workerid", "workercount", "testrunuid", "mainargv")
BYTES_TAG = "__conveyor_bytes__"
INPUT_PAGE = 1000
# How often a worker waiting for its controller's input looks for it: the wait is on the way
# to every build's first result when a plugin needs the input (pytest-rerunfailures, -cov),
# and lasts only until the controller has configured.
INPUT_POLL_S = 0.01


def xdist_installed() -> bool:
    try:
        return importlib.util.find_spec("xdist") is not None
    except (ImportError, ValueError):
        return False


class XdistHookSpecs:
    """The hooks of xdist's protocol that plugins implement, with xdist's signatures."""

    @pytest.hookspec()
    def pytest_xdist_setupnodes(self, config: pytest.Config, specs: Sequence[Any]) -> None:
        """Called before any worker is set up."""

    @pytest.hookspec()
    def pytest_configure_node(self, node: Any) -> None:
        """Configure a worker's input before it starts."""

    @pytest.hookspec()
    def pytest_testnodeready(self, node: Any) -> None:
        """A worker is ready."""

    @pytest.hookspec()
    def pytest_testnodedown(self, node: Any, error: object | None) -> None:
        """A worker is down; `node.workeroutput` holds what it sent back."""

    @pytest.hookspec()
    def pytest_xdist_node_collection_finished(self, node: Any, ids: Sequence[str]) -> None:
        """A worker finished collecting."""

    @pytest.hookspec(firstresult=True)
    def pytest_handlecrashitem(self, crashitem: str, report: Any, sched: Any) -> None:
        """A test crashed its worker."""

    @pytest.hookspec(firstresult=True)
    def pytest_xdist_auto_num_workers(self, config: pytest.Config) -> int:
        """How many workers `-n auto` means."""
        raise NotImplementedError


class XdistStandIn:
    """Registered as "xdist" when pytest-xdist is not installed: plugins ask
    `pluginmanager.hasplugin("xdist")` before they take part in the protocol."""


def adopt_protocol(pluginmanager: pytest.PytestPluginManager) -> None:
    """Make xdist's hooks known (and "xdist" present) in a conveyor controller or worker.
    Called when conveyor's plugin registers, before pytest loads installed plugins."""
    if xdist_installed() or pluginmanager.has_plugin("xdist"):
        return
    pluginmanager.add_hookspecs(XdistHookSpecs)
    pluginmanager.register(XdistStandIn(), "xdist")


def ensure_hookspecs(pluginmanager: pytest.PytestPluginManager) -> None:
    """xdist installed but turned off (`-p no:xdist`): its hooks are still called."""
    caller = getattr(pluginmanager.hook, "pytest_configure_node", None)
    if caller is None or getattr(caller, "spec", None) is None:  # unknown, or impls only
        pluginmanager.add_hookspecs(XdistHookSpecs)


XDIST_MARKERS = (
    "xdist_group(name): tests of one group run in one worker under pytest-xdist's "
    "--dist loadgroup (pytest-xdist's marker, declared by conveyor's workers).",
)


def xdist_group_of(item: pytest.Item) -> str | None:
    """The group pytest-xdist's --dist loadgroup keeps `item` in, named as xdist names it:
    every `xdist_group` mark's name (its first argument, else `name=`, else "default"),
    sorted and joined by "_"; None for a test without the mark."""
    names = {
        str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
        for mark in item.iter_markers("xdist_group")
    }
    return "_".join(sorted(names)) if names else None


def declare_xdist_markers(config: pytest.Config) -> None:
    """A worker runs with pytest-xdist turned off (`-p no:xdist`), so xdist's `xdist_group`
    marker went undeclared: a suite using it failed to collect under `--strict-markers` (and
    warned otherwise) where plain pytest, with xdist installed, declares it. Declared as xdist
    declares it, and only where xdist is installed, as in a plain run."""
    if xdist_installed() and config.pluginmanager.get_plugin("xdist") is None:
        for line in XDIST_MARKERS:
            config.addinivalue_line("markers", line)


def present_as_xdist_controller(early_config: pytest.Config) -> None:
    """Plugins decide early whether they run in xdist's controller: pytest-cov reads
    `known_args_namespace` (numprocesses, dist) in its pytest_load_initial_conftests to pick
    its distributed-master mode, which combines what workers send back."""
    namespace = early_config.known_args_namespace
    if getattr(namespace, "dist", "no") == "no" and not getattr(namespace, "numprocesses", None):
        namespace.dist = "load"


XDIST_OPTIONS = ("numprocesses", "maxprocesses")


def keep_xdist_out(config: pytest.Config) -> None:
    """pytest-xdist starts its own session when `-n`/`--dist` are set (from addopts, say);
    inside a conveyor controller or worker those are conveyor's, so xdist sees none."""
    option = config.option
    for name in XDIST_OPTIONS:
        if getattr(option, name, None):
            setattr(option, name, None)
    if getattr(option, "dist", "no") != "no":
        option.dist = "no"


@dataclass(frozen=True)
class RemoteInfo:
    """What `gateway._rinfo()` tells about the interpreter of a worker."""

    executable: str
    version_info: tuple[Any, ...]
    platform: str
    cwd: str
    pid: int = 0


@dataclass
class Gateway:
    id: str
    rinfo: RemoteInfo

    def _rinfo(self) -> RemoteInfo:  # the name xdist's execnet gateways give it
        return self.rinfo


@dataclass
class NodeManager:
    roots: list[Path]
    specs: list[Any] = field(default_factory=list)
    testrunuid: str = ""


def local_rinfo() -> RemoteInfo:
    return RemoteInfo(
        executable=sys.executable,
        version_info=tuple(sys.version_info),
        platform=sys.platform,
        cwd=str(Path.cwd()),
    )


class WorkerNode:
    """What xdist hands plugins as `node` (its WorkerController), as far as they read it."""

    def __init__(
        self,
        config: pytest.Config,
        worker_id: str,
        *,
        workercount: int,
        testrunuid: str,
        rinfo: RemoteInfo | None = None,
    ) -> None:
        self.config = config
        self.gateway = Gateway(worker_id, rinfo or local_rinfo())
        self.nodemanager = NodeManager([config.rootpath], testrunuid=testrunuid)
        self.workerinput: dict[str, Any] = {
            "workerid": worker_id,
            "workercount": workercount,
            "testrunuid": testrunuid,
            "mainargv": list(sys.argv),
        }
        self.workeroutput: dict[str, Any] = {}
        self.shutting_down = False

    def __repr__(self) -> str:
        return f"<WorkerNode {self.gateway.id}>"


def configure_node(config: pytest.Config, node: WorkerNode) -> dict[str, Any]:
    """The controller half for one node: plugins fill `node.workerinput`; returns what they
    added (JSON-safe), for workers to merge into their own."""
    config.hook.pytest_configure_node(node=node)
    added = {k: v for k, v in node.workerinput.items() if k not in OWN_INPUT_KEYS}
    safe: dict[str, Any] = to_json_safe(added)
    return safe


def setup_nodes(config: pytest.Config, count: int) -> None:
    config.hook.pytest_xdist_setupnodes(
        config=config, specs=[f"popen//id=gw{i}" for i in range(count)]
    )


def to_json_safe(value: Any) -> Any:
    """workerinput/workeroutput values as JSON: bytes (pytest-cov's data is bytes or str)
    travel tagged in base64; tuples become lists, as execnet would give them back anyway."""
    if isinstance(value, bytes):
        return {BYTES_TAG: base64.b64encode(value).decode("ascii")}
    if isinstance(value, Mapping):
        return {str(key): to_json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_safe(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def from_json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {BYTES_TAG}:
            return base64.b64decode(value[BYTES_TAG])
        return {key: from_json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_json_safe(item) for item in value]
    return value


def platform_info() -> dict[str, Any]:
    """This worker's interpreter, sent with its output (pytest-cov names it in its report)."""
    return {
        "executable": sys.executable,
        "version_info": list(sys.version_info),
        "platform": sys.platform,
        "cwd": str(Path.cwd()),
        "machine": platform.node(),
    }


def rinfo_from(data: Mapping[str, Any]) -> RemoteInfo:
    version = data.get("version_info") or list(sys.version_info)
    return RemoteInfo(
        executable=str(data.get("executable", "")),
        version_info=tuple(version),
        platform=str(data.get("platform", sys.platform)),
        cwd=str(data.get("cwd", "")),
    )


def input_source(worker_id: str) -> str:
    """The name under which the controller of `worker_id`'s machine publishes the input:
    worker ids are "<node>/gwN" on a shared queue, "gwN" on an embedded one."""
    node, _, _ = worker_id.rpartition("/")
    return f"{node}/controller" if node else "controller"


class ControllerNodes:
    """The controller half of the protocol, fed by the build's events."""

    def __init__(self, config: pytest.Config, *, source: str, workers: int, build: str) -> None:
        self.config = config
        self.source = source
        self.workers = workers
        self.build = build
        self.nodes: dict[str, WorkerNode] = {}
        self.down: set[str] = set()
        # Not waited for at the report (their lease expired), though their output is still
        # taken if it comes: worker -> why.
        self.given_up: dict[str, str] = {}
        # The tests every worker collected, in collection order, once the controller has read
        # the manifest (None before): what xdist tells plugins each node collected.
        self._collected: Callable[[], list[str]] | None = None
        self._collected_ids: list[str] | None = None

    def worker_input(self, *, shared: bool) -> dict[str, Any]:
        """What plugins put into a worker's input, computed on a template node."""
        ensure_hookspecs(self.config.pluginmanager)
        setup_nodes(self.config, max(1, self.workers))
        template = WorkerNode(
            self.config, "gw0", workercount=max(1, self.workers), testrunuid=self.build
        )
        return adapt_input(configure_node(self.config, template), shared=shared)

    def wants_output(self) -> bool:
        """Whether any plugin here reads what workers send back."""
        return bool(self.config.pluginmanager.hook.pytest_testnodedown.get_hookimpls())

    def node(self, worker: str) -> WorkerNode:
        if worker not in self.nodes:
            short = worker.rsplit("/", 1)[-1]
            self.nodes[worker] = WorkerNode(
                self.config, short, workercount=max(1, self.workers), testrunuid=self.build
            )
        return self.nodes[worker]

    def joined(self, worker: str) -> None:
        self.given_up.pop(worker, None)
        if worker in self.down:
            # A replacement of a worker that died under the same name: a new node.
            self.down.discard(worker)
            del self.nodes[worker]
        self.config.hook.pytest_testnodeready(node=self.node(worker))
        self._tell_collected(worker)

    def collection_known(self, collected: Callable[[], list[str]]) -> None:
        """The controller has replayed the build's collection. As an xdist controller does for
        each worker that finished collecting, plugins hear which tests a worker collected
        (pytest-sugar counts its progress from it; conftests keep it to compare with what
        ran): the workers that joined already now, later ones as they join. Every worker
        collected the manifest's tests, or it was refused."""
        self._collected = collected
        for worker in self.nodes:
            if worker not in self.down:
                self._tell_collected(worker)

    def _tell_collected(self, worker: str) -> None:
        hook = self.config.hook.pytest_xdist_node_collection_finished
        if self._collected is None or not hook.get_hookimpls():
            return
        if self._collected_ids is None:
            self._collected_ids = self._collected()
        hook(node=self.node(worker), ids=list(self._collected_ids))  # its own, as in xdist

    def output(self, worker: str, data: Mapping[str, Any]) -> None:
        """A worker's workeroutput arrived: it is down, and plugins read what it sent."""
        if worker in self.down:
            return
        node = self.node(worker)
        node.workeroutput = from_json_safe(dict(data.get("output") or {}))
        node.gateway.rinfo = rinfo_from(data.get("platform") or {})
        self.down.add(worker)
        self.config.hook.pytest_testnodedown(node=node, error=None)
        remap_coverage_paths(self.config.pluginmanager)

    def lost(self, worker: str, cause: object) -> None:
        """A worker died: it is down without output (a replacement is a new node)."""
        if worker in self.down or worker not in self.nodes:
            return
        self.down.add(worker)
        self.config.hook.pytest_testnodedown(node=self.nodes[worker], error=cause)

    def give_up(self, worker: str, cause: str) -> None:
        """Do not wait for this worker's output; it is still taken if it comes."""
        if worker in self.nodes and worker not in self.down:
            self.given_up[worker] = cause

    def awaiting(self) -> set[str]:
        return set(self.nodes) - self.down - set(self.given_up)

    def not_down(self) -> set[str]:
        return set(self.nodes) - self.down


def one_random_seed_per_build(config: pytest.Config, build: str) -> None:
    """pytest-randomly picks its seed in each process that configures it: in a build shared by
    several machines, once per machine, and each machine's report would then give its own
    seed for tests that ran under another's. Unless the user chose one, every machine takes
    the same seed, derived from the build id (as PYTHONHASHSEED is). Called before pytest
    configures, where the option is parsed and pytest-randomly has not read it yet."""
    if getattr(config.option, "randomly_seed", None) == "default":
        digest = hashlib.sha256(f"pytest-randomly {build}".encode()).digest()
        config.option.randomly_seed = int.from_bytes(digest[:4], "big")


def adapt_input(data: dict[str, Any], *, shared: bool) -> dict[str, Any]:
    """pytest-cov keeps data on a worker that shares the controller's host and directory and
    sends it only otherwise. On a shared queue every machine's report must cover the whole
    build, so workers are told they are not collocated and always send their data."""
    if shared and "cov_master_host" in data:
        data["cov_master_host"] = "conveyor: every machine reports the whole build"
    return data


def wait_for_input(
    queue: Any,
    worker_id: str,
    *,
    own_controller: bool,
    timeout_s: float,
    poll_s: float = INPUT_POLL_S,
) -> dict[str, Any] | None:
    """The plugins' input a controller published for this build: from this machine's own
    controller when there is one (a coverage host, a local socket are per machine), else the
    latest from any. None when none came within `timeout_s`."""
    source = input_source(worker_id)
    deadline = time.monotonic() + timeout_s
    cursor = 0
    latest: dict[str, Any] | None = None
    while True:
        for event in queue.events(cursor, INPUT_PAGE):
            cursor = event.seq
            if event.kind != EVENT_WORKER_INPUT:
                continue
            data = event.data.get("input")
            if not isinstance(data, dict):
                continue
            if event.worker == source:
                return dict(from_json_safe(data))
            latest = data
        if latest is not None and not own_controller:
            return dict(from_json_safe(latest))
        if time.monotonic() > deadline:
            return None if latest is None else dict(from_json_safe(latest))
        time.sleep(poll_s)


def publish_output(queue: Any, worker_id: str, output: Mapping[str, Any]) -> None:
    """A worker's `config.workeroutput`, sent back at its end with its interpreter's facts."""
    data = {"output": to_json_safe(dict(output)), "platform": platform_info()}
    queue.publish(EVENT_WORKER_OUTPUT, worker_id, data)


def benchmark_note(config: pytest.Config) -> str | None:
    """pytest-benchmark turns benchmarks off in parallel workers, as under xdist: a header
    line says so (a warning would fail suites that turn warnings into errors), and
    --benchmark-only, with which every worker would exit with a usage error, is refused with
    the way out."""
    if not config.pluginmanager.hasplugin("benchmark"):
        return None
    if config.getoption("benchmark_only", False):
        raise pytest.UsageError(
            "--benchmark-only cannot run in a distributed build: pytest-benchmark turns "
            "benchmarks off in parallel workers, as it does under pytest-xdist. Run them in "
            "one process: conveyor run -n 0 --benchmark-only (or plain pytest)."
        )
    if config.getoption("benchmark_disable", False) or config.getoption("benchmark_skip", False):
        return None
    return (
        "conveyor: benchmarks are disabled in a distributed run (pytest-benchmark cannot "
        "measure reliably in parallel workers); run them with `conveyor run -n 0`"
    )


class MissingWorkerInput(KeyError):
    """A key of a worker's input that its build's controller did not publish: a KeyError (as
    plugins expect) that says why it may be missing."""

    def __str__(self) -> str:
        return (
            f"{self.args[0]!r}: a plugin asked this worker for it in the input from the "
            "build's controller, which did not publish it; was the build started with other "
            "plugins or options (such as --cov) than this worker's?"
        )


class WorkerInput(dict[str, Any]):
    """A worker's `config.workerinput`. What plugins put in on the controller's side is
    fetched when a plugin first asks for a key the worker does not have, so a worker waits
    for a controller only when some plugin needs one (a worker may start long before any
    controller of its build)."""

    def __init__(self, own: Mapping[str, Any], fetch: Callable[[], Mapping[str, Any] | None]):
        super().__init__(own)
        self._fetch: Callable[[], Mapping[str, Any] | None] | None = fetch

    def rebind(self, own: Mapping[str, Any], fetch: Callable[[], Mapping[str, Any] | None]) -> None:
        """Another worker's now (a forked one): its own keys, and a fetch through its own
        queue connection if the plugins' input was not fetched yet."""
        self.update(own)
        if self._fetch is not None:
            self._fetch = fetch

    def fetch_now(self) -> None:
        """Wait for the plugins' input now, if it was not fetched yet: the controller has
        configured once it is published."""
        fetch, self._fetch = self._fetch, None
        if fetch is not None:
            self._merge(fetch() or {})

    def merge_available(self, found: Mapping[str, Any] | None) -> None:
        """Take the plugins' input now, if a controller published it already."""
        if found is not None:
            self._merge(found)

    def __missing__(self, key: str) -> Any:
        if self._fetch is not None:
            self.fetch_now()
            if key in self:
                return self[key]
        raise MissingWorkerInput(key)

    def _merge(self, found: Mapping[str, Any]) -> None:
        for key, value in found.items():
            self.setdefault(key, value)
        self._fetch = None


def attach_worker_input(
    config: pytest.Config,
    queue: Any,
    *,
    worker_id: str,
    worker_count: int,
    build: str,
    own_controller: bool,
    start_timeout_s: float,
) -> None:
    """Give a worker's config the `workerinput`/`workeroutput` pytest and its reporting
    plugins recognise a worker of a distributed run by (pytest-xdist sets them too):
    junitxml, pytest-html and the cache then leave writing to the controller. Set before any
    plugin's pytest_configure looks, with what plugins put in on the controller's side."""

    def wait() -> dict[str, Any] | None:
        found = wait_for_input(
            queue, worker_id, own_controller=own_controller, timeout_s=start_timeout_s
        )
        if found is None:
            print(
                "conveyor: no controller published the plugins' input for this build's "
                "workers within --start-timeout; run `conveyor run` or `conveyor report` "
                "for the build.",
                file=sys.stderr,
            )
        return found

    own = {
        "workerid": os.environ.get("PYTEST_XDIST_WORKER", "gw0"),
        "workercount": worker_count,
        "testrunuid": build,
        "mainargv": list(sys.argv),
    }
    existing = getattr(config, "workerinput", None)
    if isinstance(existing, WorkerInput):
        # A worker forked from the process that configured (--fork-workers): plugins may
        # hold this very object, so it becomes the new worker's in place.
        existing.rebind(own, fetch=wait)
        return
    workerinput = WorkerInput(own, fetch=wait)
    workerinput.merge_available(
        wait_for_input(queue, worker_id, own_controller=own_controller, timeout_s=0.0)
    )
    config.workerinput = workerinput  # type: ignore[attr-defined]
    config.workeroutput = {}  # type: ignore[attr-defined]
