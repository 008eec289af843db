"""Shared benchmark plumbing: a result row, repeated timing, the table."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Result:
    name: str
    harden_s: float  # median seconds
    baseline_name: str
    baseline_s: float  # median seconds of the side-by-side baseline (0 when none)
    target: str  # e.g. ">= 20x faster", "<= 1.15x", "< 3 s"
    met: bool
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """harden time / baseline time (lower is better)."""
        return self.harden_s / self.baseline_s if self.baseline_s else None

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "ratio": self.ratio}


def median_time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(
    a: Callable[[], object], b: Callable[[], object], repeat: int
) -> tuple[float, float]:
    """Median times of a and b, run alternately so both see the same machine load."""
    ta, tb = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        a()
        ta.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b()
        tb.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def table(results: list[Result]) -> str:
    rows = [["BENCHMARK", "HARDEN", "BASELINE", "RATIO", "TARGET", "MET"]]
    for r in results:
        ratio = f"{r.ratio:.3f}x" if r.ratio is not None else "-"
        if r.ratio is not None and r.ratio < 1:
            ratio += f" ({1 / r.ratio:.1f}x faster)"
        rows.append(
            [
                r.name,
                f"{r.harden_s:.3f}s",
                f"{r.baseline_name} {r.baseline_s:.3f}s" if r.baseline_s else "-",
                ratio,
                r.target,
                "yes" if r.met else "NO",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )
