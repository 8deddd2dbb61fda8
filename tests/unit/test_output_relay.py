"""The relay of what tests print under -s: read from real log files, as workers write them."""

from __future__ import annotations

from pathlib import Path

from conveyor.output_relay import TESTS_START, OutputRelay
from conveyor.worker_exit import SESSION_END, written_as_session_ended


def relay_into(logs: list[Path]) -> tuple[OutputRelay, list[str]]:
    written: list[str] = []
    return OutputRelay(lambda: list(logs), written.append), written


def test_only_what_follows_the_mark_is_shown_even_when_split_across_reads(
    tmp_path: Path,
) -> None:
    log = tmp_path / "gw0.log"
    relay, written = relay_into([log])
    relay.relay()  # the log does not exist yet
    log.write_bytes(b"collection output\n" + TESTS_START[:10])
    relay.relay()
    assert written == []
    with log.open("ab") as handle:
        handle.write(TESTS_START[10:] + "caf\u00e9 ".encode()[:4])  # the é cut in half
    relay.relay()
    with log.open("ab") as handle:
        handle.write("caf\u00e9 \n".encode()[4:] + b"more\n")
    relay.relay()
    assert "".join(written) == "caf\u00e9 \nmore\n"


def test_a_restarted_workers_log_is_read_besides_the_first(tmp_path: Path) -> None:
    first, second = tmp_path / "gw0.log", tmp_path / "gw0.2.log"
    logs = [first]
    relay, written = relay_into(logs)
    first.write_bytes(TESTS_START + b"before the crash\n")
    relay.relay()
    with first.open("ab") as handle:
        handle.write(b"the crash\n")
    second.write_bytes(TESTS_START + b"after the restart\n")
    logs.append(second)
    relay.relay()
    assert written == ["before the crash\n", "the crash\n", "after the restart\n"]


def test_what_follows_the_session_end_mark_is_left_for_the_end_even_when_split(
    tmp_path: Path,
) -> None:
    """Under -s, what a worker writes as its session ends is shown once the workers have
    ended (`written_as_session_ended`), not also as the build runs."""
    log = tmp_path / "gw0.log"
    relay, written = relay_into([log])
    log.write_bytes(TESTS_START + b"a test printed\n" + SESSION_END[:7])
    relay.relay()
    assert "".join(written) == "a test printed\n"  # the start of the mark is held back
    with log.open("ab") as handle:
        handle.write(SESSION_END[7:] + b"a warning as it ended\n")
    relay.relay()
    with log.open("ab") as handle:
        handle.write(b"conveyor-trace t=1 pid=2 the end\nand its last words\n")
    relay.relay()
    assert "".join(written) == "a test printed\n"
    assert written_as_session_ended(log) == "a warning as it ended\nand its last words"


def test_held_back_bytes_that_are_not_the_mark_are_shown_with_the_next_read(
    tmp_path: Path,
) -> None:
    log = tmp_path / "gw0.log"
    relay, written = relay_into([log])
    log.write_bytes(TESTS_START + b"output ends with conv")  # as the mark starts
    relay.relay()
    with log.open("ab") as handle:
        handle.write(b"ersation\n")
    relay.relay()
    assert "".join(written) == "output ends with conversation\n"


def test_a_worker_that_never_marked_its_end_wrote_nothing_at_its_end(tmp_path: Path) -> None:
    log = tmp_path / "gw0.log"
    log.write_bytes(TESTS_START + b"crashed in a test\n")
    assert written_as_session_ended(log) is None
    assert written_as_session_ended(tmp_path / "missing.log") is None
