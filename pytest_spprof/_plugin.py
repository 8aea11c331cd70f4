"""The active part of the plugin, imported only when ``--spprof`` (or ``spprof = true``) is on."""

from __future__ import annotations

import functools
import json
import math
import os
import re
import threading
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Generator, List, NamedTuple, Optional, Tuple

import pytest

from spprof._api import MAX_INTERVAL_MS, check_interval_ms
from spprof._paths import check_writable
from spprof._units import fmt_bytes, fmt_ns

from . import _baseline, _journal, _session, _verdict, _xdist
from ._units import Budget, BudgetError, parse_percent, parse_time_ns

#: The least growth of a test's warm rounds that is a regression (an effect-size floor on top of
#: the significance test; see _verdict and docs/design.md); the floor keeps sub-millisecond tests
#: from flapping.
#: The attribute that marks a report made while a test is called again (see _run_again).
REPEAT_MARK = "spprof_repeat"
DEFAULT_TOLERANCE = "15%"
#: Stacks a baseline entry keeps whole (the others folded into their call paths).
BASELINE_STACKS = 200
DEFAULT_NOISE_FLOOR = "2ms"
#: Without warm rounds (a baseline whose repeats failed) only the first calls can be compared,
#: whose run-to-run noise reached 28 % on the development VM: never a narrower margin than this.
FIRST_CALL_TOLERANCE_PCT = 30.0
STOPPED_PROFILER = ("spprof: this test called spprof.stop() while pytest --spprof was profiling it, so its "
                    "samples went to that call and it has no figures. Profile it yourself only in runs "
                    "without --spprof (the spprof_profiler fixture gives a test its own profile).")


class SpprofBudgetWarning(pytest.PytestWarning):
    """A test broke an spprof budget or regressed, under ``--spprof-warn-only``."""


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
    #: Files written for this test (speedscope profile, differential flame graph).
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


def _opt(config: Any, name: str, ini: str) -> Any:
    value = config.getoption(name)
    if value is None:
        value = config.getini(ini)
    return value


class _Opened(NamedTuple):
    """Where a test's measurement started: clocks, counters and the live heap."""

    monotonic_ns: int
    wall_ns: int
    cpu_ns: int
    queued_ns: int
    samples: int
    heap: Optional[Tuple[int, int]]


class WarmWindow(NamedTuple):
    """The warm rounds of a test: when they ran (CLOCK_MONOTONIC ns) and how many passed."""

    t0: int
    t1: int
    rounds: int


def _queued_ns() -> int:
    """Nanoseconds the calling thread has waited for a CPU while runnable (Linux's schedstat;
    0 where the kernel does not keep it): wall time a busy machine adds, not the test's waiting."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _waited_ns(wall_ns: int, cpu_ns: int, queued_since_ns: int) -> int:
    """Of ``wall_ns``, the time off CPU by the thread's own doing: not running, not queued
    (queueing counted from ``queued_since_ns``, a ``_queued_ns()`` reading)."""
    return max(0, wall_ns - cpu_ns - (_queued_ns() - queued_since_ns))


def _workers(config: pytest.Config) -> int:
    """The processes running this run's tests: pytest-xdist's workers, else 1."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        return int(workerinput.get("workercount", 1))
    if getattr(config.option, "dist", "no") == "no":
        return 1
    return len(getattr(config.option, "tx", None) or ()) or 1


def _processes(n: int) -> str:
    return "1 process" if n == 1 else f"{n} processes"


def _safe_name(nodeid: str) -> str:
    """A file name for a test's outputs: readable, and unique through a hash of the whole id
    (ids that differ only in characters a file name cannot hold would collide otherwise).
    results.json maps each test id to its files."""
    import hashlib

    name = re.sub(r"[^A-Za-z0-9_.\-\[\]]+", "_", nodeid.replace("::", "__"))[:120]
    return f"{name}-{hashlib.sha1(nodeid.encode()).hexdigest()[:10]}"


def _usage(msg: str) -> pytest.UsageError:
    return pytest.UsageError(f"spprof: {msg}")


def name_matches(key: str, qualified: str) -> bool:
    """Whether a share-budget key ("pkg.mod.func", "mod.Class.method", "func", globs allowed)
    names the function with module-qualified name ``qualified``: the whole name or a tail of
    it that starts at a dot."""
    import fnmatch

    if any(c in key for c in "*?["):
        return fnmatch.fnmatchcase(qualified, key) or fnmatch.fnmatchcase(qualified, "*." + key)
    return qualified == key or qualified.endswith("." + key)


class SpprofPlugin:
    def __init__(self, config: Any) -> None:
        self.config = config
        from . import result_key, results_key

        self.result_key = result_key
        self.results: Dict[str, ProfiledTest] = {}
        config.stash[results_key] = self.results
        self.phases = _opt(config, "spprof_phases", "spprof_phases") or "call"
        if self.phases not in ("call", "all"):
            raise _usage(f"--spprof-phases must be 'call' or 'all', not {self.phases!r}")
        self.dir = Path(_opt(config, "spprof_dir", "spprof_dir") or ".spprof")
        if not self.dir.is_absolute():
            self.dir = Path(config.rootpath) / self.dir
        self.save = _opt(config, "spprof_save", "spprof_save") or "failed"
        if self.save not in ("all", "failed", "none"):
            raise _usage(f"--spprof-save must be all, failed or none, not {self.save!r}")
        self.top = self._int("spprof_top", "spprof_top", 10)
        self.rounds = self._int("spprof_rounds", "spprof_rounds", 1, minimum=1)
        interval = (config.getoption("spprof_interval") or config.getini("spprof_interval")
                    or config.getini("spprof_interval_ms") or "1")
        try:
            self.interval_ms = check_interval_ms(float(interval))
        except ValueError:
            raise _usage(f"--spprof-interval must be a number of milliseconds from 1 to {MAX_INTERVAL_MS}, "
                         f"not {interval!r}") from None
        self.warn_only = bool(config.getoption("spprof_warn_only")) or config.getini("spprof_warn_only")
        self.markdown = _opt(config, "spprof_markdown", "spprof_markdown") or None
        try:
            self.defaults = Budget()
            for key, ini in (("cpu", "spprof_cpu_budget"), ("wall", "spprof_wall_budget"),
                             ("memory", "spprof_memory_budget"), ("peak_memory", "spprof_peak_memory_budget")):
                self.defaults.set(key, config.getini(ini) or None, f"ini option {ini}")
            self.tolerance_pct = parse_percent(_opt(config, "spprof_tolerance", "spprof_tolerance")
                                               or DEFAULT_TOLERANCE, "--spprof-tolerance", bare_is_percent=True)
            self.noise_floor_ns = parse_time_ns(_opt(config, "spprof_noise_floor", "spprof_noise_floor")
                                                or DEFAULT_NOISE_FLOOR, "--spprof-noise-floor")
        except BudgetError as exc:
            raise _usage(str(exc)) from None
        default_baseline = config.getini("spprof_baseline") or str(self.dir / "baseline.json")
        save_bl = config.getoption("spprof_save_baseline")
        compare = config.getoption("spprof_compare")
        self.save_baseline = self._path(default_baseline if save_bl == "" else save_bl)
        self.compare_path = self._path(default_baseline if compare == "" else compare)
        self.baseline: Dict[str, _baseline.Entry] = {}
        #: The machine-speed figure (see _verdict.machine_speed_ns) of the baseline, and this run's
        #: latest one with when it was taken (monotonic ns).
        self.baseline_speed_ns: Optional[int] = None
        self._speed: Tuple[int, int] = (0, 0)
        if self.compare_path is not None:
            try:
                env = _baseline.environment(_baseline.load(self.compare_path, True))
            except _baseline.BaselineError as exc:
                raise _usage(str(exc)) from None
            self.baseline, self.baseline_speed_ns = _baseline.entries(env.get("tests", {})), env.get("speed_ns")
        #: How much the baseline's tests typically vary between processes (see _verdict.spread_floor),
        #: and its recordings' largest shift in pace (see _verdict.run_pace).
        self.typical_spread = _verdict.typical_spread(e.recordings for e in self.baseline.values())
        self.pace_limit = math.exp(max(map(abs, env.get("shifts", [])), default=0.0)) if self.baseline else 1.0
        #: Processes running the tests, in this run and when the baseline was recorded: a run with
        #: more workers than the baseline's is slower as a whole (more-itertools: 1.3x with -n 2
        #: against a serial baseline, at the same calibration speed), so its pace has no limit.
        self.workers = _workers(config)
        self.baseline_workers = env.get("workers", 1) if self.baseline else self.workers
        if self.baseline_workers != self.workers:
            self.pace_limit = math.inf
        #: Log ratios of this process's first calls to the baseline's (see _verdict.run_pace).
        self._pace_shifts: List[float] = []
        #: The tests' recordings in the baseline being saved, before this run adds its own.
        self._earlier: Dict[str, Tuple[float, ...]] = {}
        #: Which recording of most tests the saved baseline now holds (1: the first).
        self.recording = 1
        #: memprof was started for a memory budget (it is started once, at the first one).
        self._memprof_started = False
        if self.save_baseline is not None:  # fail now, not after the run, on a damaged file
            try:
                before = _baseline.environment(_baseline.load(self.save_baseline, False)).get("tests", {})
            except _baseline.BaselineError as exc:
                raise _usage(str(exc)) from None
            self._earlier = {test: rec for test, e in before.items() if (rec := _baseline.recordings(e))}
        # Outputs that could not be written fail now, not after the run.
        outputs = [(self.dir, "--spprof-dir", True), (self.save_baseline, "--spprof-save-baseline", False),
                   (self._path(self.markdown), "--spprof-markdown", False)]
        for path, option, directory in outputs:
            if path is not None:
                try:
                    check_writable(path, option, directory=directory, creates_folders=True)
                except ValueError as exc:
                    raise _usage(str(exc)) from None
        self.sampler = _session.SessionSampler(self.interval_ms, memory_limit_mb=100)
        self.names = _session.ModuleNames(str(config.rootpath))
        self.memprof: Any = None
        self.needs_memory = False
        self._open: Dict[str, _Opened] = {}
        self._problems = 0
        #: Warn-only messages that could not be warned (warnings are errors in this run).
        self._unraised: List[str] = []
        self.new_tests: List[str] = []
        self.dropped = 0
        self.run_file: Optional[Path] = None
        #: Baseline entries of the passed tests, made as each test finishes.
        self.baseline_tests: Dict[str, Any] = {}
        #: Outputs that could not be written (reported in the terminal summary).
        self.output_errors: List[str] = []
        self._results: Optional[_journal.Journal] = None
        self._baseline_file: Optional[_journal.Journal] = None
        self._sigterm_handler: Any = None
        #: A test is being called again (see _run_again).
        self._repeating = False
        #: CPU time this thread spent in pytest's report hooks (see _test_cpu_ns).
        self._reporting_ns = 0

    def _int(self, opt: str, ini: str, default: int, minimum: int = 0) -> int:
        value = _opt(self.config, opt, ini)
        if value in (None, ""):
            return default
        try:
            n = int(value)
            if n < minimum:
                raise ValueError
        except ValueError:
            raise _usage(f"--{opt.replace('_', '-')} must be an integer >= {minimum}, not {value!r}") from None
        return n

    def _make_dir(self, sub: str = "") -> Path:
        """The output directory (or its folder ``sub``), created if needed. A directory this
        plugin creates gets a ``.gitignore`` that keeps its contents out of version control."""
        if not self.dir.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / ".gitignore").write_text("# written by pytest --spprof\n*\n", encoding="utf-8")
        folder = self.dir / sub
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _path(self, value: Optional[str]) -> Optional[Path]:
        if value is None:
            return None
        p = Path(value)
        return p if p.is_absolute() else Path(self.config.invocation_params.dir) / p

    # -- collection: budgets are read (and checked) here ------------------------------------------

    def _budget_of(self, item: Any) -> Budget:
        budget = Budget()
        budget.cpu_ns, budget.wall_ns = self.defaults.cpu_ns, self.defaults.wall_ns
        budget.memory_bytes = self.defaults.memory_bytes
        budget.peak_memory_bytes = self.defaults.peak_memory_bytes
        budget.source = dict(self.defaults.source)
        for mark in reversed(list(item.iter_markers(name="spprof"))):  # closest marker wins
            if mark.args:
                raise BudgetError(f"the spprof marker of {item.nodeid} takes keyword arguments only "
                                  "(cpu=, wall=, memory=, peak_memory=, share=)")
            for key, value in mark.kwargs.items():
                budget.set(key, value, f"the spprof marker of {item.nodeid}")
        return budget

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, session: pytest.Session, config: pytest.Config,
                                      items: List[pytest.Item]) -> None:
        from . import budget_key

        for item in items:
            try:
                budget = self._budget_of(item)
            except BudgetError as exc:
                raise _usage(str(exc)) from None
            item.stash[budget_key] = budget
            if budget.watches_memory():
                self.needs_memory = True
        if self.needs_memory:
            import spprof.memprof as memprof

            self.memprof = memprof

    # -- measuring ---------------------------------------------------------------------------------

    def _begin(self, item: Any) -> None:
        from . import budget_key

        if not self.sampler.active and self.sampler.error is None:
            self.sampler.start()
        mem0 = None
        budget = item.stash.get(budget_key, None)
        if self.memprof is not None and budget is not None and budget.watches_memory():
            mem0 = self._heap(start=True)
        self._open[item.nodeid] = _Opened(time.monotonic_ns(), time.perf_counter_ns(), self._test_cpu_ns(),
                                          _queued_ns(), self.sampler.collected(), mem0)

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

    def _end(self, item: Any) -> Optional[ProfiledTest]:
        opened = self._open.pop(item.nodeid, None)
        if opened is None:
            return None
        m0, w0, c0, q0, s0, mem0 = opened
        cpu = self._test_cpu_ns() - c0
        wall = time.perf_counter_ns() - w0
        waited = _waited_ns(wall, cpu, q0)
        t1 = time.monotonic_ns()
        stopped = self.sampler.lost()
        result = ProfiledTest(item.nodeid, cpu_ns=cpu, wall_ns=wall, waited_ns=waited,
                              samples=max(0, self.sampler.collected() - s0), t0=m0, t1=t1,
                              thread_id=threading.get_native_id())
        if stopped:
            result.problems.append(STOPPED_PROFILER)
        if mem0 is not None and self.memprof is not None:
            mem1 = self._heap(start=False)
            if mem1 is not None:
                result.memory_bytes, result.peak_memory_bytes = mem1[0] - mem0[0], mem1[1] - mem0[0]
                if self._memory_problems(item, result):  # who allocated, before the next test resets it
                    result._allocations = self.memprof.allocations_since_reset_peak()
        entry = self.baseline.get(item.nodeid)
        if entry is not None:
            result.baseline_cpu_ns = entry.cpu_ns
        self.results[item.nodeid] = result
        item.stash[self.result_key] = result
        return result

    @staticmethod
    def _record_properties(item: Any, result: ProfiledTest) -> None:
        """The final figures as JUnit XML properties (``--junitxml``)."""
        item.user_properties.append(("spprof_cpu_ms", f"{result.cpu_ns / 1e6:.3f}"))
        item.user_properties.append(("spprof_wall_ms", f"{result.wall_ns / 1e6:.3f}"))
        item.user_properties.append(("spprof_samples", str(result.samples)))
        for name, value in (("spprof_memory_bytes", result.memory_bytes),
                            ("spprof_peak_memory_bytes", result.peak_memory_bytes)):
            if value is not None:
                item.user_properties.append((name, str(value)))

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        if self.phases == "all":
            self._begin(item)
        yield

    @pytest.hookimpl(hookwrapper=True, trylast=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, None]:
        if self.phases != "call":
            yield
            return
        self._begin(item)
        outcome = yield
        result = self._end(item)
        if result is None:
            return
        # A unittest.TestCase keeps its failures and skips on the item (``_excinfo``) until its
        # report is made: the call raised nothing, but the test did not pass either.
        if outcome.excinfo is None and not getattr(item, "_excinfo", None):
            if self.save_baseline is not None:
                result.speed_ns = self._speed_now(max_age_s=2.0)
                result.warm_ns, result.warm_speed_ns = self._warm_rounds(item, result, _verdict.ROUNDS - 1)
            self._confirm(item, result)
            if self.rounds > 1 and self._over(item, result):
                self._more_rounds(item, result)
        self._record_properties(item, result)

    def _warm_rounds(self, item: Any, result: ProfiledTest, n: int) -> Tuple[List[int], List[int]]:
        """Run the test's call ``n`` more times; the CPU time of each round that passed, and the
        machine's speed around it (the faster of the calibration runs before and after it).
        Their samples (``result.warm_window``) give the blame of a regression more to go on."""
        times, speeds = [], []
        m0 = time.monotonic_ns()
        before = _verdict.round_speed_ns()
        for _ in range(n):
            c0 = self._test_cpu_ns()
            if not self._run_again(item):
                break
            times.append(self._test_cpu_ns() - c0)
            after = _verdict.round_speed_ns()
            speeds.append(min(before, after))
            before = after
        if result.warm_window is not None:  # more rounds of the same test: one window
            m0, done = result.warm_window.t0, result.warm_window.rounds
        else:
            done = 0
        result.warm_window = WarmWindow(m0, time.monotonic_ns(), done + len(times))
        return times, speeds

    def _run_again(self, item: pytest.Item) -> bool:
        """Call the test once more; False when it failed (a repeat that fails says nothing about
        speed: stop repeating). Ctrl-C and pytest.exit still end the run. What it reports
        meanwhile is not a new result: this plugin does not judge a subtest's report (pytest
        makes one as each subtest ends), the terminal does not count it, and the warnings the
        first call gave again are not added to pytest's summary (under ``-W error`` they still
        fail the repeat, which ends the repeats)."""
        self._repeating = True
        try:
            with warnings.catch_warnings(record=True):
                item.runtest()
            return True
        except (KeyboardInterrupt, pytest.exit.Exception):
            raise
        except BaseException:
            return False
        finally:
            self._repeating = False

    @pytest.hookimpl(tryfirst=True)
    def pytest_report_teststatus(self, report: pytest.TestReport) -> Optional[Tuple[str, str, str]]:
        # Under pytest-xdist the controller, which repeats nothing, gets the workers' reports:
        # the mark travels with them (pytest serializes a report's extra attributes).
        return ("", "", "") if getattr(report, REPEAT_MARK, False) else None

    def _speed_now(self, max_age_s: float) -> int:
        """The machine-speed figure, measured again when the last one is older than ``max_age_s``
        (a machine's load changes within a run: a figure goes with the rounds timed near it)."""
        value, at = self._speed
        now = time.monotonic_ns()
        if not value or now - at > max_age_s * 1e9:
            self._speed = (_verdict.machine_speed_ns(), now)
        return self._speed[0]

    def _speed_ratio(self, then: Optional[int] = None, max_age_s: float = 2.0) -> float:
        """This machine's speed figure now over ``then`` (a test's, else the baseline's), when
        it is slower now; else 1. Only slowness is corrected: a figure that reads faster than
        the baseline's (a cold first measurement, load that came and went while the baseline was
        saved) would otherwise turn noise into alarms, which it did, by up to 48 %."""
        then = then or self.baseline_speed_ns
        return max(1.0, self._speed_now(max_age_s) / then) if then else 1.0

    def _confirm(self, item: Any, r: ProfiledTest) -> None:
        """A test whose baseline has warm rounds is judged by screening and, when its first call
        looks slower, on warm rounds run now (see _verdict); never on its first call alone."""
        entry = self.baseline.get(r.nodeid)
        if entry is None or len(entry.warm_ns) < 3:
            return
        r.confirmed = True
        pace = _verdict.run_pace(self._pace_shifts, self.pace_limit)
        if entry.speed_ns and entry.cpu_ns and r.cpu_ns >= 1_000_000:
            now, then = r.cpu_ns / self._speed_now(max_age_s=2.0), entry.cpu_ns / entry.speed_ns
            self._pace_shifts.append(math.log(now / then))
        if not _verdict.looks_slower(r.cpu_ns, (entry.cpu_ns, *entry.warm_ns), self._speed_ratio(entry.speed_ns),
                                     self.tolerance_pct, self.noise_floor_ns, pace, entry.waits()):
            return
        # The baseline at the mean of its recordings, and how far unchanged code moves from it
        # between processes.
        baseline = _verdict.at_recordings_mean(entry.warm_ns, entry.recordings)
        floor = _verdict.spread_floor(entry.recordings, self.typical_spread) if entry.recordings else None
        # Most suspects of the screening are first-call noise, which a warm round or two clear;
        # the rest get the rounds the test needs.
        ratio = self._speed_ratio(entry.speed_ns, max_age_s=0)
        current: List[int] = []
        speeds: List[int] = []
        cleared = False
        for total, share in (*_verdict.GATES, (_verdict.ROUNDS, None)):
            more, more_speeds = self._warm_rounds(item, r, total - len(current))
            current, speeds = current + more, speeds + more_speeds
            if len(current) < total:
                break  # a repeat failed
            cleared = share is not None and not _verdict.could_regress(
                current, baseline, ratio, self.tolerance_pct, self._speeds(entry, speeds), pace, floor, share)
            if cleared:
                break
        r.rounds += len(current)
        if cleared or len(current) < 3:
            return  # not slower; or the repeats failed: no evidence either way, no verdict
        # Without per-round speeds in the baseline: the machine's speed again after the rounds,
        # the slower of the two counting (under pytest-xdist the other worker's load changes
        # within the rounds, and one figure taken in a quiet moment before them missed it).
        ratio = max(ratio, self._speed_ratio(entry.speed_ns, max_age_s=0))
        verdict = _verdict.judge(current, baseline, ratio, self.tolerance_pct, self.noise_floor_ns,
                                 "the test's call", self._speeds(entry, speeds), pace, floor, entry.waits())
        r.regression = verdict.evidence if verdict.regressed else None

    @staticmethod
    def _speeds(entry: _baseline.Entry, current: List[int]) -> Optional[_verdict.Speeds]:
        """Per-round speeds to compare with, when the baseline recorded them (format 2 files
        saved before they were recorded have none)."""
        return (current, entry.warm_speed_ns) if len(entry.warm_speed_ns) == len(entry.warm_ns) > 0 else None

    def _more_rounds(self, item: Any, result: ProfiledTest) -> None:
        # Looks over budget or regressed: measure again, keep the fastest round (CPU noise only adds).
        # The test's figures and its profile (its window of samples) are both the fastest round's.
        for _ in range(self.rounds - 1):
            m0, s0 = time.monotonic_ns(), self.sampler.collected()
            c0, w0, q0 = self._test_cpu_ns(), time.perf_counter_ns(), _queued_ns()
            if not self._run_again(item):
                break
            cpu, wall = self._test_cpu_ns() - c0, time.perf_counter_ns() - w0
            result.rounds += 1
            if cpu < result.cpu_ns:
                result.cpu_ns, result.wall_ns = cpu, wall
                result.waited_ns = _waited_ns(wall, cpu, q0)
                result.t0, result.t1 = m0, time.monotonic_ns()
                result.samples = self.sampler.collected() - s0

    @pytest.hookimpl(hookwrapper=True, trylast=True)
    def pytest_runtest_teardown(self, item: pytest.Item,
                                nextitem: Optional[pytest.Item]) -> Generator[None, None, None]:
        yield
        if self.phases == "all":
            result = self._end(item)
            if result is not None:
                self._record_properties(item, result)

    def _over(self, item: Any, r: ProfiledTest) -> bool:
        from . import budget_key

        b = item.stash.get(budget_key, None)
        if b is not None and ((b.cpu_ns is not None and r.cpu_ns > b.cpu_ns)
                              or (b.wall_ns is not None and r.wall_ns > b.wall_ns)):
            return True
        return self._regressed(r)

    def _regressed(self, r: ProfiledTest) -> bool:
        if r.confirmed:
            return r.regression is not None
        if r.baseline_cpu_ns is None:
            return False
        base = r.baseline_cpu_ns * self._speed_ratio()
        tolerance = max(self.tolerance_pct, FIRST_CALL_TOLERANCE_PCT)
        return r.cpu_ns > base * (1 + tolerance / 100) and r.cpu_ns - base > self.noise_floor_ns

    # -- verdicts ------------------------------------------------------------------------------------

    def _test_cpu_ns(self) -> int:
        """This thread's CPU time, less what it spent in pytest's report hooks: the reports of a
        test's subtests cost the harness, not the test, and cost more under pytest-xdist, which
        sends each one to the controller."""
        return time.thread_time_ns() - self._reporting_ns

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> Any:
        t0 = time.thread_time_ns()
        yield
        self._reporting_ns += time.thread_time_ns() - t0

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
        t0 = time.thread_time_ns()
        try:
            yield from self._made_report(item, call)
        finally:
            self._reporting_ns += time.thread_time_ns() - t0

    def _made_report(self, item: Any, call: Any) -> Any:
        outcome = yield
        if self._repeating:
            if outcome.exception is None:  # a subtest's: not a new result (see _run_again)
                setattr(outcome.get_result(), REPEAT_MARK, True)
            return
        rep = outcome.get_result()
        if call.when == "call":
            item.stash[_call_outcome_key] = rep.outcome if not hasattr(rep, "wasxfail") else "xfail"
        final = "call" if self.phases == "call" else "teardown"
        if call.when != final:
            return
        result = item.stash.get(self.result_key, None)
        if result is None:
            return
        own = item.stash.get(_call_outcome_key, "skipped")
        result.outcome = own if rep.outcome == "passed" else rep.outcome
        # The test's own failure (or skip) is its report; spprof adds nothing to it.
        if own == "passed" and rep.outcome == "passed":
            if STOPPED_PROFILER in result.problems:  # no figures to judge: fail this test only
                self._problems += 1
                rep.outcome, rep.longrepr, result.outcome = "failed", STOPPED_PROFILER, "failed"
            else:
                self._judge(item, result, rep)
        self._settle(result)
        item.ihook.pytest_spprof_result(item=item, result=result)

    def _settle(self, r: ProfiledTest) -> None:
        """Put what a finished test leaves on disk now (see _journal): its profile file when it
        is kept, its baseline entry, and its record. Taking its samples out of the running
        profiler (a checkpoint, ~4 ms) happens only for the first two."""
        keep = self.save == "all" or (self.save == "failed" and r.outcome == "failed")
        entry = self.save_baseline is not None and r.outcome == "passed"
        if keep or entry:
            self.sampler.checkpoint()
        if keep:
            path = self._make_dir("profiles") / (_safe_name(r.nodeid) + ".speedscope.json")
            if self._output(f"the profile of {r.nodeid}", lambda: self.profile_of(r).save(path)):
                r.files["speedscope"] = str(path)
        if entry:
            self.baseline_tests[r.nodeid] = self._baseline_entry(r)
            self._output("the baseline journal", lambda: self._baseline_journal.append(
                _baseline.journal_entry(r.nodeid, self.baseline_tests[r.nodeid])))
        self._output("the results journal", lambda: self._results_journal.append(r.record()))

    def _output(self, what: str, write: Callable[[], Any]) -> bool:
        """Run one writer; a failure (a full disk, a folder removed meanwhile) is reported at the
        end of the run and does not keep the other outputs from being written."""
        try:
            write()
            return True
        except OSError as exc:
            self.output_errors.append(f"could not write {what}: {exc}")
            return False

    def _judge(self, item: Any, result: ProfiledTest, rep: Any) -> None:
        problems = self._check(item, result)
        if not problems:
            return
        self._problems += 1
        result.problems = problems
        if result.culprit is not None:
            item.user_properties.append(("spprof_culprit", result.culprit[0]))  # teardown report: JUnit
        message = self._message(result, problems, memory_only=problems == self._memory_problems(item, result))
        if self.warn_only:
            try:
                item.warn(SpprofBudgetWarning(message))
            except Warning:
                # `-W error` / `filterwarnings = error` turned the warning into an exception: the
                # test still passes (warn-only), and the message goes to the terminal summary.
                self._unraised.append(message)
        else:
            rep.outcome = "failed"
            rep.longrepr = message
            result.outcome = "failed"

    def _check(self, item: Any, r: ProfiledTest) -> List[str]:
        from . import budget_key

        b: Optional[Budget] = item.stash.get(budget_key, None)
        problems = []
        if b is not None:
            if b.cpu_ns is not None and r.cpu_ns > b.cpu_ns:
                problems.append(f"CPU time {fmt_ns(r.cpu_ns)} is over the budget of {fmt_ns(b.cpu_ns)} "
                                f"(cpu={b.source.get('cpu')})")
            if b.wall_ns is not None and r.wall_ns > b.wall_ns:
                problems.append(f"wall time {fmt_ns(r.wall_ns)} is over the budget of {fmt_ns(b.wall_ns)} "
                                f"(wall={b.source.get('wall')})")
            problems += self._memory_problems(item, r)
            if b.share:
                problems += self._share_problems(r, b.share)
        if self._regressed(r):
            problems.append(self._regression_text(item, r))
        return problems

    @staticmethod
    def _memory_problems(item: Any, r: ProfiledTest) -> List[str]:
        from . import budget_key

        b: Optional[Budget] = item.stash.get(budget_key, None)
        problems = []
        if b is None or r.memory_bytes is None or r.peak_memory_bytes is None:
            return problems
        if b.memory_bytes is not None and r.memory_bytes > b.memory_bytes:
            problems.append(f"live heap grew by {fmt_bytes(r.memory_bytes)}, over the budget of "
                            f"{fmt_bytes(b.memory_bytes)} (memory={b.source.get('memory')})")
        if b.peak_memory_bytes is not None and r.peak_memory_bytes > b.peak_memory_bytes:
            problems.append(f"live heap peaked {fmt_bytes(r.peak_memory_bytes)} above its level at the start, "
                            f"over the budget of {fmt_bytes(b.peak_memory_bytes)} "
                            f"(peak_memory={b.source.get('peak_memory')})")
        return problems

    def _share_problems(self, r: ProfiledTest, shares: Dict[str, float]) -> List[str]:
        """Share budgets: each sample counts once for a key, however many of its frames match."""
        import difflib

        samples = self.names.portable(self.profile_of(r)).samples
        total = sum(s.weight_ns for s in samples)
        problems = []
        for key, limit in shares.items():
            hits = [s for s in samples if any(name_matches(key, f.function_name) for f in s.frames)]
            if samples and not hits:
                names = sorted({f.function_name for s in samples for f in s.frames})
                close = difflib.get_close_matches(key, names, n=3, cutoff=0.3) or names[-3:]
                problems.append(f"the share budget key {key!r} names no function of this test's profile; "
                                f"keys are module-qualified names such as {', '.join(map(repr, close))}")
                continue
            got = sum(s.weight_ns for s in hits)
            pct = 100.0 * got / total if total else 0.0
            if pct > limit:
                problems.append(f"{key} took {pct:.1f}% of the test's time ({fmt_ns(got)} of "
                                f"{fmt_ns(total)}), over its share budget of {limit:g}%")
        return problems

    def _regression_text(self, item: Any, r: ProfiledTest) -> str:
        if r.regression is not None:
            lines = [r.regression]
        else:
            base = (r.baseline_cpu_ns or 0) * self._speed_ratio()
            growth = 100.0 * (r.cpu_ns - base) / base if base else math.inf
            lines = [f"CPU {fmt_ns(r.cpu_ns)} vs. {fmt_ns(base)} (first calls: the baseline has no warm rounds; "
                     f"+{growth:.0f}%, over {max(self.tolerance_pct, FIRST_CALL_TOLERANCE_PCT):g}% and "
                     f"{fmt_ns(self.noise_floor_ns)}" + (f"; fastest of {r.rounds} rounds" if r.rounds > 1 else "")
                     + f"; machine speed ×{1 / self._speed_ratio():.2f})"]
        entry = self.baseline.get(r.nodeid)
        stacks = entry.stacks() if entry is not None else None
        # Per round on both sides: the baseline's figures are its rounds' (see _baseline_entry).
        now = self._round_stacks(r)
        cur_self, cur_incl = _verdict.function_times(now)
        old = {row[0]: (int(row[1]), int(row[2])) for row in (entry.functions() if entry is not None else [])}
        test_fn = getattr(getattr(item, "function", None), "__name__", None)
        rows = []
        for name in set(old) | set(cur_self) | set(cur_incl):
            d_self = cur_self.get(name, 0) - old.get(name, (0, 0))[0]
            d_total = cur_incl.get(name, 0) - old.get(name, (0, 0))[1]
            # The standard library and the test function itself contain every change; they name
            # nothing unless their own code got slower.
            if d_self <= 0 and (d_total <= 0 or self.names.is_stdlib(name) or name.split(".")[-1] == test_fn):
                continue
            rows.append((d_self, d_total, name))
        # By the larger growth: a caller whose total carries the regression outranks a function
        # whose own time moved by a sample's worth of noise (ties: own time first).
        rows.sort(key=lambda row: (-max(row[0], row[1]), -row[0]))
        grown = rows[:6]
        # The baseline kept its heaviest stacks and folded the rest into their call paths: the
        # current stacks are folded the same way, into those paths and their own heaviest.
        before = _stacks_by_name(stacks)
        paths = _verdict.heaviest_prefixes(before, len(before)) | _verdict.heaviest_prefixes(now, BASELINE_STACKS)
        own_growth = {name: cur_self.get(name, 0) - old.get(name, (0, 0))[0] for name in set(cur_self) | set(old)}
        path, gained = _verdict.blame_path(before, _verdict.fold(now, paths), own_growth)
        if path:
            r.culprit = (path[-1], gained)
            shown = " → ".join(path[-4:]) if len(path) <= 4 else "… → " + " → ".join(path[-3:])
            lines.append(f"the extra time runs down {shown} (+{fmt_ns(gained)})")
            lines.append("functions whose time grew most (self, total):")
            for d_self, d_total, name in grown:
                lines.append(f"  +{fmt_ns(d_self):>9} self  +{fmt_ns(d_total):>9} total  {name}")
        if stacks:
            try:
                from spprof import flamegraph

                path = self._make_dir("profiles") / (_safe_name(r.nodeid) + ".diff.svg")
                profile = self.names.portable(self.profile_of(r))
                flamegraph.diff_svg(_session.profile_from_stacks(stacks), profile, path,
                                    title=f"{r.nodeid}: now vs. baseline")
                r.files["diff_svg"] = str(path)
                lines.append(f"differential flame graph: {path}")
            except Exception as exc:  # the verdict stands even if the graph cannot be drawn
                lines.append(f"(no differential flame graph: {exc})")
        return "\n".join(lines)

    def _round_profile(self, r: ProfiledTest) -> Any:
        """The test's profile per round, portable: the first call and its warm rounds, weights
        divided by the rounds (blame has more samples to go on than one round gives)."""
        import dataclasses

        profile = self.names.portable(self.profile_of(r))
        if r.warm_window is None:
            return profile
        t0, t1, rounds = r.warm_window
        warm = self.names.portable(self._window(t0, t1))
        samples = [dataclasses.replace(s, weight_ns=s.weight_ns // (rounds + 1))
                   for s in profile.samples + warm.samples]
        return dataclasses.replace(profile, samples=samples)

    def _round_stacks(self, r: ProfiledTest) -> List[Tuple[Tuple[str, ...], int]]:
        """The stacks of the warm rounds of a confirmation, per round (the cold call's without)."""
        if r.warm_window is None:
            return _stacks_by_name(self.names.portable(self.profile_of(r)))
        t0, t1, rounds = r.warm_window
        warm = self.names.portable(self._window(t0, t1))
        return [(names, w // max(1, rounds)) for names, w in _stacks_by_name(warm)]

    def _message(self, r: ProfiledTest, problems: List[str], memory_only: bool = False) -> str:
        """The failure: the problems, the figures, and the functions behind them (the allocating
        ones for a memory budget, the hottest for the rest)."""
        lines = [f"spprof: {r.nodeid} broke its performance budget" if not self._regressed(r) or len(problems) > 1
                 else f"spprof: {r.nodeid} got slower than its baseline"]
        lines += ["  " + p.replace("\n", "\n  ") for p in problems]
        lines.append(f"measured: CPU {fmt_ns(r.cpu_ns)} (test thread), wall {fmt_ns(r.wall_ns)}, "
                     f"{r.samples} samples")
        if r._allocations is not None:
            lines += self._allocation_lines(r._allocations, 5)
        if not memory_only:
            lines += self._top_lines(r, 5)
        return "\n".join(lines)

    @staticmethod
    def _allocation_lines(allocations: Any, n: int) -> List[str]:
        self_bytes, incl, total = _session.function_times(allocations)
        if not total:
            return ["allocating functions: none sampled"]
        lines = ["allocating functions of this test (bytes allocated in it, freed or not; self, total):"]
        for (fn, file), size in sorted(self_bytes.items(), key=lambda kv: -kv[1])[:n]:
            lines.append(f"  {100 * size / total:5.1f}% {fmt_bytes(size):>9}  total {fmt_bytes(incl[(fn, file)]):>9}  "
                         f"{fn}  ({_short(file)})")
        return lines

    def _top_lines(self, r: ProfiledTest, n: int) -> List[str]:
        profile = self.profile_of(r)
        self_ns, incl, total = _session.function_times(profile)
        if not total:
            return ["top functions: none (no samples: the test ran shorter than the sampling tick, "
                    "or a busy machine delivered none)"]
        lines = ["top functions of this test (self time, total time):"]
        for (fn, file), ns in sorted(self_ns.items(), key=lambda kv: -kv[1])[:n]:
            lines.append(f"  {100 * ns / total:5.1f}% {fmt_ns(ns):>9}  total {fmt_ns(incl[(fn, file)]):>9}  "
                         f"{fn}  ({_short(file)})")
        return lines

    def profile_of(self, r: ProfiledTest) -> Any:
        if r._profile is None:
            r._profile = self._window(r.t0, r.t1)
        return r._profile

    def _window(self, t0: int, t1: int) -> Any:
        """The profile of [t0, t1); a window that reaches into the chunk being recorded cuts it first."""
        if self.sampler.active and (not self.sampler.chunks or t1 > self.sampler.origin_ns):
            self.sampler.checkpoint()
        return _session.window_profile(self.sampler, t0, t1)

    # -- the end of the run (who does what: see _xdist) -------------------------------------------------

    @functools.cached_property
    def role(self) -> _xdist.Role:
        """Known once xdist has configured itself (its controller plugin is registered then)."""
        return _xdist.role_of(self.config, self._make_dir)

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:  # xdist, controller: tell workers where parts go
        assert isinstance(self.role, _xdist.Controller)
        node.workerinput["spprof_parts"] = str(self.role.parts)

    @property
    def _results_journal(self) -> _journal.Journal:
        if self._results is None:
            self._results = _journal.Journal(self.role.results_journal())
        return self._results

    @property
    def _baseline_journal(self) -> _journal.Journal:
        if self._baseline_file is None:
            assert self.save_baseline is not None
            self._baseline_file = _journal.baseline_journal(self.save_baseline)
        return self._baseline_file

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self._catch_sigterm()
        if isinstance(self.role, _xdist.Worker):
            return
        self._results_journal.remove()  # a killed earlier run's: this run's results replace it
        profiles = self.dir / "profiles"
        if profiles.is_dir():  # profiles of an earlier run would mislead
            for old in list(profiles.glob("*.speedscope.json")) + list(profiles.glob("*.diff.svg")):
                old.unlink()

    def _catch_sigterm(self) -> None:
        """SIGTERM (a CI job's timeout, ``kill``) ends the run as Ctrl-C does: the test in flight
        is interrupted, and the finished tests' results are written. Only when SIGTERM has its
        default action, in the main thread: an application's own handler is left alone."""
        import signal

        if (threading.current_thread() is not threading.main_thread()
                or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
            return

        def on_sigterm(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt("SIGTERM: pytest --spprof writes the results of the finished tests")

        signal.signal(signal.SIGTERM, on_sigterm)
        self._sigterm_handler = on_sigterm

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.sampler.finish()
        if self.memprof is not None and self._memprof_started:
            try:
                self.memprof.stop()
            except Exception as exc:  # the figures are taken; only say that stopping failed
                warnings.warn(f"spprof: stopping the memory profiler failed: {exc}", SpprofBudgetWarning,
                              stacklevel=1)
        if isinstance(self.role, _xdist.Controller):
            self._merge_parts(self.role)
            return
        self._finish_tests()
        if isinstance(self.role, _xdist.Worker):
            worker = self.role
            if self._output("this worker's results", lambda: self._write_part(worker, self.baseline_tests)):
                self._results_journal.remove()
        elif self.results:
            run = self._write_run() if self.arrow else None
            self._write_outputs(self.sampler.dropped, self.baseline_tests, run)

    @property
    def arrow(self) -> bool:
        return not self.config.getoption("spprof_no_arrow") and bool(self.config.getini("spprof_arrow"))

    def _finish_tests(self) -> None:
        """What needs this process's samples: other threads' time, hottest functions."""
        for r in self.results.values():
            r.other_threads_cpu_ns = sum(s.weight_ns for s in self.profile_of(r).samples
                                         if s.thread_id != r.thread_id)
            r.hottest = self._hottest(r)

    def _baseline_entry(self, r: ProfiledTest) -> Dict[str, Any]:
        rounds = self._round_profile(r)
        self_ns, incl = _verdict.function_times(_stacks_by_name(rounds))
        functions = [[name, self_ns.get(name, 0), ns] for name, ns in sorted(incl.items(), key=lambda kv: -kv[1])]
        return {"cpu_ns": r.cpu_ns, "wall_ns": r.wall_ns, "waited_ns": r.waited_ns, "samples": r.samples,
                "warm_ns": r.warm_ns, "warm_speed_ns": r.warm_speed_ns, "speed_ns": r.speed_ns, "functions": functions,
                "stacks": _session.stacks_of(rounds, limit=BASELINE_STACKS)}

    def _write_run(self) -> Optional[Path]:
        from ._run import write_run

        path = self.role.run_file()
        return path if self._output(str(path), lambda: write_run(path, self.sampler.chunks,
                                                                  self.results.values())) else None

    def _write_part(self, worker: _xdist.Worker, baseline_tests: Dict[str, Any]) -> None:
        run = self._write_run() if self.arrow and self.results else None
        part = {"tests": [r.record() for r in self.results.values()], "dropped": self.sampler.dropped,
                "baseline": baseline_tests, "run": str(run) if run else None}
        path = worker.part()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(part), encoding="utf-8")

    def _merge_parts(self, controller: _xdist.Controller) -> None:
        import shutil

        folder = controller.parts
        dropped, baseline_tests, runs = 0, {}, []
        records = []
        for path in sorted(folder.glob("*.json")):
            part = json.loads(path.read_text(encoding="utf-8"))
            records += part["tests"]
            dropped += part["dropped"]
            baseline_tests.update(part["baseline"])
            if part["run"]:
                runs.append(Path(part["run"]))
        # A worker that crashed or was killed wrote no part: its journal has its finished tests
        # (their baseline entries are in the baseline's journals, compacted when it is saved).
        for path in sorted(folder.glob("*.results.jsonl")):
            if not path.with_name(path.name.replace(".results.jsonl", ".json")).exists():
                records += _journal.read(path)
        for record in records:
            r = ProfiledTest.from_record(record)
            self.results[r.nodeid] = r
            self._problems += bool(r.problems)
        run = None
        if runs:
            from ._run import merge_runs

            path = self.dir / "run.arrow"
            run = path if self._output(str(path), lambda: merge_runs(path, runs)) else None
        if self.results:
            self._write_outputs(dropped, baseline_tests, run)
        shutil.rmtree(folder, ignore_errors=True)

    def _write_outputs(self, dropped: int, baseline_tests: Dict[str, Any], run: Optional[Path]) -> None:
        """The run's files, from the results of this process or of every xdist worker."""
        self.dropped, self.run_file = dropped, run
        summary = {"format": "spprof-pytest-results", "version": 1,
                   "python": _baseline.environment_key(), "phases": self.phases, "dropped_samples": dropped,
                   "tests": {r.nodeid: r.record() for r in self.results.values()}}
        results = self.dir / "results.json"
        if self._output(str(results), lambda: _journal.write_whole(results, json.dumps(summary, indent=1))):
            self._results_journal.remove()  # compacted into results.json
        if self.save_baseline is not None:
            path = self.save_baseline
            tests, shift = _baseline.with_earlier(self._earlier, baseline_tests)
            counts = sorted(len(e.get("earlier", ())) + 1 for e in tests.values())
            self.recording = counts[len(counts) // 2] if counts else 1
            self._output(str(path), lambda: _baseline.save(path, _baseline.load(path, False), tests,
                                                           self._speed_now(max_age_s=2.0), shift,
                                                           self.workers))
        if self.compare_path is not None:
            self.new_tests = [r.nodeid for r in self.results.values() if r.baseline_cpu_ns is None]
        markdown = self._path(self.markdown)
        if markdown is not None:
            self._output(str(markdown), lambda: _journal.write_whole(markdown, self._markdown()))

    def _slowest(self) -> List[ProfiledTest]:
        return sorted(self.results.values(), key=lambda r: -r.cpu_ns)[: self.top]

    def _hottest(self, r: ProfiledTest, n: int = 3) -> List[Tuple[str, str, float]]:
        self_ns, _, total = _session.function_times(self.profile_of(r))
        return [(fn, _short(file), round(100.0 * ns / total, 1)) for (fn, file), ns in
                sorted(self_ns.items(), key=lambda kv: -kv[1])[:n]] if total else []

    def pytest_report_header(self, config: pytest.Config) -> Optional[str]:
        from . import HYPOTHESIS_SEED, seeded_hypothesis_key

        if config.stash.get(seeded_hypothesis_key, False):
            return (f"spprof: Hypothesis runs with --hypothesis-seed={HYPOTHESIS_SEED}, so that every round "
                    "and run tests the same examples (pass your own seed to change it)")
        return None

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        tr = terminalreporter
        if not self.results:
            return
        total_cpu = sum(r.cpu_ns for r in self.results.values())
        tr.write_sep("=", f"spprof: {len(self.results)} tests, {fmt_ns(total_cpu)} CPU "
                          f"(test threads, {self.phases} phase{'s' if self.phases == 'all' else ''})")
        if self.top:
            tr.write_line(f"slowest {min(self.top, len(self.results))} by CPU:")
            tr.write_line(f"{'CPU':>10} {'wall':>10} {'samples':>8}  test / hottest functions (self time)")
            for r in self._slowest():
                tr.write_line(f"{fmt_ns(r.cpu_ns):>10} {fmt_ns(r.wall_ns):>10} {r.samples:>8}  {r.nodeid}")
                hot = ", ".join(f"{fn} ({file}) {pct:.0f}%" for fn, file, pct in r.hottest)
                if hot:
                    tr.write_line(f"{'':>31}  {hot}")
        for message in self._unraised:
            tr.write_line(message)
        if self.sampler.error is not None:
            tr.write_line(f"spprof stopped profiling during the run (tests after it have no samples): "
                          f"{self.sampler.error}")
        for line in self._culprit_lines():
            tr.write_line(line)
        if self._problems:
            verb = "warned about" if self.warn_only else "failed"
            tr.write_line(f"spprof {verb} {self._problems} test(s) over budget or slower than the baseline")
        if self.compare_path is not None:
            tr.write_line(f"compared with the baseline {self.compare_path} "
                          f"({_baseline.environment_key()}); {len(self.new_tests)} test(s) not in it")
            if self.baseline_workers != self.workers:
                tr.write_line(f"the baseline was recorded with {_processes(self.baseline_workers)} running the tests "
                              f"and this run has {_processes(self.workers)}: a run that is slower as a whole is "
                              "taken for the workers' doing, and so is a regression in code most tests run; "
                              "record the baseline with the same -n for verdicts that tell them apart")
            if self.baseline and self.typical_spread is None:
                tr.write_line(f"the baseline holds one recording per test: record it {_baseline.RECORDINGS - 1} "
                              "more times (run --spprof-save-baseline again) so that verdicts allow for how much "
                              "each test's time moves between runs")
        if self.save_baseline is not None and not any(str(self.save_baseline) in e for e in self.output_errors):
            tr.write_line(f"baseline saved: {self.save_baseline} (recording {self.recording} of the "
                          f"{_baseline.RECORDINGS} each test keeps)")
        for error in self.output_errors:
            tr.write_line(f"spprof {error}", red=True)
        if self.dropped:
            tr.write_line(f"spprof dropped {self.dropped} samples (memory limit)")
        saved = sum(1 for r in self.results.values() if "speedscope" in r.files)
        run = self.run_file
        tr.write_line(f"profiles: {saved} speedscope file(s) under {self.dir / 'profiles'}; "
                      f"summary {self.dir / 'results.json'}"
                      + (f"; whole run {run}" if run else ""))

    def _culprits(self) -> List[Tuple[str, int, int]]:
        """(function, regressed tests it is blamed first for, the time it gained in them)."""
        tally: Dict[str, List[int]] = defaultdict(lambda: [0, 0])
        for r in self.results.values():
            if r.culprit is not None and r.problems:
                tally[r.culprit[0]][0] += 1
                tally[r.culprit[0]][1] += r.culprit[1]
        return sorted(((name, n, ns) for name, (n, ns) in tally.items()), key=lambda c: (-c[1], -c[2]))

    def _culprit_lines(self) -> List[str]:
        culprits = self._culprits()
        if not culprits:
            return []
        lines = ["regressions explained by (the function blamed first in each regressed test):"]
        lines += [f"  {name} explains {n} regressed test{'s' if n > 1 else ''}, +{fmt_ns(ns)} in total"
                  for name, n, ns in culprits[:10]]
        return lines

    def _markdown(self) -> str:
        out = [f"## spprof: {len(self.results)} tests profiled", ""]
        problems = [r for r in self.results.values() if r.problems]
        if problems:
            out += [f"**{len(problems)} test(s) over budget or slower than the baseline**"
                    + (" (warnings only)" if self.warn_only else ""), ""]
            for r in problems:
                out.append(f"- `{r.nodeid}`: " + "; ".join(p.splitlines()[0] for p in r.problems))
            out.append("")
        culprits = self._culprits()
        if culprits:
            out += ["| culprit | regressed tests | time gained |", "|---|---:|---:|"]
            out += [f"| `{name}` | {n} | +{fmt_ns(ns)} |" for name, n, ns in culprits[:10]]
            out.append("")
        out += ["| test | CPU | wall | samples | baseline CPU | hottest functions |",
                "|---|---:|---:|---:|---:|---|"]
        for r in self._slowest():
            hot = ", ".join(f"`{fn}` {pct:.0f}%" for fn, _, pct in r.hottest)
            base = fmt_ns(r.baseline_cpu_ns) if r.baseline_cpu_ns is not None else "–"
            out.append(f"| `{r.nodeid}` | {fmt_ns(r.cpu_ns)} | {fmt_ns(r.wall_ns)} | {r.samples} | {base} | {hot} |")
        return "\n".join(out) + "\n"

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.sampler.finish()  # an interrupted run must not leave the sampler running
        for journal in (self._results, self._baseline_file):
            # Saving the baseline compacted its journal by path; the file object is still open.
            if journal is not None:
                journal.close()
        import signal

        if self._sigterm_handler is not None and signal.getsignal(signal.SIGTERM) is self._sigterm_handler:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _stacks_by_name(source: Any) -> List[Tuple[Tuple[str, ...], int]]:
    """(function names root first, weight) per stack, of a portable profile or of a baseline
    entry's ``stacks`` (see ``_session.stacks_of``)."""
    if source is None:
        return []
    if isinstance(source, dict):
        names = [frame[0] for frame in source["frames"]]
        return [(tuple(names[i] for i in ids), int(w)) for ids, w in source["stacks"]]
    return [(tuple(f.function_name for f in s.frames), s.weight_ns) for s in source.samples]


def _short(path: str) -> str:
    try:
        rel = os.path.relpath(path)
        return rel if not rel.startswith("..") else path
    except ValueError:
        return path


_call_outcome_key = pytest.StashKey[str]()
