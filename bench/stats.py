"""Small statistics helpers: percentiles, medians and spreads."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from kit.lab.timing import percentile


def summary(latencies: Sequence[float]) -> dict[str, float]:
    """Count, p50, p95 and p99 of latencies in seconds."""
    return {
        "n": len(latencies),
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
        "p99": percentile(latencies, 99),
    }


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements: how noisy the machine was."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}
