"""Per-test outcomes from JUnit XML, and their differences from plain pytest's."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from junitparser import Error, Failure, JUnitXml, Skipped, TestCase

MISSING = "missing"


@dataclass(frozen=True)
class Case:
    """One <testcase>: its outcome and the first line of what went wrong, if anything did."""

    outcome: str  # passed, failed, error, skipped, or a '+' join (failed+error at teardown)
    message: str


@dataclass(frozen=True)
class Difference:
    """One test whose outcomes differ between plain pytest and another runner."""

    test: str
    plain: str
    other: str
    message: str  # the other runner's first failure line, where it has one


def _first_line(text: str | None) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""


def _case(case: TestCase) -> Case:
    kinds: set[str] = set()
    message = ""
    for result in case.result:
        if isinstance(result, Failure):
            kinds.add("failed")
        elif isinstance(result, Error):
            kinds.add("error")
        elif isinstance(result, Skipped):
            kinds.add("skipped")
        else:
            continue
        if not message and not isinstance(result, Skipped):
            message = _first_line(result.message) or _first_line(result.text)
    return Case("+".join(sorted(kinds)) or "passed", message)


def read_cases(path: Path) -> dict[str, list[Case]]:
    """classname::name -> its cases. A list, because subtests and reruns can repeat a name;
    an absent or unreadable file gives no cases (the runner then shows as all missing)."""
    if not path.is_file():
        return {}
    try:
        xml = JUnitXml.fromfile(str(path))
    except Exception:  # a truncated file from a killed run reads as no results
        return {}
    suites = [xml] if xml._tag == "testsuite" else list(xml)
    cases: dict[str, list[Case]] = {}
    for suite in suites:
        for case in suite:
            if not isinstance(case, TestCase):  # a nested suite holds no results of its own
                continue
            test = f"{case.classname}::{case.name}"
            cases.setdefault(test, []).append(_case(case))
    return cases


def _outcomes(cases: list[Case]) -> str:
    return ",".join(sorted(case.outcome for case in cases)) or MISSING


def _message(cases: list[Case]) -> str:
    return next((case.message for case in cases if case.message), "")


def differences(plain: dict[str, list[Case]], other: dict[str, list[Case]]) -> list[Difference]:
    """Tests whose sorted outcomes differ, in plain pytest's order, then tests only `other` has."""
    found = []
    for test in [*plain, *(test for test in other if test not in plain)]:
        mine, theirs = plain.get(test, []), other.get(test, [])
        if _outcomes(mine) != _outcomes(theirs):
            found.append(Difference(test, _outcomes(mine), _outcomes(theirs), _message(theirs)))
    return found


def counts(cases: dict[str, list[Case]]) -> dict[str, int]:
    """Outcome -> number of test cases, the form the pinned baselines take."""
    return dict(sorted(Counter(case.outcome for group in cases.values() for case in group).items()))
