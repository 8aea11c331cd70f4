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
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple


@dataclass
class Chunk:
    """The samples of one start-stop of the session's sampler.

    While tests run, a chunk keeps its samples in the native (columnar) profile only, and builds
    the Python ``Sample`` objects when a window is asked for, without keeping them: kept, they
    were tens of thousands of objects for the cycle collector to walk, and a test that calls
    ``gc.collect()`` got slower after every checkpoint (attrs' suite flagged such tests as
    regressed). Once the session is over (``retain``), they are built once and kept."""

    skeleton: Any  # spprof.Profile without its samples (its native data and metadata)
    origin_ns: int  # CLOCK_MONOTONIC of the chunk's timestamp 0
    times: List[int] = field(default_factory=list)  # absolute, sorted
    order: List[int] = field(default_factory=list)  # sample index per entry of times
    retain: bool = False
    _profile: Any = None

    @classmethod
    def of(cls, profile: Any, origin_ns: int) -> Chunk:
        import dataclasses

        pairs = sorted((s.timestamp_ns + origin_ns, i) for i, s in enumerate(profile.samples))
        skeleton = dataclasses.replace(profile, samples=[], _data=profile._data, _data_samples=None)
        return cls(skeleton, origin_ns, [t for t, _ in pairs], [i for _, i in pairs])

    @property
    def profile(self) -> Any:
        """The chunk as a ``spprof.Profile`` (built anew while the session runs)."""
        if self._profile is not None:
            return self._profile
        sk = self.skeleton
        profile = type(sk)._from_native(sk._data, start_time=sk.start_time, end_time=sk.end_time,
                                        interval_ms=sk.interval_ms, python_version=sk.python_version,
                                        platform=sk.platform)
        if self.retain:
            self._profile = profile
        return profile

    def between(self, t0: int, t1: int) -> List[Any]:
        lo = bisect.bisect_left(self.times, t0)
        hi = bisect.bisect_left(self.times, t1)
        if lo == hi:
            return []
        samples = self.profile.samples
        return [samples[i] for i in self.order[lo:hi]]


def _native_stats() -> Optional[Dict[str, Any]]:
    """The running profile's raw counters (a dict), or None when none runs."""
    from spprof._ext import native

    return native.stats() if native is not None else None


class SessionSampler:
    def __init__(self, interval_ms: float, memory_limit_mb: float) -> None:
        self.interval_ms = interval_ms
        self.memory_limit_mb = memory_limit_mb
        self.chunks: List[Chunk] = []
        self.active = False
        self.origin_ns = 0
        self._collected_before = 0  # samples collected in finished chunks
        self.dropped = 0
        #: Why sampling stopped before the session's end, if it did.
        self.error: Optional[str] = None

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        import spprof

        spprof.start(interval_ms=self.interval_ms, memory_limit_mb=self.memory_limit_mb)
        # Sample timestamps count from the session's CLOCK_MONOTONIC start; the native counters
        # tell how long ago that was (not spprof.stats(), whose first call imports the model).
        m0 = time.monotonic_ns()
        raw = _native_stats()
        m1 = time.monotonic_ns()
        self.origin_ns = (m0 + m1) // 2 - (raw["duration_ns"] if raw else 0)
        self.active = True

    def lost(self) -> bool:
        """Whether the profiler was stopped under us (a test called ``spprof.stop()``): its
        samples since the last checkpoint went to that call. The next test starts it again."""
        import spprof

        if self.active and not spprof.is_active():
            self.active = False
            return True
        return False

    def _stop(self) -> None:
        import spprof

        if self.lost():
            return
        raw = _native_stats()
        profile = spprof.stop()
        self.active = False
        self._collected_before += raw["collected_samples"] if raw else len(profile.samples)
        self.dropped += profile.dropped_count
        self.chunks.append(Chunk.of(profile, self.origin_ns))

    def checkpoint(self) -> None:
        """Make every sample taken so far available to :meth:`samples_between`. If sampling
        cannot start again (a test changed the process so that spprof refuses it), the session
        goes on unprofiled and ``error`` says why."""
        if self.active:
            self._stop()
            try:
                self.start()
            except RuntimeError as exc:
                self.error = str(exc)

    def finish(self) -> None:
        if self.active:
            self._stop()
        for chunk in self.chunks:  # the tests are done: their samples may stay in Python now
            chunk.retain = True

    # -- figures ----------------------------------------------------------------------------------

    def collected(self) -> int:
        """Samples collected since the session started (all threads)."""
        if not self.active:
            return self._collected_before
        raw = _native_stats()
        return self._collected_before + (raw["collected_samples"] if raw else 0)

    def samples_between(self, t0: int, t1: int) -> List[Tuple[Chunk, Any]]:
        out = []
        for chunk in self.chunks:
            out.extend((chunk, s) for s in chunk.between(t0, t1))
        return out


def window_profile(sampler: SessionSampler, t0: int, t1: int,
                   left_out: Optional[Callable[[int, int], bool]] = None) -> Any:
    """The spprof.Profile of the samples taken in [t0, t1) (CLOCK_MONOTONIC ns), timestamps
    relative to t0, stacks starting at the test (the pytest harness cut from their root), less
    the samples for which ``left_out(thread_id, CLOCK_MONOTONIC ns)`` is true.

    A sample's weight is the time its thread used since its previous sample, which for a
    thread's first sample in the window may reach back before the test started: that weight
    is clipped to the time elapsed since the window opened."""
    from datetime import datetime, timedelta

    from spprof import Profile, Sample

    samples, seen = [], set()
    for chunk, s in sampler.samples_between(t0, t1):
        at = s.timestamp_ns + chunk.origin_ns - t0
        if left_out is not None and left_out(s.thread_id, at + t0):
            continue
        weight = s.weight_ns
        if s.thread_id not in seen:
            seen.add(s.thread_id)
            weight = min(weight, max(0, at))
        samples.append(Sample(at, s.thread_id, s.thread_name, cut_harness(s.frames), weight, s.on_cpu, s.pid))
    ref = sampler.chunks[-1].skeleton if sampler.chunks else None
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


#: Where the pytest harness runs: the pytest/pluggy/xdist machinery, this plugin, and the way
#: in (runpy, ``pytest/__main__.py``, the ``pytest`` console script).
_HARNESS_PARTS = ("/_pytest/", "/pluggy/", "/pytest_spprof/", "/xdist/", "/execnet/", "/pytest/__main__.py",
                  "/runpy.py")


def is_harness(filename: str) -> bool:
    if any(part in filename for part in _HARNESS_PARTS) or filename.startswith("<frozen runpy"):
        return True
    return os.path.basename(filename) in ("pytest", "py.test") and "/bin/" in filename


#: The frames from which pytest calls a test function or a fixture: a test's stack starts
#: below the innermost of them. (file ending, function name without its class)
_ENTRY_POINTS = {("/_pytest/python.py", "pytest_pyfunc_call"), ("/_pytest/fixtures.py", "call_fixture_func"),
                 ("/_pytest/fixtures.py", "_teardown_yield_fixture"), ("/unittest/case.py", "_callTestMethod"),
                 ("/unittest/case.py", "_callSetUp"), ("/unittest/case.py", "_callTearDown")}


def _is_entry_point(function_name: str, filename: str) -> bool:
    name = function_name.rsplit(".", 1)[-1]
    return any(filename.endswith(end) and name == fn for end, fn in _ENTRY_POINTS)


def frame_role(function_name: str, filename: str) -> int:
    """What a frame is to the harness cut, as the run file takes it (``run_file::FrameRole``):
    2 where pytest calls a test or fixture, 1 pytest's own code, 0 any other."""
    if _is_entry_point(function_name, filename):
        return 2
    return 1 if is_harness(filename) else 0


#: The one frame of a sample taken in pytest's own code, outside any test or fixture.
HARNESS_FRAME_NAME = "<pytest harness>"


def cut_harness(frames: Tuple[Any, ...]) -> Tuple[Any, ...]:
    """The stack from the test function or fixture on: below the innermost frame where pytest
    calls one (harness frames deeper in, as in a test calling ``pytest.raises``, stay). A sample
    taken in pytest's own code, outside any test or fixture (its hooks, this plugin), becomes one
    frame, ``<pytest harness>``: pluggy's functions are not the test's hottest."""
    for i in range(len(frames) - 1, -1, -1):
        if _is_entry_point(frames[i].function_name, frames[i].filename):
            return frames[i + 1:] if i + 1 < len(frames) else frames[i:]
    if any(is_harness(f.filename) for f in frames):
        from spprof import Frame

        return (Frame(HARNESS_FRAME_NAME, "<pytest>", 0),)
    return frames


def stacks_of(profile: Any, limit: int) -> Dict[str, Any]:
    """The profile's stacks by function and file (lines left out: blame and the differential
    graph do not use them), the heaviest ``limit`` kept and the others folded into their longest
    kept call path (``_verdict.fold``), JSON-ready."""
    from ._verdict import fold, heaviest_prefixes

    by_stack: Dict[Any, int] = defaultdict(int)
    for s in profile.samples:
        by_stack[tuple((f.function_name, f.filename) for f in s.frames)] += s.weight_ns
    stacks = list(by_stack.items())
    folded = sorted(fold(stacks, heaviest_prefixes(stacks, limit)), key=lambda kv: -kv[1])
    frames: Dict[Tuple[str, str], int] = {}
    out = []
    for stack, w in folded:
        ids = [frames.setdefault(frame, len(frames)) for frame in stack]
        out.append([ids, w])
    return {"frames": [[fn, file, 0] for fn, file in frames], "stacks": out}


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


def _stdlib_dirs() -> Tuple[str, ...]:
    import sysconfig

    dirs = {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]}
    return tuple(os.path.join(d, "") for d in dirs if d)


_STDLIB = _stdlib_dirs()


class ModuleNames:
    """Frames named the same in any checkout and environment: functions as module-qualified names
    (``pkg.mod.Class.method``, the module found from the file's place under ``sys.path`` or the
    rootdir), files relative to where the module was found; native frames as
    ``library:function``. Baselines and diffs are keyed by these names."""

    def __init__(self, rootdir: str) -> None:
        self.rootdir = os.path.abspath(rootdir)
        self._roots: Optional[List[str]] = None
        self._modules: Dict[str, Tuple[str, str]] = {}
        self._stdlib: set = set()

    def _split(self, filename: str) -> Tuple[str, str]:
        """(module, relative file) of a Python source file."""
        known = self._modules.get(filename)
        if known is not None:
            return known
        if self._roots is None:  # sys.path as it is once the tests are collected
            import sys

            roots = {os.path.abspath(p) for p in sys.path if p} | {self.rootdir}
            self._roots = sorted(roots, key=len, reverse=True)
        rel = filename
        if not filename.startswith("<"):
            root = next((r for r in self._roots if filename.startswith(os.path.join(r, ""))), None)
            rel = os.path.relpath(filename, root) if root else filename.lstrip(os.sep)
        stem = rel[:-3] if rel.endswith(".py") else rel
        if stem.endswith(os.sep + "__init__"):
            stem = stem[: -len("__init__") - 1]
        module = stem.replace(os.sep, ".") if not filename.startswith("<") else filename
        self._modules[filename] = (module, rel)
        return module, rel

    def function(self, frame: Any) -> str:
        if frame.is_native:
            return f"{os.path.basename(frame.filename)}:{frame.function_name}"
        module, _ = self._split(frame.filename)
        name = f"{module}.{frame.function_name}"
        if frame.filename.startswith(_STDLIB) and "-packages" not in frame.filename:
            self._stdlib.add(name)
        return name

    def is_stdlib(self, name: str) -> bool:
        """Whether ``name`` (as :meth:`function` gave it) is a function of the standard library."""
        return name in self._stdlib

    def file(self, frame: Any) -> str:
        return os.path.basename(frame.filename) if frame.is_native else self._split(frame.filename)[1]

    def portable(self, profile: Any) -> Any:
        """``profile`` with every frame renamed: function → module-qualified name, file → relative."""
        import dataclasses

        from spprof import Frame

        renamed: Dict[Any, Any] = {}

        def rename(f: Any) -> Any:
            new = renamed.get(f)
            if new is None:
                new = renamed[f] = Frame(self.function(f), self.file(f), f.lineno, f.is_native)
            return new

        samples = [dataclasses.replace(s, frames=tuple(rename(f) for f in s.frames)) for s in profile.samples]
        return dataclasses.replace(profile, samples=samples)
