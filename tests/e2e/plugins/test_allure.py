"""allure-pytest under conveyor: one result file per test, --clean-alluredir emptying the folder
once, before any result is written (conveyor.compat.results_folder_emptied_once)."""

from __future__ import annotations

import json
import sys

import pytest
from helpers import communicate_or_dump_stacks, conveyor_popen

TESTS = """
    import pytest

    @pytest.mark.parametrize("n", range(6))
    def test_many(n):
        assert n != 5

    def test_skipped():
        pytest.skip("not today")
    """

# The controller and one worker configure late: before the fix, the workers that configured
# first had results written when the late ones emptied the folder.
LATE_CONFIGURE = """
    import os
    import time

    def pytest_configure(config):
        if os.environ.get("PYTEST_XDIST_WORKER") in (None, "gw1"):
            time.sleep(1.5)
    """


@pytest.mark.parametrize("start", ["default", "--fork-workers", "worker-only"])
def test_clean_alluredir_empties_the_folder_once_and_keeps_every_result(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, start: str
) -> None:
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:randomly")  # allure on
    pytester.makepyfile(test_shop=TESTS)
    pytester.makeconftest(LATE_CONFIGURE)
    results = pytester.path / "allure-results"
    results.mkdir()
    (results / "stale-result.json").write_text("{}")
    allure = ("--alluredir", str(results), "--clean-alluredir")
    if start == "worker-only":
        # A machine of workers alone has no controller to empty the folder before its
        # workers write: the first of them to configure does (it was never emptied).
        queue = ("--queue", f"sqlite://{pytester.path / 'q.db'}", "--build", "A1")
        workers = conveyor_popen(pytester.path, "worker", "-n", "3", *queue, *allure)
        ours = pytester.run(
            *(sys.executable, "-m", "conveyor", "report", *queue, "-p", "no:cacheprovider"),
            timeout=300,
        )
        output = communicate_or_dump_stacks(workers, 300)
        assert workers.returncode == 0, output
    else:
        extra = [] if start == "default" else [start]
        ours = pytester.run(
            *(sys.executable, "-m", "conveyor", "run", "-n", "3", "-p", "no:cacheprovider"),
            *(*extra, *allure),
            timeout=300,
        )
    assert ours.ret == 1, ours.stdout.str()
    written = sorted(results.glob("*-result.json"))
    assert not (results / "stale-result.json").exists()
    names = sorted(json.loads(path.read_text())["name"] for path in written)
    assert names == sorted([f"test_many[{n}]" for n in range(6)] + ["test_skipped"])
