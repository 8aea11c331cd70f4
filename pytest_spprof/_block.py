"""The ``spprof_profiler`` fixture: profile a block inside a test."""

from __future__ import annotations

import time
from typing import Any, List, Optional

from ._session import SessionSampler, window_profile


class Block:
    """One profiled block: ``cpu_ns`` (this thread's CPU, exact), ``wall_ns``, ``profile``."""

    def __init__(self, owner: BlockProfiler, interval_ms: float) -> None:
        self._owner = owner
        self._interval_ms = interval_ms
        self.cpu_ns = 0
        self.wall_ns = 0
        self.profile: Any = None
        self._own = False

    def __enter__(self) -> Block:
        sampler = self._owner.sampler
        if sampler is None or not sampler.active:
            import spprof

            spprof.start(interval_ms=self._interval_ms, memory_limit_mb=16)
            self._own = True
        self._m0 = time.monotonic_ns()
        self._c0, self._w0 = time.thread_time_ns(), time.perf_counter_ns()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cpu_ns = time.thread_time_ns() - self._c0
        self.wall_ns = time.perf_counter_ns() - self._w0
        if self._own:
            import spprof

            self.profile = spprof.stop()
        else:
            sampler = self._owner.sampler
            assert sampler is not None
            t1 = time.monotonic_ns()
            sampler.checkpoint()
            self.profile = window_profile(sampler, self._m0, t1)
        self._owner.blocks.append(self)


class BlockProfiler:
    """The fixture's value: call it to get a context manager (``with spprof_profiler() as b:``)."""

    def __init__(self, sampler: Optional[SessionSampler]) -> None:
        #: The session's sampler under pytest --spprof (a block is a window of it), else None.
        self.sampler = sampler
        self.blocks: List[Block] = []

    def __call__(self, interval_ms: float = 1) -> Block:
        return Block(self, interval_ms)
