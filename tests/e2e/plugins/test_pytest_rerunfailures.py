"""pytest-rerunfailures under conveyor: reruns shown and in JUnit as plain pytest shows them."""

from __future__ import annotations

import pytest
from helpers import junit_outcomes, run_conveyor, run_plain, summary_line


def test_rerunfailures_reruns_show_as_in_plain_pytest(
    with_plugins: pytest.Pytester, start: str
) -> None:
    marker = with_plugins.path / "failed-once"
    with_plugins.makepyfile(
        test_flaky=f"""
        import pathlib

        def test_flaky():
            marker = pathlib.Path({str(marker)!r})
            if not marker.exists():
                marker.write_text("x")
                assert False, "first attempt"

        def test_fine():
            pass
        """
    )
    plain = run_plain(with_plugins, "--reruns", "2", "--junitxml=plain.xml", "-p", "no:randomly")
    marker.unlink()
    ours = run_conveyor(
        with_plugins, "-n", "2", "--reruns", "2", "--junitxml=ours.xml", "-p", "no:randomly"
    )
    assert ours.ret == plain.ret == 0
    assert summary_line(ours) == summary_line(plain) == "2 passed, 1 rerun"
    assert junit_outcomes(with_plugins.path / "ours.xml") == junit_outcomes(
        with_plugins.path / "plain.xml"
    )
