"""CPU time the tests' thread spends collecting the older garbage-collector generations.

A collection of generation 1 or 2 (or, from 3.14, an increment of the old generation) costs in
proportion to the objects that *earlier* tests and imports left alive, and it falls in whichever
test happens to cross the allocation threshold. Measured on 27 Hypothesis tests of attrs' suite
with --hypothesis-seed=0 (6 rounds each, the slowest over the fastest): 1.05-1.44, and 1.03-1.22
without this time. So the regression verdict compares CPU times without it; budgets and reports
keep the full CPU time.
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any, Dict, Optional


class OldGenerationClock:
    """Adds up, in ``ns``, the thread CPU time of old-generation collections that run on the
    thread that installed it (a collection another thread triggers is on that thread's clock,
    not on the test's)."""

    def __init__(self) -> None:
        self.ns = 0
        self._thread = threading.get_ident()
        self._started: Optional[int] = None

    def __call__(self, phase: str, info: Dict[str, Any]) -> None:
        if info.get("generation", 0) < 1 or threading.get_ident() != self._thread:
            return
        now = time.thread_time_ns()
        if phase == "start":
            self._started = now
        elif self._started is not None:
            self.ns += now - self._started
            self._started = None

    def install(self) -> None:
        gc.callbacks.append(self)

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)
