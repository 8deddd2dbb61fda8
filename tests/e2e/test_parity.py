"""conveyor's verdict equals plain pytest's: per-test outcomes (JUnit), totals and exit code."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import signal
import sys
import textwrap
from xml.etree import ElementTree

import pytest
from conftest import RedisServer
from helpers import (
    assert_same_verdict,
    communicate_or_dump_stacks,
    conveyor_popen,
    run_conveyor,
    run_plain,
    summary_line,
    wait_until,
)

from conveyor.queue import open_queue

MIXED_SUITE = {
    "test_outcomes": """
        import warnings
        import pytest

        def test_pass():
            pass

        def test_fail():
            assert 1 + 1 == 3

        @pytest.mark.skip(reason="not today")
        def test_skip():
            pass

        def test_skip_inside():
            pytest.skip("decided at run time")

        @pytest.mark.xfail(reason="known bug")
        def test_xfail():
            assert False

        @pytest.mark.xfail(reason="fixed already")
        def test_xpass():
            pass

        @pytest.mark.xfail(strict=True)
        def test_xpass_strict():
            pass

        def test_warns():
            warnings.warn("deprecated thing", DeprecationWarning)

        def test_prints_and_fails(capsys):
            print("to stdout")
            import sys
            print("to stderr", file=sys.stderr)
            assert False, "with captured output"

        @pytest.mark.parametrize("n", [1, 2, 3, 4])
        def test_param(n):
            assert n != 3
    """,
    "test_fixtures": """
        import pytest

        @pytest.fixture
        def broken_setup():
            raise RuntimeError("setup exploded")

        @pytest.fixture
        def broken_teardown():
            yield
            raise RuntimeError("teardown exploded")

        @pytest.fixture(scope="module")
        def module_resource():
            return {"ready": True}

        @pytest.fixture(scope="session")
        def session_resource():
            return [1, 2, 3]

        def test_setup_error(broken_setup):
            pass

        def test_teardown_error(broken_teardown):
            pass

        def test_fail_and_teardown_error(broken_teardown):
            assert False

        def test_module_fixture(module_resource, session_resource):
            assert module_resource["ready"] and session_resource == [1, 2, 3]

        class TestGrouped:
            @pytest.fixture(scope="class")
            def shared(self):
                return object()

            def test_one(self, shared):
                assert shared is not None

            def test_two(self, shared):
                assert shared is None
    """,
    "test_unit": """
        import unittest

        class TestCase(unittest.TestCase):
            def setUp(self):
                self.value = 41

            def test_ok(self):
                self.assertEqual(self.value + 1, 42)

            def test_bad(self):
                self.assertEqual(self.value, 42)

            @unittest.skip("unittest skip")
            def test_skipped(self):
                pass

            @unittest.expectedFailure
            def test_expected_failure(self):
                self.assertTrue(False)
    """,
}


@pytest.fixture
def mixed_suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(**MIXED_SUITE)
    return pytester


def test_mixed_suite_same_outcomes_and_exit_code_1(
    mixed_suite: pytest.Pytester, start: str
) -> None:
    plain, ours = assert_same_verdict(mixed_suite, "-rA")
    assert plain.ret == 1
    ours.stdout.fnmatch_lines(
        [
            "conveyor: 3 workers, queue sqlite://*",
            "collected 23 items",
            "*= ERRORS =*",
            "*RuntimeError: setup exploded*",
            "*= FAILURES =*",
            "*- Captured stdout call -*",
            "to stdout",
            "*= warnings summary =*",
            "*DeprecationWarning: deprecated thing*",
            "*= short test summary info =*",
            "ERROR test_fixtures.py::test_setup_error - RuntimeError: setup exploded",
            "FAILED test_outcomes.py::test_fail - assert (1 + 1) == 3",
        ]
    )


def test_verbose_lines_name_every_test(mixed_suite: pytest.Pytester) -> None:
    _, ours = assert_same_verdict(mixed_suite, "-v", "-k", "unit or param")
    ours.stdout.fnmatch_lines_random(
        [
            "test_unit.py::TestCase::test_ok PASSED*",
            "test_unit.py::TestCase::test_bad FAILED*",
            "test_outcomes.py::test_param?3? FAILED*",
        ]
    )


def test_all_passing_suite_exit_code_0(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        **{f"test_m{m}": "\n".join(f"def test_{i}(): pass" for i in range(20)) for m in range(4)}
    )
    plain, _ = assert_same_verdict(pytester)
    assert plain.ret == 0


def test_collection_error_exit_code_2_and_nothing_runs(
    pytester: pytest.Pytester, start: str
) -> None:
    pytester.makepyfile(
        test_ok="def test_fine(): pass",
        test_broken="import no_such_module_anywhere\n\ndef test_never(): pass",
    )
    plain, ours = assert_same_verdict(pytester)
    assert plain.ret == 2
    ours.stdout.fnmatch_lines(
        [
            "*ERROR collecting test_broken.py*",
            "*ModuleNotFoundError: No module named 'no_such_module_anywhere'*",
            "*Interrupted: 1 error during collection*",
        ]
    )
    # The same short summary ("ERROR test_broken.py", no message after it), and nothing of an
    # interrupt: pytest stopping at a collection error is not someone pressing Ctrl-C.
    assert _short_summary(ours) == _short_summary(plain)
    assert "conveyor: stopping" not in ours.stdout.str() + ours.stderr.str()


def _short_summary(result: pytest.RunResult) -> list[str]:
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if "short test summary info" in line)
    return [line for line in lines[start + 1 :] if not line.startswith("!")][:-1]


def test_continue_on_collection_errors_runs_the_rest(pytester: pytest.Pytester, start: str) -> None:
    pytester.makepyfile(
        test_ok="def test_fine(): pass\ndef test_bad(): assert 0",
        test_broken="raise ImportError('nope')",
    )
    plain, _ = assert_same_verdict(pytester, "--continue-on-collection-errors")
    assert plain.ret == 1


def test_module_level_skip_is_reported_as_skipped(pytester: pytest.Pytester, start: str) -> None:
    pytester.makepyfile(
        test_skipmod="import pytest\npytest.skip('whole module', allow_module_level=True)",
        test_ok="def test_fine(): pass",
    )
    plain, _ = assert_same_verdict(pytester, "-rs")
    assert plain.ret == 0


def test_usage_error_exit_code_4(pytester: pytest.Pytester, start: str) -> None:
    pytester.makepyfile(test_ok="def test_fine(): pass")
    plain, ours = assert_same_verdict(pytester, "--no-such-option")
    assert plain.ret == 4
    ours.stderr.fnmatch_lines(["*unrecognized arguments: --no-such-option*"])
    # The program named is the command that was typed, never pytest's in-process entry point.
    assert "pytest.main()" not in ours.stderr.str()


@pytest.mark.parametrize("option", ["--sw", "--sw-skip", "--sw-reset"])
def test_stepwise_is_refused_where_it_could_skip_tests_that_never_ran(
    pytester: pytest.Pytester, option: str
) -> None:
    """--sw skips every test before the first failure on the next run. Side by side, tests
    before the first failure may never have run (a test failing elsewhere stops the build
    first), so a later stepwise run could pass without them: refused, with the way out."""
    pytester.makepyfile(
        test_a="def test_a1():\n    assert 0\n\ndef test_a2():\n    pass\n",
        test_b="def test_b1():\n    assert 0\n\ndef test_b2():\n    pass\n",
    )
    plain = pytester.run(sys.executable, "-m", "pytest", option)  # stepwise needs the cache
    if "unrecognized arguments" in plain.stderr.str():
        pytest.skip(f"this pytest has no {option}")
    shutil.rmtree(pytester.path / ".pytest_cache")
    ours = pytester.run(sys.executable, "-m", "conveyor", "run", "-n", "2", option, timeout=120)
    assert ours.ret == 4
    ours.stderr.fnmatch_lines(["ERROR: --stepwise (--sw) *`conveyor run -n 0 --sw`."])
    in_process = pytester.run(sys.executable, "-m", "conveyor", "run", "-n", "0", option)
    assert in_process.ret == plain.ret
    assert summary_line(in_process) == summary_line(plain)


@pytest.mark.parametrize("option", ["--pdb", "--trace"])
def test_debugging_is_refused_where_no_terminal_reaches_the_test(
    pytester: pytest.Pytester, option: str
) -> None:
    """A worker's debugger reads end of file and quits: under --trace the tests it stopped in
    were reported as passed without their bodies having run."""
    pytester.makepyfile(test_a="def test_a():\n    pass\n")
    ours = pytester.run(sys.executable, "-m", "conveyor", "run", "-n", "2", option, timeout=120)
    assert ours.ret == 4, ours.stdout.str()
    ours.stderr.fnmatch_lines(
        [f"ERROR: {option} cannot debug tests that run in other processes; *-n 0 {option}*"]
    )
    assert "passed" not in ours.stdout.str()


# Usage errors pytest finds only while it collects, which only the workers do.
COLLECTION_USAGE_ERRORS = {
    "missing path": ("nope.py",),
    "missing test": ("test_ok.py::test_nope",),
    "one path of two missing": ("test_ok.py", "nope.py"),
    "bad -k": ("-k", "fine and"),
    "bad -m": ("-m", "fast and"),
    "--pyargs": ("--pyargs", "no_such_module"),
}


def _error_lines(result: pytest.RunResult) -> list[str]:
    return [line for line in result.stderr.lines if line.startswith("ERROR:")]


def _collected_lines(result: pytest.RunResult) -> list[str]:
    """pytest's "collected N items" (it ends its collection before it reports the error)."""
    return [line.strip() for line in result.outlines if "collected" in line]


@pytest.mark.parametrize(
    "args", COLLECTION_USAGE_ERRORS.values(), ids=list(COLLECTION_USAGE_ERRORS)
)
def test_a_usage_error_found_while_collecting_ends_the_run_as_in_pytest(
    pytester: pytest.Pytester, start: str, args: tuple[str, ...]
) -> None:
    pytester.makepyfile(test_ok="def test_fine(): pass")
    plain, ours = assert_same_verdict(pytester, *args)
    assert plain.ret == 4
    assert _error_lines(plain) and _error_lines(ours) == _error_lines(plain)
    assert _collected_lines(ours) == _collected_lines(plain)
    assert "outside any test" not in ours.stdout.str()  # no worker reported as failed


def test_a_usage_error_found_while_collecting_on_redis(
    pytester: pytest.Pytester, redis_server: RedisServer
) -> None:
    pytester.makepyfile(test_ok="def test_fine(): pass")
    plain = run_plain(pytester, "nope.py")
    queue = ("--queue", redis_server.url, "--build", "usage-error")
    ours = run_conveyor(pytester, "-n", "2", *queue, "nope.py")
    assert plain.ret == ours.ret == 4
    assert _error_lines(ours) == _error_lines(plain)


def test_conveyors_own_log_never_reaches_the_projects_logging(
    pytester: pytest.Pytester, start: str
) -> None:
    """Conveyor's trace logger is not the project's: not in a captured-log section with
    log_level=DEBUG, not at a handler a test puts on the root logger, not in caplog."""
    pytester.makepyfile(
        test_log="""
        import logging

        seen = []

        class Keep(logging.Handler):
            def emit(self, record):
                seen.append(record.name)

        def test_installs_a_root_handler():
            logging.getLogger().setLevel(logging.DEBUG)
            logging.getLogger().addHandler(Keep())

        def test_fails_with_a_log_line():
            logging.getLogger("app").debug("hello")
            assert 0

        def test_caplog(caplog):
            caplog.set_level(logging.DEBUG)
            logging.getLogger("app").debug("mine")
            assert [r.name for r in caplog.records] == ["app"]

        def test_the_root_handler_saw_only_the_project():
            assert set(seen) <= {"app"}
        """
    )
    plain, ours = assert_same_verdict(pytester, "-o", "log_level=DEBUG", workers=1)
    assert plain.ret == 1
    assert "DEBUG    conveyor" not in ours.stdout.str()
    ours.stdout.fnmatch_lines(["*Captured log call*", "DEBUG    app:*hello"])


ENDS_THE_SESSION = {
    "pytest.exit": ('pytest.exit("bailing out", returncode=7)', 7),
    "pytest.exit without a code": ('pytest.exit("bailing out")', 2),
    "pytest.exit with code 0": ('pytest.exit("bailing out", returncode=0)', 0),
    "KeyboardInterrupt": ("raise KeyboardInterrupt", 2),
}


@pytest.mark.parametrize(
    ("statement", "code"), ENDS_THE_SESSION.values(), ids=list(ENDS_THE_SESSION)
)
def test_a_test_that_ends_the_session_ends_the_build_with_its_code(
    pytester: pytest.Pytester, start: str, statement: str, code: int
) -> None:
    """In plain pytest nothing runs after such a test and the run exits with its code. It
    is not a crash of the worker, and the test is not run again elsewhere."""
    ran = pytester.mkdir("ran")
    pytester.makepyfile(
        f"""
        import pathlib, time, pytest

        def test_1():
            pass

        def test_2():
            pathlib.Path({str(ran)!r}, "test_2").touch(exist_ok=False)  # once only
            time.sleep(0.2)
            {statement}

        def test_3():
            time.sleep(1)

        def test_4():
            time.sleep(1)
        """
    )
    plain = run_plain(pytester)
    (ran / "test_2").unlink()
    ours = run_conveyor(pytester, "-n", "2")
    output = ours.stdout.str() + ours.stderr.str()
    assert plain.ret == ours.ret == code, output
    assert "crashed" not in output and "FAILED" not in output, output
    if "exit" in statement:
        ours.stdout.fnmatch_lines(["*_pytest.outcomes.Exit: bailing out*"])
    assert list(ran.iterdir()) == [ran / "test_2"]


def test_a_hook_that_ends_the_session_while_collecting_ends_the_run_as_in_pytest(
    pytester: pytest.Pytester, start: str
) -> None:
    pytester.makeconftest(
        """
        import pytest

        def pytest_collection_modifyitems(items):
            pytest.exit("nothing to do here", returncode=5)
        """
    )
    pytester.makepyfile(test_ok="def test_fine(): pass")
    plain, ours = assert_same_verdict(pytester)
    assert plain.ret == 5
    assert _collected_lines(plain) and _collected_lines(ours) == _collected_lines(plain)
    ours.stdout.fnmatch_lines(["*_pytest.outcomes.Exit: nothing to do here*"])
    assert "outside any test" not in ours.stdout.str()


def test_the_lines_around_the_tests_are_pytests(pytester: pytest.Pytester) -> None:
    """A blank line before the row of progress letters and one after it, as plain pytest
    writes them around its rows; with -v, "collecting ... collected N items"."""
    pytester.makepyfile(test_x="def test_a(): pass\ndef test_b(): assert 0")
    for args in ((), ("-v",)):
        plain, ours = assert_same_verdict(pytester, *args)
        for result in (plain, ours):
            lines = result.stdout.lines
            header = lines.index(next(line for line in lines if "= FAILURES =" in line))
            assert lines[header - 1] == "" and lines[header - 2].endswith("[100%]"), lines
            first = next(i for i, line in enumerate(lines) if line.endswith("%]"))
            assert lines[first - 1] == "", lines
        if args:
            ours.stdout.fnmatch_lines(["collecting ... collected 2 items"])


def test_the_warnings_summary_lists_warnings_in_pytests_order(
    pytester: pytest.Pytester,
) -> None:
    """The configuration's warnings (an unknown ini key), then collection's, then the tests':
    the workers' collection warnings were listed before the configuration's."""
    pytester.makeini("[pytest]\nnot_an_option_of_anyone = 1\n")
    pytester.makepyfile(
        test_w="""
        import warnings

        class TestNotATestClass:
            def __init__(self):
                pass

        def test_warns():
            warnings.warn(UserWarning("while the test ran"))
        """
    )
    plain, ours = assert_same_verdict(pytester)

    def warnings_summary(result: pytest.RunResult) -> list[str]:
        lines = result.stdout.lines
        start = next(i for i, line in enumerate(lines) if "= warnings summary =" in line)
        end = next(i for i, line in enumerate(lines) if line.startswith("-- Docs:"))
        return lines[start:end]

    assert warnings_summary(ours) == warnings_summary(plain)
    assert "Unknown config option" in "\n".join(warnings_summary(ours))


JUNIT_RECORDS_SUITE = """
import pytest


@pytest.fixture(scope="session", autouse=True)
def suite_facts(record_testsuite_property):
    record_testsuite_property("ARCH", "x86")
    record_testsuite_property("STORAGE", "ceph")


def test_attribute(record_xml_attribute):
    record_xml_attribute("assertions", "REQ-1234")


def test_property(record_property):
    record_property("example_key", 1)


@pytest.mark.parametrize("n", range(4))
def test_plain(n):
    pass
"""


def _junit_without_conveyors_properties(path: pathlib.Path) -> list[str]:
    """The file's elements and attributes, without timings, host, and conveyor's own
    per-test properties (where a test ran)."""
    root = ElementTree.parse(path).getroot()
    lines = []
    for element in root.iter():
        attributes = {
            key: value
            for key, value in element.attrib.items()
            if key not in ("time", "timestamp", "hostname")
        }
        if element.tag == "property" and attributes.get("name", "").startswith("conveyor_"):
            continue
        if element.tag == "properties" and all(
            child.get("name", "").startswith("conveyor_") for child in element
        ):
            continue
        lines.append(f"{element.tag} {sorted(attributes.items())}")
    return lines


@pytest.mark.parametrize("family", ["xunit1", "xunit2"])
def test_what_tests_record_for_junitxml_reaches_the_file(
    pytester: pytest.Pytester, family: str
) -> None:
    """record_testsuite_property and record_xml_attribute found no junitxml writer in a
    worker: the suite's properties and a test's attributes were missing from the file
    (pytest-xdist loses them too), and the fixtures' xunit2 warnings were never given."""
    pytester.makepyfile(test_records=JUNIT_RECORDS_SUITE)
    option = f"junit_family={family}"
    assert_same_verdict(pytester, "-o", option)  # the warnings counted in the summary too
    assert _junit_without_conveyors_properties(
        pytester.path / "conveyor.xml"
    ) == _junit_without_conveyors_properties(pytester.path / "plain.xml")
    written = (pytester.path / "conveyor.xml").read_text()
    assert written.count('name="ARCH"') == 1, written  # once, as each worker recorded it
    if family == "xunit1":
        assert 'assertions="REQ-1234"' in written


@pytest.mark.parametrize("machine", ["with a controller", "workers alone"])
def test_the_log_file_keeps_every_tests_lines(pytester: pytest.Pytester, machine: str) -> None:
    """pytest empties --log-file as it configures, in every process: each worker emptied
    what the others had written, and so did the controller, which configures after the first
    tests ran. The file is emptied once for the build (an earlier run's lines go, as in a
    plain run) and every process appends."""
    if pytest.version_tuple < (8, 1):
        pytest.skip("pytest before 8.1 cannot append to --log-file (no log_file_mode)")
    pytester.makepyfile(
        test_logs="""
        import logging, pytest

        @pytest.mark.parametrize("n", range(40))
        def test_logs(n):
            logging.getLogger("app").warning("line %d", n)
        """
    )
    log_file = pytester.path / "logs" / "build.log"
    log_file.parent.mkdir()
    log_file.write_text("an earlier run's line\n")
    options = ("-p", "no:randomly", f"--log-file={log_file}")
    if machine == "with a controller":
        run = pytester.run(sys.executable, "-m", "conveyor", "run", "-n", "3", *options)
        assert run.ret == 0, run.stdout.str()
    else:
        queue = ("--queue", f"sqlite://{pytester.path / 'q.db'}", "--build", "L1")
        workers = conveyor_popen(pytester.path, "worker", "-n", "3", *queue, *options)
        output = communicate_or_dump_stacks(workers, 300)
        assert workers.returncode == 0, output
    lines = log_file.read_text().splitlines()
    assert sorted(line.rsplit(" ", 1)[-1] for line in lines) == sorted(map(str, range(40)))


LIVE_LOG_SUITE = """
import logging, pytest

log = logging.getLogger("app")


@pytest.fixture
def resource():
    log.info("setting up %s", "resource")
    yield 1
    log.info("tearing down")


def test_with_fixture(resource):
    log.info("in the call %d", resource)


def test_logs_an_exception():
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("it broke")


def test_fails(resource):
    log.warning("about to fail")
    assert 0


def test_quiet():
    pass
"""


def test_live_logs_of_tests_in_workers_read_as_in_a_plain_run(pytester: pytest.Pytester) -> None:
    """log_cli: a plain run prints each test's records under its name, phase by phase. A
    worker has no terminal: they went to its log. The controller now prints them as each
    test's result arrives."""
    pytester.makeini(
        "[pytest]\nlog_cli = true\nlog_cli_level = INFO\n"
        "log_cli_format = [%(levelname)8s] %(name)s %(funcName)s: %(message)s\n"
    )
    pytester.makepyfile(test_live=LIVE_LOG_SUITE)
    plain, ours = assert_same_verdict(pytester, workers=1)

    def tests_part(result: pytest.RunResult) -> list[str]:
        lines = [line for line in result.stdout.lines if not line.startswith("conveyor:")]
        start = next(i for i, line in enumerate(lines) if line.startswith("collected"))
        end = next(i for i, line in enumerate(lines) if "= FAILURES =" in line)
        return lines[start:end]

    assert tests_part(ours) == tests_part(plain)
    ours.stdout.fnmatch_lines(
        ["*- live log setup -*", "*setting up resource", "*- live log call -*", "*in the call 1"]
    )


def test_test_ids_in_conveyors_lines_are_written_as_pytest_writes_them(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run from a folder below pytest's rootdir, pytest's summary writes ids relative to that
    folder; conveyor's list of tests without a result wrote them relative to the rootdir."""
    pytester.makeini("[pytest]\n")
    sub = pytester.mkdir("sub")
    (sub / "test_x.py").write_text(
        "def test_a():\n    assert 0\n\n"
        + "".join(f"def test_{n}():\n    pass\n\n" for n in "bcdefgh")
    )
    monkeypatch.chdir(sub)
    result = run_conveyor(pytester, "-n", "1", "-x", "-p", "no:randomly")
    assert result.ret == 1, result.stdout.str()
    result.stdout.fnmatch_lines(["*have no result because the build was stopped*"])
    result.stdout.fnmatch_lines(["FAILED test_x.py::test_a - assert 0"])
    listed = [line.strip() for line in result.stdout.lines if line.startswith("  test_")]
    assert listed and all(line.startswith("test_x.py::test_") for line in listed), listed
    assert "sub/test_x.py" not in result.stdout.str()


PRINTING_SUITE = {
    "conftest": "print('the conftest is imported')\n",
    "test_prints": """
import sys, pytest

print("the module is imported")

@pytest.mark.parametrize("n", range(6))
def test_prints(n):
    print(f"out of test {n}")
    print(f"err of test {n}", file=sys.stderr)
""",
}


@pytest.mark.parametrize("start", ["default", "--fork-workers"])
def test_what_tests_print_under_s_reaches_the_terminal(
    pytester: pytest.Pytester, start: str
) -> None:
    """-s: a plain run shows what tests print as they run. A worker's output went to its log
    file only, so `conveyor run -s` showed nothing of it (pytest-xdist shows stderr). What
    collection prints comes once, from the controller, as under pytest-xdist: every worker
    collects the whole suite."""
    pytester.makepyfile(**PRINTING_SUITE)
    extra = () if start == "default" else (start,)
    result = run_conveyor(pytester, "-n", "2", "-s", *extra)
    assert result.ret == 0, result.stdout.str()
    text = result.stdout.str()
    before_summary = text[: text.index("6 passed")]
    for n in range(6):
        assert before_summary.count(f"out of test {n}") == 1, text
        assert before_summary.count(f"err of test {n}") == 1, text
    assert text.count("the conftest is imported") == 1, text
    assert "this worker has collected" not in text
    assert re.search(r"^\.+$", text, re.MULTILINE), text  # the row of results goes on below


def test_what_tests_print_stays_captured_without_s(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(**PRINTING_SUITE)
    result = run_conveyor(pytester, "-n", "2")
    assert result.ret == 0, result.stdout.str()
    assert "of test" not in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize("plugin", ["junitxml", "logging"])
def test_a_build_without_pytests_own_plugins_runs_as_plain_pytest(
    pytester: pytest.Pytester, plugin: str
) -> None:
    """`-p no:junitxml` removes the junit_family setting a worker read for what tests
    record (every worker ended in INTERNALERROR); `-p no:logging`, the live log handler."""
    pytester.makepyfile(test_a="def test_a():\n    pass\n\ndef test_b():\n    assert 0\n")
    plain = run_plain(pytester, "-p", f"no:{plugin}")
    ours = run_conveyor(pytester, "-n", "2", "-p", f"no:{plugin}")
    assert ours.ret == plain.ret == 1, ours.stdout.str() + ours.stderr.str()
    assert summary_line(ours) == summary_line(plain)


def test_no_tests_exit_code_5(pytester: pytest.Pytester, start: str) -> None:
    pytester.makepyfile(test_ok="def test_fine(): pass")
    plain, _ = assert_same_verdict(pytester, "-k", "nothing_matches_this")
    assert plain.ret == 5


def test_empty_directory_exit_code_5(pytester: pytest.Pytester) -> None:
    plain, _ = assert_same_verdict(pytester)
    assert plain.ret == 5


def test_deselection_by_marker_counts_like_pytest(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow tests\n")
    pytester.makepyfile(
        test_marks="""
        import pytest

        @pytest.mark.slow
        def test_slow(): pass

        def test_fast(): pass

        def test_fast_fail(): assert 0
        """
    )
    plain, ours = assert_same_verdict(pytester, "-m", "not slow")
    assert plain.ret == 1
    ours.stdout.fnmatch_lines(["collected 3 items / 1 deselected / 2 selected"])


def test_conftest_that_raises_fails_like_pytest(pytester: pytest.Pytester, start: str) -> None:
    pytester.makeconftest("raise RuntimeError('conftest is broken')")
    pytester.makepyfile(test_ok="def test_fine(): pass")
    plain, ours = assert_same_verdict(pytester)
    assert plain.ret != 0
    ours.stderr.fnmatch_lines(["*conftest is broken*"])


def test_fixture_in_conftest_and_durations(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def answer():
            return 42
        """
    )
    pytester.makepyfile(
        test_a="def test_a(answer): assert answer == 42",
        test_b="import time\ndef test_b(answer):\n    time.sleep(0.05)\n    assert answer",
    )
    _, ours = assert_same_verdict(pytester, "--durations=1", "--durations-min=0.01")
    ours.stdout.fnmatch_lines(["*slowest 1 durations*", "*call*test_b.py::test_b*"])


def test_exitfirst_stops_the_whole_build(pytester: pytest.Pytester, start: str) -> None:
    body = "\n".join(f"def test_{i}():\n    import time; time.sleep(0.02)" for i in range(60))
    pytester.makepyfile(test_first="def test_boom():\n    assert False", test_many=body)
    result = run_conveyor(pytester, "-n", "2", "-x")
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "*test(s) have no result because the build was stopped: stopping after 1 failures "
            "(-x, --maxfail):",
            "*stopping after 1 failures*",
        ]
    )
    assert "resume" not in result.stdout.str()  # not what -x is for
    outcome = result.parseoutcomes()
    assert outcome["failed"] == 1
    assert outcome.get("passed", 0) < 60


def test_with_exitfirst_a_worker_starts_no_test_long_after_the_build_stopped(
    pytester: pytest.Pytester,
) -> None:
    """Another worker's failure stops the build in the queue; a worker went on starting
    tests until it next stored a batch of results (every 0.1 s: a score of tiny tests that
    plain pytest, stopped at the failure, never starts). With -x it now asks between tests."""
    started = pytester.path / "started"
    pytester.makepyfile(
        test_many=f"""
        import time, pytest

        @pytest.mark.parametrize("n", range(400))
        def test_tiny(n):
            with open({str(started)!r}, "a") as log:
                log.write("x")
            time.sleep(0.004)
        """
    )
    queue = f"sqlite://{pytester.path / 'q.db'}"
    run = ("run", "-n", "1", "-x", "--queue", queue, "-p", "no:randomly")
    # Timing history first: the worker then reserves and claims tiny tests many at a time.
    assert pytester.run(sys.executable, "-m", "conveyor", *run, "--build", "X0").ret == 0
    started.unlink()
    build = conveyor_popen(pytester.path, *run, "--build", "X1")
    wait_until(lambda: started.exists() and len(started.read_text()) >= 20, "no test started")
    stopper = open_queue(queue, "X1")
    try:
        stopper.stop("stopping after 1 failures")  # as a failure on another machine does
    finally:
        stopper.close()
    at_the_stop = len(started.read_text())
    output = communicate_or_dump_stacks(build, 120)
    assert build.returncode == 2, output  # stopped, with tests left unrun
    assert len(started.read_text()) - at_the_stop <= 6, output


def test_a_build_without_pytests_cache_says_it_has_no_timing_history(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_one="def test_one(): pass")
    without = run_conveyor(pytester, "-n", "1")  # the helper turns the cache off
    assert without.ret == 0
    without.stdout.fnmatch_lines(["conveyor: no timing history: pytest's cache is off*"])
    first = pytester.run(sys.executable, "-m", "conveyor", "run", "-n", "1", timeout=120)
    assert first.ret == 0
    first.stdout.fnmatch_lines(["conveyor: timing history knows none of the 1 test(s) yet*"])
    second = pytester.run(sys.executable, "-m", "conveyor", "run", "-n", "1", timeout=120)
    second.stdout.fnmatch_lines(["conveyor: timing history knows 1 of 1 tests*"])
    assert "no timing history" not in first.stdout.str() + second.stdout.str()


def test_second_run_serves_the_slowest_tests_first_from_history(
    pytester: pytest.Pytester,
) -> None:
    log = pytester.path / "order.log"
    body = f"""
        import time

        def test_sleep():
            with open({str(log)!r}, "a") as handle:
                handle.write(__name__ + "\\n")
            time.sleep(SECONDS)
        """
    modules = {"test_a": 0.01, "test_b": 0.02, "test_c": 0.3, "test_d": 0.01, "test_e": 0.15}
    pytester.makepyfile(
        **{
            name: f"SECONDS = {seconds}\n" + textwrap.dedent(body)
            for name, seconds in modules.items()
        }
    )
    first = pytester.run(sys.executable, "-m", "conveyor", "run", "-n", "1", timeout=120)
    assert first.ret == 0
    assert log.read_text().split() == list(modules)
    log.unlink()
    # Two workers: one worker alone keeps collection order (slowest first buys it nothing).
    second = pytester.run(sys.executable, "-m", "conveyor", "run", "-n", "2", timeout=120)
    assert second.ret == 0
    assert set(log.read_text().split()[:2]) == {"test_c", "test_e"}
    second.stdout.fnmatch_lines(
        [
            "conveyor: timing history knows 5 of 5 tests; they should take about * s with 2 "
            "worker(s) (the longest test: * s), start-up aside",
            "conveyor: the build took * s from the command's start; results came from * s to "
            "* s (the tests were estimated at * s); pytest's time below starts with its session",
        ]
    )
    assert (pytester.path / ".pytest_cache" / "v" / "conveyor" / "durations").exists()


def test_an_estimate_for_the_whole_fleet_says_so(
    pytester: pytest.Pytester, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a CI that runs the build on two machines, the estimate is for both machines'
    workers: it said "with 2 worker(s)" under a header of "1 worker"."""
    monkeypatch.setenv("GITLAB_CI", "true")
    monkeypatch.setenv("CI_NODE_TOTAL", "2")
    pytester.makepyfile(test_a="def test_one(): pass\ndef test_two(): pass")
    # The Redis server is shared with other tests: ids of this test's own.
    name = pytester.path.name
    for build in ("first", "second"):  # the first records the history the second estimates from
        result = pytester.run(
            sys.executable, "-m", "conveyor", "run", "-n", "1",
            "--queue", redis_server.url, "--build", f"{name}-{build}", "--history-key", name,
            timeout=120,
        )  # fmt: skip
        assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "conveyor: 1 worker, queue *",
            "conveyor: timing history knows 2 of 2 tests; they should take about * s with 2 "
            "worker(s) on all of its machines (the longest test: * s), start-up aside",
        ]
    )


def test_the_build_time_counts_from_the_commands_start(pytester: pytest.Pytester) -> None:
    """What the summary calls the build's start-up and first result is measured from the
    command's start, as the person waiting for it measures: the machine's set-up, the
    workers' spawn and the controller's imports included, not from the controller's plugin."""
    pytester.makepyfile(test_a="def test_one(): pass\ndef test_two(): pass")
    run = (sys.executable, "-m", "conveyor", "run", "-n", "1", "--node-setup", "sleep 1.5")
    assert pytester.run(*run, timeout=120).ret == 0  # records the timing history
    second = pytester.run(*run, timeout=120)
    assert second.ret == 0
    found = re.search(
        r"the build took ([\d.]+) s .*results came from ([\d.]+) s to ([\d.]+) s",
        str(second.stdout),
    )
    assert found, second.stdout.str()
    took, first, last = (float(found.group(group)) for group in (1, 2, 3))
    assert first >= 1.5 and took >= last >= first, (took, first, last)


# The controller configures only once its workers have finished the whole build.
LATE_CONTROLLER_CONFTEST = """
import os, time
from conveyor.queue import open_queue

def pytest_configure(config):
    if os.environ.get("CONVEYOR_WORKER"):
        return
    queue = open_queue({url!r}, "LATE")
    deadline = time.monotonic() + 60
    while not queue.status().finished and time.monotonic() < deadline:
        time.sleep(0.05)
    queue.close()
"""


def test_a_build_its_workers_finish_before_the_controller_configures_is_reported_whole(
    pytester: pytest.Pytester,
) -> None:
    """The workers start first and need nothing from the controller unless a plugin asks:
    on a loaded machine they can finish a small build before it configures. That is this
    run's build, not a finished one it replays: its timings are reported, and the workers'
    output is waited for."""
    url = f"sqlite://{pytester.path / 'q.db'}"
    pytester.makepyfile(test_a="def test_one(): pass\ndef test_two(): pass")
    first = pytester.run(
        sys.executable, "-m", "conveyor", "run", "-n", "1", "--queue", url, "--build", "EARLY",
        timeout=120,
    )  # fmt: skip
    assert first.ret == 0  # records the timing history
    pytester.makeconftest(LATE_CONTROLLER_CONFTEST.format(url=url))
    result = pytester.run(
        sys.executable, "-m", "conveyor", "run", "-n", "1", "--queue", url, "--build", "LATE",
        timeout=120,
    )  # fmt: skip
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(
        ["*the build took * s from the command's start; results came from * s to * s (the tests*"]
    )
    assert "report only" not in result.stdout.str()
    assert "sent no output" not in result.stdout.str()


def test_history_export_and_import_round_trip(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a="def test_one(): pass\ndef test_two(): pass")
    assert pytester.run(sys.executable, "-m", "conveyor", "run", "-n", "2").ret == 0
    exported = pytester.run(sys.executable, "-m", "conveyor", "history", "export")
    assert exported.ret == 0
    assert set(json.loads(exported.stdout.str())) == {"test_a.py::test_one", "test_a.py::test_two"}
    split_file = pytester.path / ".test_durations"
    split_file.write_text(json.dumps({"test_a.py::test_three": 2.5}))
    imported = pytester.run(sys.executable, "-m", "conveyor", "history", "import", str(split_file))
    assert imported.ret == 0
    again = pytester.run(sys.executable, "-m", "conveyor", "history", "export")
    assert json.loads(again.stdout.str())["test_a.py::test_three"] == 2.5
    broken = pytester.run(sys.executable, "-m", "conveyor", "history", "import", "missing.json")
    assert broken.ret == 4
    broken.stderr.fnmatch_lines(["conveyor: error: cannot read durations from missing.json*"])


def test_the_cache_of_known_test_ids_is_written_as_by_pytest(pytester: pytest.Pytester) -> None:
    """`cache/nodeids` (what `--nf` reads to tell new tests) holds the selected tests after a
    run on a fresh cache, as plain pytest writes it, not an empty list."""
    pytester.makepyfile(test_a="def test_one(): pass\ndef test_two(): pass\ndef test_three(): pass")
    nodeids = pytester.path / ".pytest_cache" / "v" / "cache" / "nodeids"
    assert pytester.run(sys.executable, "-m", "pytest", "-k", "not three").ret == 0
    plain = json.loads(nodeids.read_text())
    shutil.rmtree(pytester.path / ".pytest_cache")
    ours = pytester.run(sys.executable, "-m", "conveyor", "run", "-n", "2", "-k", "not three")
    assert ours.ret == 0
    assert (
        json.loads(nodeids.read_text()) == plain == ["test_a.py::test_one", "test_a.py::test_two"]
    )


def test_last_failed_uses_the_cache_the_controller_wrote(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_lf="\n".join(f"def test_{i}():\n    assert {i} != 3\n" for i in range(8))
    )

    def conveyor(*args: str) -> pytest.RunResult:
        return pytester.run(sys.executable, "-m", "conveyor", "run", "-n", "2", *args)

    first = conveyor()
    assert first.ret == 1
    rerun = conveyor("--lf")
    assert rerun.ret == 1
    rerun.stdout.fnmatch_lines(["run-last-failure: rerun previous 1 failure*", "*= 1 failed in *"])
    failed_first = conveyor("--ff", "-q")
    assert failed_first.ret == 1
    failed_first.stdout.fnmatch_lines(["*1 failed, 7 passed*"])
    plain = pytester.run(sys.executable, "-m", "pytest", "--lf")
    assert plain.ret == 1
    assert summary_line(plain) == summary_line(rerun) == "1 failed"


def test_reporting_plugins_see_what_they_see_in_a_plain_run(pytester: pytest.Pytester) -> None:
    """A conftest reporting plugin (as pytest-html or a CI reporter would be) counts reports
    in the controller exactly as in plain pytest."""
    pytester.makeconftest(
        """
        import collections, os

        counts = collections.Counter()

        def pytest_runtest_logreport(report):
            counts[(report.when, report.outcome)] += 1

        def pytest_terminal_summary(terminalreporter):
            if os.environ.get("CONVEYOR_WORKER") is None:
                terminalreporter.write_line(f"REPORTER {sorted(counts.items())}")
        """
    )
    pytester.makepyfile(
        test_r="import pytest\n"
        "def test_a(): pass\n"
        "def test_b(): assert 0\n"
        "@pytest.mark.skip\ndef test_c(): pass\n"
    )
    plain, ours = assert_same_verdict(pytester)
    line = [x for x in plain.outlines if x.startswith("REPORTER")]
    assert line and line == [x for x in ours.outlines if x.startswith("REPORTER")]


SUBTESTS = """
import unittest


def test_fixture_subtests(subtests):
    for n in range(3):
        with subtests.test(msg="n", n=n):
            assert n != 1


def test_fixture_subtests_all_pass(subtests):
    for n in range(2):
        with subtests.test(n=n):
            pass


class TestUnittestSubTest(unittest.TestCase):
    def test_sub(self):
        for n in range(3):
            with self.subTest(n=n):
                self.assertNotEqual(n, 2)

    def test_plain(self):
        pass
"""


@pytest.mark.skipif(
    int(pytest.__version__.split(".")[0]) < 9, reason="the subtests fixture is pytest 9's"
)
@pytest.mark.parametrize("verbosity", [[], ["-v"]], ids=["quiet", "verbose"])
def test_subtests_are_counted_as_plain_pytest_counts_them(
    pytester: pytest.Pytester, verbosity: list[str]
) -> None:
    """A test whose subtests failed is itself failed: pytest decides that in the worker,
    where the count of failed subtests lives."""
    pytester.makepyfile(test_subtests=SUBTESTS)
    plain, ours = assert_same_verdict(pytester, *verbosity, workers=2)
    assert "failed" in (summary_line(plain) or "")

    def subfailed(result: pytest.RunResult) -> list[str]:
        return sorted(line for line in result.outlines if line.startswith("SUBFAILED"))

    assert subfailed(ours) == subfailed(plain) and len(subfailed(plain)) == 2


def test_a_stopped_build_on_the_temporary_queue_says_how_to_make_it_resumable(
    pytester: pytest.Pytester,
) -> None:
    """The embedded default queue is removed with the command: running it again starts a new
    build, so the report must not promise a resume."""
    started = pytester.path / "started"
    body = "\n".join(f"def test_{i}():\n    import time; time.sleep(0.1)" for i in range(60))
    pytester.makepyfile(
        test_first=f"def test_first():\n    open({str(started)!r}, 'w').close()", test_many=body
    )
    process = conveyor_popen(pytester.path, "run", "-n", "2", "-p", "no:cacheprovider")
    wait_until(started.exists, "no test started")
    process.send_signal(signal.SIGTERM)
    output = communicate_or_dump_stacks(process, 120)
    assert process.returncode == 2, output
    assert "the embedded queue was temporary" in output and "--queue sqlite:///" in output
    assert "the same command again resumes it" not in output


def test_a_basetemp_given_is_shared_out_among_the_workers(
    pytester: pytest.Pytester, start: str
) -> None:
    """pytest empties a given --basetemp when a session first asks for a temporary folder:
    workers sharing one emptied each other's, and a test whose file vanished failed where
    plain pytest passes. Each worker has a folder of its own in it, forked workers too."""
    pytester.makepyfile(
        test_tmp="""
        import time, pytest

        @pytest.mark.parametrize("i", range(6))
        def test_keeps_its_file(tmp_path, i):
            (tmp_path / "file").write_text("kept")
            time.sleep(0.5)
            assert (tmp_path / "file").read_text() == "kept"
        """
    )
    base = pytester.path / "base"
    result = run_conveyor(pytester, "-n", "3", f"--basetemp={base}")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=6)
    assert {path.name for path in base.iterdir()} <= {"gw0", "gw1", "gw2"}


TMP_PATH_TESTS = """
    import os, pathlib, time, pytest

    def wait_for_two_workers():
        here = pathlib.Path(os.environ["STARTED_DIR"])
        (here / os.environ["PYTEST_XDIST_WORKER"]).touch()
        deadline = time.monotonic() + 30
        while len(list(here.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)

    @pytest.mark.parametrize("i", range(6))
    def test_keeps_a_file(tmp_path, i):
        wait_for_two_workers()
        (tmp_path / "file").write_text("kept")
        if i % 3 == 1 and not os.environ.get("ALL_PASS"):
            with open(os.environ["FAILED_IN"], "a") as failed_in:
                failed_in.write(str(tmp_path) + "\\n")
            pytest.fail("failed on purpose")
    """


def _build_with_tmp_paths(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, run: int, *, all_pass: bool
) -> tuple[pytest.RunResult, list[str]]:
    started = pytester.path / f"started-{run}"
    started.mkdir()
    failed_in = pytester.path / f"failed-in-{run}"
    failed_in.touch()
    monkeypatch.setenv("STARTED_DIR", str(started))
    monkeypatch.setenv("FAILED_IN", str(failed_in))
    monkeypatch.setenv("ALL_PASS", "1" if all_pass else "")
    result = run_conveyor(pytester, "-n", "2", "-p", "no:randomly")
    return result, sorted(failed_in.read_text().split())


def test_a_builds_temporary_folders_are_one_numbered_folder_kept_as_pytest_keeps_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, start: str
) -> None:
    """Plain pytest keeps a session's tmp_path folders in one numbered folder and removes only
    those of sessions before the last `tmp_path_retention_count`. Each worker made a numbered
    folder of its own and, ending, removed the other workers' (a failed test's files were gone
    once the build ended, and one build used up the retention of several). The build now has
    one numbered folder, with a folder per worker in it, kept as plain pytest keeps its own."""
    temproot = pytester.path / "temproot"
    temproot.mkdir()
    monkeypatch.setenv("PYTEST_DEBUG_TEMPROOT", str(temproot))
    pytester.makeini("[pytest]\ntmp_path_retention_count = 2\n")
    pytester.makepyfile(test_tmp=TMP_PATH_TESTS)
    numbered = next(iter(temproot.glob("pytest-of-*")), None)
    for run in range(3):
        result, failed_in = _build_with_tmp_paths(pytester, monkeypatch, run, all_pass=False)
        assert result.ret == 1, result.stdout.str() + result.stderr.str()
        result.assert_outcomes(passed=4, failed=2)
        numbered = next(temproot.glob("pytest-of-*"))
        assert len(failed_in) == 2
        for folder in map(pathlib.Path, failed_in):
            assert folder.parent.parent == numbered / f"pytest-{run}", folder
            assert folder.parent.name in {"gw0", "gw1"}
            assert (folder / "file").read_text() == "kept"  # still there for a look
        assert "exited" not in result.stdout.str()
    assert numbered is not None
    assert sorted(path.name for path in numbered.glob("pytest-*")) == [
        "pytest-1",
        "pytest-2",
        "pytest-current",
    ]


def test_workers_without_a_controller_share_one_numbered_folder(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A machine that runs only `conveyor worker` has no controller to make the build's
    folder: each of its workers made a numbered folder of its own, and those ending first
    were removed by the others' ends beyond the retention count, with the files of the tests
    that failed in them (8 of 12 with 6 workers). The first worker that needs a folder now
    makes it, and the others take theirs in it."""
    temproot = pytester.path / "temproot"
    temproot.mkdir()
    monkeypatch.setenv("PYTEST_DEBUG_TEMPROOT", str(temproot))
    failed_in = pytester.path / "failed-in"
    pytester.makepyfile(
        test_tmp=f"""
        import os, time, pytest

        @pytest.mark.parametrize("i", range(12))
        def test_keeps_a_file(tmp_path, i):
            (tmp_path / "file").write_text("kept")
            with open({str(failed_in)!r}, "a") as failed_in:
                failed_in.write(str(tmp_path) + "\\n")
            time.sleep(0.1 * (i % 3))
            pytest.fail("failed on purpose")
        """
    )
    queue = ("--queue", f"sqlite://{pytester.path / 'q.db'}", "--build", "W1")
    workers = conveyor_popen(pytester.path, "worker", "-n", "6", *queue, "-p", "no:randomly")
    report = pytester.run(
        sys.executable, "-m", "conveyor", "report", *queue, "-p", "no:cacheprovider", timeout=300
    )
    output = communicate_or_dump_stacks(workers, 300)
    assert workers.returncode == 0, output
    report.assert_outcomes(failed=12)
    numbered = next(temproot.glob("pytest-of-*"))
    assert sorted(path.name for path in numbered.iterdir()) == ["pytest-0", "pytest-current"]
    folders = [pathlib.Path(line) for line in failed_in.read_text().split()]
    assert len(folders) == 12
    for folder in folders:
        assert folder.parent.parent == numbered / "pytest-0", folder
        assert (folder / "file").read_text() == "kept", folder


def test_a_passing_builds_temporary_folder_goes_under_the_failed_policy(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tmp_path_retention_policy = failed`: plain pytest removes a passing session's folder
    at its end, and keeps only failed tests' folders otherwise. The build's controller does
    the same with the build's folder, once its workers have left it."""
    temproot = pytester.path / "temproot"
    temproot.mkdir()
    monkeypatch.setenv("PYTEST_DEBUG_TEMPROOT", str(temproot))
    pytester.makeini("[pytest]\ntmp_path_retention_policy = failed\n")
    pytester.makepyfile(test_tmp=TMP_PATH_TESTS)
    result, _ = _build_with_tmp_paths(pytester, monkeypatch, 0, all_pass=True)
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=6)
    numbered = next(temproot.glob("pytest-of-*"))
    assert not (numbered / "pytest-0").exists()
    result, failed_in = _build_with_tmp_paths(pytester, monkeypatch, 1, all_pass=False)
    assert result.ret == 1
    kept = sorted(
        str(path.parent)
        for path in numbered.glob("pytest-[0-9]*/gw*/*/file")
        if not path.parent.is_symlink()  # pytest's `..._current` links
    )
    assert kept == failed_in


def test_a_replaced_workers_temporary_folder_is_kept_for_a_look(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, start: str
) -> None:
    """A test that took its worker down left its files in the worker's folder; the worker's
    replacement takes `gw0.2` beside it (as its log is named) instead of emptying it."""
    temproot = pytester.path / "temproot"
    temproot.mkdir()
    monkeypatch.setenv("PYTEST_DEBUG_TEMPROOT", str(temproot))
    pytester.makepyfile(
        test_crash="""
        import os, pathlib

        def test_crashes_once(tmp_path):
            (tmp_path / "file").write_text("left by the crash")
            marker = pathlib.Path(os.environ["CRASHED_ONCE"])
            if not marker.exists():
                marker.touch()
                os._exit(9)

        def test_after(tmp_path):
            (tmp_path / "file").write_text("after")
        """
    )
    monkeypatch.setenv("CRASHED_ONCE", str(pytester.path / "crashed-once"))
    result = run_conveyor(pytester, "-n", "1", "-p", "no:randomly")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    build = next(temproot.glob("pytest-of-*/pytest-0"))
    assert (build / "gw0" / "test_crashes_once0" / "file").read_text() == "left by the crash"
    assert {path.name for path in build.iterdir()} == {"gw0", "gw0.2"}


def test_a_temporary_root_that_cannot_be_used_fails_only_the_tests_that_need_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain pytest makes its temporary folder when a test first asks for one; where it
    cannot, those tests error and the others pass. The build's folder, made up front by the
    controller, must not fail the whole build instead."""
    not_a_folder = pytester.path / "not-a-folder"
    not_a_folder.write_text("")
    monkeypatch.setenv("PYTEST_DEBUG_TEMPROOT", str(not_a_folder))
    pytester.makepyfile(
        test_tmp="""
        def test_needs_a_folder(tmp_path):
            pass

        def test_needs_none():
            pass
        """
    )
    _, ours = assert_same_verdict(pytester, workers=2)
    ours.assert_outcomes(passed=1, errors=1)


def test_a_test_that_patches_fcntl_flock_does_not_reach_the_queue(
    pytester: pytest.Pytester,
) -> None:
    """filelock's own tests patch `fcntl.flock` to fail while they run; the SQLite queue's
    write lock looked it up at each call, so a worker's next lease, asked for at the test's
    teardown, failed with the test's mock and every worker died: the build stopped with most
    tests never run. conveyor's own calls use the functions as they were at its import."""
    pytester.makepyfile(
        test_flock="""
        import errno, fcntl, time
        import pytest

        @pytest.fixture
        def unsupported_flock(monkeypatch):
            def flock(*args):
                raise OSError(errno.ENOSYS, "Function not implemented")
            monkeypatch.setattr(fcntl, "flock", flock)

        @pytest.mark.parametrize("i", range(12))
        def test_without_flock(unsupported_flock, i):
            time.sleep(0.05)
            with pytest.raises(OSError):
                fcntl.flock(0, fcntl.LOCK_EX)
        """
    )
    _, ours = assert_same_verdict(pytester, "-p", "no:randomly", workers=2)
    ours.assert_outcomes(passed=12)
    assert "exited" not in ours.stdout.str()


def test_a_test_that_patches_time_is_not_joined_by_the_timeout_watchdog(
    pytester: pytest.Pytester,
) -> None:
    """Tests patch `time.sleep` (to skip a retry's delay) and `time.monotonic` while they
    run; the automatic timeout's watchdog thread called them meanwhile, and with sleep
    patched to return at once it spun for the whole test. It uses the functions as they were
    at its import. (The watchdog runs from the second build on: it needs timing history.)"""
    pytester.makepyfile(
        test_clock="""
        import threading, time

        real_sleep = time.sleep

        def test_patches_the_clock(monkeypatch):
            callers = []
            def record(*args):
                callers.append(threading.current_thread().name)
                return 0.0
            monkeypatch.setattr(time, "sleep", record)
            monkeypatch.setattr(time, "monotonic", record)
            real_sleep(1.2)  # the watchdog looks at least every 0.5 s
            assert [name for name in callers if name != "MainThread"] == []

        def test_other():
            pass
        """
    )
    for _ in ("recording the history", "using it"):  # kept in pytest's cache
        result = pytester.run(
            sys.executable, "-m", "conveyor", "run", "-n", "1", "-p", "no:randomly", timeout=120
        )
        assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*timing history knows 2 of 2 tests*"])


TWO_ITEMS_ONE_ID = """
import pytest

class Check(pytest.Item):
    def __init__(self, *, ok, **kwargs):
        super().__init__(**kwargs)
        self.ok = ok

    def runtest(self):
        assert self.ok, "the first of two checks named alike fails"

    def reportinfo(self):
        return self.path, None, self.name

class Checks(pytest.File):
    def collect(self):
        # As pytest-checkdocs yields `.::project` twice: two items, one test id.
        yield Check.from_parent(self, name="project", ok=False)
        yield Check.from_parent(self, name="project", ok=True)

def pytest_collect_file(file_path, parent):
    if file_path.name == "checks.txt":
        return Checks.from_parent(parent, path=file_path)
"""


def test_two_items_with_one_test_id_both_run(pytester: pytest.Pytester, start: str) -> None:
    """Plain pytest runs both items of a test id collected twice. The queue held one unit per
    id, so one of them never ran, and when it was the failing one the build was green."""
    pytester.makeconftest(TWO_ITEMS_ONE_ID)
    pytester.path.joinpath("checks.txt").write_text("")
    pytester.makepyfile(test_other="def test_other(): pass")
    plain, ours = assert_same_verdict(pytester, "-p", "no:randomly", "-rA", workers=2)
    assert plain.ret == 1
    ours.assert_outcomes(passed=2, failed=1)
    ours.stdout.fnmatch_lines(["PASSED checks.txt::project", "FAILED checks.txt::project - *"])
    assert "duplicate" not in ours.stdout.str()


UNITTEST_SUBTESTS = """
import unittest


class Numbers(unittest.TestCase):
    def test_each(self):
        for i in range(3):
            with self.subTest(i=i):
                self.assertNotEqual(i, 1)


def test_with_the_fixture(subtests):
    for i in range(2):
        with subtests.test(i=i):
            assert i < 5


def test_plain():
    pass
"""
HEADER = ("platform ", "rootdir:", "plugins:", "configfile:", "cachedir:", "conveyor:")


def _shown(result: pytest.RunResult) -> list[str]:
    """What a run wrote besides its header, conveyor's own lines and the times."""
    return [
        re.sub(r" in [\d.]+s", " in Xs", line)
        for line in result.outlines
        if line.strip() and not line.startswith(HEADER)
    ]


@pytest.mark.skipif(not hasattr(pytest, "Subtests"), reason="subtests are built in from pytest 9")
@pytest.mark.parametrize("options", [["-q"], ["-v"], ["-q", "--capture=sys"]], ids=" ".join)
def test_a_unittest_subtests_output_is_captured_as_in_plain_pytest(
    pytester: pytest.Pytester, options: list[str]
) -> None:
    """A unittest subTest's report is logged from inside the test's call, while its output
    is captured: under fd capture (the default) plain pytest's letter and -v line for it go
    into the capture, not to the terminal. The build showed them (`uf.` and SUBPASSED lines
    where plain pytest shows `.`). Under --capture=sys they reach the terminal in both."""
    pytester.makepyfile(test_subtests=UNITTEST_SUBTESTS)
    plain = run_plain(pytester, "-p", "no:randomly", *options)
    ours = run_conveyor(pytester, "-n", "1", "-p", "no:randomly", *options)
    assert ours.ret == plain.ret == 1
    assert _shown(ours) == _shown(plain), "\n".join(_shown(ours))
