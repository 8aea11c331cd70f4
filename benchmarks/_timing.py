"""Shared by the benchmarks: size a workload to a target run time."""

from __future__ import annotations

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
