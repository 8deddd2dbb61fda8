"""Options declared once: command line > CONVEYOR_* > [tool.conveyor] > default, and one
table behind the parser, the help and the configuration sources."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conveyor.cli import worker_start
from conveyor.config import RunOptions, parse_run_options
from conveyor.errors import UsageError
from conveyor.options import OPTIONS, render_help

PYPROJECT = """
[tool.conveyor]
lease-ttl = 45
max_requeues = 2
retry-on = ["ConnectionError", "TimeoutError"]
order = "collected"
no-progress = true
"""


@pytest.fixture
def pyproject(tmp_path: Path) -> Path:
    path = tmp_path / "pyproject.toml"
    path.write_text(PYPROJECT)
    return path


def parse(argv: list[str], environ: dict[str, str], pyproject: Path) -> RunOptions:
    return parse_run_options(argv, "run", environ=environ, pyproject=pyproject)


def test_pyproject_sets_options(pyproject: Path) -> None:
    options = parse(["-n", "2", "-x"], {}, pyproject)
    assert options.lease_ttl_s == 45
    assert options.max_requeues == 2
    assert options.retry_on == ("ConnectionError", "TimeoutError")
    assert options.order == "collected" and options.no_progress
    assert options.pytest_args == ["-x"]


def test_environment_beats_pyproject_and_the_command_line_beats_both(pyproject: Path) -> None:
    environ = {"CONVEYOR_LEASE_TTL": "50", "CONVEYOR_NO_PROGRESS": "0", "CONVEYOR_SEED": "7"}
    options = parse(["-n", "2"], environ, pyproject)
    assert options.lease_ttl_s == 50 and not options.no_progress and options.seed == 7
    options = parse(["-n", "2", "--lease-ttl", "60", "--no-progress"], environ, pyproject)
    assert options.lease_ttl_s == 60 and options.no_progress


def test_defaults_without_any_source(tmp_path: Path) -> None:
    empty = tmp_path / "pyproject.toml"
    empty.write_text("[project]\nname = 'x'\n")
    options = parse(["-n", "2"], {}, empty)
    assert options == RunOptions(workers=2, pytest_args=[])


@pytest.mark.parametrize(
    ("argv", "environ", "table", "order"),
    [
        (["-n", "1"], {}, "", "collected"),
        (["-n", "2"], {}, "", "slowest"),
        (["-n", "1", "--queue", "redis://127.0.0.1:6379/0", "--build", "b"], {}, "", "slowest"),
        (["-n", "1", "--order", "slowest"], {}, "", "slowest"),
        (["-n", "1"], {"CONVEYOR_ORDER": "slowest"}, "", "slowest"),
        (["-n", "1"], {}, "order = 'random'", "random"),
    ],
)
def test_one_worker_alone_is_served_in_collection_order_unless_told_otherwise(
    tmp_path: Path, argv: list[str], environ: dict[str, str], table: str, order: str
) -> None:
    """Slowest first buys a lone worker nothing, and collection order is plain pytest's."""
    project = tmp_path / "pyproject.toml"
    project.write_text(f"[tool.conveyor]\n{table}\n")
    assert parse(argv, environ, project).order == order


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("lease-tll = 3", "lease-tll: not an option that can be set there"),
        ("build = 'b1'", "build: not an option that can be set there"),
        ("no-progress = 'yes'", "no-progress: expected true or false"),
        ("lease-ttl = [1]", "lease-ttl: expected a number or a string"),
        ("lease-ttl = 'soon'", "--lease-ttl"),
    ],
)
def test_a_bad_table_is_a_usage_error_naming_file_and_key(
    tmp_path: Path, table: str, message: str
) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text(f"[tool.conveyor]\n{table}\n")
    with pytest.raises(UsageError, match=message):
        parse(["-n", "1"], {}, path)


def test_the_help_lists_every_option_of_the_table() -> None:
    text = render_help()
    for option in OPTIONS:
        assert option.flags[-1] in text


def test_workers_by_the_name_the_readme_gives(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text("[tool.conveyor]\nnumprocesses = 3\n")
    assert parse([], {}, path).workers == 3
    assert parse([], {"CONVEYOR_NUMPROCESSES": "2"}, path).workers == 2
    assert parse(["-n", "1"], {"CONVEYOR_NUMPROCESSES": "2"}, path).workers == 1


def test_a_bad_value_from_the_environment_or_the_file_says_where_it_was_set(
    tmp_path: Path,
) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text("[tool.conveyor]\nlease-ttl = 'abc'\n")
    with pytest.raises(
        UsageError, match=r"pyproject.toml \[tool.conveyor\] lease-ttl: --lease-ttl"
    ):
        parse([], {}, path)
    with pytest.raises(UsageError, match=r"^CONVEYOR_NUMPROCESSES: -n expects"):
        parse([], {"CONVEYOR_NUMPROCESSES": "two"}, path.with_name("none.toml"))
    with pytest.raises(UsageError, match=r"^-n expects"):
        parse(["-n", "two"], {}, path.with_name("none.toml"))


def test_every_worker_option_travels_to_the_workers_by_itself(tmp_path: Path) -> None:
    """An option declared on WorkerOptions needs nothing more to reach a worker process: a
    value set on the command line comes out of the settings file the worker reads."""
    from conveyor.option_kinds import declared
    from conveyor.options import WorkerOptions
    from conveyor.worker_settings import WorkerSettings

    argv = ["-n", "2", "--max-requeues", "1", "--retry-on", "OSError", "--retry-on", "KeyError"]
    argv += ["--lease-ttl", "12", "--test-timeout", "7", "--dist", "class", "--seed", "3"]
    argv += ["--order", "random", "--build-ttl", "99", "--worker-setup", "true"]
    argv += ["--max-unit-crashes", "4", "--requeue-tolerance", "0.5", "--start-timeout", "9"]
    options = parse(argv, {}, tmp_path / "none.toml")
    worker_options = list(declared(WorkerOptions))
    changed = [o for o in worker_options if getattr(options, o.field) != o.default]
    assert changed == worker_options  # the command line above sets every one of them
    settings = WorkerSettings.for_build(
        options, queue_url="sqlite:///q.db", build="b1", worker_id="gw0", worker_count=2
    )
    received = WorkerSettings.from_env(settings.to_env())
    assert received == settings
    for option in worker_options:
        assert getattr(received, option.field) == getattr(options, option.field)
    assert received.retry_on == ("OSError", "KeyError") and received.grouping == "class"


def test_every_settable_option_can_come_from_the_environment() -> None:
    from conveyor.options import FLAG, REPEAT, from_environment

    for option in OPTIONS:
        raw = "1" if option.kind == FLAG else "x\ny" if option.kind == REPEAT else "5"
        found = from_environment({option.env: raw})
        assert (option.key in found) == option.settable, option


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        (["-n", "2"], {}, "preload"),
        (["-n", "1"], {}, "spawn"),  # one worker: nothing to share
        (["-n", "2", "--spawn-workers"], {}, "spawn"),
        (["-n", "2"], {"CONVEYOR_SPAWN_WORKERS": "1"}, "spawn"),
        (["-n", "2", "--fork-workers"], {}, "fork"),
        (["-n", "2", "--command", "true {unit}", "--units", "x"], {}, "spawn"),
    ],
)
def test_how_the_workers_start(
    tmp_path: Path, argv: list[str], environ: dict[str, str], expected: str
) -> None:
    if not sys.platform.startswith("linux"):
        expected = "fork" if expected == "fork" else "spawn"
    options = parse(argv, environ, tmp_path / "pyproject.toml")
    assert worker_start(options) == expected


def test_the_nearer_of_two_ways_to_start_wins(tmp_path: Path) -> None:
    """`fork-workers = true` in pyproject.toml is overridden by --spawn-workers on the command
    line (or the environment), as any one option is; both on the command line is an error."""
    project = tmp_path / "pyproject.toml"
    project.write_text("[tool.conveyor]\nfork-workers = true\n")
    options = parse(["-n", "2", "--spawn-workers"], {}, project)
    assert options.spawn_workers and not options.fork_workers
    options = parse(["-n", "2"], {"CONVEYOR_SPAWN_WORKERS": "1"}, project)
    assert options.spawn_workers and not options.fork_workers
    options = parse(["-n", "2", "--fork-workers"], {"CONVEYOR_SPAWN_WORKERS": "1"}, project)
    assert options.fork_workers and not options.spawn_workers
    with pytest.raises(UsageError, match="pick one"):
        parse(["-n", "2", "--fork-workers", "--spawn-workers"], {}, project)


def test_loadgroup_keeps_xdist_groups_whole(tmp_path: Path) -> None:
    for dist in ("loadgroup", "group"):
        assert parse(["-n", "2", "--dist", dist], {}, tmp_path / "none.toml").grouping == "group"


@pytest.mark.parametrize("argv", [["-n", "auto"], ["-n", "logical"], []])
def test_auto_takes_pytest_xdists_limit_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    """A CI configured for pytest-xdist limits `-n auto` with PYTEST_XDIST_AUTO_NUM_WORKERS."""
    monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", "3")
    assert parse(argv, {}, tmp_path / "none.toml").workers == 3
    monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", "many")
    with pytest.raises(UsageError, match="PYTEST_XDIST_AUTO_NUM_WORKERS='many'"):
        parse(argv, {}, tmp_path / "none.toml")
