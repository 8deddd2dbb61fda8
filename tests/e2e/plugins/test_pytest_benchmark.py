"""pytest-benchmark under conveyor: off, as under xdist, and said so."""

from __future__ import annotations

import pytest
from helpers import run_conveyor


def test_benchmarks_are_named_as_off_and_benchmark_only_is_refused(
    with_plugins: pytest.Pytester,
) -> None:
    with_plugins.makepyfile(
        test_b="""
        def test_bench(benchmark):
            benchmark(sum, range(10))
        """
    )
    ours = run_conveyor(with_plugins, "-n", "2", "-p", "no:randomly")
    assert ours.ret == 0
    ours.stdout.fnmatch_lines(["conveyor: benchmarks are disabled in a distributed run*"])
    refused = run_conveyor(with_plugins, "-n", "2", "--benchmark-only", "-p", "no:randomly")
    assert refused.ret == 4
    assert "conveyor run -n 0 --benchmark-only" in refused.stderr.str() + refused.stdout.str()
