"""The pytest worker's collaborators, without pytest: the batch policy (pure), the result
outbox and the retry policy on a real SQLite queue."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.batch_policy import AFFINITY_TARGET_S, MAX_BATCH, BatchPolicy, BatchRule
from conveyor.queue import Queue, open_queue
from conveyor.queue.protocol import EVENT_REQUEUED, EVENT_RESULT
from conveyor.result_outbox import FLUSH_MAX_RESULTS, ResultOutbox
from conveyor.retry_policy import RetryPolicy, exception_names
from conveyor.worker_exit import tail
from conveyor.worker_settings import StatusFile

MODULE_A = [f"test_a.py::test_{i}" for i in range(10)]
CLASS_B = [f"test_b.py::TestB::test_{i}" for i in range(5)]
MODULE_C = [f"test_c.py::test_{i}" for i in range(3)]
ORDER = MODULE_A + CLASS_B + MODULE_C


def policy(has_history: bool = False, grouping: str = "module") -> BatchPolicy:
    rule = BatchRule(ORDER, frozenset(), grouping=grouping, worker_count=2, has_history=has_history)
    return BatchPolicy(rule)


def test_without_anything_seen_one_unit_at_a_time() -> None:
    assert policy().batch(len(ORDER)) == 1


LONG_ORDER = ORDER + [f"test_d.py::test_{i}" for i in range(30)]


def test_a_module_run_is_reserved_together_by_the_durations_seen() -> None:
    rule = BatchRule(LONG_ORDER, frozenset(), grouping="module", worker_count=2, has_history=False)
    batches = BatchPolicy(rule)
    batches.reserved(MODULE_A[0])  # the first reservation took one unit of test_a.py
    batches.ran(0.01)
    assert batches.affinity == len(MODULE_A) - 1
    assert batches.batch(len(LONG_ORDER) - 1) == len(MODULE_A) - 1  # the rest of the module
    slow = BatchPolicy(rule)
    slow.reserved(MODULE_A[0])
    slow.ran(AFFINITY_TARGET_S / 3)  # three such tests fill the target
    assert slow.batch(len(LONG_ORDER) - 1) == 3


def test_without_history_a_run_near_the_end_is_shared_among_the_workers() -> None:
    """The slow tests last in a module, after quick ones: a worker that has seen only quick
    tests must not reserve the whole slow tail while seven others run dry (it then claimed
    all of it, out of reach of stealing, and handed it back one test at a time)."""
    module = [f"test_z.py::test_{i}" for i in range(20)]
    rule = BatchRule(module, frozenset(), grouping="module", worker_count=8, has_history=False)
    batches = BatchPolicy(rule)
    batches.reserved(module[5])
    batches.ran(0.03)
    assert batches.affinity == 14
    # Half its share of what is left, not all 14: steals never send a worker back within a
    # module, so a worker that has passed this run cannot take its tail from another.
    assert batches.batch(14) == 1
    assert batches.batch(40) == 3
    early = BatchPolicy(
        BatchRule(LONG_ORDER, frozenset(), grouping="module", worker_count=2, has_history=False)
    )
    early.reserved(MODULE_A[0])
    early.ran(0.01)
    assert early.batch(len(LONG_ORDER) - 1) == len(MODULE_A) - 1  # early on, the whole run


def test_without_history_nothing_is_claimed_beyond_the_promise() -> None:
    """Claimed leases cannot be stolen: a worker that ran quick tests must not claim the slow
    ones behind them, or idle workers watch it run them one by one."""
    batches = policy()
    batches.ran(0.01)  # quick so far: by its recent tests, 50 would fit in CLAIM_AHEAD_S
    assert batches.claim_ahead(MODULE_A) == 2  # the one to run and the one promised next
    assert batches.claim_ahead(MODULE_A[:1]) == 1
    expected = dict.fromkeys(ORDER, 0.01)
    rule = BatchRule(
        ORDER, frozenset(), grouping="module", worker_count=2, has_history=True, expected_s=expected
    )
    assert BatchPolicy(rule).claim_ahead(MODULE_A) == len(MODULE_A)  # history says: tiny


def test_a_module_history_has_not_timed_is_shared_as_without_history() -> None:
    """A new module of slow tests in a suite with history: its tests were estimated at the
    suite's median (tiny), so one worker reserved and claimed all of them, out of reach of
    stealing, while the others sat idle (12 tests of 1 s on one worker of two)."""
    new_module = [f"test_zz_new.py::test_{i}" for i in range(12)]
    order = LONG_ORDER + new_module
    timed = dict.fromkeys(LONG_ORDER, 0.001)
    expected = {**timed, **dict.fromkeys(new_module, 0.001)}  # the guess for untimed tests
    rule = BatchRule(
        order,
        frozenset(),
        grouping="module",
        worker_count=2,
        has_history=True,
        expected_s=expected,
        known=timed.keys(),
    )
    batches = BatchPolicy(rule)
    batches.reserved(new_module[0])
    batches.ran(0.001, new_module[0])
    assert batches.batch(len(new_module) - 1) < len(new_module) - 1  # not the whole run
    assert batches.claim_ahead(new_module[1:]) == 2  # the promise, nothing beyond
    batches.ran(1.0, new_module[1])
    assert batches.should_give_back()  # an untimed test turned out slow
    timed_run = [f"test_d.py::test_{i}" for i in range(30)]
    assert batches.claim_ahead(timed_run) > 2  # timed tiny tests still share a claim
    batches.ran(1.0, timed_run[0])
    assert not batches.should_give_back()  # a timed test's time was expected


def test_with_history_the_whole_run_up_to_the_batch_cap() -> None:
    batches = policy(has_history=True)
    assert batches.batch(len(ORDER)) == min(len(MODULE_A), MAX_BATCH)


def test_a_reservation_never_ends_inside_a_class() -> None:
    batches = policy()
    pending_at_class = len(CLASS_B) + len(MODULE_C)
    assert batches.rule.to_group_end(pending_at_class, 2) == len(CLASS_B)
    assert policy(grouping="test").rule.to_group_end(pending_at_class, 2) == 2


def test_a_slow_run_without_history_is_handed_back_but_keeps_its_class() -> None:
    batches = policy()
    batches.ran(0.01)
    assert not batches.should_give_back()
    batches.ran(5.0)
    assert batches.should_give_back()
    assert not policy(has_history=True).should_give_back()
    rest = CLASS_B[2:] + MODULE_C
    assert batches.rest_of_group(CLASS_B[1], rest) == len(CLASS_B) - 2
    assert policy(grouping="test").rest_of_group(CLASS_B[1], rest) == 0


@pytest.fixture
def queue(tmp_path: Path) -> Queue:
    opened = open_queue(f"sqlite://{tmp_path / 'q.db'}", "b1")
    opened.populate("w1", ORDER, {})
    return opened


def results(queue: Queue, kind: str = EVENT_RESULT) -> list[str | None]:
    return [event.unit for event in queue.events(0) if event.kind == kind]


def test_the_outbox_sends_in_batches_and_says_what_it_still_holds(queue: Queue) -> None:
    leased = [lease.unit for lease in queue.reserve("w1", FLUSH_MAX_RESULTS + 1).leases]
    stopped: list[bool] = []
    outbox = ResultOutbox(queue, "w1", on_stopped=lambda: stopped.append(True))
    outbox.add(leased[0], {"nodeid": leased[0], "reports": []})
    outbox.flush()  # neither due nor full: it waits for more
    assert results(queue) == [] and outbox.held() == [leased[0]]
    outbox.flush(force=True)
    assert results(queue) == [leased[0]] and outbox.held() == []
    queue.stop("-x")
    outbox.add(leased[1], {"nodeid": leased[1], "reports": []})
    outbox.flush(force=True)
    assert stopped == [True]  # the build was stopped: the worker runs nothing more


def test_retries_only_failures_and_only_the_named_exceptions(queue: Queue) -> None:
    failed = [{"outcome": "failed"}]
    assert not RetryPolicy(0, (), -1.0).wants_retry(failed, set())
    assert RetryPolicy(1, (), -1.0).wants_retry(failed, set())
    assert not RetryPolicy(1, (), -1.0).wants_retry([{"outcome": "passed"}], set())
    named = RetryPolicy(1, ("ConnectionError",), -1.0)
    assert not named.wants_retry(failed, {"ValueError"})
    try:
        try:
            raise ConnectionRefusedError("refused")
        except OSError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as error:
        raised = exception_names(error)
    assert named.wants_retry(failed, raised)  # a subclass, found down the chain
    unit = queue.reserve("w1", 1).leases[0].unit
    once = RetryPolicy(1, (), -1.0)
    payload = {"nodeid": unit, "reports": failed}
    assert once.requeue(queue, "w1", unit, payload)  # back to the queue
    again = queue.reserve("w2", len(ORDER)).leases
    assert unit in [lease.unit for lease in again]
    assert not once.requeue(queue, "w2", unit, payload)  # budget spent: this result is final
    assert results(queue, EVENT_REQUEUED) == [unit]


def test_the_status_file_reads_the_last_state_whatever_its_length(tmp_path: Path) -> None:
    path = tmp_path / "gw0.status"
    status = StatusFile(str(path))
    status.write("running test_a.py::test_with_a_long_name[case-1]")
    status.write("between tests")
    assert StatusFile.read(path) == "between tests"
    status.write("running test_b.py::t")
    assert StatusFile.read(path) == "running test_b.py::t"


WATCHDOG_SCRIPT = """
import sys, time
from conveyor.watchdog import Watchdog

dog = Watchdog(open(sys.argv[1], "w"), exit_code=7)
dog.start()
for _ in range(50):  # many short tests, each well within its timeout
    dog.arm(0.3, "header: a finished test")
    dog.disarm()
dog.arm(5.0, "header: a test that finishes in time")
time.sleep(0.2)
dog.arm(0.2, "header: the hung test")
time.sleep(30)
"""


def test_the_watchdog_ends_the_process_on_the_hung_test_only(tmp_path: Path) -> None:
    dump = tmp_path / "timeout.txt"
    done = subprocess.run(
        [sys.executable, "-c", WATCHDOG_SCRIPT, str(dump)], timeout=60, check=False
    )
    assert done.returncode == 7
    text = dump.read_text()
    assert text.startswith("header: the hung test\nTimeout (0:00:00.200000)!")
    hung_line = WATCHDOG_SCRIPT.splitlines().index("time.sleep(30)") + 1
    assert f'File "<string>", line {hung_line} in <module>' in text  # the hung test's stack


PAUSED_WATCHDOG_SCRIPT = """
import sys, time
from conveyor.watchdog import Watchdog

dog = Watchdog(open(sys.argv[1], "w"), exit_code=7)
dog.start()
dog.arm(1.0, "header: a test whose protocol waits on the queue")
time.sleep(0.3)
with dog.paused():  # conveyor's own work: 2 s, longer than the whole timeout
    time.sleep(2.0)
time.sleep(0.3)  # the test's own time: 0.6 s of 1.0
dog.disarm()
if sys.argv[2] == "overrun":
    dog.arm(1.0, "header: the clock goes on after a pause")
    with dog.paused():
        time.sleep(0.2)
    time.sleep(30)
"""


@pytest.mark.parametrize("case", ["within", "overrun"])
def test_the_watchdog_stops_the_clock_while_paused(tmp_path: Path, case: str) -> None:
    dump = tmp_path / "timeout.txt"
    done = subprocess.run(
        [sys.executable, "-c", PAUSED_WATCHDOG_SCRIPT, str(dump), case], timeout=60, check=False
    )
    if case == "within":
        assert done.returncode == 0 and dump.read_text() == ""
    else:
        assert done.returncode == 7
        assert dump.read_text().startswith("header: the clock goes on after a pause\n")


STALLED_WATCHDOG_SCRIPT = """
import ctypes, sys, time
from conveyor.watchdog import Watchdog

usleep = ctypes.PyDLL(None).usleep  # libc's usleep without releasing the GIL

def hold_the_gil(seconds):
    usleep(int(seconds * 1e6))

dog = Watchdog(open(sys.argv[1], "w"), exit_code=7)
dog.start()
time.sleep(0.2)
case = sys.argv[2]
if case in ("stall", "hang"):
    dog.arm(1.0, "header: a test the process stalls in")
    hold_the_gil(2)  # as a full garbage collection of a huge heap does: no thread runs
    time.sleep(0.3)  # the test's own time: 0.3 s of 1.0
    dog.disarm()
if case == "hang":
    dog.arm(1.0, "header: a stalled test that then hangs")
    hold_the_gil(0.8)
    time.sleep(30)
if case == "pause":  # a stall, then the next lease asked for at teardown: one test still
    dog.arm(2.0, "header: a stalled test whose teardown waits on the queue")
    hold_the_gil(1.0)
    with dog.paused():
        time.sleep(0.05)
    time.sleep(1.3)  # 2.35 s in all, 1.3 s of its own
    dog.disarm()
if case == "gil-hang":  # a hang in code that holds the GIL for long stretches: still stopped
    dog.arm(1.0, "header: a test that holds the GIL forever, in stretches")
    for _ in range(40):
        hold_the_gil(1.5)
"""


@pytest.mark.parametrize("case", ["stall", "hang", "pause", "gil-hang"])
def test_the_watchdog_does_not_count_a_stall_it_could_not_see(tmp_path: Path, case: str) -> None:
    """Up to three timeouts of its own: beyond that, the GIL held in stretches is a hang."""
    dump = tmp_path / "timeout.txt"
    done = subprocess.run(
        [sys.executable, "-c", STALLED_WATCHDOG_SCRIPT, str(dump), case], timeout=60, check=False
    )
    if case in ("stall", "pause"):
        assert done.returncode == 0 and dump.read_text() == ""
    else:
        assert done.returncode == 7
        header = {"hang": "a stalled test that then hangs", "gil-hang": "a test that holds"}
        assert dump.read_text().startswith(f"header: {header[case]}")


def test_a_workers_last_output_keeps_its_last_traceback_whole(tmp_path: Path) -> None:
    """A worker that exited outside any test shows its log's tail: it began in the middle
    of the traceback, at a "^^^^" line, where plain pytest prints the whole of it."""
    log = tmp_path / "gw0.log"
    frames = "".join(f'  File "x.py", line {n}, in f\n    f()\n    ^^^\n' for n in range(8))
    log.write_text("collected\n" * 40 + "Traceback (most recent call last):\n" + frames + "E: x\n")
    shown = tail(log, 10).splitlines()
    assert shown[0] == "Traceback (most recent call last):" and shown[-1] == "E: x"
    log.write_text("line\n" * 40 + "the end\n")
    assert tail(log, 2).splitlines() == ["line", "the end"]


def test_a_workers_last_output_keeps_the_chain_of_its_last_exception(tmp_path: Path) -> None:
    """An error raised from another ("The above exception was the direct cause...") says what
    went wrong in the first traceback of the chain: the tail keeps the whole chain, and only
    the chain."""
    log = tmp_path / "gw0.log"
    frame = '  File "x.py", line 1, in f\n    f()\n'
    unrelated = "Traceback (most recent call last):\n" + frame + "ValueError: earlier, unrelated\n"
    cause = "Traceback (most recent call last):\n" + frame + "RuntimeError: the cause\n"
    chained = (
        "\nThe above exception was the direct cause of the following exception:\n\n"
        "Traceback (most recent call last):\n" + frame * 3 + "Warning: what was raised\n"
    )
    log.write_text("collected\n" * 5 + unrelated + "ran\n" * 30 + cause + chained)
    shown = tail(log, 5).splitlines()
    assert shown[0] == "Traceback (most recent call last):"
    assert "RuntimeError: the cause" in shown and shown[-1] == "Warning: what was raised"
    assert "ValueError: earlier, unrelated" not in shown
