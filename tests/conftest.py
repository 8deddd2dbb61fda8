"""Shared fixtures: real queues (SQLite files, a real redis-server on a free loopback port)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# Plugins installed for tests/e2e/plugins act in every pytest they can reach: runs that the
# tests start check conveyor's behaviour without them, unless a test says otherwise (allure's
# import alone costs each of those pytest processes about 50 ms).
QUIET_PLUGINS = "-p no:randomly -p no:benchmark -p no:allure_pytest"
os.environ["PYTEST_ADDOPTS"] = QUIET_PLUGINS


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """pytest's own, with the quiet plugins (pytest's pytester clears PYTEST_ADDOPTS)."""
    monkeypatch.setenv("PYTEST_ADDOPTS", QUIET_PLUGINS)
    return pytester


def pytest_configure(config: pytest.Config) -> None:
    """A suite started in the background by a shell without job control (`cmd &` in a
    script, as some CI steps do) inherits SIGINT ignored, and so would every conveyor the tests
    start: the Ctrl-C tests would send a signal that nobody hears, and see the build pass. A
    Python handler here is reset to the default in every process the tests start."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def with_plugins(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """Every installed plugin active, as in a project that installs them (tests/e2e/plugins)."""
    monkeypatch.setenv("PYTEST_ADDOPTS", "")
    return pytester


@pytest.fixture(params=["spawn", "fork"])
def start(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How the workers start: spawned (each imports and collects), or forked from one process
    that collected (--fork-workers, set through its environment variable). The verdict must
    not depend on it."""
    if request.param == "fork":
        monkeypatch.setenv("CONVEYOR_FORK_WORKERS", "1")
    return str(request.param)


class FakeClock:
    """An injectable clock, so lease expiry is tested without sleeping."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A throwaway redis-server bound to loopback, without persistence."""

    def __init__(self, workdir: Path, *extra_args: str) -> None:
        self.workdir = workdir
        self.extra_args = extra_args
        self.choose_port: Callable[[], int] = free_port
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.started = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it; a port another process took after it was found free (tests run many
        servers at once) is given up for another one, except on a restart, whose URL must
        stay the same."""
        for _ in range(5):
            if self._launch():
                self.started = True
                return
            if self.started:
                break
            self.port = self.choose_port()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def _launch(self) -> bool:
        """Whether the server this starts is the one answering on its port."""
        import redis

        self.workdir.mkdir(parents=True, exist_ok=True)
        process = self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        args = list(self.extra_args)
        password = args[args.index("--requirepass") + 1] if "--requirepass" in args else None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            client = redis.Redis(
                port=self.port, password=password, socket_timeout=0.5, socket_connect_timeout=0.2
            )
            try:
                pid = int(client.info("server")["process_id"])
            except (redis.RedisError, OSError, KeyError, ValueError):
                time.sleep(0.02)
                continue
            finally:
                client.close()
            if pid == process.pid:
                return True
            break  # another server holds the port
        self.stop()
        return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


def require_redis_server() -> None:
    """Skip locally, but fail in CI, when redis-server is not installed."""
    if shutil.which("redis-server"):
        return
    message = "redis-server is not installed (apt-get install -y redis-server)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    require_redis_server()
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


def key_slot(key: bytes) -> int:
    """The Redis Cluster slot of `key`: CRC16 (XMODEM) of its hash tag, modulo 16384."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    crc = 0
    for byte in key:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc % 16384


def free_cluster_port() -> int:
    """A free port P whose cluster bus port, P + 10000 (fixed before Redis 7), is free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("found no free port for a cluster node and its bus port")


class RedisCluster:
    """A throwaway Redis Cluster of three masters (no replicas) on free loopback ports, made the
    way an operator makes one: `redis-server --cluster-enabled yes` three times, then
    `redis-cli --cluster create`."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.nodes = []
        self.slots: list[tuple[int, int, int]] = []  # (first slot, last slot, port of its master)
        for index in range(masters):
            node = RedisServer(
                workdir / f"node-{index}",
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "5000",
            )  # fmt: skip
            node.choose_port = free_cluster_port
            node.port = free_cluster_port()
            self.nodes.append(node)

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        """The cluster URL conveyor documents: any one node, the rest are discovered."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        created = subprocess.run(
            [
                "redis-cli", "--cluster", "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas", "0", "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = [self.cli(port, "CLUSTER", "INFO") for port in self.ports]
            if all("cluster_state:ok" in state for state in states):
                self.slots = self._read_slots()
                return
            time.sleep(0.1)
        raise RuntimeError(f"the cluster on ports {self.ports} never reached cluster_state:ok")

    def cli(self, port: int, *command: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-p", str(port), *command], capture_output=True, text=True, timeout=10
        )
        return done.stdout

    def port_of_key(self, key: str) -> int:
        """The port of the master that holds `key`'s slot (from the slot map at start)."""
        slot = key_slot(key.encode())
        for low, high, port in self.slots:
            if low <= slot <= high:
                return port
        raise RuntimeError(f"no master of {self.ports} serves slot {slot}")

    def build_on(self, port: int, prefix: str = "build") -> str:
        """A fresh build id whose keys live on the master at `port`."""
        while True:
            build = f"{prefix}-{uuid.uuid4().hex[:12]}"
            if self.port_of_key("conveyor:{" + build + "}:meta") == port:
                return build

    def _read_slots(self) -> list[tuple[int, int, int]]:
        slots = []
        for port in self.ports:
            for line in self.cli(port, "CLUSTER", "NODES").splitlines():
                fields = line.split()  # id addr flags master ping pong epoch state slots...
                if "myself" not in fields[2]:
                    continue
                for span in fields[8:]:
                    low, _, high = span.partition("-")
                    if low.isdigit():
                        slots.append((int(low), int(high or low), port))
        return slots

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def require_redis_cluster_tools() -> None:
    """Skip locally, but fail in CI, without redis-server and redis-cli (Debian's redis-tools)."""
    require_redis_server()
    if shutil.which("redis-cli"):
        return
    message = "redis-cli is not installed (apt-get install -y redis-tools)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    require_redis_cluster_tools()
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def make_certificates(folder: Path) -> None:
    """A throwaway CA and a server certificate for 127.0.0.1 (fails in CI without openssl)."""
    if not shutil.which("openssl"):
        message = "openssl is not installed (apt-get install -y openssl)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem",
    )  # fmt: skip
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr",
    )  # fmt: skip
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "1", "-extfile", "san.cnf", "-out", "server.pem",
    )  # fmt: skip


@dataclass
class TlsRedis:
    server: RedisServer
    port: int
    ca: Path

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    """A redis-server that only speaks TLS, with a throwaway CA made by openssl."""
    require_redis_server()
    certs = tmp_path / "certs"
    certs.mkdir()
    make_certificates(certs)
    port = free_port()
    server = RedisServer(
        tmp_path / "tls-redis",
        "--tls-port", str(port),
        "--tls-cert-file", str(certs / "server.pem"),
        "--tls-key-file", str(certs / "server.key"),
        "--tls-ca-cert-file", str(certs / "ca.pem"),
        "--tls-auth-clients", "no",
    )  # fmt: skip
    server.start()
    yield TlsRedis(server, port, certs / "ca.pem")
    server.stop()
