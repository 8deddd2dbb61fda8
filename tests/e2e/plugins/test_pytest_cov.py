"""pytest-cov under conveyor: the same report as plain pytest, on one machine and on two."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import run_conveyor, run_plain

COVERED = {
    "pkg/__init__.py": "",
    "pkg/calc.py": """
        def add(a, b):
            return a + b

        def sub(a, b):
            if a < 0:
                return 0
            return a - b

        def unused():
            return 1
        """,
    "test_calc.py": """
        from pkg.calc import add, sub

        def test_add():
            assert add(1, 2) == 3

        def test_sub():
            assert sub(3, 1) == 2
        """,
    "test_more.py": """
        from pkg.calc import sub

        def test_negative():
            assert sub(-1, 5) == 0
        """,
}


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def coverage_table(output: str) -> list[str]:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Name "))
    end = next(i for i, line in enumerate(lines) if line.startswith("TOTAL"))
    return [line for line in lines[start : end + 1] if not line.startswith("---")]


def test_coverage_reports_what_plain_pytest_reports(
    with_plugins: pytest.Pytester, start: str
) -> None:
    write(with_plugins.path, COVERED)
    args = ["--cov=pkg", "--cov-report=term-missing", "--cov-report=xml:cov.xml"]
    plain = run_plain(with_plugins, *args)
    plain_table = coverage_table(plain.stdout.str())
    (with_plugins.path / ".coverage").unlink()
    (with_plugins.path / "cov.xml").rename(with_plugins.path / "plain-cov.xml")
    ours = run_conveyor(with_plugins, "-n", "2", *args)
    assert ours.ret == plain.ret == 0, ours.stdout.str() + ours.stderr.str()
    assert coverage_table(ours.stdout.str()) == plain_table
    assert (with_plugins.path / ".coverage").exists()  # combined, no per-worker files left
    assert not list(with_plugins.path.glob(".coverage.*"))
    ours_xml = (with_plugins.path / "cov.xml").read_text()
    assert re.search(r'line-rate="([0-9.]+)"', ours_xml).group(1) == re.search(  # type: ignore[union-attr]
        r'line-rate="([0-9.]+)"', (with_plugins.path / "plain-cov.xml").read_text()
    ).group(1)  # type: ignore[union-attr]


def test_coverage_fail_under_fails_the_build_as_in_plain_pytest(
    with_plugins: pytest.Pytester,
) -> None:
    write(with_plugins.path, COVERED)
    plain = run_plain(with_plugins, "--cov=pkg", "--cov-fail-under=95")
    ours = run_conveyor(with_plugins, "-n", "2", "--cov=pkg", "--cov-fail-under=95")
    assert plain.ret == ours.ret == 1, ours.stdout.str()
    ours.stdout.fnmatch_lines(["*FAIL Required test coverage of 95% not reached*"])


@pytest.mark.parametrize("start", ["default", "--fork-workers"])
def test_workers_on_a_shared_queue_combine_only_their_own_coverage_files(
    with_plugins: pytest.Pytester, start: str
) -> None:
    """On a shared queue every worker sends its data (it is told it is not collocated), and
    pytest-cov's worker then combines the data files beside its own: the workers of one
    machine combined each other's files while they were being written, and one worker's data
    was lost (arrow's suite failed --cov-fail-under=99 at 89 %). Each worker's files now have
    a name of its own, and the report is plain pytest's."""
    write(with_plugins.path, COVERED)
    seen = with_plugins.path / "seen"
    (with_plugins.path / "test_where.py").write_text(
        "import os\n\n"
        "def test_where():\n"
        f"    with open({str(seen)!r}, 'a') as out:\n"
        "        out.write(os.environ.get('PYTEST_XDIST_WORKER', 'plain') + ' '\n"
        "                  + os.environ.get('COVERAGE_FILE', '') + '\\n')\n"
    )
    args = ["--cov=pkg", "--cov-report=term-missing", "--cov-fail-under=80"]
    plain = run_plain(with_plugins, *args)
    (with_plugins.path / ".coverage").unlink()
    seen.unlink()
    queue = ("--queue", f"sqlite://{with_plugins.path / 'q.db'}", "--build", "C1")
    extra = [] if start == "default" else [start]
    ours = run_conveyor(with_plugins, "-n", "3", *queue, *extra, *args)
    assert ours.ret == plain.ret == 0, ours.stdout.str() + ours.stderr.str()
    assert coverage_table(ours.stdout.str()) == coverage_table(plain.stdout.str())
    worker, data_file = seen.read_text().split()
    assert data_file.startswith(f"{with_plugins.path / '.coverage'}.{worker}-")
    assert not list(with_plugins.path.glob(".coverage.*"))  # the controller gathered them


def test_machines_sharing_a_checkout_name_their_workers_coverage_files_apart(
    with_plugins: pytest.Pytester,
) -> None:
    """Two machines of one build in one directory each have a `gw0`, and their workers' data
    files were named alike, so each pytest-cov worker could combine the other's. Each worker
    process now names its own. (The machines' controllers still share pytest-cov's own files
    there, as two pytest-xdist runs in one directory do (the README says what to do), so only
    the workers' names are asserted.)"""
    write(with_plugins.path, COVERED)
    seen = with_plugins.path / "seen"
    with_plugins.makeconftest(
        "import os\n\n"
        "def pytest_sessionstart(session):\n"
        "    if os.environ.get('PYTEST_XDIST_WORKER'):\n"
        f"        with open({str(seen)!r}, 'a') as out:\n"
        "            out.write(os.environ.get('COVERAGE_FILE', '') + '\\n')\n"
    )
    queue = ("--queue", f"sqlite://{with_plugins.path / 'q.db'}", "--build", "C2")
    command = [sys.executable, "-m", "conveyor", "run", "-n", "1", *queue, "--cov=pkg"]
    env = {**os.environ, "PYTEST_ADDOPTS": "-p no:randomly"}
    machines = [
        subprocess.Popen(command, cwd=with_plugins.path, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [machine.communicate(timeout=300)[0] for machine in machines]
    names = seen.read_text().split()
    assert len(names) == 2 and len(set(names)) == 2, (names, outputs)
    assert all(name.startswith(f"{with_plugins.path / '.coverage'}.gw0-") for name in names)


@pytest.mark.redis
def test_coverage_on_two_machines_is_the_whole_builds_on_each(
    with_plugins: pytest.Pytester, redis_server: object
) -> None:
    import subprocess
    import uuid

    machines = [with_plugins.mkdir("machine-a"), with_plugins.mkdir("machine-b")]
    for machine in machines:
        write(machine, COVERED)
    plain = run_plain(with_plugins, "--cov=pkg", str(machines[0]))
    build = f"cov-{uuid.uuid4().hex[:8]}"
    url = str(redis_server.url)  # type: ignore[attr-defined]
    env = {**os.environ, "PYTEST_ADDOPTS": ""}
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "conveyor",
                "run",
                "-n",
                "1",
                "--queue",
                url,
                "--build",
                build,
                "-p",
                "no:cacheprovider",
                "--cov=pkg",
            ],
            cwd=machine,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for machine in machines
    ]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    expected = [
        line.replace("machine-a/", "")
        for line in coverage_table(plain.stdout.str())
        if "pkg" in line
    ]
    expected = [re.sub(r"\s+", " ", line) for line in expected]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output
        found = [re.sub(r"\s+", " ", line) for line in coverage_table(output) if "pkg" in line]
        assert found == expected, output


def test_a_finished_build_run_again_with_cov_says_why_it_cannot_be_checked(
    pytester: pytest.Pytester,
) -> None:
    """Run again with --cov, a build started without it: the check of the checkout ended in
    pytest-cov's crash (the build's controller published no coverage input), reported as a
    collection that differs, followed by 30 lines of INTERNALERROR."""
    pytester.makepyfile(test_a="def test_a():\n    pass\n")
    run = ("run", "-n", "1", "--queue", f"sqlite://{pytester.path / 'q.db'}", "--build", "C1")
    first = pytester.run(sys.executable, "-m", "conveyor", *run, timeout=120)
    assert first.ret == 0, first.stdout.str()
    again = pytester.run(sys.executable, "-m", "conveyor", *run, "--cov=.", timeout=120)
    assert again.ret == 3, again.stdout.str()
    output = again.stdout.str() + again.stderr.str()
    assert "failed before it could compare the tests" in output, output
    assert "does not collect the same tests" not in output, output
    assert "'cov_master_host': a plugin asked this worker for it" in output, output
    assert output.count("INTERNALERROR") <= 2, output
