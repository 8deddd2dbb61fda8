"""The real-suite corpus: pinned sdists, their test dependencies, pytest arguments and the
plain-pytest counts each one gave, so that a change in the reference itself is noticed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Pin:
    """One project: what to download, what else its tests need, how to run them."""

    name: str
    version: str
    shape: str  # what makes this suite worth having in the corpus
    args: tuple[str, ...] = ()  # pytest arguments, run in the unpacked sdist
    deps: tuple[str, ...] = ()  # extra test dependencies, pinned where it matters
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.name}-{self.version}"

    @property
    def baseline(self) -> str:
        return BASELINES.get(self.key, "")


PINS: tuple[Pin, ...] = (
    Pin(
        "boltons",
        "26.2.0",
        "doctests in the package beside a tests/ tree",
        args=("--doctest-modules", "boltons", "tests"),
    ),
    Pin(
        "jinja2",
        "3.1.6",
        "test classes, async tests (asyncio and trio)",
        args=("tests",),
        deps=("trio",),
    ),
    Pin(
        "humanize",
        "4.17.0",
        "hundreds of parametrized cases, doctests, frozen time",
        deps=("freezegun", "pytest-codspeed"),
    ),
    Pin(
        "more-itertools",
        "11.2.1",
        "unittest.TestCase classes with subTest, one huge module",
        args=("tests",),
    ),
    Pin(
        "click",
        "8.5.1",
        "many small tests, fixtures writing to temporary directories",
        args=("tests",),
    ),
    Pin(
        "packaging",
        "26.4",
        "thousands of parametrized cases (test_version.py's 51,524 left out for time)",
        args=("tests", "--ignore=tests/test_version.py"),
        deps=("pretend", "tomli_w", "hypothesis"),
    ),
    Pin(
        "pyparsing",
        "3.3.3",
        "one huge unittest module, subTest",
        args=("tests",),
        deps=("railroad-diagrams", "jinja2"),
    ),
    Pin("cachetools", "8.0.2", "unittest mixin classes, subTest", args=("tests",)),
    Pin(
        "idna",
        "3.20",
        "unittest classes with subTest over data files",
        args=("tests",),
        deps=("hypothesis",),
    ),
    Pin("six", "1.17.0", "one module at the top of the sdist", args=("test_six.py",)),
    Pin("toolz", "1.2.0", "tests inside the package, live log output", args=("toolz",)),
    Pin(
        "itsdangerous",
        "2.2.0",
        "test classes inheriting fixtures",
        args=("tests",),
        deps=("freezegun",),
    ),
    Pin("markupsafe", "3.0.4", "a small suite with a C speedups fixture", args=("tests",)),
    Pin(
        "attrs",
        "26.1.0",
        "property tests (hypothesis), --import-mode=importlib",
        # fails under plain pytest on Python 3.11 with these pins: not conveyor's to judge
        args=("tests", "--deselect", "tests/test_converters.py::TestPipe::test_wrapped_annotation"),
        deps=("hypothesis", "pympler", "cloudpickle"),
    ),
    Pin(
        "python-dateutil",
        "4.0.0",
        "module fixtures, frozen time, property tests",
        # these three compare with the machine's own tzdata, which differs between machines
        args=(
            "tests",
            "--deselect",
            "tests/test_tz.py::test_gettz_link[tzpath-Europe/Monaco-Europe/Paris]",
            "--deselect",
            "tests/test_tzfile.py::test_gettz_local_abbreviation_without_time_zone_data",
            "--deselect",
            "tests/test_tzpath_data.py::test_dst_matches_tzdata_zi[tzpath]",
        ),
        deps=("freezegun", "hypothesis", "attrs", "pytest-cov"),  # pytest-cov: no_cover
    ),
    Pin(
        "inflect",
        "7.6.0",
        "doctests, --import-mode importlib from pytest.ini",
        deps=("pygments",),
    ),
    Pin(
        "parse",
        "1.22.4",
        "doctests in README.rst",
        args=("-o", "addopts=--doctest-modules --doctest-glob=README.rst", "tests", "parse"),
    ),
    Pin(
        "wcwidth",
        "0.9.4",
        "doctests, large parametrized tables",
        args=("-o", "addopts=--doctest-modules --ignore=wcwidth/wcwidth.py", "tests", "wcwidth"),
    ),
    Pin("simplejson", "4.3.0", "unittest modules inside the package", args=("simplejson/tests",)),
    Pin(
        "tomlkit",
        "0.15.2",
        "parametrized over a folder of data files (toml-test)",
        args=("tests",),
        deps=("PyYAML",),
    ),
    Pin("colorama", "0.4.6", "unittest with mock, *_test.py files", args=("colorama/tests",)),
    Pin("sqlparse", "0.6.1", "a parser's many small tests, xfail and xpass", args=("tests",)),
    Pin(
        "arrow",
        "1.3.0",
        "pytest-cov with --cov-fail-under from tox.ini's addopts, pytest-mock, time zones",
        # this one compares with the machine's own tzdata, which differs between machines
        args=(
            "tests",
            "--deselect",
            "tests/test_arrow.py::TestArrowConversion::test_anchorage_dst",
        ),
        deps=("pytest-cov", "pytest-mock", "pytz==2021.1", "simplejson", "dateparser==1.*"),
    ),
    Pin(
        "structlog",
        "26.1.0",
        "async tests (pytest-asyncio), logging handlers, pytest-randomly in its own test deps",
        args=("tests",),
        deps=("pytest-asyncio", "pytest-randomly", "simplejson", "time-machine", "rich", "twisted"),
    ),
)


# Plain pytest's closing counts per project (pytest 9.2, Python 3.11): a run whose plain
# pytest says otherwise is reported, since then the reference itself moved (a dependency,
# the Python, the machine's tzdata), and conveyor's 'yes' would compare against a new reference.
BASELINES: dict[str, str] = {
    "boltons-26.2.0": "672 passed",
    "jinja2-3.1.6": "909 passed",
    "humanize-4.17.0": "908 passed",
    "more-itertools-11.2.1": "765 passed",
    "click-8.5.1": "2434 passed, 24 skipped, 31000 deselected, 1 xfailed",
    "packaging-26.4": "12680 passed, 3 skipped, 446 deselected",
    "pyparsing-3.3.3": "2046 passed, 27 skipped",
    "cachetools-8.0.2": "476 passed",
    "idna-3.20": "6441 passed, 1 skipped",
    "six-1.17.0": "198 passed, 2 skipped, 1 warning",
    "toolz-1.2.0": "192 passed, 1 skipped",
    "itsdangerous-2.2.0": "297 passed",
    "markupsafe-3.0.4": "79 passed, 1 skipped",
    "attrs-26.1.0": "1376 passed, 8 skipped, 1 deselected, 1 xfailed",
    "python-dateutil-4.0.0": "5059 passed, 264 skipped, 3 deselected, 17 xfailed",
    "inflect-7.6.0": "284 passed, 16 xfailed",
    "parse-1.22.4": "110 passed, 1 skipped",
    "wcwidth-0.9.4": "1800 passed, 11 skipped",
    "simplejson-4.3.0": "250 passed, 32 skipped",
    "tomlkit-0.15.2": "1203 passed",
    "colorama-0.4.6": "38 passed, 14 skipped",
    "sqlparse-0.6.1": "537 passed, 2 xfailed, 1 xpassed",
    "structlog-26.1.0": "928 passed, 20 skipped, 2 warnings",
    "arrow-1.3.0": "1836 passed, 1 deselected, 2 xpassed, 1 warning",
}


def select(names: list[str] | None) -> list[Pin]:
    """The pins named (all when none are), refusing unknown names so a typo does not pass."""
    if not names:
        return list(PINS)
    by_name = {pin.name: pin for pin in PINS}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise SystemExit(f"unknown project(s): {', '.join(unknown)}; known: {', '.join(by_name)}")
    return [by_name[name] for name in names]
