"""Measuring a test: its thread's clocks, its window of the session's samples, the live heap,
and calling it again (warm rounds, ``--spprof-rounds``)."""

from __future__ import annotations

import dataclasses
import threading
import time
import warnings
from array import array
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import pytest

from . import _session
from ._budget import SpprofBudgetWarning
from ._verdict import Stack, round_speed_ns

#: The attribute that marks a report made while a test is called again (see Measurer.run_again).
REPEAT_MARK = "spprof_repeat"
STOPPED_PROFILER = ("spprof: this test called spprof.stop() while pytest --spprof was profiling it, so its "
                    "samples went to that call and it has no figures. Profile it yourself only in runs "
                    "without --spprof (the spprof_profiler fixture gives a test its own profile).")


class WarmWindow(NamedTuple):
    """The warm rounds of a test: when they ran (CLOCK_MONOTONIC ns) and how many passed."""

    t0: int
    t1: int
    rounds: int


@dataclass
class ProfiledTest:
    """What the plugin measured for one test (``item.stash[pytest_spprof.result_key]``)."""

    nodeid: str
    #: CPU time of the test's own thread (exact: the thread CPU clock), in ns.
    cpu_ns: int = 0
    #: Elapsed time of the profiled phases, in ns.
    wall_ns: int = 0
    #: Of wall_ns, the time the test's thread was off CPU by its own doing (sleeping, waiting on
    #: I/O, a lock or another thread), not queued for a CPU that other processes kept busy.
    waited_ns: int = 0
    #: Samples taken in the test's window (all threads).
    samples: int = 0
    #: CPU time of other threads seen in the test's window (sampled); known after the run.
    other_threads_cpu_ns: Optional[int] = None
    #: Net growth of the live heap, and its high-water mark above where the test started
    #: (spprof.memprof estimates, bytes), when a memory budget applies.
    memory_bytes: Optional[int] = None
    peak_memory_bytes: Optional[int] = None
    #: "passed", "failed", "skipped" (the test's own outcome, or failed by spprof), or
    #: "interrupted" (Ctrl-C, SIGTERM: its figures are partial and never enter a baseline).
    outcome: str = "interrupted"
    #: Messages of broken budgets / regressions (empty when none).
    problems: List[str] = field(default_factory=list)
    #: CPU time of this test in the baseline, None when it is not in the baseline.
    baseline_cpu_ns: Optional[int] = None
    rounds: int = 1
    #: The evidence of the comparison with the baseline, when it went beyond screening.
    regression: Optional[str] = None
    #: The function blamed first for a regression, and the time it gained (ns).
    culprit: Optional[Tuple[str, int]] = None
    #: Warm rounds run when a baseline is saved (CPU ns each), and the machine-speed figure then.
    warm_ns: List[int] = field(default_factory=list)
    speed_ns: Optional[int] = None
    #: The speed of the machine around each warm round (see _verdict.round_speed_ns).
    warm_speed_ns: List[int] = field(default_factory=list)
    #: Files written for this test ("speedscope" or "pprof" profile, "diff_svg" flame graph).
    files: Dict[str, str] = field(default_factory=dict)
    #: The test's hottest functions by self time: (function, file, percent of its samples).
    hottest: List[Tuple[str, str, float]] = field(default_factory=list)
    t0: int = 0
    t1: int = 0
    thread_id: int = 0
    #: Judged by screening and warm rounds (``regression`` says how), not on the first call alone.
    confirmed: bool = False
    warm_window: Optional[WarmWindow] = None
    _profile: Any = field(default=None, repr=False)
    #: Who allocated in the test (a memory profile), kept when a memory budget is broken.
    _allocations: Any = field(default=None, repr=False)

    _RECORDED = ("cpu_ns", "wall_ns", "waited_ns", "samples", "other_threads_cpu_ns", "memory_bytes",
                 "peak_memory_bytes", "outcome", "baseline_cpu_ns", "rounds", "regression", "culprit", "problems",
                 "files", "hottest")

    def record(self) -> Dict[str, Any]:
        """The figures as JSON (results.json, and what an xdist worker hands the controller)."""
        return {"nodeid": self.nodeid, **{k: getattr(self, k) for k in self._RECORDED}}

    @classmethod
    def from_record(cls, record: Dict[str, Any]) -> ProfiledTest:
        r = cls(record["nodeid"], **{k: record[k] for k in cls._RECORDED if k not in ("hottest", "culprit")})
        r.hottest = [tuple(h) for h in record["hottest"]]
        r.culprit = tuple(record["culprit"]) if record["culprit"] else None
        return r

    @property
    def profile(self) -> Any:
        """The test's spprof.Profile (all threads in its window); available once the test's
        window has been cut (always after the session; earlier when the plugin needed it)."""
        return self._profile


class _Opened(NamedTuple):
    """Where a test's measurement started: clocks, counters and the live heap."""

    monotonic_ns: int
    wall_ns: int
    cpu_ns: int
    queued_ns: int
    samples: int
    heap: Optional[Tuple[int, int]]


def queued_ns() -> int:
    """Nanoseconds the calling thread has waited for a CPU while runnable (Linux's schedstat;
    0 where the kernel does not keep it): wall time a busy machine adds, not the test's waiting."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def waited_ns(wall_ns: int, cpu_ns: int, queued_since_ns: int) -> int:
    """Of ``wall_ns``, the time off CPU by the thread's own doing: not running, not queued
    (queueing counted from ``queued_since_ns``, a ``queued_ns()`` reading)."""
    return max(0, wall_ns - cpu_ns - (queued_ns() - queued_since_ns))


def stacks_by_name(source: Any) -> List[Stack]:
    """The stacks of a portable profile, or of a baseline entry's ``stacks`` (see
    ``_session.stacks_of``)."""
    if source is None:
        return []
    if isinstance(source, dict):
        names = [frame[0] for frame in source["frames"]]
        return [(tuple(names[i] for i in ids), int(w)) for ids, w in source["stacks"]]
    return [(tuple(f.function_name for f in s.frames), s.weight_ns) for s in source.samples]


def function_times(profile: Any, rounds: int = 1) -> Dict[str, Tuple[int, int]]:
    """Self and total time per function name of a portable profile (the engine's figures), per
    round."""
    times: Dict[str, Tuple[int, int]] = {}
    for name, _file, own, total, *_ in profile.top(None).rows():
        before = times.get(name, (0, 0))  # one name in two files: a name is what baselines key by
        times[name] = (before[0] + own // rounds, before[1] + total // rounds)
    return times


class Measurer:
    """The clocks, samples and live heap of each test, in one session-long sampler."""

    def __init__(self, interval_ms: float, rootdir: str) -> None:
        self.sampler = _session.SessionSampler(interval_ms, memory_limit_mb=100)
        self.names = _session.ModuleNames(rootdir)
        #: spprof.memprof, once a test has a memory budget (started at the first one).
        self.memprof: Any = None
        self._memprof_started = False
        self._open: Dict[str, _Opened] = {}
        #: A test is being called again (see run_again), and a subtest of it failed.
        self.repeating = False
        self._repeat_failed = False
        #: CPU and elapsed time this thread spent in pytest's report hooks (see test_cpu_ns), and
        #: when it ran them while a test was open (CLOCK_MONOTONIC ns, sorted): their samples are
        #: cut from the test's window as their time is cut from the test's.
        self.reporting_ns = 0
        self.reporting_wall_ns = 0
        self._reporting_depth = 0
        self._report_starts, self._report_ends = array("q"), array("q")
        self._reporting_thread = 0

    def watch_memory(self) -> None:
        import spprof.memprof as memprof

        self.memprof = memprof

    def test_cpu_ns(self) -> int:
        """This thread's CPU time, less what it spent in pytest's report hooks: the reports of a
        test's subtests cost the harness, not the test, and cost more under pytest-xdist, which
        sends each one to the controller."""
        return time.thread_time_ns() - self.reporting_ns

    def test_wall_ns(self) -> int:
        """The elapsed time (CLOCK_MONOTONIC), less the time spent in pytest's report hooks."""
        return time.monotonic_ns() - self.reporting_wall_ns

    def reporting_began(self) -> Tuple[int, int]:
        self._reporting_depth += 1
        return time.monotonic_ns(), time.thread_time_ns()

    def reporting_ended(self, began: Tuple[int, int]) -> None:
        self._reporting_depth -= 1
        if self._reporting_depth == 0:  # a hook reporting inside another is counted once
            self.reporting_ns += time.thread_time_ns() - began[1]
            ended = time.monotonic_ns()
            self.reporting_wall_ns += ended - began[0]
            if self._open:
                self._reporting_thread = threading.get_native_id()  # the thread running the tests
                self._report_starts.append(began[0])
                self._report_ends.append(ended)

    def watch_subtest_reports(self, item: pytest.Item) -> Callable[[], None]:
        """unittest reports a subtest from inside the test, by calling ``result.addSubTest``,
        and pytest's (the item's) makes and sends a report there: count it as reporting, not
        as the test, and make none while the test is called again (under pytest-xdist, sending
        1,925 reports made a 30 ms test's repeats take 1.5 s). Returns what puts the item's own
        method back."""
        report = getattr(item, "addSubTest", None)
        if report is None:
            return lambda: None

        def reported(test_case: Any, subtest: Any, exc_info: Any) -> Any:
            if self.repeating:  # a repeat is timed, not reported; a subtest that fails ends it
                self._repeat_failed = self._repeat_failed or exc_info is not None
                return None
            began = self.reporting_began()
            try:
                return report(test_case, subtest, exc_info)
            finally:
                self.reporting_ended(began)

        item.addSubTest = reported  # type: ignore[attr-defined]  # this item only, until restored
        return lambda: vars(item).pop("addSubTest", None)

    def report_spans(self) -> Tuple[List[Tuple[int, int]], int]:
        """When the thread running the tests reported while a test was open, and that thread."""
        return list(zip(self._report_starts, self._report_ends)), self._reporting_thread

    def _reporting(self, thread_id: int, at_ns: int) -> bool:
        """Whether a sample of ``thread_id`` taken at ``at_ns`` was taken in a report hook."""
        if thread_id != self._reporting_thread:
            return False
        i = bisect_right(self._report_starts, at_ns) - 1
        return i >= 0 and at_ns < self._report_ends[i]

    def begin(self, nodeid: str, watches_memory: bool) -> None:
        if not self.sampler.active and self.sampler.error is None:
            self.sampler.start()
        heap = self._heap(start=True) if self.memprof is not None and watches_memory else None
        self._open[nodeid] = _Opened(time.monotonic_ns(), self.test_wall_ns(), self.test_cpu_ns(),
                                     queued_ns(), self.sampler.collected(), heap)

    def _heap(self, start: bool) -> Optional[Tuple[int, int]]:
        """The estimated live heap and its high-water mark since the test started (``start``:
        the mark starts again now). Two counters, not a snapshot: cheap enough for every test."""
        mp = self.memprof
        try:
            if not self._memprof_started:
                mp.start(sampling_rate_kb=64)
                self._memprof_started = True
            if start:
                mp.reset_peak()
            return mp.get_traced_memory()
        except Exception as exc:  # never break the run over the memory profiler
            warnings.warn(f"spprof: the memory profiler failed ({exc}); memory budgets are not checked",
                          SpprofBudgetWarning, stacklevel=1)
            self.memprof = None
            return None

    def end(self, nodeid: str) -> Optional[ProfiledTest]:
        opened = self._open.pop(nodeid, None)
        if opened is None:
            return None
        m0, w0, c0, q0, s0, heap0 = opened
        cpu = self.test_cpu_ns() - c0
        wall = self.test_wall_ns() - w0
        result = ProfiledTest(nodeid, cpu_ns=cpu, wall_ns=wall, waited_ns=waited_ns(wall, cpu, q0),
                              samples=max(0, self.sampler.collected() - s0), t0=m0, t1=time.monotonic_ns(),
                              thread_id=threading.get_native_id())
        if self.sampler.lost():
            result.problems.append(STOPPED_PROFILER)
        if heap0 is not None and self.memprof is not None:
            heap1 = self._heap(start=False)
            if heap1 is not None:
                result.memory_bytes, result.peak_memory_bytes = heap1[0] - heap0[0], heap1[1] - heap0[0]
        return result

    def allocations(self) -> Any:
        """Who allocated since the current test started (before the next test resets it)."""
        return self.memprof.allocations_since_reset_peak()

    def run_again(self, item: pytest.Item) -> bool:
        """Call the test once more; False when it failed (a repeat that fails says nothing about
        speed: stop repeating). Ctrl-C and pytest.exit still end the run. What it reports
        meanwhile is not a new result: the plugin does not judge a subtest's report (pytest
        makes one as each subtest ends), the terminal does not count it, and the warnings the
        first call gave again are not added to pytest's summary (under ``-W error`` they still
        fail the repeat, which ends the repeats)."""
        self.repeating, self._repeat_failed = True, False
        try:
            with warnings.catch_warnings(record=True):
                item.runtest()
            return not self._repeat_failed
        except (KeyboardInterrupt, pytest.exit.Exception):
            raise
        except BaseException:
            return False
        finally:
            self.repeating = False

    def warm_rounds(self, item: pytest.Item, result: ProfiledTest, n: int) -> Tuple[List[int], List[int]]:
        """Run the test's call ``n`` more times; the CPU time of each round that passed, and the
        machine's speed around it (the faster of the calibration runs before and after it).
        Their samples (``result.warm_window``) give the blame of a regression more to go on."""
        times, speeds = [], []
        m0 = time.monotonic_ns()
        before = round_speed_ns()
        for _ in range(n):
            c0 = self.test_cpu_ns()
            if not self.run_again(item):
                break
            times.append(self.test_cpu_ns() - c0)
            after = round_speed_ns()
            speeds.append(min(before, after))
            before = after
        if result.warm_window is not None:  # more rounds of the same test: one window
            m0, done = result.warm_window.t0, result.warm_window.rounds
        else:
            done = 0
        result.warm_window = WarmWindow(m0, time.monotonic_ns(), done + len(times))
        return times, speeds

    def more_rounds(self, item: pytest.Item, result: ProfiledTest, n: int) -> None:
        """Call the test ``n`` more times and keep the fastest round (CPU noise only adds): the
        test's figures and its profile (its window of samples) are both that round's."""
        for _ in range(n):
            m0, s0 = time.monotonic_ns(), self.sampler.collected()
            c0, w0, q0 = self.test_cpu_ns(), self.test_wall_ns(), queued_ns()
            if not self.run_again(item):
                break
            cpu, wall = self.test_cpu_ns() - c0, self.test_wall_ns() - w0
            result.rounds += 1
            if cpu < result.cpu_ns:
                result.cpu_ns, result.wall_ns = cpu, wall
                result.waited_ns = waited_ns(wall, cpu, q0)
                result.t0, result.t1 = m0, time.monotonic_ns()
                result.samples = self.sampler.collected() - s0

    def window(self, t0: int, t1: int) -> Any:
        """The profile of [t0, t1); a window that reaches into the chunk being recorded cuts it first."""
        if self.sampler.active and (not self.sampler.chunks or t1 > self.sampler.origin_ns):
            self.sampler.checkpoint()
        return _session.window_profile(self.sampler, t0, t1, self._reporting)

    def profile_of(self, r: ProfiledTest) -> Any:
        if r._profile is None:
            r._profile = self.window(r.t0, r.t1)
            # The sample counter read at the test's end misses samples the resolver thread had
            # not taken from the ring yet (on a busy machine, all of a 100 ms test's): the window holds them.
            r.samples = len(r._profile.samples)
        return r._profile

    def portable_profile(self, r: ProfiledTest) -> Any:
        return self.names.portable(self.profile_of(r))

    def round_profile(self, r: ProfiledTest) -> Any:
        """The test's profile per round, portable: the first call and its warm rounds, weights
        divided by the rounds (blame has more samples to go on than one round gives)."""
        profile = self.portable_profile(r)
        if r.warm_window is None:
            return profile
        t0, t1, rounds = r.warm_window
        warm = self.names.portable(self.window(t0, t1))
        samples = [dataclasses.replace(s, weight_ns=s.weight_ns // (rounds + 1))
                   for s in profile.samples + warm.samples]
        return dataclasses.replace(profile, samples=samples)

    def warm_profile(self, r: ProfiledTest) -> Tuple[Any, int]:
        """The portable profile of a confirmation's warm rounds and their number (the first
        call's, and 1, when it had none)."""
        if r.warm_window is None:
            return self.portable_profile(r), 1
        t0, t1, rounds = r.warm_window
        return self.names.portable(self.window(t0, t1)), max(1, rounds)

    def finish(self) -> None:
        self.sampler.finish()
        if self.memprof is not None and self._memprof_started:
            try:
                self.memprof.stop()
            except Exception as exc:  # the figures are taken; only say that stopping failed
                warnings.warn(f"spprof: stopping the memory profiler failed: {exc}", SpprofBudgetWarning,
                              stacklevel=1)
