"""The profile data model (Profile, Sample, Frame, ProfilerStats) and its outputs.

A profile recorded by spprof is columnar inside the native extension (interned frames and stacks).
``Profile.samples`` builds its ``Sample`` objects from those columns as they are read (one
``Frame`` object per distinct frame, one tuple per distinct stack), so ``stop()`` makes no
Python object per sample; the writers and the analysis work on the columnar form directly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence as SequenceABC
from datetime import datetime

from . import _ext
from ._record import field, record

# Annotations only (see _api): json, pathlib and typing are imported where they are used.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union, overload

    PathLike = Union[str, "os.PathLike[str]"]

#: What the analysis groups by, and orders by.
GROUPS = ("function", "line", "file")
ORDERS = ("self", "total")


def _check_group(group: Any) -> None:
    if group not in GROUPS:
        raise ValueError(f"group must be one of {', '.join(map(repr, GROUPS))}, not {group!r}")


#: Output formats by name, and the file extensions that select them.
FORMATS: Dict[str, Tuple[str, ...]] = {
    "speedscope": (".json", ".speedscope"),
    "collapsed": (".collapsed", ".folded", ".txt"),
    "svg": (".svg",),
    "html": (".html", ".htm"),
    "pprof": (".pb.gz", ".pprof"),
}


@record(frozen=True)
class Frame:
    """One frame of a call stack; ``lineno`` is the line being executed."""

    function_name: str
    filename: str
    lineno: int
    is_native: bool = False


@record()
class Sample:
    """One sample of one thread. ``frames`` run root → leaf (``frames[-1]`` is innermost)."""

    timestamp_ns: int
    thread_id: int
    thread_name: Optional[str]
    frames: Sequence[Frame]
    #: Time (nanoseconds) this sample stands for: the thread's CPU time since its previous sample,
    #: or in wall-clock mode the elapsed time since its previous sample.
    weight_ns: int = 0
    #: Whether the thread was running (in wall-clock mode: it ran for at least half of the time
    #: since its previous sample). Always True for CPU-time samples.
    on_cpu: bool = True
    #: The process the thread ran in (profiles taken with ``subprocesses=True`` hold several);
    #: 0 when unknown.
    pid: int = 0
    #: The asyncio task the sample is of (profiles taken with ``async_aware=True``), by name;
    #: None for a thread's own samples.
    task: Optional[str] = None


class SampleSequence(SequenceABC):
    """The samples of a recorded profile, read from its native columns on demand: a list-like
    sequence (``len``, indexing, slicing, iteration) whose ``Sample`` objects are made as they
    are read and not kept, so a profile of millions of samples costs its columns only."""

    _BATCH = 4096

    def __init__(self, data: Any) -> None:
        self._data = data
        self._frames: Optional[List[Frame]] = None
        self._stacks: Dict[int, Tuple[Frame, ...]] = {}
        self._threads: Optional[List[Tuple[int, str, int, Optional[str]]]] = None

    def __len__(self) -> int:
        return len(self._data)

    def _stack(self, stack_id: int) -> Tuple[Frame, ...]:
        stack = self._stacks.get(stack_id)
        if stack is None:
            if self._frames is None:
                self._frames = [Frame(*f) for f in _ext.require().frames_of(self._data)]
            frames = self._frames
            stack = self._stacks[stack_id] = tuple(frames[i] for i in self._data.stack(stack_id))
        return stack

    def _samples(self, start: int, stop: int) -> List[Sample]:
        if self._threads is None:
            self._threads = self._data.threads()
        threads = self._threads
        return [Sample(ts, threads[t][0], threads[t][1], self._stack(sid), weight, on_cpu, threads[t][2],
                       threads[t][3])
                for ts, t, weight, sid, on_cpu in self._data.sample_rows(start, stop)]

    if TYPE_CHECKING:
        @overload
        def __getitem__(self, index: int) -> Sample: ...

        @overload
        def __getitem__(self, index: slice) -> List[Sample]: ...

    def __getitem__(self, index: Any) -> Any:
        n = len(self)
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            if step == 1:
                return self._samples(start, stop) if start < stop else []
            return [self[i] for i in range(start, stop, step)]
        i = index.__index__()
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("sample index out of range")
        return self._samples(i, i + 1)[0]

    def __iter__(self) -> Iterator[Sample]:
        n = len(self)
        for start in range(0, n, self._BATCH):
            yield from self._samples(start, min(n, start + self._BATCH))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SequenceABC) and not isinstance(other, (str, bytes)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable-looking, as a list is

    def __add__(self, other: Any) -> List[Sample]:
        return list(self) + list(other)

    def __repr__(self) -> str:
        return f"<{len(self)} samples>"


@record(frozen=True)
class NativeFrame:
    """A native (C, C++, Rust) frame, as ``capture_native_stack()`` returns it."""

    #: The instruction address.
    ip: int
    #: The function's name (demangled), or ``library+0xoffset`` when no symbol covers it.
    symbol: str
    #: The object file (shared library or executable) that holds it.
    filename: str
    #: ``ip``'s distance from the start of its function (0 when the function's start is unknown).
    offset: int
    #: Whether a symbol was found for ``ip``.
    resolved: bool


@record()
class ProfilerStats:
    """Live counters of a running profile (``spprof.stats()``)."""

    collected_samples: int
    dropped_samples: int
    duration_ms: float
    threads_sampled: int
    #: Measured time spent in the sampler's signal handler, as a percentage of elapsed time.
    overhead_pct: float
    #: Bytes the sampler holds (sample buffer plus the interned profile).
    memory_bytes: int
    #: "cpu" (thread CPU time) or "wall" (elapsed time).
    mode: str = "cpu"
    #: Why CPU-time sampling was refused, when spprof fell back to wall-clock mode.
    fallback_reason: Optional[str] = None
    #: Threads seen during the run (including those that have ended).
    threads_seen: int = 0
    #: The signal carrying the ticks: SIGPROF, or a real-time signal when the application has its
    #: own SIGPROF handler (or ``start(signum=...)`` chose one).
    signal: int = 0
    #: The original spprof's name for ``overhead_pct`` (here measured, not estimated).
    overhead_estimate_pct: float = 0.0


@record()
class Profile:
    """The result of a profiling run."""

    start_time: datetime
    end_time: datetime
    interval_ms: float
    #: A ``SampleSequence`` for a recorded profile, or any sequence of ``Sample`` given.
    samples: Sequence[Sample]
    dropped_count: int
    python_version: str
    platform: str
    #: "cpu" (weights are CPU time) or "wall" (weights are elapsed time).
    mode: str = "cpu"
    # The native columnar profile the samples are read from, reused by the writers as long as
    # ``samples`` is still the sequence over it.
    _data: Any = field(default=None, repr=False, compare=False)
    _data_samples: Any = field(default=None, repr=False, compare=False)

    # -- building -------------------------------------------------------------------------------

    @classmethod
    def _from_native(cls, data: Any, *, start_time: datetime, end_time: datetime,
                     interval_ms: float, python_version: str, platform: str) -> Profile:
        samples = SampleSequence(data)
        return cls(start_time, end_time, interval_ms, samples, data.dropped, python_version,
                   platform, "wall" if data.wall else "cpu", data, samples)

    def _native(self) -> Any:
        if self._data is not None and self.samples is self._data_samples \
                and len(self.samples) == len(self._data):
            return self._data
        return _ext.require().ProfileData.from_samples(
            (s.timestamp_ns, s.thread_id, s.thread_name or f"Thread-{s.thread_id}", s.weight_ns, s.on_cpu,
             [(f.function_name, f.filename, f.lineno, f.is_native) for f in s.frames], s.pid, s.task)
            for s in self.samples
        )

    # -- figures --------------------------------------------------------------------------------

    @property
    def total_weight_ns(self) -> int:
        """Time the profile accounts for (sum of the samples' weights)."""
        if self._data is not None and self.samples is self._data_samples:
            return int(self._data.total_weight())
        return sum(s.weight_ns for s in self.samples)

    @property
    def duration_s(self) -> float:
        return (self.end_time - self.start_time).total_seconds()

    @property
    def sample_count(self) -> int:
        return len(self.samples)

    @property
    def total_duration_ms(self) -> float:
        """How long profiling ran (``end_time - start_time``), in milliseconds."""
        return self.duration_s * 1000

    @property
    def effective_rate_hz(self) -> float:
        """Samples per second of profiling (all threads)."""
        return self.sample_count / self.duration_s if self.duration_s > 0 else 0.0

    def aggregate(self) -> Any:
        """An ``AggregatedProfile``: the distinct stacks per thread with their sample counts."""
        from ._aggregate import aggregate

        return aggregate(self)

    @property
    def _unit(self) -> str:
        return "ns"

    # -- analysis (spprof.analysis is the same as functions) --------------------------------------

    def top(self, n: Optional[int] = 20, by: str = "self", group: str = "function") -> Any:
        """Arrow table of the heaviest functions (or lines, files); see ``spprof.analysis.top``."""
        if by not in ORDERS:
            raise ValueError(f"by must be 'self' or 'total', not {by!r}")
        _check_group(group)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ValueError(f"n must be a non-negative int or None, not {n!r}")
        return _ext.require().analysis_top(self._native(), n, by == "total", group, self._unit)

    def threads(self) -> Any:
        """Arrow table of the time per thread; see ``spprof.analysis.threads``."""
        return _ext.require().analysis_threads(self._native(), self._unit)

    def diff(self, baseline: Profile, group: str = "function") -> Any:
        """Arrow table of what changed from ``baseline`` to this profile; see ``spprof.analysis.diff``."""
        if not isinstance(baseline, Profile):
            raise TypeError(f"baseline must be a spprof.Profile (as spprof.stop() returns), "
                            f"not {type(baseline).__name__}")
        _check_group(group)
        if baseline._unit != self._unit:
            raise ValueError("cannot diff a CPU/wall profile with a memory profile")
        return _ext.require().analysis_diff(baseline._native(), self._native(), group, self._unit)

    def between(self, start_ns: int, end_ns: int) -> Profile:
        """The profile of the samples taken in ``[start_ns, end_ns)`` (ns since profiling started)."""
        for name, value in (("start_ns", start_ns), ("end_ns", end_ns)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int (nanoseconds since profiling started), not {value!r}")
        if end_ns < start_ns:
            raise ValueError(f"end_ns ({end_ns}) is before start_ns ({start_ns})")
        # Times before the start or past 2**63 ns (292 years) hold no samples: clamp, do not overflow.
        start_ns, end_ns = (min(max(t, 0), 2**63 - 1) for t in (start_ns, end_ns))
        return self._derived(_ext.require().select_window(self._native(), start_ns, end_ns))

    def filter(self, function: Optional[str] = None, file: Optional[str] = None) -> Profile:
        """The profile of the samples whose stack has a frame matching the ``fnmatch`` patterns
        (on the qualified function name and the file name), e.g. ``filter(file="*/myapp/*")``."""
        import fnmatch

        if function is None and file is None:
            raise ValueError("give a function pattern, a file pattern, or both")
        data = self._native()
        ids = [i for i, (fn, fname, _, _) in enumerate(_ext.require().frames_of(data))
               if (function is None or fnmatch.fnmatchcase(fn, function))
               and (file is None or fnmatch.fnmatchcase(fname, file))]
        return self._derived(_ext.require().select_frames(data, ids))

    def _derived(self, data: Any) -> Profile:
        return Profile._from_native(data, start_time=self.start_time, end_time=self.end_time,
                                    interval_ms=self.interval_ms, python_version=self.python_version,
                                    platform=self.platform)

    # -- outputs --------------------------------------------------------------------------------

    def to_speedscope(self) -> Dict[str, Any]:
        """The profile as a speedscope document (a dict ready for ``json.dump``)."""
        import json

        return json.loads(self._speedscope_text())

    #: The speedscope unit of the weights.
    _speedscope_unit = "nanoseconds"

    def _speedscope_text(self) -> str:
        return self._native().speedscope(self._title(), self._speedscope_unit)

    def _title(self) -> str:
        return f"spprof {self.start_time:%Y-%m-%d %H:%M:%S} (Python {self.python_version})"

    def to_collapsed(self) -> str:
        """Collapsed stacks: ``root;...;leaf count`` per distinct stack, frames ``function (file:line)``."""
        return self._native().collapsed("count")

    def to_flamegraph_svg(self, title: Optional[str] = None) -> str:
        """An interactive SVG flame graph (click to zoom, Ctrl-F to search in a browser). Frame
        widths are the samples' summed weights: time, or bytes for memory profiles."""
        return _ext.require().flamegraph_svg(self._native(), title or self._title(), self._unit)

    def to_html(self, title: Optional[str] = None) -> str:
        """One self-contained HTML page (no network access needed): the flame graph of
        ``to_flamegraph_svg`` and the 30 functions with the most self time, with their total time."""
        return _ext.require().flamegraph_html(self._native(), title or self._title(), self._unit)

    def save(self, path: PathLike, format: Optional[str] = None) -> Path:
        """Write the profile to ``path``; the format comes from ``format`` or the file extension:
        ``"speedscope"`` (.json), ``"collapsed"`` (.collapsed, .folded, .txt), ``"svg"`` (.svg, an
        interactive flame graph), ``"html"`` (.html, .htm: the flame graph and a top-functions
        table in one self-contained page) or ``"pprof"`` (.pb.gz, .pprof: see ``to_pprof``). See
        ``FORMATS``."""
        from pathlib import Path

        path = Path(os.fspath(path))
        fmt = resolve_format(path, format)
        if fmt == "speedscope":  # one entry per sample: streamed to the file
            self._native().save_speedscope(path, self._title(), self._speedscope_unit)
            return path
        if fmt == "pprof":
            path.write_bytes(self.to_pprof())
            return path
        writers = {"collapsed": self.to_collapsed,
                   "svg": self.to_flamegraph_svg, "html": self.to_html}
        text = writers[fmt]()
        path.write_text(text, encoding="utf-8")
        return path

    def to_pprof(self, labels: Optional[Dict[str, str]] = None) -> bytes:
        """The profile as pprof: gzip'd ``profile.proto``, as ``go tool pprof``, Pyroscope, Parca
        and Grafana read it. Each sample carries the labels ``thread_name`` and ``thread_id``,
        and ``labels`` (e.g. ``{"test_id": ...}``)."""
        return self._pprof(labels, None)

    def _pprof(self, labels: Optional[Dict[str, str]], objects: Optional[List[float]]) -> bytes:
        if labels is not None and not (isinstance(labels, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in labels.items())):
            raise TypeError(f"labels must be a dict of str to str, not {labels!r}")
        measure, period = self._pprof_measure()
        start_ns = int(self.start_time.timestamp() * 1e9)
        duration_ns = int((self.end_time - self.start_time).total_seconds() * 1e9)
        return self._native().pprof(measure, period, start_ns, duration_ns, objects,
                                    list((labels or {}).items()))

    def _pprof_measure(self) -> Tuple[str, int]:
        """What the weights measure, as pprof names it, and the sampling period."""
        return ("wall" if self.mode == "wall" else "cpu"), int(self.interval_ms * 1e6)

    # -- Arrow tables -----------------------------------------------------------------------------

    def to_arrow(self, kind: str = "samples") -> Any:
        """The profile as an Arrow table: ``"samples"`` (one row per sample) or ``"frames"`` (one
        row per frame of every sample, root first). The result implements the Arrow PyCapsule
        interface (``__arrow_c_stream__``), so pyarrow, polars, pandas and duckdb read it without a
        copy; the weight column is ``weight_<unit>`` (``weight_ns`` here). Schema: docs/arrow.md."""
        return _ext.require().to_arrow(self._native(), kind, f"weight_{self._unit}")

    def to_pyarrow(self, kind: str = "samples") -> Any:
        """``to_arrow(kind)`` as a ``pyarrow.Table`` (needs pyarrow)."""
        return self.to_arrow(kind).to_pyarrow()

    def to_pandas(self, kind: str = "samples") -> Any:
        """``to_arrow(kind)`` as a ``pandas.DataFrame`` (needs pandas and pyarrow); string columns
        become categoricals, integer columns without nulls are views of the profile's memory."""
        return self.to_arrow(kind).to_pandas()

    def to_polars(self, kind: str = "samples") -> Any:
        """``to_arrow(kind)`` as a ``polars.DataFrame`` (needs polars)."""
        return self.to_arrow(kind).to_polars()


def resolve_format(path: Path, format: Optional[str]) -> str:
    """The output format named by ``format``, else implied by the extension of ``path``."""
    if format is not None:
        if format not in FORMATS:
            raise ValueError(f"Unknown format: {format} (supported: {', '.join(FORMATS)})")
        return format
    suffix = path.suffix.lower()
    for name, suffixes in FORMATS.items():
        if any(path.name.lower().endswith(s) for s in suffixes):
            return name
    known = ", ".join(f"{s} ({name})" for name, sufs in FORMATS.items() for s in sufs)
    raise ValueError(
        f"Unknown format: {suffix or '(no extension)'}: cannot tell the profile format from the extension of "
        f"{str(path)!r}; use one of {known} or pass format=")
