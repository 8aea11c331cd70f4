"""One spprof profile for the whole session, cut into per-test windows.

Starting and stopping the sampler costs about a millisecond or more (it allocates its sample
ring), which would dominate a suite of short tests. So the plugin starts spprof once and records,
per test, the window of monotonic time the test ran in; a test's profile is the session's samples
inside its window. When a test's profile is needed while the session runs (a budget failure, a
share budget, the ``spprof_profiler`` fixture), the session is *checkpointed*: stopped (its samples
kept as a chunk) and started again at once.
"""

from __future__ import annotations

import bisect
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple


@dataclass
class Chunk:
    profile: Any  # spprof.Profile
    origin_ns: int  # CLOCK_MONOTONIC of the chunk's timestamp 0
    times: List[int] = field(default_factory=list)  # absolute, sorted
    order: List[int] = field(default_factory=list)  # sample index per entry of times

    def index(self) -> None:
        samples = self.profile.samples
        pairs = sorted((s.timestamp_ns + self.origin_ns, i) for i, s in enumerate(samples))
        self.times = [t for t, _ in pairs]
        self.order = [i for _, i in pairs]

    def between(self, t0: int, t1: int) -> List[Any]:
        lo = bisect.bisect_left(self.times, t0)
        hi = bisect.bisect_left(self.times, t1)
        samples = self.profile.samples
        return [samples[i] for i in self.order[lo:hi]]


class SessionSampler:
    def __init__(self, interval_ms: float, memory_limit_mb: float) -> None:
        self.interval_ms = interval_ms
        self.memory_limit_mb = memory_limit_mb
        self.chunks: List[Chunk] = []
        self.active = False
        self.origin_ns = 0
        self._collected_before = 0  # samples collected in finished chunks
        self.dropped = 0

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        import spprof

        spprof.start(interval_ms=self.interval_ms, memory_limit_mb=self.memory_limit_mb)
        # Sample timestamps count from the session's CLOCK_MONOTONIC start; stats() tells how long
        # ago that was, so the origin is known to a few microseconds.
        m0 = time.monotonic_ns()
        st = spprof.stats()
        m1 = time.monotonic_ns()
        self.origin_ns = (m0 + m1) // 2 - int((st.duration_ms if st else 0.0) * 1e6)
        self.active = True

    def _stop(self) -> None:
        import spprof

        st = spprof.stats()
        profile = spprof.stop()
        self.active = False
        self._collected_before += st.collected_samples if st else len(profile.samples)
        self.dropped += profile.dropped_count
        chunk = Chunk(profile, self.origin_ns)
        chunk.index()
        self.chunks.append(chunk)

    def checkpoint(self) -> None:
        """Make every sample taken so far available to :meth:`samples_between`."""
        if self.active:
            self._stop()
            self.start()

    def finish(self) -> None:
        if self.active:
            self._stop()

    # -- figures ----------------------------------------------------------------------------------

    def collected(self) -> int:
        """Samples collected since the session started (all threads)."""
        if not self.active:
            return self._collected_before
        import spprof

        st = spprof.stats()
        return self._collected_before + (st.collected_samples if st else 0)

    def samples_between(self, t0: int, t1: int) -> List[Tuple[Chunk, Any]]:
        out = []
        for chunk in self.chunks:
            out.extend((chunk, s) for s in chunk.between(t0, t1))
        return out


def window_profile(sampler: SessionSampler, t0: int, t1: int) -> Any:
    """The spprof.Profile of the samples taken in [t0, t1) (CLOCK_MONOTONIC ns), timestamps
    relative to t0."""
    from datetime import datetime, timedelta

    from spprof import Profile, Sample

    picked = sampler.samples_between(t0, t1)
    samples = [Sample(s.timestamp_ns + chunk.origin_ns - t0, s.thread_id, s.thread_name, s.frames,
                      s.weight_ns, s.on_cpu) for chunk, s in picked]
    ref = sampler.chunks[-1].profile if sampler.chunks else None
    # Wall-clock datetimes of the window, from the chunk's start time.
    if ref is not None:
        chunk = sampler.chunks[-1]
        start = ref.start_time + timedelta(microseconds=(t0 - chunk.origin_ns) / 1000)
        end = ref.start_time + timedelta(microseconds=(t1 - chunk.origin_ns) / 1000)
        return Profile(start, end, ref.interval_ms, samples, 0, ref.python_version, ref.platform, ref.mode)
    import platform

    now = datetime.now().astimezone()
    return Profile(now, now, sampler.interval_ms, samples, 0, platform.python_version(),
                   f"{platform.system()}-{platform.machine()}")


def function_times(profile: Any) -> Tuple[Dict[Tuple[str, str], int], Dict[Tuple[str, str], int], int]:
    """Self and total time per (function, file), and the profile's total, computed per distinct
    stack (total: once per sample, so recursion counts once)."""
    by_stack: Dict[Any, int] = defaultdict(int)
    total_ns = 0
    for s in profile.samples:
        by_stack[tuple(s.frames)] += s.weight_ns
        total_ns += s.weight_ns
    self_ns: Dict[Tuple[str, str], int] = defaultdict(int)
    incl_ns: Dict[Tuple[str, str], int] = defaultdict(int)
    for frames, w in by_stack.items():
        if not frames:
            continue
        self_ns[(frames[-1].function_name, frames[-1].filename)] += w
        for key in {(f.function_name, f.filename) for f in frames}:
            incl_ns[key] += w
    return dict(self_ns), dict(incl_ns), total_ns


def stacks_of(profile: Any, limit: Optional[int] = 1000) -> Dict[str, Any]:
    """The profile's distinct stacks with their weights (heaviest ``limit``), JSON-ready."""
    by_stack: Dict[Any, int] = defaultdict(int)
    for s in profile.samples:
        by_stack[tuple(s.frames)] += s.weight_ns
    heaviest = sorted(by_stack.items(), key=lambda kv: -kv[1])[:limit]
    frames: Dict[Tuple[str, str, int], int] = {}
    stacks = []
    for stack, w in heaviest:
        ids = [frames.setdefault((f.function_name, f.filename, f.lineno), len(frames)) for f in stack]
        stacks.append([ids, w])
    return {"frames": [list(k) for k in frames], "stacks": stacks}


def profile_from_stacks(data: Dict[str, Any], title_time: Any = None) -> Any:
    """A spprof.Profile rebuilt from :func:`stacks_of` output (for differential flame graphs)."""
    import platform
    from datetime import datetime

    from spprof import Frame, Profile, Sample

    frames = [Frame(str(fn), str(file), int(line)) for fn, file, line in data["frames"]]
    samples = [Sample(0, 0, "baseline", tuple(frames[i] for i in ids), int(w)) for ids, w in data["stacks"]]
    when = title_time or datetime.now().astimezone()
    return Profile(when, when, 1.0, samples, 0, platform.python_version(),
                   f"{platform.system()}-{platform.machine()}")
