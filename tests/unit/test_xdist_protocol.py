"""The controller half of xdist's protocol, driven as the build's events drive it."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.problems import BuildProblems
from conveyor.queue.protocol import (
    EVENT_LEASE_EXPIRED,
    EVENT_WORKER_JOINED,
    EVENT_WORKER_OUTPUT,
    Event,
)
from conveyor.worker_events import LEASE_EXPIRED_CAUSE, WorkerEvents
from conveyor.xdist_compat import (
    ControllerNodes,
    WorkerInput,
    from_json_safe,
    input_source,
    to_json_safe,
)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["seed"] = 42
        node.workerinput["blob"] = b"\x00\xff"

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodeready(self, node: Any) -> None:
        self.calls.append(("ready", node.gateway.id, None))

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        self.calls.append(("down", node.gateway.id, error or dict(node.workeroutput)))


@pytest.fixture
def nodes(pytestconfig: pytest.Config) -> Any:
    recorder = Recorder()
    pytestconfig.pluginmanager.register(recorder, "xdist-protocol-recorder")
    yield ControllerNodes(pytestconfig, source="controller", workers=2, build="b"), recorder
    pytestconfig.pluginmanager.unregister(recorder)


def test_plugins_fill_the_input_and_it_travels_as_json(nodes: Any) -> None:
    controller, _ = nodes
    data = controller.worker_input(shared=False)
    # Other installed plugins (pytest-rerunfailures) add their own keys beside these.
    assert data["seed"] == 42 and data["blob"] == to_json_safe(b"\x00\xff")
    assert from_json_safe(data)["blob"] == b"\x00\xff"


def test_a_restarted_worker_is_a_new_node(nodes: Any) -> None:
    controller, recorder = nodes
    controller.joined("m/gw1")
    controller.lost("m/gw1", "killed by SIGKILL")
    controller.joined("m/gw1")  # its replacement
    controller.output("m/gw1", {"output": {"cov": to_json_safe(b"data")}, "platform": {}})
    assert recorder.calls == [
        ("ready", "gw1", None),
        ("down", "gw1", "killed by SIGKILL"),
        ("ready", "gw1", None),
        ("down", "gw1", {"cov": b"data"}),
    ]
    assert controller.awaiting() == set()


def test_a_worker_fetches_the_plugins_input_only_when_a_plugin_asks() -> None:
    fetched: list[int] = []

    def fetch() -> dict[str, Any]:
        fetched.append(1)
        return {"randomly_seed": 7}

    workerinput = WorkerInput({"workerid": "gw0"}, fetch)
    assert workerinput.get("workerid") == "gw0" and not fetched
    assert workerinput["randomly_seed"] == 7 and fetched == [1]
    with pytest.raises(KeyError):
        workerinput["sock_port"]
    assert fetched == [1]  # fetched once


def test_workers_take_their_own_machines_controller_input() -> None:
    assert input_source("host-12/gw3") == "host-12/controller"
    assert input_source("gw0") == "controller"


def test_a_worker_whose_lease_expired_is_not_waited_for(nodes: Any) -> None:
    """A machine killed outright publishes nothing; the expiry of its worker's lease is the
    only sign. The report waited 30 s for that worker's output after the last result. A
    worker that only stalled may still send its output, which is then taken."""
    controller, recorder = nodes
    events = WorkerEvents(controller, BuildProblems())
    handlers = events.handlers()
    for worker in ("a/gw0", "b/gw0", "c/gw0"):
        handlers[EVENT_WORKER_JOINED](Event(1, EVENT_WORKER_JOINED, worker, None, {}, 0.0))
    for worker in ("b/gw0", "c/gw0"):
        expired = Event(2, EVENT_LEASE_EXPIRED, worker, "t.py::test_a", {"attempt": 1}, 0.0)
        handlers[EVENT_LEASE_EXPIRED](expired)
    assert controller.awaiting() == {"a/gw0"}
    assert [call[0] for call in recorder.calls] == ["ready", "ready", "ready"]
    # c had only stalled: its output comes, and plugins get it.
    output = {"output": {"cov": to_json_safe(b"data")}, "platform": {}}
    handlers[EVENT_WORKER_OUTPUT](Event(3, EVENT_WORKER_OUTPUT, "c/gw0", None, output, 0.0))
    assert recorder.calls[-1] == ("down", "gw0", {"cov": b"data"})
    # At the report (a build replayed: nothing more comes), b is down with the cause.
    events.await_outputs(None, None, finished_at_start=True, all_local=False)  # type: ignore[arg-type]
    assert recorder.calls[-2:] == [
        ("down", "gw0", "the worker sent no output before the report"),
        ("down", "gw0", LEASE_EXPIRED_CAUSE),
    ]
