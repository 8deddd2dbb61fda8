"""Where conveyor relies on pytest's behaviour beyond its documented API, each place saying
what it relies on, so a new pytest version has one module to check."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import re
import shutil
import socket
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType, MappingProxyType
from typing import IO, Any

import pytest
from _pytest import junitxml
from _pytest.reports import CollectErrorRepr as CollectErrorRepr  # a collection error as kept

from conveyor.junit_records import JunitRecords, JunitRecordsReplay
from conveyor.live_log import LiveLogRecorder, LiveLogReplay
from conveyor.machine_lock import machine_lock

try:
    from _pytest.nodeid import NodeId
except ImportError:  # pytest < 9: a report's nodeid is a plain string
    NodeId = None  # type: ignore[assignment,misc,unused-ignore]
try:
    from _pytest.subtests import failed_subtests_key
except ImportError:  # pytest < 9: no subtests of its own
    failed_subtests_key = None  # type: ignore[assignment,misc,unused-ignore]


def remember_collected(config: pytest.Config, nodeids: Iterable[str]) -> None:
    """Keep the build's test ids in what pytest's cacheprovider writes as "cache/nodeids"
    (which `--nf` reads to tell new tests): it learns them while collecting, which the
    controller does not do, and would otherwise write an empty list over a fresh cache, so
    that a later `pytest --nf` took every test for a new one."""
    plugin = config.pluginmanager.get_plugin("nfplugin")
    known = getattr(plugin, "cached_nodeids", None)
    if not isinstance(known, set):
        return
    if NodeId is None:  # pytest < 9 keeps them as strings
        known.update(nodeids)
        return
    # pytest 9 keeps NodeId objects, which are not equal to their strings; parsing is the
    # costly part (about 1 s per 100,000 ids), so only ids the cache does not hold yet are.
    held = {str(nodeid) for nodeid in known}
    known.update(NodeId.parse(n) for n in nodeids if n not in held)


SUBTEST_REPORT_TYPE = "SubTestReport"  # _pytest.subtests.SubtestReport._to_json's marker


def settle_outcome(config: pytest.Config, report: pytest.TestReport) -> None:
    """Let pytest decide a test's final outcome where the state it decides from lives.

    pytest 9's subtests plugin fails a passed test that had failed subtests inside its
    `pytest_report_teststatus`, from a count stashed in the config of the process that ran the
    test; the controller that replays the report has no such count. Asking the hook in the
    worker applies that decision to the report before it is serialised."""
    if report.when == "call" and type(report) is pytest.TestReport:
        config.hook.pytest_report_teststatus(report=report, config=config)


def restore_subtest_context(report: Any, raw: Mapping[str, Any]) -> None:
    """pytest's SubtestContext applies saferepr to its kwargs on creation, deserialisation
    included, so `n=1` would read `n='1'` after a round trip; put back the values as sent
    (relies on SubtestContext being a frozen dataclass with a `kwargs` field)."""
    if raw.get("_report_type") != SUBTEST_REPORT_TYPE:
        return
    context = getattr(report, "context", None)
    sent = raw.get("_subtest.context", {}).get("kwargs")
    if context is not None and isinstance(sent, dict) and hasattr(context, "kwargs"):
        object.__setattr__(context, "kwargs", dict(sent))


def forward_rerun_reports(pluginmanager: pytest.PytestPluginManager) -> None:
    """pytest-rerunfailures logs a rerun attempt's report on a worker only when it finds the
    pytest-xdist distribution (`works_with_current_xdist()`); otherwise the attempt vanishes
    and no "R" or "N rerun" is shown. A conveyor worker forwards every report, so without
    xdist installed it is told the worker can (relies on that module-level function)."""
    module: Any = pluginmanager.get_plugin("rerunfailures")
    check = getattr(module, "works_with_current_xdist", None)
    if check is not None and not check():
        module.works_with_current_xdist = lambda: True


def remap_coverage_paths(pluginmanager: pytest.PytestPluginManager) -> None:
    """pytest-cov's distributed master adds each remote worker's checkout to the `[paths]
    source` aliases of the coverage object it measures with, but combines with another one
    (`combining_cov`), so data from another checkout would be reported under its own paths.
    Give the combining object the same aliases (relies on CovPlugin.cov_controller holding
    `cov` and `combining_cov`, coverage.Coverage objects with `config.paths`)."""
    plugin = pluginmanager.get_plugin("_cov")
    controller = getattr(plugin, "cov_controller", None)
    measuring = getattr(controller, "cov", None)
    combining = getattr(controller, "combining_cov", None)
    if measuring is None or combining is None or measuring is combining:
        return
    aliases = list(measuring.config.paths.get("source", []))
    if len(aliases) > 1:
        combining.config.paths["source"] = aliases


def add_short_option(group: Any, short: str, long: str, **attrs: Any) -> None:
    """pytest reserves lowercase short options for itself (`group.addoption` refuses them);
    `-n` is pytest-xdist's, added through the group's private `_addoption` as xdist does, and
    conveyor adds it only where xdist is not installed."""
    group._addoption(short, long, **attrs)


class SilentReporter:
    """Stands in for pytest's terminal reporter in a worker: the same writing methods, writing
    nothing, and a terminal writer (`_tw`, which `config.get_terminal_writer()` returns and
    plugins write on) that writes to the worker's log. Relies on pytest finding the reporter
    as the "terminalreporter" plugin and reading only these attributes of it."""

    def __init__(self, config: pytest.Config, writer: Any) -> None:
        self.config = config
        self._tw = writer
        self.stats: dict[str, list[Any]] = {}
        self.verbosity = config.option.verbose
        self.isatty = False

    def _discard(self, *args: Any, **kwargs: Any) -> None:
        return None

    write = write_line = write_sep = line = rewrite = section = _discard
    ensure_newline = flush = write_ensure_prefix = _discard


def silence_terminal(config: pytest.Config) -> None:
    """A worker's own terminal output (progress, the summary of its share of tests) would
    only cost time: the controller prints everything. A silent stand-in keeps the terminal
    writer that assertion rewriting and plugins ask for; what plugins write on it themselves
    (pytest-timeout's stack dump) goes to the worker's log."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    writer = getattr(reporter, "_tw", None)
    if reporter is not None and writer is not None:
        config.pluginmanager.unregister(reporter)
        silent = SilentReporter(config, type(writer)(sys.__stderr__))
        config.pluginmanager.register(silent, "terminalreporter")


class NextItem:
    """The `nextitem` pytest gets, resolved when pytest first looks at it: at the running
    test's teardown, where it decides which fixtures the next test still needs. Falsy when
    there is no next test (everything is then torn down, as after a plain run's last test).
    Relies on SetupState.teardown_exact testing `nextitem` for truth and then calling its
    listchain(), and on nothing else needing a real Item before then."""

    _UNSET: Any = object()

    def __init__(self, resolve: Callable[[], pytest.Item | None]) -> None:
        self._resolve = resolve
        self._item: Any = self._UNSET

    def _get(self) -> pytest.Item | None:
        if self._item is self._UNSET:
            self._item = self._resolve()
        return self._item  # type: ignore[no-any-return]

    def __bool__(self) -> bool:
        return self._get() is not None

    def __getattr__(self, name: str) -> Any:
        item = self._get()
        if item is None:
            raise AttributeError(name)
        return getattr(item, name)


def last_failed_status(config: pytest.Config) -> str | None:
    """The cache plugin's "run-last-failure: ..." header line, computed in a worker at
    collection (relies on LFPlugin keeping it in `_report_status`)."""
    lfplugin = config.pluginmanager.get_plugin("lfplugin")
    status = getattr(lfplugin, "_report_status", None)
    return status if isinstance(status, str) else None


def replay_collection_counts(config: pytest.Config, collected: int, lf_status: object) -> None:
    """What the controller, which collects nothing, shows as a plain run would: "collected N
    items" (TerminalReporter counts in `_numcollected`) and the last-failed header line."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and hasattr(reporter, "_numcollected"):
        reporter._numcollected = collected
    lfplugin = config.pluginmanager.get_plugin("lfplugin")
    if lfplugin is not None and isinstance(lf_status, str):
        lfplugin._report_status = lf_status


def announce_collecting(config: pytest.Config) -> None:
    """pytest's "collecting ... " (on a terminal, or with -v), which the terminal reporter
    writes in its own pytest_collection: the controller's implementation of that hook comes
    first and ends the hook, so it asks the reporter to write it."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    start = getattr(reporter, "pytest_collection", None)
    if callable(start):
        start()


ROW_OF_LETTERS = "conveyor: a row of letters"  # what stands in for a file name in that row


@contextlib.contextmanager
def progress_letters_framed(reporter: Any) -> Iterator[None]:
    """At the default verbosity plain pytest starts each file's row of letters after a blank
    line ("test_x.py .F"), and a blank line ends the last row before the summary. Conveyor's
    one row (files finish interleaved) gets the same blank lines (relies on TerminalReporter's
    `currentfspath`: while it is set, `ensure_newline` ends the row with a line break)."""
    if getattr(reporter, "verbosity", None) == 0:
        reporter.ensure_newline()
        reporter._tw.line()
        reporter.currentfspath = ROW_OF_LETTERS
    yield


def _progress_code() -> frozenset[Any]:
    """The code of the terminal reporter's methods that write the progress row at the default
    verbosity: a test's letter, its file's name, the percentage at the row's end."""
    from _pytest.terminal import TerminalReporter

    names = (
        "pytest_runtest_logreport",
        "pytest_runtest_logfinish",
        "write_fspath_result",
        "_write_progress_information_filling_space",
        "_write_progress_information_if_past_edge",
    )
    codes = (getattr(getattr(TerminalReporter, name, None), "__code__", None) for name in names)
    return frozenset(code for code in codes if code is not None)


class _ProgressDropped(io.TextIOBase):
    """The terminal writer's file while a live status line stands in for the progress row:
    what the reporter's own progress code writes is dropped (told by the caller of the
    writer's write, a few frames up); everything else, a plugin that prints a failure as it
    happens (pytest-instafail, pytest-sugar, also from a subclass of the reporter), goes to
    `above`."""

    CALLERS_CHECKED = 4  # the writer's write, line and sep, then whose method asked

    def __init__(self, above: IO[str]) -> None:
        self.above = above
        self.progress_code = _progress_code()

    def write(self, text: str) -> int:
        frame: FrameType | None = sys._getframe(1)
        for _ in range(self.CALLERS_CHECKED):
            if frame is None:
                break
            if frame.f_code in self.progress_code:
                return len(text)
            frame = frame.f_back
        return self.above.write(text)

    def flush(self) -> None:
        self.above.flush()

    def isatty(self) -> bool:
        return True


@contextlib.contextmanager
def progress_letters_hidden(reporter: Any, above: IO[str]) -> Iterator[None]:
    """pytest's row of progress letters goes nowhere while a live status line stands in for
    it; what else is written on the terminal meanwhile is printed above that line (`above`),
    and the summary after the run is untouched. Relies on TerminalReporter writing through
    `_tw`, a TerminalWriter whose output file is `_file`, on `_show_progress_info`, and on
    which of its methods write the progress row (`_progress_code`)."""
    writer = reporter._tw
    original = writer._file
    file = writer._file = _ProgressDropped(above)
    reporter._show_progress_info = False
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            file.flush()
        writer._file = original


def terminal_output_captured(config: pytest.Config) -> bool:
    """Whether what pytest's terminal writes now lands in the running test's captured output
    rather than on the terminal: under fd capture (the default) while the global capture is
    on, inside a test's phase. A unittest `subTest`'s report is logged from there, so plain
    pytest's letter and -v line for it vanish into the capture. Relies on the capture
    manager's `_method` and `_global_capturing.is_started()`."""
    capman: Any = config.pluginmanager.get_plugin("capturemanager")
    if capman is None or getattr(capman, "_method", None) != "fd":
        return False
    capturing = getattr(capman, "_global_capturing", None)
    started = getattr(capturing, "is_started", None)
    return bool(started is not None and started())


class _Swallowed(io.TextIOBase):
    """A terminal writer's file that keeps nothing: the writer still counts what it wrote,
    as it does when its output goes into a test's capture."""

    def write(self, text: str) -> int:
        return len(text)


@contextlib.contextmanager
def terminal_output_swallowed(config: pytest.Config) -> Iterator[None]:
    """pytest's terminal writes go nowhere while the reporter still takes them as written:
    for a report a plain run logs while the test's output is captured
    (`terminal_output_captured`). Relies on the reporter's `_tw` and its file `_file`."""
    reporter: Any = config.pluginmanager.get_plugin("terminalreporter")
    writer = getattr(reporter, "_tw", None)
    if writer is None or not hasattr(writer, "_file"):
        yield
        return
    original = writer._file
    writer._file = _Swallowed()
    try:
        yield
    finally:
        writer._file = original


def junit_testcase_appender(config: pytest.Config) -> Callable[[Any, Any], None] | None:
    """A way to add an element inside a test's <testcase> of --junitxml, or None without it
    (relies on the LogXML object in `config.stash[junitxml.xml_key]` and its node_reporter)."""
    xml = config.stash.get(junitxml.xml_key, None)
    if xml is None:
        return None

    def append(report: Any, element: Any) -> None:
        xml.node_reporter(report).append(element)

    return append


def stand_in_for_junitxml(config: pytest.Config, records: JunitRecords) -> bool:
    """A worker of a build with --junitxml: `records` where pytest's fixtures look for the
    junitxml writer, which pytest makes in the controller only (conveyor.junit_records).
    Relies on record_testsuite_property, record_xml_attribute and the xunit2 warnings reading
    `config.stash[junitxml.xml_key]` (`family`, `add_global_property`, `node_reporter`), and
    on junitxml's unconfigure unregistering that object as a plugin."""
    if not getattr(config.option, "xmlpath", None) or junitxml.xml_key in config.stash:
        return False
    records.family = str(config.getini("junit_family"))  # declared with --junitxml
    stash: Any = config.stash  # keyed for LogXML: the fixtures need only what records has
    stash[junitxml.xml_key] = records
    config.pluginmanager.register(records, "conveyor-junit-records")
    return True


def junit_records_replay(config: pytest.Config) -> JunitRecordsReplay | None:
    """The controller's writer of what workers' tests recorded, or None without --junitxml
    (relies on the LogXML object's `node_reporter` and `add_global_property`)."""
    xml = config.stash.get(junitxml.xml_key, None)
    return JunitRecordsReplay(xml) if xml is not None else None


def record_live_logs(config: pytest.Config, recorder: LiveLogRecorder) -> bool:
    """A worker with live logging on keeps each test's records for the controller instead of
    writing them to its log (conveyor.live_log). Relies on pytest's logging plugin (named
    "logging-plugin") reading its live handler from `log_cli_handler` at each use, and calling
    its `reset` and `set_when`; with live logging off that handler is a NullHandler."""
    plugin = config.pluginmanager.get_plugin("logging-plugin")
    if _live_handler(plugin) is None:
        return False
    setattr(plugin, "log_cli_handler", recorder)  # noqa: B010 - pytest's plugin, untyped here
    return True


def live_log_replay(config: pytest.Config) -> LiveLogReplay | None:
    """The controller's writer of workers' live log records, or None with live logging off
    (relies on the same `log_cli_handler`, pytest's live handler on the terminal)."""
    handler = _live_handler(config.pluginmanager.get_plugin("logging-plugin"))
    return LiveLogReplay(handler) if handler is not None else None


def _live_handler(plugin: object) -> logging.StreamHandler[Any] | None:
    """pytest's live log handler on the terminal, or None with live logging off."""
    handler = getattr(plugin, "log_cli_handler", None)
    if isinstance(handler, logging.StreamHandler) and hasattr(handler, "set_when"):
        return handler
    return None


# Beyond this many tests the file keeps completion order: the sort's table of every test's
# <testcase> name would cost the controller about 200 bytes a test.
JUNIT_SORT_LIMIT = 200_000


def sort_junit_in_collection_order(config: pytest.Config, position: Mapping[str, int]) -> None:
    """--junitxml writes its <testcase> elements in the order their tests first reported,
    which is collection order in a plain run and completion order in a build: sorted as plain
    pytest writes them, so that two runs' files compare line by line. What has no position (a
    collection error) keeps its place before the tests. pytest empties a node reporter once
    its test is done, keeping only the element it wrote, so the element's classname and name
    are matched with each test's as pytest makes them (`mangle_test_address`, `prefix`).
    Relies on the LogXML object's `node_reporters_ordered` and `prefix`."""
    xml = config.stash.get(junitxml.xml_key, None)
    ordered = getattr(xml, "node_reporters_ordered", None)
    if not isinstance(ordered, list) or not position or len(position) > JUNIT_SORT_LIMIT:
        return
    prefix = getattr(xml, "prefix", None)
    rank: dict[tuple[str, str], int] = {}
    for nodeid, place in position.items():
        try:
            names = junitxml.mangle_test_address(nodeid)
        except Exception:  # an id pytest's own parser refuses: left where it is
            continue
        classname = ".".join(names[:-1])
        rank[(f"{prefix}.{classname}" if prefix else classname, names[-1])] = place

    def place_of(reporter: Any) -> int:
        element = reporter.to_xml()
        return rank.get((element.get("classname", ""), element.get("name", "")), -1)

    ordered.sort(key=place_of)


# The standard parts of a report: a stub leaves out the heavy ones (keywords, captured
# output, user properties) and the start and stop times nothing reads once the hooks have seen
# them, holds the others in slots, and keeps anything else a plugin attached to the report in
# its __dict__, which exists only for such reports. "$report_type" is the serialisation's own
# marker, which pytest 9 leaves on the report: kept, it gave every stub a __dict__ of its own.
_LEFT_OUT = frozenset(
    {
        "keywords",
        "sections",
        "longrepr",
        "user_properties",
        "outcome",
        "_id",
        "nodeid",
        "start",
        "stop",
        "$report_type",
    }
)
_SLOTS = ("duration", "id", "location", "when")


class PassedStub:
    """What the terminal keeps of a passed phase once every hook has seen its report: enough
    for the summary's counts, --durations, the order of the stats and the search for a failed
    test's teardown output. Relies on TerminalReporter reading only these attributes of what
    `stats` holds for passed phases (checked against pytest 8.0 and the newest in CI). Four
    slots and the duration's float, three a test: at a million tests every slot is 24 MB, so a
    stub has no __dict__ unless a plugin attached something to the report (PassedStubWithExtras)."""

    __slots__ = _SLOTS
    count_towards_summary = True
    outcome = "passed"
    passed, failed, skipped = True, False, False
    sections: tuple[()] = ()
    longrepr = None
    keywords: dict[str, Any] = {}
    user_properties: tuple[()] = ()

    def __init__(self, report: Any, first: Any) -> None:
        # One string object for each phase name, not one per report decoded from JSON.
        when = report.when
        self.when = sys.intern(when) if isinstance(when, str) else when
        self.duration = report.duration
        # The phases of one test share its id and location: one object each, not three.
        self.location = first.location
        self.id = getattr(first, "id", first.nodeid)  # pytest 9 files reports by `id`

    @property
    def nodeid(self) -> str:
        """The test's id as a string: pytest 9's NodeId keeps the string it was parsed from,
        and on older pytest `id` is that string."""
        return str(self.id)

    @property
    def __dict__(self) -> Mapping[str, Any]:  # type: ignore[override]
        """Nothing a plugin attached: one shared empty mapping. Plugins read every report's
        __dict__ at the summary (hypothesis looks for its statistics there); a stub without
        one broke them, and a real one each would be a dict a stub once read."""
        return _NOTHING_ATTACHED

    @staticmethod
    def of(report: Any, first: Any) -> PassedStub:
        """The stub of `report`, whose test's first report is `first`; with what a plugin
        attached to the report (hypothesis's statistics, read from `report.__dict__` at the
        summary) kept in its __dict__."""
        extra = {k: v for k, v in vars(report).items() if k not in _LEFT_OUT and k not in _SLOTS}
        if not extra:
            return PassedStub(report, first)
        stub = PassedStubWithExtras(report, first)
        vars(stub).update(extra)
        return stub


_NOTHING_ATTACHED: Mapping[str, Any] = MappingProxyType({})


class PassedStubWithExtras(PassedStub):
    """A stub of a report a plugin attached attributes of its own to, kept in its __dict__."""

    __slots__ = ("__dict__",)


def shared_node_id(nodeid: str) -> Any:
    """What the rebuilt reports of one test are given as their nodeid, so that its phases
    share one parsed id: pytest 9 parses the string into a NodeId per report, and keeps the
    call's for the session (its subtests ledger), the setup's (the terminal's progress set)
    and the stubs' (`stats`). The path, the same for every test of a file, is one string.
    On older pytest the string itself, which the reports then share. Relies on pytest 9's
    TestReport taking a NodeId as `nodeid` (coerce_node_id) and NodeId being a frozen
    dataclass with `path` among its fields."""
    if NodeId is None:
        return nodeid
    parsed = NodeId.parse(nodeid)
    object.__setattr__(parsed, "path", sys.intern(parsed.path))
    return parsed


def forget_subtest_lookups(config: pytest.Config, reports: list[Any]) -> None:
    """pytest 9 keeps, per process, a count of each test's failed subtests in a defaultdict
    that every call report's status lookup adds the test to. In the controller nothing counts
    there (the worker that ran the subtests already failed the test, `settle_outcome`), so
    every entry is a zero that lasts the session: about 60 bytes a test. Relies on
    _pytest.subtests.failed_subtests_key holding a defaultdict(int) keyed by report.id."""
    if failed_subtests_key is None:
        return
    counts = config.stash.get(failed_subtests_key, None)
    if not isinstance(counts, dict):
        return
    for report in reports:
        key = getattr(report, "id", None)
        if key is not None and counts.get(key) == 0:
            del counts[key]


def cache_value_path(cache: Any, key: str) -> Path | None:
    """Where pytest's cache keeps the value of `key` (the file `cache.set` writes and
    `cache.get` reads), its folder created, so that a large value can be written as a stream
    rather than as the one indented string `cache.set` builds; None where that cannot be done
    as pytest would (then use `cache.set`). Relies on Cache._getvaluepath, and on Cache._mkdir
    (newer pytest) creating the folder with the cache's supporting files; on older pytest
    only a folder that already exists is used."""
    value_path = getattr(cache, "_getvaluepath", None)
    if value_path is None:
        return None
    path = value_path(key)
    if not isinstance(path, Path):
        return None
    make_folder = getattr(cache, "_mkdir", None)
    if make_folder is not None:
        make_folder(path.parent)
    elif not path.parent.is_dir():
        return None
    return path


# Below this many tests nothing is slimmed: a plain run's objects, whatever a plugin reads.
SLIM_FROM_TESTS = 1000


def slim_passed_reports(config: pytest.Config, reports: list[Any]) -> None:
    """A passed test's reports, kept in the terminal's `stats` for the whole session, become
    stubs: the controller's memory then grows with the failures, not with the build (three
    full reports per test add up to gigabytes at a million tests). -rP/-rA, which print the
    output of passed tests at the end, keep them whole. Relies on TerminalReporter filing
    each report, as it is logged, at the end of `stats[category]`."""
    reporter: Any = config.pluginmanager.get_plugin("terminalreporter")
    stats = getattr(reporter, "stats", None)
    if not isinstance(stats, dict) or reporter.hasopt("P") or reporter.hasopt("A"):
        return
    if any(not report.passed or hasattr(report, "wasxfail") for report in reports):
        return
    mine = {id(report): report for report in reports}
    for category in ("", "passed"):
        filed: list[Any] = stats.get(category) or []
        index = len(filed) - 1
        while index >= 0 and id(filed[index]) in mine:
            report = filed[index]
            filed[index] = PassedStub.of(report, reports[0])
            index -= 1


def recount_summary_line(reporter: Any) -> None:
    """Entries added to the terminal's `stats` once the tests are over count in its last
    line too. Relies on TerminalReporter caching that line's colour and keys in `_main_color`
    (with `_known_types`), renewed only as the last test is reported: emptied here."""
    if hasattr(reporter, "_main_color"):
        reporter._main_color = None


def start_a_line(reporter: Any) -> None:
    """Move the terminal to the start of a line for other output. The row of letters goes on
    below it (its blank line before the summary kept); in a verbose listing the next test's
    line starts afresh, as pytest's own `ensure_newline` does it. Relies on TerminalReporter's
    `currentfspath` and `ensure_newline`, and its writer's `width_of_current_line`."""
    if reporter.currentfspath not in (None, ROW_OF_LETTERS):
        reporter.ensure_newline()
    elif getattr(getattr(reporter, "_tw", None), "width_of_current_line", 0):
        reporter.line("")


@contextlib.contextmanager
def uncaptured(config: pytest.Config | None) -> Iterator[None]:
    """Output that must reach the terminal while pytest's capture is on: an interrupt before
    the session's report, which would otherwise vanish into the capture. Relies on pytest's
    capture manager (plugin "capturemanager") and its global_and_fixture_disabled()."""
    capman: Any = config.pluginmanager.get_plugin("capturemanager") if config else None
    if capman is None or not hasattr(capman, "global_and_fixture_disabled"):
        yield
        return
    with capman.global_and_fixture_disabled():
        yield


def redirect_output(config: pytest.Config, log_path: str) -> None:
    """Point a forked worker's descriptors 1 and 2 at its own log, as a spawned worker's are,
    and give its output capture files of its own.

    The fork happened inside a pytest session: the capture objects are the fork server's, and
    a test module may have kept one (`orig_stdout = sys.stdout` at import, while collection
    was captured), so they stay the same objects; only what their descriptors refer to
    changes. Relies on the capture manager's `_global_capturing` (a MultiCapture, suspended
    between collection and the run loop) whose `out`/`err` FDCaptures keep `targetfd_save`
    (where a suspended capture sends the descriptor back) and `tmpfile` (where a running one
    sends it; shared with every other forked worker if left as it is), and on faulthandler's
    stashed copy of stderr (`fault_handler_stderr_fd_key`)."""
    import os
    import tempfile

    capman: Any = config.pluginmanager.get_plugin("capturemanager")
    if capman is not None:
        capman.suspend_global_capture()
    multi = getattr(capman, "_global_capturing", None)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    for capture in (getattr(multi, "out", None), getattr(multi, "err", None)):
        saved, tmpfile = getattr(capture, "targetfd_save", None), getattr(capture, "tmpfile", None)
        if not isinstance(saved, int) or tmpfile is None:
            continue  # capturing at the sys level only (or not at all): nothing shared
        os.dup2(log, saved)
        tmpfile.flush()
        with tempfile.TemporaryFile(buffering=0) as own:
            os.dup2(own.fileno(), tmpfile.fileno())
    os.close(log)
    try:
        from _pytest.faulthandler import fault_handler_stderr_fd_key
    except ImportError:  # pragma: no cover - a pytest without it
        return
    copy = config.stash.get(fault_handler_stderr_fd_key, None)
    if copy is not None:
        os.dup2(2, copy)


def fresh_basetemp(config: pytest.Config) -> None:
    """A forked worker's own temporary base directory. Had anything asked for it while the
    fork server collected, every worker would share one, and the first to end would remove
    it under the others. Relies on the config's `_tmp_path_factory` and its `_basetemp` and
    `_given_basetemp` (pytest's tmpdir plugin); a --basetemp the user gave is kept."""
    factory: Any = getattr(config, "_tmp_path_factory", None)
    if factory is not None and getattr(factory, "_given_basetemp", None) is None:
        factory._basetemp = None


def results_folder_emptied_once(
    config: pytest.Config, machine_run_folder: Path | None = None
) -> None:
    """allure-pytest's --clean-alluredir empties the results folder in pytest_configure, in
    every process that configures. In a build each worker did, while others were already
    writing results there (a worker runs tests as soon as the build has a manifest), and so
    did the controller, which may configure after the first results: results were lost. A
    worker therefore leaves the folder alone and waits for its controller's configure, which
    empties it once and then publishes the workers' input (ControllerPlugin), before it goes
    on. On a machine of workers alone, the first of them to configure empties it for all.
    Called before the plugins' pytest_configure, with the worker's input attached."""
    if not getattr(config.option, "clean_alluredir", False):
        return
    config.option.clean_alluredir = False
    if machine_run_folder is not None:
        _results_folder_emptied_on_this_machine(config, machine_run_folder)
        return
    fetch_now = getattr(getattr(config, "workerinput", None), "fetch_now", None)
    if callable(fetch_now):  # conveyor's WorkerInput (xdist_compat)
        fetch_now()


def _results_folder_emptied_on_this_machine(config: pytest.Config, run_folder: Path) -> None:
    """As allure-pytest's own --clean-alluredir does, once per machine: no worker of it has
    run a test before the first of them is past this point."""
    folder = getattr(config.option, "allure_report_dir", None)
    if not folder or config.option.collectonly:
        return
    note = run_folder / "results-folder-emptied"
    with machine_lock(run_folder):
        if not note.exists():
            shutil.rmtree(os.path.abspath(folder), ignore_errors=True)
            note.touch()


def _option_or_ini(config: pytest.Config, name: str) -> object:
    """As pytest's logging plugin reads its settings: the option, else the ini value."""
    value = getattr(config.option, name, None)
    if value is None:
        with contextlib.suppress(ValueError):
            value = config.getini(name)
    return value


def _log_file_to_share(config: pytest.Config) -> str | None:
    """pytest's --log-file (or `log_file` in its ini) when pytest would empty it as it opens
    it (log_file_mode "w", the default) and can be told to append (log_file_mode exists from
    pytest 8.1); else None."""
    if not hasattr(config.option, "log_file_mode"):
        return None
    log_file = _option_or_ini(config, "log_file")
    if not isinstance(log_file, str) or not log_file or log_file == os.devnull:
        return None
    if (_option_or_ini(config, "log_file_mode") or "w") != "w":
        return None
    return log_file


def _emptied(log_file: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
    open(log_file, "w").close()  # emptied, as pytest's mode "w" would


def log_file_emptied_for_the_build(config: pytest.Config) -> None:
    """pytest's logging plugin empties --log-file as it configures, in every process: each
    worker emptied what the others had written, and so did the controller, which configures
    after the first tests ran; a build's file kept a part of its lines. The controller empties
    it once, before its workers may write (`log_file_shared`), and every process appends."""
    log_file = _log_file_to_share(config)
    if log_file is None:
        return
    _emptied(log_file)
    config.option.log_file_mode = "a"


def log_file_shared(config: pytest.Config, machine_run_folder: Path | None = None) -> None:
    """A worker appends to --log-file, once it has been emptied for the build: by its
    controller's configure, which it waits for, or on a machine of workers alone by the
    first of them. Called before the plugins' pytest_configure, with the worker's input."""
    log_file = _log_file_to_share(config)
    if log_file is None:
        return
    config.option.log_file_mode = "a"
    if machine_run_folder is not None:
        note = machine_run_folder / "log-file-emptied"
        with machine_lock(machine_run_folder):
            if not note.exists():
                _emptied(log_file)
                note.touch()
        return
    fetch_now = getattr(getattr(config, "workerinput", None), "fetch_now", None)
    if callable(fetch_now):  # conveyor's WorkerInput: the controller has configured
        fetch_now()


def run_pytest(args: Sequence[str], plugins: Sequence[object], prog: str) -> int:
    """pytest.main, whose usage errors then name the command that was typed (`usage: conveyor
    run [options] ...`): pytest 9.1 and later name the program `pytest.main()` otherwise,
    which nobody typed. Older pytest names it from the command line."""
    from _pytest import config as pytest_config

    main = getattr(pytest_config, "_main", None)
    if main is not None and "prog" in inspect.signature(main).parameters:
        return int(main(args=list(args), plugins=list(plugins), prog=prog))
    return int(pytest.main(list(args), plugins=list(plugins)))


def own_coverage_data_files(config: pytest.Config) -> None:
    """pytest-cov's worker, when told it is not collocated with its controller (every worker
    of a build on a shared queue: conveyor.xdist_compat.adapt_input), combines the coverage
    data files it finds beside its own before it sends its data, and removes them. The
    workers of one machine share a directory: one combined another's file while that one
    was still writing it, and the other's data was lost with its output (a build failed
    --cov-fail-under at random). Each worker's data files get a name of its own
    (`.coverage.gw0-HOST-PID.*`, through COVERAGE_FILE, which coverage reads over
    `data_file`): the worker's id alone is shared by the `gw0` of every machine, and machines
    may share a checkout. The controller's final combine still gathers any left. Called
    before pytest-cov's worker starts coverage (its pytest_sessionstart)."""
    workerinput = getattr(config, "workerinput", None)
    if not workerinput or config.pluginmanager.get_plugin("_cov") is None:
        return
    try:
        host = workerinput["cov_master_host"]
    except (KeyError, TypeError):
        return  # pytest-cov is not measuring this build
    if host == socket.gethostname():
        return  # collocated: each worker only saves its own file
    data_file = os.environ.get("COVERAGE_FILE")
    if not data_file:
        try:
            import coverage

            cov_config = getattr(config.option, "cov_config", ".coveragerc")
            data_file = coverage.Coverage(config_file=cov_config).config.data_file
        except Exception:  # coverage's own error about its configuration comes later
            return
    os.environ["COVERAGE_FILE"] = f"{os.path.abspath(data_file)}.{_coverage_suffix(config)}"


def _coverage_suffix(config: pytest.Config) -> str:
    """This worker process's part of its coverage data files' names: its id, machine and
    process (no dot in it: `own_coverage_data_files_once_forked` finds it after the last)."""
    worker = config.workerinput["workerid"]  # type: ignore[attr-defined]
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())
    return f"{worker}-{host}-{os.getpid()}"


def own_coverage_data_files_once_forked(config: pytest.Config) -> None:
    """A worker forked after collection (--fork-workers) inherits the coverage its collecting
    process started, with that process's data file name: its files take its own name, as a
    spawned worker's do (own_coverage_data_files). Relies on pytest-cov's `cov_controller.cov`
    and on coverage's `Coverage._data` and `CoverageData._basename`, which names the files
    `combine` gathers; without them, nothing changes."""
    named = os.environ.get("COVERAGE_FILE", "")
    plugin = config.pluginmanager.get_plugin("_cov")
    cov = getattr(getattr(plugin, "cov_controller", None), "cov", None)
    data = getattr(cov, "_data", None)
    if not named or cov is None or not hasattr(data, "_basename"):
        return
    suffix = _coverage_suffix(config)
    base, _, previous = named.rpartition(".")
    if not base or data._basename != named or previous == suffix:  # type: ignore[union-attr]
        return  # not a name own_coverage_data_files gave
    own = f"{base}.{suffix}"
    os.environ["COVERAGE_FILE"] = own
    cov.config.data_file = own
    data._basename = own  # type: ignore[union-attr]
