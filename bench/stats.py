"""Small statistics for benchmark reports: percentiles of latencies, medians of repeats."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (`fraction` 0.5 for p50, 0.99 for p99): a value that was
    actually observed, so a p99 over few samples is its worst sample, never an interpolation
    that makes a tail look shorter than it was. NaN for no values."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction {fraction} is not between 0 and 1")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def median_or_nan(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def ratio(value: float, reference: float) -> float:
    """value / reference, NaN when either is missing or the reference is zero."""
    if math.isnan(value) or math.isnan(reference) or reference == 0:
        return math.nan
    return value / reference


def fmt_ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}x"


def fmt_seconds(value: float, digits: int = 2) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"
