"""syrupy under conveyor: snapshot summary, unused snapshots and --snapshot-update as plain."""

from __future__ import annotations

import pytest
from helpers import assert_same_verdict, run_conveyor, run_plain


def test_syrupy_reports_and_fails_unused_snapshots_as_plain(
    with_plugins: pytest.Pytester,
) -> None:
    with_plugins.makepyfile(
        test_snap="""
        def test_one(snapshot):
            assert {"a": 1} == snapshot

        def test_two(snapshot):
            assert [1, 2] == snapshot
        """
    )
    assert run_plain(with_plugins, "--snapshot-update", "-p", "no:randomly").ret == 0
    source = with_plugins.path / "test_snap.py"
    source.write_text(source.read_text().replace("def test_two", "def _test_two"))
    plain, ours = assert_same_verdict(with_plugins, "-p", "no:randomly", workers=2)
    assert plain.ret == ours.ret == 1
    ours.stdout.fnmatch_lines(["*1 snapshot passed. 1 snapshot unused.*"])
    updated = run_conveyor(with_plugins, "-n", "2", "--snapshot-update", "-p", "no:randomly")
    assert updated.ret == 0, updated.stdout.str()
    updated.stdout.fnmatch_lines(["*Deleted test_two*"])
    assert "test_two" not in next((with_plugins.path / "__snapshots__").iterdir()).read_text()
