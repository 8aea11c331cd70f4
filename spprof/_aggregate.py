"""``Profile.aggregate()``: a profile's distinct stacks with their counts (the original spprof API).

A recorded profile already stores each distinct stack once (see ``_model``); this view lists them
per thread with how many samples, and how much time, each stands for.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from ._record import field, record

if TYPE_CHECKING:
    from ._model import Frame, PathLike, Profile


@record()
class AggregatedStack:
    """One distinct stack of one thread: ``count`` samples, ``weight_ns`` of time in all."""

    frames: Sequence[Frame]
    thread_id: int
    thread_name: Optional[str]
    count: int
    weight_ns: int = 0


@record()
class AggregatedProfile:
    """The distinct stacks of a profile, with counts. Its outputs are those of the profile it
    was made from (aggregation changes no total)."""

    start_time: datetime
    end_time: datetime
    interval_ms: float
    stacks: List[AggregatedStack]
    #: Samples in the profile aggregated.
    total_samples: int
    dropped_count: int
    python_version: str
    platform: str
    _profile: Any = field(default=None, repr=False, compare=False)

    @property
    def unique_stack_count(self) -> int:
        return len(self.stacks)

    @property
    def compression_ratio(self) -> float:
        """Samples per distinct stack (1.0 for an empty profile)."""
        return self.total_samples / self.unique_stack_count if self.stacks else 1.0

    @property
    def memory_reduction_pct(self) -> float:
        """How much smaller a list of distinct stacks is than one entry per sample, in percent."""
        return (1 - self.unique_stack_count / self.total_samples) * 100 if self.total_samples else 0.0

    def to_speedscope(self) -> Dict[str, Any]:
        return self._profile.to_speedscope()

    def to_collapsed(self) -> str:
        return self._profile.to_collapsed()

    def save(self, path: PathLike, format: Optional[str] = None) -> Path:
        """As ``Profile.save``: the format from ``format`` or the file extension."""
        return self._profile.save(path, format)


def aggregate(profile: Profile) -> AggregatedProfile:
    samples = profile.samples
    groups: Dict[Tuple[Any, ...], List[Any]] = {}
    if profile._data is not None and samples is profile._data_samples:
        # Group the native rows by (thread, stack id): no Sample object per sample.
        data = profile._data
        for start in range(0, len(samples), 65536):
            for _, thread, weight, stack_id, _ in data.sample_rows(start, start + 65536):
                entry = groups.setdefault((thread, stack_id), [0, 0])
                entry[0] += 1
                entry[1] += weight
        threads = data.threads()
        stacks = [AggregatedStack(samples._stack(stack_id), threads[thread][0], threads[thread][1], n, w)
                  for (thread, stack_id), (n, w) in groups.items()]
    else:
        for s in samples:
            entry = groups.setdefault((tuple(s.frames), s.thread_id, s.thread_name), [0, 0])
            entry[0] += 1
            entry[1] += s.weight_ns
        stacks = [AggregatedStack(frames, tid, name, n, w) for (frames, tid, name), (n, w) in groups.items()]
    stacks.sort(key=lambda st: -st.count)
    return AggregatedProfile(profile.start_time, profile.end_time, profile.interval_ms, stacks, len(samples),
                             profile.dropped_count, profile.python_version, profile.platform, profile)
