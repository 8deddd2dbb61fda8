"""The build record: events export, replay of a worker's order, and bisect."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def conveyor(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.run(sys.executable, "-m", "conveyor", *args, timeout=300)


@pytest.fixture
def polluted_suite(pytester: pytest.Pytester) -> pytest.Pytester:
    """200 candidate tests, one of which changes a module-level global; a later test fails
    only when it runs after that one in the same process."""
    pytester.makepyfile(shared_state="SETTINGS = {'mode': 'strict'}")
    candidates = ["import shared_state\n"]
    for i in range(200):
        if i == 137:
            candidates.append(f"def test_c{i}():\n    shared_state.SETTINGS['mode'] = 'lenient'\n")
        else:
            candidates.append(f"def test_c{i}():\n    assert shared_state.SETTINGS\n")
    pytester.makepyfile(
        test_a_candidates="\n".join(candidates),
        test_z_victim="import shared_state\n\n"
        "def test_victim():\n    assert shared_state.SETTINGS['mode'] == 'strict'\n",
    )
    return pytester


def test_events_export_has_reruns_crashes_and_timeouts_in_order(pytester: pytest.Pytester) -> None:
    state = pytester.path / "state"
    pytester.makepyfile(
        test_mix=f"""
        import ctypes, os, pathlib, time

        def test_flaky():
            marker = pathlib.Path({str(state)!r})
            if not marker.exists():
                marker.write_text("once")
                assert False, "first attempt"

        def test_crash():
            ctypes.string_at(0)

        def test_hang():
            time.sleep(3600)

        def test_ok():
            pass
        """
    )
    queue = f"sqlite://{pytester.path / 'queue.db'}"
    run = conveyor(
        pytester, "run", "-n", "2", "--queue", queue, "--build", "b1",
        "--max-requeues", "1", "--test-timeout", "2", "-p", "no:cacheprovider",
    )  # fmt: skip
    assert run.ret == 1
    exported = conveyor(pytester, "events", "--queue", queue, "--build", "b1", "--json")
    assert exported.ret == 0
    records = [json.loads(line) for line in exported.stdout.lines if line.strip()]
    assert [r["seq"] for r in records] == sorted(r["seq"] for r in records)
    kinds = [(r["kind"], r["unit"]) for r in records]
    assert ("requeued", "test_mix.py::test_flaky") in kinds
    assert kinds.index(("requeued", "test_mix.py::test_flaky")) < kinds.index(
        ("result", "test_mix.py::test_flaky")
    )
    crashes = [r for r in records if r["kind"] == "unit_crashed"]
    by_unit = {r["unit"]: r["data"]["cause"] for r in crashes}
    assert by_unit["test_mix.py::test_hang"]["timeout"] is True
    assert "SIGSEGV" in by_unit["test_mix.py::test_crash"]["reason"]
    assert all(r["worker"] for r in records if r["kind"] in ("result", "requeued", "worker_lost"))
    assert {"worker_joined", "worker_lost", "worker_left", "leased", "populated", "finished"} <= {
        r["kind"] for r in records
    }
    leased = [r for r in records if r["kind"] == "leased"]
    assert all(r["worker"] and r["data"]["units"] for r in leased)


def test_junit_carries_the_worker_and_attempt_of_each_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_p="def test_one(): pass\ndef test_two(): pass")
    result = conveyor(pytester, "run", "-n", "2", "--junitxml=out.xml", "-p", "no:cacheprovider")
    assert result.ret == 0
    xml = (pytester.path / "out.xml").read_text()
    assert xml.count('name="conveyor_worker" value="gw') == 2
    assert xml.count('name="conveyor_attempt" value="1"') == 2


def test_replay_reproduces_an_order_dependent_failure(polluted_suite: pytest.Pytester) -> None:
    queue = f"sqlite://{polluted_suite.path / 'queue.db'}"
    build = ["--queue", queue, "--build", "polluted"]
    run = conveyor(polluted_suite, "run", "-n", "1", *build, "-p", "no:cacheprovider")
    assert run.ret == 1
    run.stdout.fnmatch_lines(["FAILED test_z_victim.py::test_victim*"])
    assert polluted_suite.runpytest_subprocess("test_z_victim.py").ret == 0
    replayed = conveyor(polluted_suite, "replay", *build, "--worker", "gw0", "-q")
    assert replayed.ret == 1
    replayed.stdout.fnmatch_lines(
        ["FAILED test_z_victim.py::test_victim*", "*1 failed, 200 passed*"]
    )


def test_replay_reports_tests_that_no_longer_exist(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_still="def test_here(): pass")
    order = pytester.path / "order.txt"
    order.write_text("test_still.py::test_here\ntest_gone.py::test_vanished\n")
    result = conveyor(pytester, "replay", "--from-file", str(order))
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        ["*1 test(s) of the recorded order no longer exist:*", "  test_gone.py::test_vanished"]
    )


def test_replay_of_ids_from_another_rootdir_says_where_they_are_relative_to(
    pytester: pytest.Pytester,
) -> None:
    """A build run with `tests/` whose pytest.ini lies there has ids relative to `tests/`;
    replayed without that path, pytest's rootdir is the folder above and no id matched, which
    read as if every test was gone."""
    tests = pytester.mkdir("tests")
    (tests / "pytest.ini").write_text("[pytest]\n")
    (tests / "test_here.py").write_text("def test_here(): pass\n")
    order = pytester.path / "order.txt"
    order.write_text("test_here.py::test_here\n")
    result = conveyor(pytester, "replay", "--from-file", str(order))
    result.stdout.fnmatch_lines(
        [
            "*1 test(s) of the recorded order no longer exist:*",
            f"None of them was collected here, where pytest's rootdir is {pytester.path}: *",
        ]
    )
    with_the_builds_path = conveyor(pytester, "replay", "--from-file", str(order), "tests")
    assert with_the_builds_path.ret == 0
    with_the_builds_path.stdout.fnmatch_lines(["*1 passed*"])


def test_bisect_from_another_folder_than_the_builds_rootdir(
    polluted_suite: pytest.Pytester,
) -> None:
    """A build run with `tests/` whose pytest.ini lies there has ids relative to `tests/`.
    Bisected from the project's folder without the path, no step collected the ids (every
    run "did not run"), and the reproduce line failed from there. The build records its
    rootdir; each step collects from it, and the reproduce line goes there."""
    root = polluted_suite.path
    tests = root / "tests"
    tests.mkdir()
    for name in ("shared_state.py", "test_a_candidates.py", "test_z_victim.py"):
        (root / name).rename(tests / name)
    (tests / "pytest.ini").write_text("[pytest]\n")
    build = ["--queue", f"sqlite://{root / 'queue.db'}", "--build", "polluted"]
    run = conveyor(polluted_suite, "run", "-n", "1", *build, "-p", "no:cacheprovider", "tests")
    assert run.ret == 1, run.stdout.str()
    result = conveyor(
        polluted_suite, "bisect", *build, "--failing", "test_z_victim.py::test_victim"
    )
    assert result.ret == 0, result.stdout.str()
    pair = "test_a_candidates.py::test_c137 test_z_victim.py::test_victim"
    reproduce = f"cd {tests} && pytest -p no:randomly {pair}"
    result.stdout.fnmatch_lines([f"reproduce with: {reproduce}"])
    again = subprocess.run(
        reproduce.replace(" && pytest ", f" && {sys.executable} -m pytest -p no:cacheprovider ", 1),
        shell=True, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert "1 failed, 1 passed" in again.stdout, again.stdout
    replayed = conveyor(polluted_suite, "replay", *build, "--worker", "gw0", "-q")
    replayed.stdout.fnmatch_lines(["*1 failed, 200 passed*"])


def test_bisect_names_the_polluting_test_in_at_most_ten_runs(
    polluted_suite: pytest.Pytester,
) -> None:
    queue = f"sqlite://{polluted_suite.path / 'queue.db'}"
    build = ["--queue", queue, "--build", "polluted"]
    assert conveyor(polluted_suite, "run", "-n", "1", *build, "-p", "no:cacheprovider").ret == 1
    result = conveyor(
        polluted_suite, "bisect", *build, "--failing", "test_z_victim.py::test_victim"
    )
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "conveyor bisect: 200 test(s) ran before test_z_victim.py::test_victim on that worker.",
            "conveyor bisect: test_a_candidates.py::test_c137 makes "
            "test_z_victim.py::test_victim fail (* runs).",
            "reproduce with: pytest -p no:randomly test_a_candidates.py::test_c137 "
            "test_z_victim.py::test_victim",
        ]
    )
    runs = int(result.stdout.str().split(" fail (")[1].split(" runs")[0])
    assert runs <= 10


def test_bisect_says_when_the_test_fails_on_its_own(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_b="def test_before(): pass\ndef test_broken(): assert False")
    order = pytester.path / "order.txt"
    order.write_text("test_b.py::test_before\ntest_b.py::test_broken\n")
    result = conveyor(
        pytester, "bisect", "--from-file", str(order), "--failing", "test_b.py::test_broken"
    )
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*fails on its own; the order is not the cause.*"])


def test_github_step_summary_lists_counts_failures_with_links_and_slowest(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = pytester.path / "summary.md"
    summary.write_text("# earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/widgets")
    monkeypatch.setenv("GITHUB_SHA", "abc123")
    pytester.makepyfile(
        test_gh="import time\n\ndef test_ok():\n    time.sleep(0.05)\n\n"
        "def test_broken():\n    assert 1 == 2, 'numbers differ'\n"
    )
    result = conveyor(pytester, "run", "-n", "2", "-p", "no:cacheprovider")
    assert result.ret == 1
    text = summary.read_text()
    assert text.startswith("# earlier step\n")
    assert "| failed | 1 |" in text and "| passed | 1 |" in text
    assert (
        "[`test_gh.py::test_broken`](https://github.com/acme/widgets/blob/abc123/test_gh.py#L6)"
        in text
    )
    assert "numbers differ" in text
    assert "### Slowest tests" in text and "`test_gh.py::test_ok`" in text
    assert "| wall time |" in text and "| lower bound |" in text


def test_worker_logs_keep_uncaptured_output_and_crashes_point_to_them(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_logs="""
        import os

        def test_talks():
            print("hello from the test")

        def test_dies():
            print("last words", flush=True)
            os._exit(9)
        """
    )
    logs = pytester.path / "logs"
    result = conveyor(
        pytester, "run", "-n", "2", "-s", "--worker-logs", str(logs),
        "--max-unit-crashes", "1", "-p", "no:cacheprovider",
    )  # fmt: skip
    assert result.ret == 1
    written = "".join(path.read_text() for path in logs.glob("gw*.log"))
    assert "hello from the test" in written and "last words" in written
    result.stdout.fnmatch_lines(
        [f"*exited with code 9 while running test_logs.py::test_dies*Its log: {logs}/gw*.log"]
    )


def test_timeline_from_run_and_from_the_recorded_build(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_t="import time\n\ndef test_a():\n    time.sleep(0.1)\n\ndef test_b(): pass"
    )
    queue = f"sqlite://{pytester.path / 'queue.db'}"
    page = pytester.path / "run.html"
    run = conveyor(
        pytester, "run", "-n", "2", "--queue", queue, "--build", "tl", "--timeline", str(page),
        "-p", "no:cacheprovider",
    )  # fmt: skip
    assert run.ret == 0
    run.stdout.fnmatch_lines([f"conveyor: timeline written to {page} (wall * s, lower bound * s)"])
    later = pytester.path / "later.html"
    made = conveyor(pytester, "timeline", "--queue", queue, "--build", "tl", "-o", str(later))
    assert made.ret == 0
    made.stdout.fnmatch_lines(["conveyor: timeline of build tl written to *: wall *, 2 workers"])
    for html in (page, later):
        text = html.read_text()
        assert "test_t.py::test_a" in text and "<canvas" in text
        assert "https://" not in text.split("<body", 1)[0] or "Content-Security-Policy" in text


def test_a_reader_that_stops_early_is_no_error(tmp_path: Path) -> None:
    """`conveyor events --json | head -1`: the pipe closes early; nothing is said about it."""
    from conveyor.queue import open_queue

    url = f"sqlite://{tmp_path / 'q.db'}"
    queue = open_queue(url, "b1")
    queue.populate("w1", [f"t.py::test_{i}" for i in range(3000)], {})
    for index in range(3000):
        queue.publish("note", "w1", {"index": index})
    queue.close()
    reader = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "events", "--queue", url, "--build", "b1", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert reader.stdout is not None and reader.stderr is not None
    reader.stdout.readline()
    reader.stdout.close()
    error = reader.stderr.read().decode()
    reader.stderr.close()
    assert reader.wait(timeout=60) == 0, error
    assert "Broken pipe" not in error


def test_bisect_finds_two_earlier_tests_that_make_a_test_fail_only_together(
    pytester: pytest.Pytester,
) -> None:
    """A failure that needs two earlier tests (each sets half of what breaks the victim):
    halving ends on one test that does not reproduce it, and bisect said only
    "inconclusive", though one of its runs had failed with a handful of tests. It now
    narrows the tests seen to make it fail, and prints them with a command that reproduces
    the failure."""
    pytester.makepyfile(shared_state="FLAGS = set()")
    candidates = ["import shared_state\n"]
    for i in range(24):
        body = f"    shared_state.FLAGS.add({i})\n" if i in (5, 17) else "    pass\n"
        candidates.append(f"def test_c{i:02d}():\n{body}")
    pytester.makepyfile(
        test_a_candidates="\n".join(candidates),
        test_z_victim="import shared_state\n\n"
        "def test_victim():\n    assert not {5, 17} <= shared_state.FLAGS\n",
    )
    build = ["--queue", f"sqlite://{pytester.path / 'queue.db'}", "--build", "together"]
    assert conveyor(pytester, "run", "-n", "1", *build, "-p", "no:cacheprovider").ret == 1
    result = conveyor(pytester, "bisect", *build, "--failing", "test_z_victim.py::test_victim")
    assert result.ret == 0, result.stdout.str()
    pair = "test_a_candidates.py::test_c05 test_a_candidates.py::test_c17"
    result.stdout.fnmatch_lines(
        [
            "conveyor bisect: these 2 tests, run in this order before it, make "
            "test_z_victim.py::test_victim fail (* runs):",
            "  test_a_candidates.py::test_c05",
            "  test_a_candidates.py::test_c17",
            f"reproduce with: pytest -p no:randomly {pair} test_z_victim.py::test_victim",
        ]
    )
    again = pytester.runpytest_subprocess(
        "-p", "no:randomly", *pair.split(), "test_z_victim.py::test_victim"
    )
    again.assert_outcomes(passed=2, failed=1)
