"""Timing calls, and showing the times: tables and latency charts."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from html import escape
from typing import Any

from tqdm import tqdm

# tqdm's bar without its it/s rate, which changes from run to run.
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}]"


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """Call fn and return (its result, seconds it took)."""
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def time_calls(fn: Callable[[int], Any], n: int, desc: str = "calls") -> list[float]:
    """Call fn(0) ... fn(n - 1) one after another; return each call's seconds."""
    seconds = []
    for i in tqdm(range(n), desc=desc, file=sys.stdout, ncols=80, bar_format=BAR_FORMAT):
        seconds.append(timed(fn, i)[1])
    return seconds


class Table:
    """A small table: HTML in Jupyter, aligned text in print()."""

    def __init__(self, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        self.headers = list(headers)
        self.rows = [[str(cell) for cell in row] for row in rows]

    def __str__(self) -> str:
        widths = [
            max(len(str(h)), *(len(r[i]) for r in self.rows)) if self.rows else len(str(h))
            for i, h in enumerate(self.headers)
        ]
        lines = [
            "  ".join(h.ljust(w) for h, w in zip(self.headers, widths, strict=True)),
            "  ".join("-" * w for w in widths),
        ]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in self.rows]
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{escape(h)}</th>" for h in self.headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in self.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of samples, linearly interpolated between ranks."""
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("no samples")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def percentiles(
    samples: Mapping[str, Sequence[float]], qs: Sequence[float] = (50, 90, 99)
) -> Table:
    """One row per series: count and latency percentiles in milliseconds."""
    headers = ["series", "n", *(f"p{q:g} (ms)" for q in qs), "max (ms)"]
    rows = [
        [
            label,
            len(values),
            *(f"{percentile(values, q) * 1000:.1f}" for q in qs),
            f"{max(values) * 1000:.1f}",
        ]
        for label, values in samples.items()
    ]
    return Table(headers, rows)


def latency_chart(samples: Mapping[str, Sequence[float]], title: str = "Response time") -> Any:
    """Each series' latencies as points over a box, on a log scale (ms to seconds fit)."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 1.2 + 0.9 * len(samples)))
    labels = list(samples)
    data = [[v * 1000 for v in samples[label]] for label in labels]
    axes.boxplot(data, orientation="horizontal", tick_labels=labels, widths=0.5, showfliers=False)
    for row, values in enumerate(data, start=1):
        spread = [row + 0.15 * ((i % 5) - 2) / 2 for i in range(len(values))]
        axes.scatter(values, spread, s=14, alpha=0.6)
    axes.set_xscale("log")
    axes.set_xlabel("milliseconds until the HTTP answer (log scale)")
    axes.set_title(title)
    axes.grid(axis="x", which="both", alpha=0.3)
    figure.tight_layout()
    return figure
