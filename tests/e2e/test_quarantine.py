"""--quarantine FILE: quarantined tests run and are reported as they ran; only the exit code
leaves their failures out, and only when nothing else failed."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from memory_helpers import clean_env, conveyor, output

SUITE = """
import os

def test_broken():
    assert os.environ.get("FIXED") == "1", "still broken"

def test_ok():
    pass
"""

QUARANTINE = """\
# quarantined while upstream fixes it
[[quarantine]]
test = "test_q.py::test_broken"
reason = "waiting on upstream fix #12"
expires = {expires}
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> Path:
    pytester.makepyfile(test_q=SUITE)
    (pytester.path / "q.toml").write_text(QUARANTINE.format(expires="2099-01-01"))
    return pytester.path


def properties(junit: Path, name: str) -> dict[str, str]:
    for case in ET.parse(junit).getroot().iter("testcase"):
        if case.get("name") == name:
            return {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
    raise AssertionError(f"no test case {name} in {junit}")


def test_a_quarantined_failure_is_reported_but_does_not_fail_the_build(suite: Path) -> None:
    summary = suite / "summary.md"
    done = conveyor(
        suite,
        *("run", "-n", "1", "--quarantine", "q.toml", "--junitxml=j.xml"),
        env=clean_env(GITHUB_STEP_SUMMARY=str(summary)),
    )
    text = output(done)
    assert done.returncode == 0, text
    assert "quarantine (these failures do not fail the build)" in text
    assert "QUARANTINED test_q.py::test_broken - AssertionError: still broken" in text
    assert "waiting on upstream fix #12 (until 2099-01-01, q.toml:2)" in text
    assert "1 failed, 1 passed" in text  # the failure is not hidden, only forgiven
    quarantined = properties(suite / "j.xml", "test_broken")
    assert quarantined["quarantined"].startswith("waiting on upstream fix #12")
    assert "quarantined" not in properties(suite / "j.xml", "test_ok")
    assert "`test_q.py::test_broken` failed; quarantined: waiting on upstream fix #12" in (
        summary.read_text()
    )


def test_any_other_failure_still_fails_the_build(suite: Path, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_other="def test_unrelated():\n    assert False, 'real'\n")
    done = conveyor(suite, "run", "-n", "1", "--quarantine", "q.toml")
    assert done.returncode == 1, output(done)
    assert "QUARANTINED test_q.py::test_broken" in output(done)

    (suite / "test_other.py").write_text("import not_a_module_anywhere\n")
    done = conveyor(
        suite, "run", "-n", "1", "--quarantine", "q.toml", "--continue-on-collection-errors"
    )
    assert done.returncode == 1, output(done)  # a collection error is never quarantined


def test_an_expired_entry_fails_the_build_before_it_runs(suite: Path) -> None:
    (suite / "q.toml").write_text(QUARANTINE.format(expires="2020-01-01"))
    done = conveyor(suite, "run", "-n", "1", "--quarantine", "q.toml")
    assert done.returncode == 4, output(done)
    assert (
        "q.toml:2: the quarantine of test_q.py::test_broken expired on 2020-01-01 "
        "(reason: waiting on upstream fix #12)" in done.stderr
    )
    assert "passed" not in done.stdout


def test_a_malformed_file_is_a_usage_error_naming_its_line(suite: Path) -> None:
    (suite / "q.toml").write_text('[[quarantine]]\ntest = "x"\nreason = "r"\nexpires = "soon"\n')
    done = conveyor(suite, "run", "-n", "1", "--quarantine", "q.toml")
    assert done.returncode == 4, output(done)
    assert "q.toml:4: 'expires' must be a date such as 2026-03-01, got 'soon'." in done.stderr


def test_the_summary_counts_tests_and_names_entries_that_match_nothing(suite: Path) -> None:
    """Two entries, one of them a typo: one test is quarantined, and the typo is named."""
    typo = QUARANTINE.replace("test_q.py::test_broken", "test_q.py::test_brokn")
    (suite / "q.toml").write_text(
        QUARANTINE.format(expires="2099-01-01") + typo.format(expires="2099-01-01")
    )
    done = conveyor(suite, "run", "-n", "1", "--quarantine", "q.toml", env=clean_env())
    text = output(done)
    assert done.returncode == 0, text
    assert "1 test(s) quarantined by file, 0 automatically; 1 failed, 0 did not." in text
    assert "q.toml:7: test_q.py::test_brokn matches no test that ran in this build" in text
