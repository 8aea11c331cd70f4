"""Shared by the benchmarks: size a workload to a target run time."""

from __future__ import annotations

import math
import time
from typing import Callable


def calibrate(workload: Callable[[int], object], seconds: float, start: int = 1) -> int:
    """Iterations of ``workload(n)`` that take about ``seconds`` of wall time (doubling until a
    run is long enough to time, then scaling)."""
    n = start
    while True:
        t0 = time.perf_counter()
        workload(n)
        dt = time.perf_counter() - t0
        if dt > 0.2:
            return max(1, int(n * seconds / dt))
        n *= 2


def median_ci(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median: the order statistics
    ``x_(k) .. x_(n+1-k)`` with the largest ``k`` for which ``P(Binomial(n, 1/2) < k)`` is at most
    ``(1 - level) / 2``. Needs at least 6 values for 95 %; with fewer, the range."""
    xs = sorted(values)
    n = len(xs)
    k, tail = 0, 0.0
    while k < n // 2:
        nxt = tail + math.comb(n, k) / 2**n  # P(Binomial < k + 1)
        if nxt > (1 - level) / 2:
            break
        tail, k = nxt, k + 1
    k = max(k, 1)
    return xs[k - 1], xs[n - k]
