"""The relay of what tests print under -s: read from real log files, as workers write them."""

from __future__ import annotations

from pathlib import Path

from conveyor.output_relay import TESTS_START, OutputRelay


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
