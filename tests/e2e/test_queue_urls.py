"""Queue URLs from the user's side: secrets stay out of every message, the URL may come from
the environment, and a wrong URL is a usage error (4) with a message, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import RedisServer, free_port, require_redis_server

from conveyor.queue import mask_url

SECRET = "s3cr3t-Pa55"


def conveyor(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    pytest_args = ["-p", "no:cacheprovider"] if args[0] in ("run", "report") else []
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args, *pytest_args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    (tmp_path / "test_ok.py").write_text("def test_a(): pass\ndef test_b(): pass\n")
    return tmp_path


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[RedisServer]:
    require_redis_server()
    server = RedisServer(tmp_path / "redis", "--requirepass", SECRET)
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://:{SECRET}@host:6379/0", "redis://:***@host:6379/0"),
        (f"redis://user:{SECRET}@host/0", "redis://user:***@host/0"),
        (f"redis://host:6379/0?password={SECRET}", "redis://host:6379/0?password=***"),
        (
            f"rediss://host/0?ssl_ca_certs=/ca.pem&PassWord={SECRET}&db=1",
            "rediss://host/0?ssl_ca_certs=/ca.pem&PassWord=***&db=1",
        ),
        (f"unix://:{SECRET}@/run/redis.sock?db=2", "unix://:***@/run/redis.sock?db=2"),
        (f"unix:///run/redis.sock?password={SECRET}", "unix:///run/redis.sock?password=***"),
        (f"redis://:{SECRET}@host:abc/0", "redis://:***@host:abc/0"),
        (f"redis://:{SECRET}@[::1/0", "redis://:***@[::1/0"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("sqlite:///tmp/q.db", "sqlite:///tmp/q.db"),
    ],
)
def test_every_form_of_password_is_masked(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_password_in_the_query_string_never_reaches_a_message(suite: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0?password={SECRET}"
    done = conveyor(suite, "run", "-n", "1", "--queue", url, "--build", "b1")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "cannot reach the Redis queue redis://127.0.0.1:" in done.stderr
    assert "password=***" in done.stderr
    assert SECRET not in done.stdout + done.stderr


def test_queue_url_from_the_environment(suite: Path, password_redis: RedisServer) -> None:
    """CONVEYOR_QUEUE keeps the URL (and its password) out of every process's argv."""
    url = f"redis://:{SECRET}@127.0.0.1:{password_redis.port}/0"
    build = f"env-{uuid.uuid4().hex[:8]}"
    done = conveyor(suite, "run", "-n", "2", "--build", build, env={"CONVEYOR_QUEUE": url})
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"queue redis://:***@127.0.0.1:{password_redis.port}/0, build {build}" in done.stdout
    assert "2 passed" in done.stdout
    assert SECRET not in done.stdout + done.stderr
    # --queue on the command line wins over the environment.
    local = suite / "q.db"
    done = conveyor(
        suite, "run", "-n", "1", "--queue", f"sqlite://{local}", env={"CONVEYOR_QUEUE": url}
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert local.exists()
    # report and the record commands read it too.
    report = conveyor(suite, "report", "--build", build, env={"CONVEYOR_QUEUE": url})
    assert report.returncode == 0, report.stdout + report.stderr
    assert "2 passed" in report.stdout
    events = conveyor(suite, "events", "--build", build, env={"CONVEYOR_QUEUE": url})
    assert events.returncode == 0, events.stderr
    assert '"kind":"populated"' in events.stdout
    wrong = f"redis://:wrong-{SECRET}@127.0.0.1:{password_redis.port}/0"
    refused = conveyor(suite, "report", "--build", build, env={"CONVEYOR_QUEUE": wrong})
    assert refused.returncode == 4, refused.stdout + refused.stderr
    assert "refused the credentials" in refused.stderr
    assert SECRET not in refused.stdout + refused.stderr


def _refused_as_a_usage_error(
    suite: Path, url: str, expected: str, build: tuple[str, ...] = ("--build", "b1")
) -> None:
    """Exit code 4, conveyor's one-line error with `expected` in it, no traceback, no secret."""
    done = conveyor(suite, "run", "-n", "1", "--queue", url, *build)
    assert done.returncode == 4, done.stdout + done.stderr
    assert done.stderr.startswith("conveyor: error: "), done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stderr
    assert SECRET not in done.stderr


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"redis://:{SECRET}@127.0.0.1:abc/0", "is not a valid Redis URL"),
        (f"redis://:{SECRET}@127.0.0.1:65536/0", "Port out of range"),
        (f"redis://:{SECRET}@[::1/0", "is not a valid Redis URL"),
        ("sqlite://relative.db", "write it as sqlite:///"),
        ("sqlite:relative.db", "write it as sqlite:///"),
        ("sqlite://", "write it as sqlite:///"),
        ("ftp://host/q", "unknown scheme 'ftp'"),
    ],
)
@pytest.mark.parametrize("build", [("--build", "b1"), ()], ids=["build", "no-build"])
def test_a_wrong_url_is_a_usage_error_with_a_message(
    suite: Path, url: str, expected: str, build: tuple[str, ...]
) -> None:
    """Whether or not a build id was given: the URL is what to mend first."""
    _refused_as_a_usage_error(suite, url, expected, build)


def test_relative_sqlite_url_names_the_absolute_form(suite: Path) -> None:
    done = conveyor(suite, "run", "-n", "1", "--queue", "sqlite://relative.db")
    assert done.returncode == 4
    assert f"sqlite://{suite / 'relative.db'}" in done.stderr
    assert not (suite / "relative.db").exists()


def test_scheme_is_case_insensitive(suite: Path) -> None:
    path = suite / "q.db"
    done = conveyor(suite, "run", "-n", "2", "--queue", f"SQLite://{path}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
    assert path.exists()


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/99", "has no database '99'"),
        ("/0?bogus_option=1", "query parameter Redis does not know"),
    ],
)
def test_a_url_the_redis_server_cannot_serve_is_a_usage_error(
    suite: Path, redis_server: RedisServer, path: str, expected: str
) -> None:
    url = f"redis://:{SECRET}@127.0.0.1:{redis_server.port}{path}"
    _refused_as_a_usage_error(suite, url, expected)
