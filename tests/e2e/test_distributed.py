"""Builds across "machines": separate copies of a project and separate process trees sharing
one real Redis, with a separate `conveyor report`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import RedisCluster, RedisServer, TlsRedis, require_redis_server
from helpers import communicate_or_dump_stacks, junit_outcomes, junit_totals

from conveyor.queue import open_queue

SUITE = {
    "conftest.py": """
import os, pathlib, time, pytest

@pytest.fixture(scope="session", autouse=True)
def both_machines_joined():
    # Where a test asks for it: no test runs before a worker of each machine is up, so that
    # a machine slow to start on a loaded host still gets work (its tests take 2 s in all).
    folder = os.environ.get("JOINED_DIR")
    if folder:
        machine = pathlib.Path.cwd().name
        (pathlib.Path(folder) / f"{machine}-{os.getpid()}").write_text("")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(
            {p.name.split("-")[1] for p in pathlib.Path(folder).iterdir()}
        ) < 2:
            time.sleep(0.05)

@pytest.fixture(autouse=True)
def mark_machine(request):
    folder = os.environ.get("MARKER_DIR")
    if folder:
        machine = pathlib.Path.cwd().name
        worker = os.environ.get("PYTEST_XDIST_WORKER", "none")
        (pathlib.Path(folder) / f"{machine}-{worker}-{request.node.name}").write_text("")
""",
    "test_math.py": """
import time
import pytest

@pytest.mark.parametrize("n", range(30))
def test_square(n):
    time.sleep(0.02)
    assert n * n != 49

def test_skipped():
    pytest.skip("not here")

@pytest.mark.xfail(reason="known")
def test_known_bug():
    assert False
""",
    "test_text.py": """
def test_upper():
    assert "a".upper() == "A"

def test_lower():
    assert "A".lower() == "a"
""",
    # Several modules of slower tests, so that both machines get whole modules to run.
    **{
        f"test_words_{module}.py": "import time\n\n"
        + "\n".join(
            f"def test_words_{i}():\n    time.sleep(0.1)\n"
            for i in range(5 * module, 5 * module + 5)
        )
        for module in range(6)
    },
}


@pytest.fixture
def machines(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """Two checkouts of one project and a folder for markers the tests leave behind."""
    first, markers = tmp_path / "machine-a", tmp_path / "markers"
    first.mkdir()
    markers.mkdir()
    (first / "pytest.ini").write_text("[pytest]\n")
    for name, body in SUITE.items():
        (first / name).write_text(body)
    second = tmp_path / "machine-b"
    shutil.copytree(first, second)
    yield first, second, markers


def conveyor(
    cwd: Path, *args: str, markers: Path | None = None, joined: Path | None = None
) -> subprocess.Popen[str]:
    env = {**os.environ, "MARKER_DIR": str(markers or cwd)}
    if joined is not None:
        env["JOINED_DIR"] = str(joined)  # its tests wait for a worker of each machine
    return subprocess.Popen(
        [sys.executable, "-m", "conveyor", *args, "-p", "no:cacheprovider"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(process: subprocess.Popen[str], timeout_s: float = 180) -> tuple[int, str]:
    output = communicate_or_dump_stacks(process, timeout_s)
    return process.returncode, output


def plain_pytest(cwd: Path, markers: Path) -> tuple[int, Path]:
    xml = cwd.parent / "plain.xml"
    env = {**os.environ, "MARKER_DIR": str(markers), "PYTEST_XDIST_WORKER": "plain"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={xml}"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    return result.returncode, xml


@pytest.fixture
def build() -> str:
    return f"e2e-{uuid.uuid4().hex[:10]}"


def test_two_machines_and_a_separate_report_agree_with_plain_pytest(
    machines: tuple[Path, Path, Path], redis_server: RedisServer, build: str
) -> None:
    first, second, markers = machines
    queue = ["--queue", redis_server.url, "--build", build]
    joined = markers.parent / "joined"
    joined.mkdir()
    report = conveyor(first, "report", *queue, "--junitxml=report.xml")
    a = conveyor(
        first, "run", "-n", "2", *queue, "--junitxml=a.xml", markers=markers, joined=joined
    )
    b = conveyor(
        second, "run", "-n", "2", *queue, "--junitxml=b.xml", markers=markers, joined=joined
    )
    results = [finish(process) for process in (a, b, report)]
    ran_on = {marker.name.split("-gw", 1)[0] for marker in markers.iterdir()}
    assert ran_on == {"machine-a", "machine-b"}, "both machines should have run tests"
    plain_code, plain_xml = plain_pytest(first, markers)
    assert plain_code == 1
    for code, output in results:
        assert code == plain_code, output
        assert "1 failed, 61 passed, 1 skipped, 1 xfailed" in output.splitlines()[-1], output
    expected = junit_outcomes(plain_xml)
    for xml in (first / "report.xml", first / "a.xml", second / "b.xml"):
        assert junit_outcomes(xml) == expected
        assert junit_totals(xml) == junit_totals(plain_xml)


def test_a_fleet_of_one_worker_machines_is_planned_for_as_a_whole(
    machines: tuple[Path, Path, Path], redis_server: RedisServer, build: str
) -> None:
    """Each machine runs `-n 1`: the leader's plan is made for the two workers the suite's
    previous build had, and its batches for every worker's are sized by it too (the meta)."""
    first, second, markers = machines
    suite = ["--history-key", f"fleet-{build}"]

    def fleet(build_id: str) -> int:
        joined = markers.parent / f"joined-{build_id}"
        joined.mkdir()
        queue = ["--queue", redis_server.url, "--build", build_id, *suite]
        runs = [
            conveyor(cwd, "run", "-n", "1", *queue, markers=markers, joined=joined)
            for cwd in (first, second)
        ]
        for process in runs:
            code, output = finish(process)
            assert code == 1, output
            assert "1 failed, 61 passed, 1 skipped, 1 xfailed" in output, output
        opened = open_queue(redis_server.url, build_id)
        try:
            manifest = opened.manifest()
        finally:
            opened.close()
        assert manifest is not None
        workers = manifest.meta["plan_workers"]
        assert isinstance(workers, int)
        return workers

    assert fleet(build) == 1  # nothing known yet: this machine's own worker
    assert fleet(f"{build}-again") == 2


def test_report_after_the_build_replays_stored_results_and_reruns_cost_nothing(
    machines: tuple[Path, Path, Path], redis_server: RedisServer, build: str
) -> None:
    first, _, markers = machines
    queue = ["--queue", redis_server.url, "--build", build]
    code, output = finish(conveyor(first, "run", "-n", "2", *queue, markers=markers))
    assert code == 1, output
    for marker in markers.iterdir():
        marker.unlink()
    # A CI job retried with the same build id: no test runs again, the stored results print.
    code, output = finish(conveyor(first, "run", "-n", "2", *queue, markers=markers))
    assert code == 1, output
    assert "1 failed, 61 passed, 1 skipped, 1 xfailed" in output.splitlines()[-1]
    assert list(markers.iterdir()) == []
    code, output = finish(conveyor(first, "worker", "-n", "2", *queue))
    assert code == 0
    assert "already finished" in output
    code, output = finish(conveyor(first, "report", *queue, "-q"))
    assert code == 1
    assert "1 failed, 61 passed, 1 skipped, 1 xfailed" in output.splitlines()[-1]


def test_a_machine_killed_mid_build_loses_no_test(
    machines: tuple[Path, Path, Path], redis_server: RedisServer, build: str
) -> None:
    first, second, markers = machines
    queue = ["--queue", redis_server.url, "--build", build, "--lease-ttl", "2"]
    doomed = conveyor(second, "worker", "-n", "2", *queue, markers=markers)
    deadline = time.monotonic() + 60
    while not any(m.name.startswith("machine-b") for m in markers.iterdir()):
        assert time.monotonic() < deadline, "machine b never ran a test"
        time.sleep(0.02)
    survivor = conveyor(first, "run", "-n", "2", *queue, "--junitxml=a.xml", markers=markers)
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.communicate()
    code, output = finish(survivor)
    assert code == 1, output
    outcomes = junit_outcomes(first / "a.xml")
    assert len(outcomes) == 64
    assert all(len(cases) == 1 for cases in outcomes.values())
    assert "1 failed, 61 passed, 1 skipped, 1 xfailed" in output.splitlines()[-1]


def test_a_machine_with_different_code_is_refused_and_the_build_completes(
    machines: tuple[Path, Path, Path], redis_server: RedisServer, build: str
) -> None:
    first, second, markers = machines
    (second / "test_extra.py").write_text("def test_only_on_b():\n    pass\n")
    queue = ["--queue", redis_server.url, "--build", build]
    leader = conveyor(first, "run", "-n", "2", *queue, "--junitxml=a.xml", markers=markers)
    # Let machine a publish first so that b is the one that differs.
    deadline = time.monotonic() + 60
    while not list(markers.iterdir()):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    other = conveyor(second, "worker", "-n", "1", *queue, markers=markers)
    code_b, output_b = finish(other)
    _, output_a = finish(leader)
    assert code_b != 0
    assert "test_extra.py::test_only_on_b" in output_b
    assert "collected a different set of tests" in output_b
    assert len(junit_outcomes(first / "a.xml")) == 64
    assert "1 failed, 61 passed, 1 skipped, 1 xfailed" in output_a


def test_password_protected_redis_works_and_a_wrong_password_is_a_clear_error(
    machines: tuple[Path, Path, Path], tmp_path: Path, build: str
) -> None:
    require_redis_server()
    first, _, markers = machines
    server = RedisServer(tmp_path / "auth", "--requirepass", "s3cret-pass")
    server.start()
    try:
        good = f"redis://:s3cret-pass@127.0.0.1:{server.port}/0"
        code, output = finish(
            conveyor(first, "run", "-n", "2", "--queue", good, "--build", build, markers=markers)
        )
        assert code == 1, output
        assert "s3cret-pass" not in output
        bad = f"redis://:wrong-pass@127.0.0.1:{server.port}/0"
        code, output = finish(conveyor(first, "run", "--queue", bad, "--build", build))
        assert code == 4
        assert f"127.0.0.1:{server.port}" in output
        assert "wrong-pass" not in output and "***" in output
    finally:
        server.stop()


def test_tls_redis(machines: tuple[Path, Path, Path], tls_redis: TlsRedis, build: str) -> None:
    first, _, markers = machines
    url = f"{tls_redis.url}?ssl_ca_certs={tls_redis.ca}"
    code, output = finish(
        conveyor(first, "run", "-n", "2", "--queue", url, "--build", build, markers=markers)
    )
    assert code == 1, output
    assert "1 failed, 61 passed, 1 skipped, 1 xfailed" in output.splitlines()[-1]


def test_redis_restarted_mid_build_stops_every_process_with_state_lost(
    machines: tuple[Path, Path, Path], tmp_path: Path, build: str
) -> None:
    require_redis_server()
    first, _, markers = machines
    server = RedisServer(tmp_path / "volatile")
    server.start()
    try:
        process = conveyor(
            first, "run", "-n", "2", "--queue", server.url, "--build", build, markers=markers
        )
        deadline = time.monotonic() + 60
        # Well into the build: the report side has read the manifest and results flow.
        while len(list(markers.iterdir())) < 10:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        server.restart()
        code, output = finish(process)
        assert code == 3, output
        assert "vanished from the" in output
    finally:
        server.stop()


@pytest.mark.parametrize("scheme", ["redis+cluster", "redis"])
def test_two_machines_on_a_redis_cluster(
    machines: tuple[Path, Path, Path], redis_cluster: RedisCluster, scheme: str
) -> None:
    """A real three-master cluster: the URL names one node, the build's keys (one hash tag)
    and the suite's timing history live on two others. redis+cluster:// says it is a cluster;
    a redis:// URL that names a node of one is recognised as such."""
    first, second, markers = machines
    seed, build_port, history_port = redis_cluster.ports
    if scheme == "redis":
        build_port, history_port = history_port, build_port
    build = redis_cluster.build_on(build_port, "e2e")
    suite = "suite"
    while redis_cluster.port_of_key("conveyor:history:{" + suite + "}") != history_port:
        suite += "x"
    url = f"{scheme}://127.0.0.1:{seed}/0"
    queue = ["--queue", url, "--build", build, "--history-key", suite]
    a = conveyor(first, "run", "-n", "2", *queue, "--junitxml=a.xml", markers=markers)
    b = conveyor(second, "run", "-n", "2", *queue, "--junitxml=b.xml", markers=markers)
    for code, output in (finish(a), finish(b)):
        assert code == 1, output
        assert "1 failed, 61 passed, 1 skipped, 1 xfailed" in output.splitlines()[-1], output
    ran_on = {marker.name.split("-gw", 1)[0] for marker in markers.iterdir()}
    assert ran_on == {"machine-a", "machine-b"}, "both machines should have run tests"
    assert len(junit_outcomes(first / "a.xml")) == 64
    assert junit_outcomes(first / "a.xml") == junit_outcomes(second / "b.xml")
    recorded = redis_cluster.cli(history_port, "HLEN", "conveyor:history:{" + suite + "}")
    assert int(recorded) >= 60, "the timing history was not recorded on its node"
