"""Workers and the controller end without the interpreter's last garbage collections
(`conveyor.process_exit`): what a test leaves for the end of the process must still happen,
as it does in a plain run: atexit handlers run, a file a module keeps open is flushed, and
garbage in a reference cycle is finalized."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from helpers import run_conveyor, run_plain

LEFT_FOR_THE_END = """
import atexit, os

OPEN_FILES = {{}}  # reachable from the module until the process ends


class Cycle:
    def __init__(self, path):
        self.me = self
        self.path = path

    def __del__(self):
        with open(self.path, "w") as handle:
            handle.write("finalized\\n")


def _at_exit(path):
    with open(path, "a") as log:
        log.write("ran\\n")


def test_leaves_work_for_the_end():
    who = os.environ.get("PYTEST_XDIST_WORKER", "plain")
    OPEN_FILES["kept"] = open({module_file!r} + "." + who, "w")
    OPEN_FILES["kept"].write("module file written\\n")
    atexit.register(_at_exit, {atexit_log!r} + "." + who)
    cycle = Cycle({cycle_file!r} + "." + who)
    del cycle  # garbage, in a reference cycle: only a collection finalizes it


def test_other():
    pass
"""


@pytest.mark.parametrize("start", ["spawned", "forked"])
def test_what_a_test_leaves_for_the_end_still_happens(
    pytester: pytest.Pytester, tmp_path: Path, start: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    names = {"module_file": "module", "atexit_log": "atexit", "cycle_file": "cycle"}
    pytester.makepyfile(
        test_end=LEFT_FOR_THE_END.format(**{key: str(out / name) for key, name in names.items()})
    )
    plain = run_plain(pytester, "-W", "ignore::ResourceWarning")
    assert plain.ret == 0
    fork = ["--fork-workers"] if start == "forked" else []
    ours = run_conveyor(pytester, "-n", "2", "-W", "ignore::ResourceWarning", *fork)
    assert ours.ret == 0, ours.stdout.str() + ours.stderr.str()
    ours.assert_outcomes(passed=2)

    written = {path.name: path.read_text() for path in out.iterdir()}
    expected = {"module": "module file written\n", "atexit": "ran\n", "cycle": "finalized\n"}
    for name, text in expected.items():
        assert written.get(f"{name}.plain") == text, written  # as a plain run leaves it
    # The worker that ran the test leaves the same.
    ran = [who for who in ("gw0", "gw1") if f"atexit.{who}" in written]
    assert len(ran) == 1, written
    for name, text in expected.items():
        assert written.get(f"{name}.{ran[0]}") == text, written


GARBAGE_THAT_RAISES = """
import gc


class Cycle:
    def __init__(self):
        self.me = self

    def __del__(self):
        raise RuntimeError("raised by a finalizer at the session's end")


def test_leaves_garbage_that_raises():
    gc.disable()  # nothing collects it before pytest does, as its session ends
    Cycle()


def test_other():
    pass
"""

# Who ends first decides which part of conveyor sees the worker's failed end: the supervisor's
# watch, during the build (the controller's summary waits), or its shutdown, after the report
# (the workers' end waits).
WHO_WAITS = {
    "the summary waits": """
import os, time

def pytest_terminal_summary():
    if "PYTEST_XDIST_WORKER" not in os.environ:
        time.sleep(2)
""",
    "the workers' end waits": """
import os, time

def pytest_unconfigure():
    if "PYTEST_XDIST_WORKER" in os.environ:
        time.sleep(1)
""",
}
UNRAISABLE_IS_AN_ERROR = ("-W", "error::pytest.PytestUnraisableExceptionWarning")


@pytest.mark.parametrize("who_waits", sorted(WHO_WAITS))
@pytest.mark.parametrize("start", ["default", "--fork-workers"])
def test_a_worker_session_that_fails_as_it_ends_fails_the_build(
    pytester: pytest.Pytester, who_waits: str, start: str
) -> None:
    """Under `-W error`, an exception that a finalizer raises as pytest's session ends is an
    error of the session: plain pytest prints it after its summary and exits 1. A worker's
    session that failed that way, after its tests had all run and been stored, ended the
    build green (exit 0)."""
    pytester.makepyfile(test_end=GARBAGE_THAT_RAISES)
    pytester.makeconftest(WHO_WAITS[who_waits])
    plain = run_plain(pytester, *UNRAISABLE_IS_AN_ERROR)
    assert plain.ret == 1
    assert "PytestUnraisableExceptionWarning" in plain.stderr.str()
    fork = ["--fork-workers"] if start == "--fork-workers" else []
    ours = run_conveyor(pytester, "-n", "2", *UNRAISABLE_IS_AN_ERROR, *fork)
    output = ours.stdout.str() + ours.stderr.str()
    assert ours.ret == 1, output
    ours.assert_outcomes(passed=2)
    assert "pytest session failed as it ended, after its tests had run" in ours.stderr.str()
    assert "raised by a finalizer at the session's end" in ours.stderr.str(), output
    assert "the build fails for it: exit 1." in ours.stderr.str()
    assert "outside any test" not in output  # said once, after the report, not as a crash


@pytest.mark.parametrize("capture", ["default", "-s"])
def test_what_a_worker_writes_as_its_session_ends_is_shown_after_the_report(
    pytester: pytest.Pytester, capture: str
) -> None:
    """Without -W error, the exception a finalizer raises as pytest's session ends is a
    warning plain pytest prints after its summary (it often points at a leaked resource). A
    worker wrote it to its log, and the build showed nothing. It is shown once the workers
    have ended, once under -s too (whose relay of the workers' output stops at the mark)."""
    pytester.makepyfile(test_end=GARBAGE_THAT_RAISES)
    options = ["-s"] if capture == "-s" else []
    plain = run_plain(pytester, *options)
    assert plain.ret == 0
    assert "raised by a finalizer at the session's end" in plain.stderr.str()
    ours = run_conveyor(pytester, "-n", "2", *options)
    output = ours.stdout.str() + ours.stderr.str()
    assert ours.ret == 0, output
    assert "failed as it ended" not in output
    stderr = ours.stderr.str()
    assert re.search(r"conveyor: worker gw\d wrote this as its pytest session ended:", stderr)
    assert stderr.count("PytestUnraisableExceptionWarning: Exception ignored in") == 1, output
    assert "raised by a finalizer at the session's end" in stderr
    assert "this worker's pytest session is ending" not in output  # the mark itself


def test_the_same_last_words_from_every_worker_are_shown_once(pytester: pytest.Pytester) -> None:
    """A conftest that writes as pytest unconfigures writes once in a plain run, and in
    every conveyor process: the controller's own and one line for all the workers."""
    pytester.makeconftest(
        """
        import sys

        def pytest_unconfigure():
            sys.stderr.write("the suite's last words\\n")
        """
    )
    pytester.makepyfile(test_two="def test_a(): pass\ndef test_b(): pass")
    assert run_plain(pytester).stderr.str().count("the suite's last words") == 1
    ours = run_conveyor(pytester, "-n", "2", "-p", "no:randomly")
    assert ours.ret == 0
    stderr = ours.stderr.str()
    assert "conveyor: workers gw0, gw1 wrote this as its pytest session ended:" in stderr
    assert stderr.count("the suite's last words") == 2, stderr  # the controller's, theirs


def test_a_worker_machine_whose_session_fails_as_it_ends_exits_non_zero(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """On a shared queue the report may be another machine's: the machine whose worker's
    session failed as it ended must fail its own job."""
    pytester.makepyfile(test_end=GARBAGE_THAT_RAISES)
    queue = ("--queue", f"sqlite:///{tmp_path / 'queue.db'}", "--build", "end-1")
    worker = pytester.run(
        sys.executable, "-m", "conveyor", "worker", "-n", "1", "-p", "no:cacheprovider",
        *queue, *UNRAISABLE_IS_AN_ERROR, timeout=300,
    )  # fmt: skip
    output = worker.stdout.str() + worker.stderr.str()
    assert worker.ret == 1, output
    assert "pytest session failed as it ended, after its tests had run" in worker.stderr.str()
    assert "raised by a finalizer at the session's end" in worker.stderr.str()


FROZEN_AT_PYTESTS_OWN_COLLECTION = """
import gc, os

import pytest


@pytest.hookimpl(trylast=True)  # after pytest's unraisable-exception plugin collected
def pytest_unconfigure():
    who = os.environ.get("PYTEST_XDIST_WORKER", "controller")
    with open(os.path.join({out!r}, who), "w") as seen:
        seen.write(str(gc.get_freeze_count()))
"""


@pytest.mark.parametrize("start", ["default", "--fork-workers"])
def test_pytests_own_collections_at_the_end_skip_what_was_settled(
    pytester: pytest.Pytester, tmp_path: Path, start: str
) -> None:
    """pytest collects garbage as its session ends; in a worker that holds the whole suite's
    objects each of those collections walked all of them, on the way from the build's last
    result to its report. Every conveyor process now finalizes what is garbage once and
    freezes the rest before pytest's collections (`SettleGarbageAtEnd`), which then walk
    only what came after: pytest's collections at the end find the objects frozen."""
    out = tmp_path / "frozen"
    out.mkdir()
    pytester.makeconftest(FROZEN_AT_PYTESTS_OWN_COLLECTION.format(out=str(out)))
    pytester.makepyfile(test_many="\n".join(f"def test_{i}(): pass" for i in range(20)))
    fork = ["--fork-workers"] if start == "--fork-workers" else []
    ours = run_conveyor(pytester, "-n", "2", *fork)
    assert ours.ret == 0, ours.stdout.str() + ours.stderr.str()
    frozen = {path.name: int(path.read_text()) for path in out.iterdir()}
    assert set(frozen) == {"controller", "gw0", "gw1"}, frozen
    assert all(count > 1000 for count in frozen.values()), frozen


def test_a_session_finish_that_raises_in_the_workers_fails_the_build(
    pytester: pytest.Pytester,
) -> None:
    """A hook that raises as the session finishes ends a plain run with its traceback and
    exit code 1; where it raises only in the workers (it looks at what their tests left),
    the build says so after the report and exits 1 too."""
    pytester.makeconftest(
        """
        import os

        def pytest_sessionfinish(session):
            if os.environ.get("PYTEST_XDIST_WORKER") or os.environ.get("PLAIN_RUN"):
                raise RuntimeError("the session's finish broke")
        """
    )
    pytester.makepyfile(test_two="def test_a(): pass\ndef test_b(): pass")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PLAIN_RUN", "1")
        assert run_plain(pytester).ret == 1
    ours = run_conveyor(pytester, "-n", "2")
    assert ours.ret == 1, ours.stdout.str() + ours.stderr.str()
    ours.assert_outcomes(passed=2)
    assert "RuntimeError: the session's finish broke" in ours.stderr.str()
