"""spprof.memprof: a sampling memory profiler for Python allocations.

Allocations made through CPython's allocator domains (``PyMem_RawMalloc``, ``PyMem_Malloc``,
``PyObject_Malloc``: every Python object and buffer) are sampled with exponential (Poisson)
byte gaps of mean ``sampling_rate_kb``; each sampled allocation records its Python stack and the
bytes it stands for (an unbiased estimate, see docs/design.md). Frees of sampled addresses are
matched, so a snapshot holds the live samples and ``estimated_heap_bytes`` estimates the live
Python heap. Native allocations (``malloc`` from C extensions, numpy buffers, any library) are
tracked too when the process runs with the ``LD_PRELOAD`` library shipped with spprof::

    LD_PRELOAD=$(python -m spprof.memprof --preload-path) python app.py

``get_stats().sources`` says what is tracked (``["python"]`` or ``["python", "native"]``).

Quick start::

    import spprof.memprof as memprof
    memprof.start(sampling_rate_kb=512)
    do_work()
    snapshot = memprof.get_snapshot()
    print(snapshot.estimated_heap_bytes, snapshot.top_allocators(5))
    memprof.stop()
"""

from __future__ import annotations

import atexit
import numbers
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from . import _ext
from ._model import Frame, Profile
from ._units import fmt_bytes

if TYPE_CHECKING:
    from ._model import PathLike

__all__ = [
    "AllocationSample",
    "FramePointerHealth",
    "HeapSnapshot",
    "MemProfStats",
    "MemoryProfiler",
    "allocations_since_reset_peak",
    "get_snapshot",
    "get_stats",
    "get_traced_memory",
    "preload_path",
    "reset_peak",
    "shutdown",
    "start",
    "stop",
]

#: ``StackFrame`` of the original spprof API: the same frame type as CPU profiles.
StackFrame = Frame


@dataclass
class FramePointerHealth:
    """How trustworthy the stacks are. Python frames are read from the interpreter's own
    structures, so they are exact; native (C) frames are not captured yet."""

    confidence: str
    recommendation: Optional[str]
    python_frames_exact: bool = True
    native_frames_captured: bool = False
    #: Samples recorded without a Python stack (RAW-domain allocations by threads without the GIL).
    samples_without_stack: int = 0


@dataclass
class AllocationSample:
    """One sampled allocation that is still live. ``stack`` runs root → leaf."""

    address: int
    size: int
    #: The mean sampling gap in bytes (the "sampling weight").
    weight: int
    #: Bytes this sample stands for in the heap estimate: ``size / (1 - exp(-size / weight))``.
    estimated_bytes: int
    #: When it was allocated (nanoseconds since memory profiling started).
    timestamp_ns: int
    #: Always None in snapshots: they hold live allocations only.
    lifetime_ns: Optional[int]
    stack: List[Frame]
    thread_id: int = 0


@dataclass
class MemProfStats:
    total_samples: int
    live_samples: int
    freed_samples: int
    unique_stacks: int
    estimated_heap_bytes: int
    heap_map_load_percent: float
    collisions: int
    #: The mean bytes between samples now: the rate given to ``start()``, doubled each time the
    #: live-heap map filled up further (``sampling_rate_raises``).
    sampling_rate_bytes: int
    #: Allocation sources being tracked: ``"python"`` (CPython's allocator domains) while
    #: profiling, plus ``"native"`` (the malloc family) when the process runs with the LD_PRELOAD
    #: library (see :func:`preload_path`); ``[]`` before ``start()`` and after ``shutdown()``.
    sources: List[str] = field(default_factory=list)
    #: Samples lost because the sample ring or the heap map was full.
    dropped_samples: int = 0
    #: Frees of sampled allocations lost to a full ring (those samples stay live: fake leaks).
    lost_frees: int = 0
    #: "never", "running", "stopped" or "shutdown".
    state: str = "never"
    #: Allocator domains whose calls no longer reach memprof's hooks, because another tool put
    #: back the allocators it had wrapped (``tracemalloc.stop()`` does, when memprof started
    #: while tracemalloc was tracing). ``get_snapshot()`` then warns. ``start()`` hooks
    #: ``PYMEM_DOMAIN_MEM`` and ``PYMEM_DOMAIN_OBJ`` again; ``PYMEM_DOMAIN_RAW`` (used directly
    #: by a few C modules) stays unhooked, as a thread without the GIL may still be inside the
    #: old hook.
    unhooked_domains: List[str] = field(default_factory=list)
    #: How often the sampling rate was doubled because the live-heap map passed half full (then
    #: each further eighth): more live samples than it holds would be refused and leave the
    #: estimate low; fewer, heavier samples keep it unbiased. ``get_snapshot()`` warns.
    sampling_rate_raises: int = 0


class _MemoryProfile(Profile):
    """The live samples as a Profile whose weights are estimated bytes."""

    @property
    def _unit(self) -> str:
        return "bytes"

    _speedscope_unit = "bytes"

    def _pprof_measure(self) -> Tuple[str, int]:
        return "inuse_space", 0

    def to_collapsed(self) -> str:
        """Collapsed stacks weighted by estimated live bytes."""
        return self._native().collapsed("weight")

    def _title(self) -> str:
        return f"spprof heap {self.start_time:%Y-%m-%d %H:%M:%S} (Python {self.python_version})"


@dataclass
class HeapSnapshot:
    """Live sampled allocations at one moment."""

    samples: List[AllocationSample]
    total_samples: int
    live_samples: int
    estimated_heap_bytes: int
    timestamp_ns: int
    frame_pointer_health: FramePointerHealth
    _profile: Any = field(default=None, repr=False, compare=False)

    def top_allocators(self, n: int = 10) -> List[Dict[str, Any]]:
        """The ``n`` allocation sites (leaf Python frame: function, file, line) holding the most
        estimated live bytes: dicts with ``function``, ``filename``, ``lineno``,
        ``estimated_bytes``, ``count``, ``percent`` and ``stack`` (the heaviest stack at that site,
        root → leaf)."""
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, not {type(n).__name__}")
        if n < 0:
            raise ValueError(f"n must be at least 0, got {n}")
        # The sites and their bytes are the engine's (a site is a line: its self weight).
        sites = [{"function": fn, "filename": file, "lineno": line, "estimated_bytes": own, "count": count,
                  "percent": pct} for fn, file, line, own, _, pct, _, count in self._profile.top(n, group="line").rows()
                 if own]
        heaviest: Dict[Any, Dict[tuple, int]] = {}
        for s in self.samples:
            if s.stack:
                leaf, stack = s.stack[-1], tuple(s.stack)
                stacks = heaviest.setdefault((leaf.function_name, leaf.filename, leaf.lineno), {})
                stacks[stack] = stacks.get(stack, 0) + s.estimated_bytes
        for d in sites:
            stacks = heaviest[(d["function"], d["filename"], d["lineno"])]
            d["stack"] = list(max(stacks.items(), key=lambda kv: kv[1])[0])
        return sites

    #: Allocation sites a snapshot's display lists (the data itself is in ``samples``).
    _SHOWN_SITES = 10

    def _headline(self) -> str:
        return (f"HeapSnapshot: {fmt_bytes(self.estimated_heap_bytes)} live heap estimated from "
                f"{self.live_samples} live samples")

    def __repr__(self) -> str:
        """A summary a person can read: the estimate and the top allocation sites."""
        lines = [self._headline()]
        for site in self.top_allocators(self._SHOWN_SITES):
            lines.append(f"  {site['percent']:5.1f}% {fmt_bytes(site['estimated_bytes']):>9}  {site['function']}  "
                         f"({site['filename']}:{site['lineno']})")
        if len(self.samples) > 0:
            lines.append("  (all of it: .samples, .to_pandas(), .save(path))")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        rows = "".join(
            f"<tr><td style=\"text-align:right\">{site['percent']:.1f}%</td>"
            f"<td style=\"text-align:right\">{fmt_bytes(site['estimated_bytes'])}</td>"
            f"<td><code>{html.escape(site['function'])}</code></td>"
            f"<td><code>{html.escape(site['filename'])}:{site['lineno']}</code></td></tr>"
            for site in self.top_allocators(self._SHOWN_SITES))
        return (f"<p><b>{html.escape(self._headline())}</b></p><table class=\"spprof-heap\"><thead><tr>"
                "<th>Share</th><th>Live bytes</th><th>Function</th><th>Site</th></tr></thead>"
                f"<tbody>{rows}</tbody></table>")

    def to_profile(self) -> Profile:
        """The live samples as a ``Profile`` (weights in estimated bytes): every CPU-profile
        output and analysis works on it."""
        return self._profile

    def save(self, path: PathLike, format: Optional[str] = None) -> Path:
        """Write the snapshot weighted by estimated live bytes: ``"speedscope"`` (.json, unit
        bytes), ``"collapsed"`` (.collapsed/.folded/.txt, bytes per stack), ``"svg"`` or
        ``"html"`` (flame graphs in bytes) or ``"pprof"`` (.pb.gz: see ``to_pprof``). The format
        comes from ``format`` or the extension."""
        from ._model import resolve_format

        target = Path(os.fspath(path))
        if resolve_format(target, format) == "pprof":
            target.write_bytes(self.to_pprof())
            return target
        return self._profile.save(target, format)

    def to_pprof(self, labels: Optional[Dict[str, str]] = None) -> bytes:
        """The live heap as pprof, as Go's heap profiles name it: ``inuse_space`` (estimated
        bytes) and ``inuse_objects`` (the allocations each sample stands for: its estimated bytes
        over its size); labels as ``Profile.to_pprof``."""
        objects = [s.estimated_bytes / s.size if s.size else 1.0 for s in self.samples]
        return self._profile._pprof(labels, objects)

    def to_speedscope(self) -> Dict[str, Any]:
        return self._profile.to_speedscope()

    def to_collapsed(self) -> str:
        return self._profile.to_collapsed()

    def to_flamegraph_svg(self, title: Optional[str] = None) -> str:
        return self._profile.to_flamegraph_svg(title)

    def to_html(self, title: Optional[str] = None) -> str:
        return self._profile.to_html(title)

    def to_arrow(self, kind: str = "samples") -> Any:
        """Arrow table of the live samples (``"samples"`` or ``"frames"``), weight column
        ``weight_bytes``; see ``Profile.to_arrow``."""
        return self._profile.to_arrow(kind)

    def to_pyarrow(self, kind: str = "samples") -> Any:
        return self._profile.to_pyarrow(kind)

    def to_pandas(self, kind: str = "samples") -> Any:
        return self._profile.to_pandas(kind)

    def to_polars(self, kind: str = "samples") -> Any:
        return self._profile.to_polars(kind)


_lock = threading.Lock()
_started_at: Optional[datetime] = None


def start(sampling_rate_kb: float = 512) -> None:
    """Start sampling Python allocations, on average one per ``sampling_rate_kb`` KiB allocated.

    Raises ``RuntimeError`` when already running or after ``shutdown()``, ``ValueError`` when
    ``sampling_rate_kb < 1``, ``TypeError`` when it is not a number."""
    global _started_at
    if isinstance(sampling_rate_kb, bool) or not isinstance(sampling_rate_kb, numbers.Real):
        raise TypeError(
            f"sampling_rate_kb must be a number of KiB (e.g. 512), not {type(sampling_rate_kb).__name__}")
    if not sampling_rate_kb >= 1:  # also NaN
        raise ValueError(
            f"sampling_rate_kb must be at least 1 (KiB between samples), got {sampling_rate_kb!r}; "
            "use 512 in production, 64 for more detail")
    if sampling_rate_kb > 1 << 30:
        raise ValueError(f"sampling_rate_kb is too large: {sampling_rate_kb!r} (at most {1 << 30})")
    with _lock:
        _ext.require().memprof_start(int(sampling_rate_kb * 1024))
        _started_at = datetime.now()


def stop() -> None:
    """Stop sampling new allocations. Frees of sampled allocations are still tracked until
    ``shutdown()``, so memory freed later does not show as a leak. Raises ``RuntimeError`` when
    memory profiling is not running."""
    with _lock:
        _ext.require().memprof_stop()


def is_running() -> bool:
    return _ext.require().memprof_state() == "running"


def _thread_names() -> Dict[int, str]:
    names = {}
    for t in threading.enumerate():
        if t.native_id is not None:
            names[t.native_id] = t.name
    return names


def get_snapshot() -> HeapSnapshot:
    """The live sampled allocations, while running or after ``stop()``. Raises ``RuntimeError``
    before the first ``start()`` and after ``shutdown()``."""
    data, addresses, total = _ext.require().memprof_snapshot(_thread_names())
    stats = get_stats()
    python_domains = [d for d in stats.unhooked_domains if not d.endswith("RAW")]
    if python_domains:
        warnings.warn(
            f"spprof.memprof's allocator hooks were removed from {', '.join(python_domains)}"
            " (tracemalloc.stop() does this when memprof started while tracemalloc was tracing): "
            "allocations and frees since then are not seen, so memory freed since may show as "
            "live. Start tracemalloc after memprof.start(), or call memprof.stop() and "
            "memprof.start() again to hook the Python domains again.",
            RuntimeWarning, stacklevel=2)
    if stats.sampling_rate_raises:
        warnings.warn(
            f"spprof.memprof: the live-heap map filled up ({stats.live_samples} live samples), so the "
            f"sampling rate was doubled {stats.sampling_rate_raises} time(s), to "
            f"{stats.sampling_rate_bytes // 1024} KiB; the estimate stays unbiased but is coarser. "
            "Start with a larger sampling_rate_kb for a heap this big.", RuntimeWarning, stacklevel=2)
    if stats.dropped_samples:
        warnings.warn(
            f"spprof.memprof dropped {stats.dropped_samples} sampled allocation(s) (the sample ring or "
            "the live-heap map was full): the estimate is low by about their weight. Use a larger "
            "sampling_rate_kb.", RuntimeWarning, stacklevel=2)
    profile = _memory_profile(data)
    rate = stats.sampling_rate_bytes
    samples = [
        AllocationSample(addr, size, rate, s.weight_ns, s.timestamp_ns, None, list(s.frames),
                         s.thread_id)
        for (addr, size), s in zip(addresses, profile.samples)
    ]
    no_stack = sum(1 for s in samples
                   if s.stack and s.stack[-1].function_name == "<allocated without the GIL>")
    health = FramePointerHealth(
        confidence="high" if len(samples) >= 100 else ("medium" if samples else "low"),
        recommendation=_recommendation(len(samples)),
        samples_without_stack=no_stack,
    )
    return HeapSnapshot(samples, total, len(samples), sum(s.estimated_bytes for s in samples),
                        time.time_ns(), health, profile)


def get_traced_memory() -> Tuple[int, int]:
    """``(current, peak)``: the estimated live heap in bytes, and its high-water mark since
    ``start()`` or the last ``reset_peak()``, as ``tracemalloc.get_traced_memory()`` gives them.
    Cheap (no snapshot is built). Raises ``RuntimeError`` as ``get_snapshot()`` does."""
    return _ext.require().memprof_traced_memory()


def reset_peak() -> None:
    """Start the high-water mark of ``get_traced_memory()`` again from the live heap now, and the
    tally of ``allocations_since_reset_peak()``, as ``tracemalloc.reset_peak()`` does."""
    _ext.require().memprof_reset_peak()


def allocations_since_reset_peak() -> Profile:
    """The bytes allocated since ``start()`` or ``reset_peak()``, freed since or not, by thread
    and stack (estimated from the samples): who allocated, where a snapshot shows who still
    holds. Weights are bytes, so ``save()`` and the flame graph show bytes."""
    return _memory_profile(_ext.require().memprof_allocated_since_reset(_thread_names()))


def _memory_profile(data: Any) -> _MemoryProfile:
    now = datetime.now()
    return _MemoryProfile._from_native(
        data, start_time=_started_at or now, end_time=now, interval_ms=0.0,
        python_version=".".join(map(str, sys.version_info[:3])), platform=sys.platform)


def _recommendation(live: int) -> str:
    parts = ["Python stacks are read from the interpreter's frame structures and are exact; "
             "allocation stacks have Python frames only (no native frames). Allocations by native "
             "code are tracked only under the LD_PRELOAD library "
             "(LD_PRELOAD=$(python -m spprof.memprof --preload-path))."]
    if live < 100:
        parts.append(f"Only {live} live samples: estimates are rough; use a lower "
                     "sampling_rate_kb for more samples.")
    return " ".join(parts)


def get_stats() -> MemProfStats:
    """Counters of the memory profiler (zeros before ``start()``)."""
    raw = _ext.require().memprof_stats()
    names = MemProfStats.__dataclass_fields__
    return MemProfStats(**{k: v for k, v in raw.items() if k in names})


def shutdown() -> None:
    """Stop memory profiling for good: no sampling, no free tracking, allocator hooks removed
    (where no other tool wrapped them since). One-way: ``start()`` raises afterwards."""
    with _lock:
        _ext.require().memprof_shutdown()


class MemoryProfiler:
    """``with MemoryProfiler(sampling_rate_kb=256) as mp: ...``; ``mp.snapshot`` after exit is the
    snapshot taken when the block ended (memory profiling is then stopped)."""

    def __init__(self, sampling_rate_kb: float = 512) -> None:
        self.sampling_rate_kb = sampling_rate_kb
        self.snapshot: Optional[HeapSnapshot] = None

    def __enter__(self) -> MemoryProfiler:
        start(self.sampling_rate_kb)
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.snapshot = get_snapshot()
        finally:
            stop()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    native = _ext.require()
    if native.memprof_state() != "never":
        native.memprof_after_fork_in_child()


def _shutdown_at_exit() -> None:
    try:
        native = _ext.require()
    except RuntimeError:
        return
    if native.memprof_state() not in ("never", "shutdown"):
        native.memprof_shutdown()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_shutdown_at_exit)


def preload_path() -> str:
    """The path of ``libspprof_alloc.so``, the ``LD_PRELOAD`` library through which memprof sees
    native allocations (Linux)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libspprof_alloc.so")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: this build of spprof has no LD_PRELOAD library "
                                "(it is built on Linux only); memprof tracks Python allocations only")
    return path


def _main(argv: Optional[List[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m spprof.memprof",
        description="Native allocations: LD_PRELOAD=$(python -m spprof.memprof --preload-path) python app.py")
    parser.add_argument("--preload-path", action="store_true",
                        help="print the path of the LD_PRELOAD library for native allocations")
    args = parser.parse_args(argv)
    if args.preload_path:
        try:
            print(preload_path())
        except FileNotFoundError as exc:
            print(f"spprof: {exc}", file=sys.stderr)
            return 2
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(_main())
