"""The runs made on each real suite: plain pytest (the reference), pytest-xdist, and conveyor
in several modes. Each run writes JUnit XML and a log into its own folder."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.realsuites_junit import Case, read_cases
from bench.realsuites_setup import Prepared
from bench.runner import run_env

RUN_TIMEOUT_S = 1800.0
TIMED_OUT = -1
WORKERS = 4
PLAIN_ARGS = ("-p", "no:cacheprovider")
# Their queue files stay for `conveyor replay`.
SQLITE_MODES = ("first", "history", "n1", "fork", "loadfile")
SUMMARY = re.compile(r"^=+ (.*?) in [0-9.]+s(?: \(.*\))? =+$")


@dataclass
class Process:
    """One process of a run (the Redis mode has two, one per simulated machine)."""

    argv: list[str]
    junit: Path
    log: Path
    exit_code: int = TIMED_OUT
    cases: dict[str, list[Case]] = field(default_factory=dict)
    cwd: Path | None = None  # the project's own source folder when None
    summary: str = ""  # pytest's closing line without its timing: "12 passed, 1 skipped"


@dataclass
class ModeRun:
    """Everything one mode produced on one project."""

    mode: str
    processes: list[Process]
    wall_s: float = 0.0


@dataclass(frozen=True)
class Context:
    """What a mode needs to build its command lines."""

    project: Prepared
    workdir: Path  # this project's scratch folder for this invocation
    redis_url: str | None


def project_env(project: Prepared) -> dict[str, str]:
    env = run_env()
    env.update(project.pin.env)
    env["VIRTUAL_ENV"] = str(project.bindir.parent)
    env["PATH"] = f"{project.bindir}{os.pathsep}{env.get('PATH', '')}"
    return env


def _start(process: Process, project: Prepared) -> subprocess.Popen[bytes]:
    """A new session per run, so a timeout can stop the run's workers too."""
    with process.log.open("wb") as log:
        return subprocess.Popen(
            process.argv,
            cwd=process.cwd or project.source,
            env=project_env(project),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait(popen: subprocess.Popen[bytes], deadline: float) -> int:
    try:
        return popen.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()
        return TIMED_OUT


def execute(run: ModeRun, project: Prepared) -> ModeRun:
    """Start every process of the mode at once, wait for all; wall time is the slowest's."""
    start = time.monotonic()
    deadline = start + RUN_TIMEOUT_S
    popens = [_start(process, project) for process in run.processes]
    for process, popen in zip(run.processes, popens, strict=True):
        process.exit_code = _wait(popen, deadline)
    run.wall_s = time.monotonic() - start
    for process in run.processes:
        process.cases = read_cases(process.junit)
        process.summary = summary_line(process.log)
    return run


def summary_line(log: Path) -> str:
    """The counts of pytest's last closing line, which JUnit XML cannot show (deselected,
    subtests, warnings); empty when the run printed none."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    found = [match.group(1) for match in map(SUMMARY.match, text.splitlines()) if match]
    return found[-1] if found else ""


def _process(ctx: Context, name: str, command: list[str], extra: list[str]) -> Process:
    junit = ctx.workdir / f"{name}.xml"
    argv = [*command, *extra, *ctx.project.pin.args, f"--junitxml={junit}"]
    return Process(argv, junit, ctx.workdir / f"{name}.log")


def _pytest(ctx: Context) -> list[str]:
    return [str(ctx.project.python), "-m", "pytest"]


def _conveyor(ctx: Context, workers: int) -> list[str]:
    return [str(ctx.project.python), "-m", "conveyor", "run", "-n", str(workers)]


def _cache(ctx: Context, name: str) -> list[str]:
    return ["-o", f"cache_dir={ctx.workdir / name}"]


def plain(ctx: Context) -> ModeRun:
    return ModeRun("plain", [_process(ctx, "plain", _pytest(ctx), [*PLAIN_ARGS])])


def xdist(ctx: Context) -> ModeRun:
    extra = [*PLAIN_ARGS, "-n", str(WORKERS), "--dist", "load"]
    return ModeRun("xdist", [_process(ctx, "xdist", _pytest(ctx), extra)])


def recorded_build(ctx: Context, mode: str) -> tuple[str, str] | None:
    """The queue URL and build id a SQLite mode's run leaves behind, for `conveyor replay`."""
    if mode not in SQLITE_MODES:
        return None
    return f"sqlite:///{ctx.workdir / mode}.db", f"realsuites-{mode}"


def _sqlite(ctx: Context, name: str, cache: str, workers: int, *extra: str) -> Process:
    # a known build id, so that `conveyor replay`/`bisect` can read a kept queue file
    url, build = recorded_build(ctx, name) or ("", "")
    queue = ["--queue", url, "--build", build, *extra]
    return _process(ctx, name, _conveyor(ctx, workers), [*queue, *_cache(ctx, cache)])


def first(ctx: Context) -> ModeRun:
    """No timing history: a cache folder nobody has written yet."""
    return ModeRun("first", [_sqlite(ctx, "first", "cache-first", WORKERS)])


def history(ctx: Context) -> ModeRun:
    """The same cache folder as `first`, so its timing history orders this build."""
    return ModeRun("history", [_sqlite(ctx, "history", "cache-first", WORKERS)])


def single(ctx: Context) -> ModeRun:
    """One worker and no history: the protocol alone, without any parallelism."""
    return ModeRun("n1", [_sqlite(ctx, "n1", "cache-n1", 1)])


def forked(ctx: Context) -> ModeRun:
    """A first run with --fork-workers: collected once, every worker forked from there."""
    return ModeRun("fork", [_sqlite(ctx, "fork", "cache-fork", WORKERS, "--fork-workers")])


def loadfile(ctx: Context) -> ModeRun:
    """A first run with --dist loadfile: every file whole on one worker, as under xdist."""
    extra = ("--dist", "loadfile")
    return ModeRun("loadfile", [_sqlite(ctx, "loadfile", "cache-loadfile", WORKERS, *extra)])


def redis(ctx: Context) -> ModeRun:
    """Two 'machines' of two workers each on one Redis build; each prints the whole build.
    The second runs in a checkout of its own, as a second CI machine does: what a run writes
    beside the tests (pytest-cov's data files, a plugin's output folder) is each machine's."""
    if ctx.redis_url is None:
        raise RuntimeError("the redis mode needs redis-server on PATH")
    build = f"realsuites-{ctx.project.pin.name}-{uuid.uuid4().hex[:8]}"
    processes = []
    for machine in ("a", "b"):
        extra = ["--queue", ctx.redis_url, "--build", build, "--node-id", f"machine-{machine}"]
        extra += ["--history-key", build, *_cache(ctx, f"cache-redis-{machine}")]
        process = _process(ctx, f"redis-{machine}", _conveyor(ctx, 2), extra)
        if machine == "b":
            process.cwd = _own_checkout(ctx, machine)
        processes.append(process)
    return ModeRun("redis", processes)


def _own_checkout(ctx: Context, machine: str) -> Path:
    """A fresh copy of the project's source for one simulated machine (the installed
    package stays the one in the project's own folder, as an editable install points)."""
    copy = ctx.workdir / f"checkout-{machine}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(ctx.project.source, copy, symlinks=True)
    return copy


MODES: dict[str, Callable[[Context], ModeRun]] = {
    "plain": plain,
    "xdist": xdist,
    "first": first,
    "history": history,
    "redis": redis,
    "n1": single,
    "fork": forked,
    "loadfile": loadfile,
}
COMPARED = tuple(mode for mode in MODES if mode != "plain")
