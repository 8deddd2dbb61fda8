"""Workers and the controller end without the interpreter's last garbage collections
(`conveyor.process_exit`): what a test leaves for the end of the process must still happen,
as it does in a plain run: atexit handlers run, a file a module keeps open is flushed, and
garbage in a reference cycle is finalized."""

from __future__ import annotations

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
