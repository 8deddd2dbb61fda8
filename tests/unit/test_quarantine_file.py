"""The quarantine file: entries, and errors that name the file, the line and what is wrong."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from conveyor.quarantine import Quarantine, QuarantineFileError, load, refuse_expired

GOOD = """\
# quarantined while the DNS fix lands
[[quarantine]]
test = "tests/test_net.py::test_dns"
reason = "DNS times out in CI, #123"
expires = 2026-03-01

[[quarantine]]
test = "tests/test_io.py::test_read"
reason = "disk full on the runners"
expires = "2026-04-01"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "quarantine.toml"
    path.write_text(text)
    return path


def test_entries_with_reasons_expiry_and_lines(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    entries = load(path)
    assert [(e.test, e.expires, e.line) for e in entries] == [
        ("tests/test_net.py::test_dns", dt.date(2026, 3, 1), 2),
        ("tests/test_io.py::test_read", dt.date(2026, 4, 1), 7),
    ]
    quarantine = Quarantine(tuple(entries), {"tests/test_x.py::test_auto": 2.5})
    assert quarantine.reason("tests/test_net.py::test_dns[ipv6]") == (
        f"DNS times out in CI, #123 (until 2026-03-01, {path}:2)"
    )
    assert quarantine.reason("tests/test_net.py::test_dns_other") is None
    assert quarantine.reason("tests/test_x.py::test_auto") == "auto: flaky score 2.5"
    assert load(write(tmp_path, "# nothing quarantined\n")) == []


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ('[[quarantine]]\ntest = "a"\nreason = \n', 3, "not valid TOML"),
        ('[[quarantine]]\ntest = "a"\nreason = "r"\nexpire = 2026-01-01\n', 4, "unknown key"),
        ('\n[[quarantine]]\ntest = "a"\nexpires = 2026-01-01\n', 2, "no 'reason'"),
        ('[[quarantine]]\ntest = "a"\nreason = "r"\nexpires = "soon"\n', 4, "must be a date"),
        ('[[quarantine]]\ntest = "a"\nreason = "r"\nexpires = 2026-13-45\n', 4, "a real date"),
        ('[[quarantine]]\ntest = "a"\nreason = "r"\nexpires = 31.12.2026\n', 4, "a real date"),
        ('[[quarantine]]\ntest = ""\nreason = "r"\nexpires = 2026-01-01\n', 2, "a test id"),
        ('[[quarantine]]\ntest = "a"\nreason = " "\nexpires = 2026-01-01\n', 3, "say why"),
        ('tests = ["a"]\n', 1, "unknown key 'tests'"),
        (GOOD + '\n[[quarantine]]\ntest = "tests/test_io.py::test_read"\nreason = "again"\n'
         "expires = 2026-05-01\n", 12, "already quarantined at"),
    ],
)  # fmt: skip
def test_a_malformed_file_names_its_line_and_what_is_wrong(
    tmp_path: Path, text: str, line: int, problem: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(QuarantineFileError, match=problem) as caught:
        load(path)
    assert str(caught.value).startswith(f"{path}:{line}: ")


def test_an_expired_entry_is_refused_naming_file_line_and_test(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    entries = load(path)
    refuse_expired(entries, dt.date(2026, 3, 1))  # the last day still holds
    with pytest.raises(QuarantineFileError) as caught:
        refuse_expired(entries, dt.date(2026, 3, 2))
    message = str(caught.value)
    assert f"{path}:2: the quarantine of tests/test_net.py::test_dns expired on 2026-03-01" in (
        message
    )
    assert "test_read" not in message


def test_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(QuarantineFileError, match="cannot read the quarantine file"):
        load(tmp_path / "absent.toml")
