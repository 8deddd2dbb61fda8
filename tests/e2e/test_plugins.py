"""The plugins people already use, under conveyor beside plain pytest: each with the real
plugin installed (the test extras), on a small suite of its own."""

from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import assert_same_verdict, junit_outcomes, run_conveyor, run_plain, summary_line

RANDOM_VALUES = """
import random

def test_a():
    print("VALUE a", random.random())

def test_b():
    print("VALUE b", random.random())

def test_c():
    print("VALUE c", random.random())
"""


@pytest.fixture
def with_plugins(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """Every installed plugin active, as in a project that installs them."""
    monkeypatch.setenv("PYTEST_ADDOPTS", "")
    return pytester


def values(text: str) -> dict[str, str]:
    return dict(re.findall(r"VALUE (\w) ([0-9.]+)", text))


def worker_logs(path: Path) -> str:
    return "".join(log.read_text() for log in sorted(path.glob("*.log")))


def test_randomly_merely_installed_uses_one_seed_and_plain_values(
    with_plugins: pytest.Pytester,
) -> None:
    with_plugins.makepyfile(test_values=RANDOM_VALUES)
    plain = run_plain(with_plugins, "-s", "-p", "randomly", "--randomly-seed=4321")
    ours = run_conveyor(
        with_plugins, "-n", "2", "-s", "--randomly-seed=4321", "--worker-logs", "logs"
    )
    assert ours.ret == plain.ret == 0, ours.stdout.str() + ours.stderr.str()
    expected = values(plain.stdout.str())
    assert len(expected) == 3
    assert values(worker_logs(with_plugins.path / "logs")) == expected


def test_randomly_without_a_seed_still_gives_every_worker_the_same_one(
    with_plugins: pytest.Pytester,
) -> None:
    with_plugins.makepyfile(test_values=RANDOM_VALUES)
    ours = run_conveyor(with_plugins, "-n", "3", "-s", "--worker-logs", "logs", "-v")
    assert ours.ret == 0, ours.stdout.str() + ours.stderr.str()
    seed = re.search(r"Using --randomly-seed=(\d+)", ours.stdout.str())
    assert seed is not None
    plain = run_plain(with_plugins, "-s", f"--randomly-seed={seed.group(1)}")
    assert values(worker_logs(with_plugins.path / "logs")) == values(plain.stdout.str())


def test_randomly_can_be_turned_off(with_plugins: pytest.Pytester) -> None:
    with_plugins.makepyfile(test_values=RANDOM_VALUES)
    ours = run_conveyor(with_plugins, "-n", "2", "-p", "no:randomly")
    assert ours.ret == 0 and "randomly-seed" not in ours.stdout.str()


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


def test_coverage_reports_what_plain_pytest_reports(with_plugins: pytest.Pytester) -> None:
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


def test_rerunfailures_reruns_show_as_in_plain_pytest(with_plugins: pytest.Pytester) -> None:
    marker = with_plugins.path / "failed-once"
    with_plugins.makepyfile(
        test_flaky=f"""
        import pathlib

        def test_flaky():
            marker = pathlib.Path({str(marker)!r})
            if not marker.exists():
                marker.write_text("x")
                assert False, "first attempt"

        def test_fine():
            pass
        """
    )
    plain = run_plain(with_plugins, "--reruns", "2", "--junitxml=plain.xml", "-p", "no:randomly")
    marker.unlink()
    ours = run_conveyor(
        with_plugins, "-n", "2", "--reruns", "2", "--junitxml=ours.xml", "-p", "no:randomly"
    )
    assert ours.ret == plain.ret == 0
    assert summary_line(ours) == summary_line(plain) == "2 passed, 1 rerun"
    assert junit_outcomes(with_plugins.path / "ours.xml") == junit_outcomes(
        with_plugins.path / "plain.xml"
    )


def test_xdist_options_in_addopts_are_conveyors(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\naddopts = -n auto --dist loadfile\n")
    pytester.makepyfile(
        test_w="""
        def test_worker(worker_id):
            assert worker_id.startswith("gw")

        def test_other():
            pass
        """
    )
    ours = run_conveyor(pytester, "-n", "2")
    assert ours.ret == 0, ours.stdout.str() + ours.stderr.str()
    assert "bringing up nodes" not in ours.stdout.str()  # xdist started no session
    ours.stdout.fnmatch_lines(["*2 passed*"])


def test_syrupy_reports_and_fails_unused_snapshots_as_plain(
    with_plugins: pytest.Pytester,
) -> None:
    with_plugins.makepyfile(
        test_snap="""
        def test_one(snapshot):
            assert {"a": 1} == snapshot

        def test_two(snapshot):
            assert [1, 2] == snapshot
        """
    )
    assert run_plain(with_plugins, "--snapshot-update", "-p", "no:randomly").ret == 0
    source = with_plugins.path / "test_snap.py"
    source.write_text(source.read_text().replace("def test_two", "def _test_two"))
    plain, ours = assert_same_verdict(with_plugins, "-p", "no:randomly", workers=2)
    assert plain.ret == ours.ret == 1
    ours.stdout.fnmatch_lines(["*1 snapshot passed. 1 snapshot unused.*"])
    updated = run_conveyor(with_plugins, "-n", "2", "--snapshot-update", "-p", "no:randomly")
    assert updated.ret == 0, updated.stdout.str()
    updated.stdout.fnmatch_lines(["*Deleted test_two*"])
    assert "test_two" not in next((with_plugins.path / "__snapshots__").iterdir()).read_text()


def test_benchmarks_are_named_as_off_and_benchmark_only_is_refused(
    with_plugins: pytest.Pytester,
) -> None:
    with_plugins.makepyfile(
        test_b="""
        def test_bench(benchmark):
            benchmark(sum, range(10))
        """
    )
    ours = run_conveyor(with_plugins, "-n", "2", "-p", "no:randomly")
    assert ours.ret == 0
    ours.stdout.fnmatch_lines(["conveyor: benchmarks are disabled in a distributed run*"])
    refused = run_conveyor(with_plugins, "-n", "2", "--benchmark-only", "-p", "no:randomly")
    assert refused.ret == 4
    assert "conveyor run -n 0 --benchmark-only" in refused.stderr.str() + refused.stdout.str()


def test_pytest_timeout_thread_method_times_out_once_with_its_dump(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_t="""
        import time

        def test_slow():
            time.sleep(30)

        def test_ok():
            pass
        """
    )
    ours = run_conveyor(pytester, "-n", "2", "--timeout=1", "--timeout-method=thread")
    assert ours.ret == 1
    text = ours.stdout.str()
    assert "ran longer than pytest-timeout's --timeout" in text
    assert "in test_slow" in text and "Timeout +" in text
    assert "took down" not in text  # timed out once, not retried as a crash


def test_worker_id_fixtures_raise_no_deprecation_warning(pytester: pytest.Pytester) -> None:
    """conveyor's own `worker_id`/`testrun_uid` (used when xdist is absent) in plain runs and
    under conveyor, with warnings as errors."""
    pytester.makepyfile(
        test_ids="""
        def test_ids(worker_id, testrun_uid):
            assert worker_id
        """
    )
    plain = run_plain(pytester, "-W", "error", "-p", "no:xdist")
    assert plain.ret == 0, plain.stdout.str()
    ours = run_conveyor(pytester, "-n", "2", "-W", "error", "-p", "no:xdist")
    assert ours.ret == 0, ours.stdout.str() + ours.stderr.str()


def test_pytest_n_without_xdist_runs_on_conveyor(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As without pytest-xdist installed (the suite's environment has it).
    monkeypatch.setenv(
        "PYTEST_ADDOPTS", "-p no:xdist -p no:xdist.looponfail -p no:randomly -p no:benchmark"
    )
    pytester.makepyfile(
        test_n="""
        import os

        def test_in_a_worker(worker_id):
            assert os.environ["CONVEYOR_WORKER"].startswith("gw")
            assert worker_id.startswith("gw")

        def test_fails():
            assert 0
        """
    )
    result = run_plain(pytester, "-n", "2", "--dist", "loadfile", "--junitxml=out.xml")
    assert result.ret == 1, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["conveyor: 2 workers*", "*1 failed, 1 passed*"])
    assert junit_outcomes(pytester.path / "out.xml") == {
        ("test_n", "test_in_a_worker"): [("passed",)],
        ("test_n", "test_fails"): [("failure",)],
    }
    in_process = run_plain(pytester, "-n", "0")
    assert in_process.ret == 1 and "conveyor:" not in in_process.stdout.str()
