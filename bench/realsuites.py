"""python -m bench.realsuites: conveyor's verdict against plain pytest's on pinned real projects.

Each project's sdist is downloaded and installed into its own cached venv (outside the
repository), then run by plain pytest, pytest-xdist -n 4 and conveyor in several modes; every
test's outcome is compared with plain pytest's through JUnit XML. See docs/fidelity.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.realsuites_junit import Difference, counts, differences
from bench.realsuites_modes import (
    COMPARED,
    MODES,
    Context,
    ModeRun,
    execute,
    project_env,
    recorded_build,
)
from bench.realsuites_pins import Pin, select
from bench.realsuites_setup import Prepared, cache_root, prepare
from bench.realsuites_verify import Verdict, explain, plain_replayer
from bench.redis_server import redis_server_binary, throwaway_redis
from bench.table import Table

MODE_TITLES = {
    "xdist": "xdist -n4",
    "first": "1st run",
    "history": "2nd run",
    "redis": "redis 2x2",
    "n1": "-n 1",
    "fork": "fork, 1st",
    "loadfile": "loadfile",
}


@dataclass(frozen=True)
class Options:
    projects: list[str] | None
    modes: tuple[str, ...]
    json: Path | None
    markdown: bool
    keep: bool


@dataclass
class Compared:
    """One mode of one project, judged against plain pytest."""

    mode: str
    exit_codes: list[int]
    wall_s: float
    counts: dict[str, int]
    differences: list[Difference]
    logs: list[str]
    summary: str = ""  # pytest's closing counts, as this runner printed them
    machines_agree: bool = True  # redis: both processes gave the same verdict
    verdicts: list[Verdict] = field(default_factory=list)  # whose each failure is


@dataclass
class ProjectResult:
    project: str
    tests: int
    plain_exit: int
    plain_wall_s: float
    plain_counts: dict[str, int]
    plain_summary: str
    baseline: str
    modes: dict[str, Compared]
    error: str = ""


def _mode_list(value: str) -> tuple[str, ...]:
    modes = tuple(mode.strip() for mode in value.split(",") if mode.strip())
    unknown = [mode for mode in modes if mode not in COMPARED]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"choose modes from {','.join(COMPARED)}")
    return modes


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.realsuites",
        description="Compare conveyor's per-test outcomes with plain pytest's on real suites.",
    )
    parser.add_argument("--project", action="append", help="run only this project (repeatable)")
    parser.add_argument(
        "--modes", type=_mode_list, default=COMPARED, help=f"subset of {','.join(COMPARED)}"
    )
    parser.add_argument("--json", type=Path, help="write the raw results to this file")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--keep", action="store_true", help="keep every run's XML and logs")
    parser.add_argument("--list", action="store_true", help="list the pinned projects and exit")
    ns = parser.parse_args(argv)
    if ns.list:
        for pin in select(None):
            print(f"{pin.key:24} {' '.join(pin.args) or '(ini testpaths)':45} {pin.shape}")
        raise SystemExit(0)
    projects = [name for item in ns.project or [] for name in item.split(",") if name]
    return Options(projects or None, ns.modes, ns.json, ns.markdown, ns.keep)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _compare(run: ModeRun, reference: ModeRun) -> Compared:
    """Differences of the first process; a second (redis) must agree with the first."""
    plain_cases = reference.processes[0].cases
    found = differences(plain_cases, run.processes[0].cases)
    ours = run.processes[0]
    agree = all(
        not differences(ours.cases, other.cases)
        and other.exit_code == ours.exit_code
        and other.summary == ours.summary
        for other in run.processes[1:]
    )
    return Compared(
        run.mode,
        [process.exit_code for process in run.processes],
        run.wall_s,
        counts(run.processes[0].cases),
        found,
        [str(process.log) for process in run.processes],
        ours.summary,
        agree,
    )


def run_project(
    pin: Pin, modes: tuple[str, ...], scratch: Path, redis_url: str | None
) -> ProjectResult:
    """Prepare the venv, run plain pytest, then each mode, comparing as it goes."""
    _progress(f"[{pin.key}] preparing")
    project = prepare(pin)
    workdir = scratch / pin.key
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(project, workdir, redis_url)
    reference = execute(MODES["plain"](ctx), project)
    plain_process = reference.processes[0]
    _progress(f"[{pin.key}] plain: {reference.wall_s:.1f}s rc={plain_process.exit_code}")
    result = ProjectResult(
        pin.key,
        sum(len(group) for group in plain_process.cases.values()),
        plain_process.exit_code,
        reference.wall_s,
        counts(plain_process.cases),
        plain_process.summary,
        pin.baseline,
        {},
    )
    for mode in modes:
        compared = _compare(execute(MODES[mode](ctx), project), reference)
        compared.verdicts = _verify(ctx, project, compared)
        result.modes[mode] = compared
        _progress(
            f"[{pin.key}] {mode}: {compared.wall_s:.1f}s rc={compared.exit_codes} "
            f"differ={len(compared.differences)}"
        )
    return result


def _verify(ctx: Context, project: Prepared, compared: Compared) -> list[Verdict]:
    """Tests conveyor failed and plain pytest passed, run again by plain pytest in the order
    their worker ran them: the suite's own order dependence, or conveyor's doing."""
    recorded = recorded_build(ctx, compared.mode)
    if recorded is None or not compared.differences:
        return []
    _progress(f"[{project.pin.key}] {compared.mode}: replaying the failed tests' worker orders")
    url, build = recorded
    try:
        return explain(
            compared.differences,
            url,
            build,
            plain_replayer(project.python, project.source, project.pin.args, project_env(project)),
        )
    except Exception as exc:  # the check must not lose the comparison it explains
        return [
            Verdict(diff.test, None, f"the check broke: {exc}") for diff in compared.differences
        ]


def _identical(result: ProjectResult, compared: Compared | None) -> str:
    if compared is None:
        return "-"
    cell = "yes" if not compared.differences else f"{len(compared.differences)} differ"
    suites_own = sum(1 for verdict in compared.verdicts if verdict.reproduced)
    if suites_own:
        cell += f" ({suites_own} the suite's own)"
    if any(code != result.plain_exit for code in compared.exit_codes):
        cell += f", rc {'/'.join(map(str, compared.exit_codes))}"
    if compared.mode != "xdist" and compared.summary != result.plain_summary:
        cell += ", summary"
    if not compared.machines_agree:
        cell += ", machines disagree"
    return cell


def _ratio(wall: float | None, reference: float | None) -> str:
    if wall is None or not reference:
        return "-"
    return f"{wall / reference:.2f}x"


def results_table(results: list[ProjectResult], modes: tuple[str, ...]) -> Table:
    headers = ["project", "tests", *(MODE_TITLES[mode] for mode in modes)]
    headers += ["plain s", "xdist s", "1st s", "2nd s", "fork s"]
    headers += ["2nd/1st", "vs plain", "vs xdist"]
    table = Table("Per-test outcomes identical to plain pytest's?", headers)
    for result in results:
        if result.error:
            table.rows.append([result.project, "-", *(["-"] * len(modes)), *(["-"] * 8)])
            continue
        cells = [_identical(result, result.modes.get(mode)) for mode in modes]
        xdist_s, first_s, ours_s, fork_s = (
            run.wall_s if (run := result.modes.get(mode)) else None
            for mode in ("xdist", "first", "history", "fork")
        )
        table.rows.append(
            [
                result.project,
                str(result.tests),
                *cells,
                f"{result.plain_wall_s:.1f}",
                *(f"{s:.1f}" if s else "-" for s in (xdist_s, first_s, ours_s, fork_s)),
                _ratio(ours_s, first_s),
                _ratio(ours_s, result.plain_wall_s),
                _ratio(ours_s, xdist_s),
            ]
        )
    table.notes.append(
        "1st s / 2nd s: conveyor -n 4 on SQLite without, then with timing history (the "
        "1st run's); fork s: a first run with --fork-workers; vs = the 2nd run's wall time "
        "divided by plain pytest's / pytest-xdist -n 4's."
    )
    return table


def _crash_line(log: str) -> str:
    """The first line that looks like conveyor or pytest breaking, for a run whose exit code
    differs: those are bugs to fix, not test outcomes."""
    lines = Path(log).read_text(errors="replace").splitlines() if Path(log).is_file() else []
    for line in lines:
        if line.startswith(("INTERNALERROR", "Traceback", "conveyor: error")):
            return line.strip()[:300]
    return next((line.strip()[:300] for line in reversed(lines) if line.strip()), "")


def _run_lines(project: str, result: ProjectResult, compared: Compared) -> list[str]:
    lines = []
    name = f"{project} [{compared.mode}]"
    for code, log in zip(compared.exit_codes, compared.logs, strict=True):
        if code != result.plain_exit:
            lines.append(f"{name} exit code {code} (plain {result.plain_exit}): {_crash_line(log)}")
    if compared.mode != "xdist" and compared.summary != result.plain_summary:
        lines.append(f"{name} summary: plain '{result.plain_summary}', ours '{compared.summary}'")
    if not compared.machines_agree:
        lines.append(f"{name} the two machines' reports differ: {', '.join(compared.logs)}")
    return lines


def difference_lines(results: list[ProjectResult]) -> list[str]:
    """Every difference, named: test id, plain outcome, the other's outcome, first error line;
    then exit codes, summary lines and machines that disagree."""
    lines = []
    for result in results:
        if result.error:
            lines.append(f"{result.project}: not run: {result.error}")
        for compared in result.modes.values():
            verdicts = {verdict.test: verdict for verdict in compared.verdicts}
            for diff in compared.differences:
                lines.append(
                    f"{result.project} [{compared.mode}] {diff.test}: plain={diff.plain} "
                    f"{compared.mode}={diff.other}"
                    + (f" -- {diff.message}" if diff.message else "")
                )
                if diff.test in verdicts:
                    lines.append(
                        f"    plain pytest in the worker's order: {verdicts[diff.test].line()}"
                    )
            lines += _run_lines(result.project, result, compared)
    return lines


def baseline_lines(results: list[ProjectResult]) -> list[str]:
    """Projects whose plain-pytest counts moved away from the pinned ones."""
    return [
        f"{result.project}: plain pytest said '{result.plain_summary}' (rc {result.plain_exit}),"
        f" pinned '{result.baseline or '(none)'}'"
        for result in results
        if not result.error and result.plain_summary != result.baseline
    ]


@contextmanager
def _redis(modes: tuple[str, ...], scratch: Path) -> Iterator[str | None]:
    binary = redis_server_binary()
    if "redis" not in modes:
        yield None
    elif binary is None:
        raise SystemExit("the redis mode needs redis-server on PATH (or leave it out: --modes)")
    else:
        with throwaway_redis(binary, scratch / "redis") as url:
            yield url


def _safe_run(pin: Pin, options: Options, scratch: Path, url: str | None) -> ProjectResult:
    try:
        return run_project(pin, options.modes, scratch, url)
    except Exception as exc:  # one broken install must not lose the other projects' results
        _progress(f"[{pin.key}] failed: {exc}")
        return ProjectResult(pin.key, 0, -1, 0.0, {}, "", pin.baseline, {}, str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(sys.argv[1:] if argv is None else argv)
    pins = select(options.projects)
    started = time.monotonic()
    with ExitStack() as stack:
        root = cache_root() / "runs"
        root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=root))
        url = stack.enter_context(_redis(options.modes, scratch))
        results = [_safe_run(pin, options, scratch, url) for pin in pins]
    table = results_table(results, options.modes)
    print(table.markdown() if options.markdown else table.text())
    report = difference_lines(results)
    print("\nDifferences:\n" + "\n".join(report) if report else "\nNo differences.")
    moved = baseline_lines(results)
    if moved:
        print("\nPlain pytest no longer matches the pinned baseline:\n" + "\n".join(moved))
    clean = not report and not moved and not any(result.error for result in results)
    # The logs and XML of a run that differed are what explains it: kept, --keep or not.
    kept = options.keep or not clean
    if not kept:
        shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.monotonic() - started
    where = f"; runs kept in {scratch}" if kept else ""
    print(f"\n{len(results)} projects in {elapsed / 60:.1f} min{where}")
    if options.json:
        options.json.write_text(json.dumps([asdict(result) for result in results], indent=2))
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
