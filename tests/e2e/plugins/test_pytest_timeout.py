"""pytest-timeout's thread method under conveyor: timed out once, its dump reported."""

from __future__ import annotations

import pytest
from helpers import run_conveyor


def test_pytest_timeout_thread_method_times_out_once_with_its_dump(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_t="""
        import time

        def test_slow():
            time.sleep(30)

        def test_ok():
            pass
        """
    )
    ours = run_conveyor(pytester, "-n", "2", "--timeout=1", "--timeout-method=thread")
    assert ours.ret == 1
    text = ours.stdout.str()
    assert "ran longer than pytest-timeout's --timeout" in text
    assert "in test_slow" in text and "Timeout +" in text
    assert "took down" not in text  # timed out once, not retried as a crash
