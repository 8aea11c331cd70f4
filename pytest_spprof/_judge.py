"""What is wrong with a test: its budgets, and its time against the baseline (the statistics
are in _verdict), with the evidence and the functions to blame."""

from __future__ import annotations

import difflib
import fnmatch
import math
import time
from typing import Dict, List, Optional, Tuple

import pytest

from spprof._units import fmt_bytes, fmt_ns

from . import _baseline, _session, _verdict
from ._budget import Budget
from ._measure import Measurer, ProfiledTest, function_times, stacks_by_name
from ._options import Options, usage
from ._report import safe_name

#: Stacks a baseline entry keeps whole (the others folded into their call paths).
BASELINE_STACKS = 200
#: Without warm rounds (a baseline whose repeats failed) only the first calls can be compared,
#: whose run-to-run noise reached 28 % on the development VM: never a narrower margin than this.
FIRST_CALL_TOLERANCE_PCT = 30.0


def name_matches(key: str, qualified: str) -> bool:
    """Whether a share-budget key ("pkg.mod.func", "mod.Class.method", "func", globs allowed)
    names the function with module-qualified name ``qualified``: the whole name or a tail of
    it that starts at a dot."""
    if any(c in key for c in "*?["):
        return fnmatch.fnmatchcase(qualified, key) or fnmatch.fnmatchcase(qualified, "*." + key)
    return qualified == key or qualified.endswith("." + key)


def memory_problems(budget: Optional[Budget], r: ProfiledTest) -> List[str]:
    problems: List[str] = []
    if budget is None or r.memory_bytes is None or r.peak_memory_bytes is None:
        return problems
    if budget.memory_bytes is not None and r.memory_bytes > budget.memory_bytes:
        problems.append(f"live heap grew by {fmt_bytes(r.memory_bytes)}, over the budget of "
                        f"{fmt_bytes(budget.memory_bytes)} (memory={budget.source.get('memory')})")
    if budget.peak_memory_bytes is not None and r.peak_memory_bytes > budget.peak_memory_bytes:
        problems.append(f"live heap peaked {fmt_bytes(r.peak_memory_bytes)} above its level at the start, "
                        f"over the budget of {fmt_bytes(budget.peak_memory_bytes)} "
                        f"(peak_memory={budget.source.get('peak_memory')})")
    return problems


class Judge:
    """Budgets and the comparison with the baseline being compared with (``--spprof-compare``)."""

    def __init__(self, options: Options, measure: Measurer) -> None:
        self.options = options
        self.measure = measure
        self.baseline: Dict[str, _baseline.Entry] = {}
        #: The machine-speed figure (see _verdict.machine_speed_ns) of the baseline, and this run's
        #: latest one with when it was taken (monotonic ns).
        self.baseline_speed_ns: Optional[int] = None
        self._speed: Tuple[int, int] = (0, 0)
        env: Dict = {}
        if options.compare_path is not None:
            try:
                env = _baseline.environment(_baseline.load(options.compare_path, True))
            except _baseline.BaselineError as exc:
                raise usage(str(exc)) from None
            self.baseline, self.baseline_speed_ns = _baseline.entries(env.get("tests", {})), env.get("speed_ns")
        #: How much the baseline's tests typically vary between processes (see _verdict.spread_floor),
        #: and its recordings' largest shift in pace (see _verdict.run_pace).
        self.typical_spread = _verdict.typical_spread(e.recordings for e in self.baseline.values())
        self.pace_limit = math.exp(max(map(abs, env.get("shifts", [])), default=0.0)) if self.baseline else 1.0
        #: Processes that ran the tests when the baseline was recorded: a run with more workers
        #: than the baseline's is slower as a whole (more-itertools: 1.3x with -n 2 against a
        #: serial baseline, at the same calibration speed), so its pace has no limit.
        self.baseline_workers = env.get("workers", 1) if self.baseline else options.workers
        if self.baseline_workers != options.workers:
            self.pace_limit = math.inf
        #: Log ratios of this process's first calls to the baseline's (see _verdict.run_pace).
        self._pace_shifts: List[float] = []

    # -- the machine's speed ---------------------------------------------------------------------

    def speed_now(self, max_age_s: float) -> int:
        """The machine-speed figure, measured again when the last one is older than ``max_age_s``
        (a machine's load changes within a run: a figure goes with the rounds timed near it)."""
        value, at = self._speed
        now = time.monotonic_ns()
        if not value or now - at > max_age_s * 1e9:
            self._speed = (_verdict.machine_speed_ns(), now)
        return self._speed[0]

    def speed_ratio(self, then: Optional[int] = None, max_age_s: float = 2.0) -> float:
        """This machine's speed figure now over ``then`` (a test's, else the baseline's), when
        it is slower now; else 1. Only slowness is corrected: a figure that reads faster than
        the baseline's (a cold first measurement, load that came and went while the baseline was
        saved) would otherwise turn noise into alarms, which it did, by up to 48 %."""
        then = then or self.baseline_speed_ns
        return max(1.0, self.speed_now(max_age_s) / then) if then else 1.0

    # -- regressions -----------------------------------------------------------------------------

    def confirm(self, item: pytest.Item, r: ProfiledTest) -> None:
        """A test whose baseline has warm rounds is judged by screening and, when its first call
        looks slower, on warm rounds run now (see _verdict); never on its first call alone."""
        entry = self.baseline.get(r.nodeid)
        if entry is None or len(entry.warm_ns) < 3:
            return
        r.confirmed = True
        opts = self.options
        pace = _verdict.run_pace(self._pace_shifts, self.pace_limit)
        if entry.speed_ns and entry.cpu_ns and r.cpu_ns >= 1_000_000:
            now, then = r.cpu_ns / self.speed_now(max_age_s=2.0), entry.cpu_ns / entry.speed_ns
            self._pace_shifts.append(math.log(now / then))
        if not _verdict.looks_slower(r.cpu_ns, (entry.cpu_ns, *entry.warm_ns), self.speed_ratio(entry.speed_ns),
                                     opts.tolerance_pct, opts.noise_floor_ns, pace, entry.waits()):
            return
        # The baseline at the mean of its recordings, and how far unchanged code moves from it
        # between processes.
        baseline = _verdict.at_recordings_mean(entry.warm_ns, entry.recordings)
        floor = _verdict.spread_floor(entry.recordings, self.typical_spread) if entry.recordings else None
        # Most suspects of the screening are first-call noise, which a warm round or two clear;
        # the rest get the rounds the test needs.
        ratio = self.speed_ratio(entry.speed_ns, max_age_s=0)
        current: List[int] = []
        speeds: List[int] = []
        cleared = False
        for total, share in (*_verdict.GATES, (_verdict.ROUNDS, None)):
            more, more_speeds = self.measure.warm_rounds(item, r, total - len(current))
            current, speeds = current + more, speeds + more_speeds
            if len(current) < total:
                break  # a repeat failed
            cleared = share is not None and not _verdict.could_regress(
                current, baseline, ratio, opts.tolerance_pct, self._speeds(entry, speeds), pace, floor, share)
            if cleared:
                break
        r.rounds += len(current)
        if cleared or len(current) < 3:
            return  # not slower; or the repeats failed: no evidence either way, no verdict
        # Without per-round speeds in the baseline: the machine's speed again after the rounds,
        # the slower of the two counting (under pytest-xdist the other worker's load changes
        # within the rounds, and one figure taken in a quiet moment before them missed it).
        ratio = max(ratio, self.speed_ratio(entry.speed_ns, max_age_s=0))
        verdict = _verdict.judge(current, baseline, ratio, opts.tolerance_pct, opts.noise_floor_ns,
                                 "the test's call", self._speeds(entry, speeds), pace, floor, entry.waits())
        r.regression = verdict.evidence if verdict.regressed else None

    @staticmethod
    def _speeds(entry: _baseline.Entry, current: List[int]) -> Optional[_verdict.Speeds]:
        """Per-round speeds to compare with, when the baseline recorded them (format 2 files
        saved before they were recorded have none)."""
        return (current, entry.warm_speed_ns) if len(entry.warm_speed_ns) == len(entry.warm_ns) > 0 else None

    def regressed(self, r: ProfiledTest) -> bool:
        if r.confirmed:
            return r.regression is not None
        if r.baseline_cpu_ns is None:
            return False
        base = r.baseline_cpu_ns * self.speed_ratio()
        tolerance = max(self.options.tolerance_pct, FIRST_CALL_TOLERANCE_PCT)
        return r.cpu_ns > base * (1 + tolerance / 100) and r.cpu_ns - base > self.options.noise_floor_ns

    def over(self, budget: Optional[Budget], r: ProfiledTest) -> bool:
        """Over its CPU or wall budget, or slower than the baseline: worth more rounds."""
        if budget is not None and ((budget.cpu_ns is not None and r.cpu_ns > budget.cpu_ns)
                                   or (budget.wall_ns is not None and r.wall_ns > budget.wall_ns)):
            return True
        return self.regressed(r)

    # -- the problems of a finished test -----------------------------------------------------------

    def problems(self, item: pytest.Item, budget: Optional[Budget], r: ProfiledTest) -> List[str]:
        problems = []
        if budget is not None:
            if budget.cpu_ns is not None and r.cpu_ns > budget.cpu_ns:
                problems.append(f"CPU time {fmt_ns(r.cpu_ns)} is over the budget of {fmt_ns(budget.cpu_ns)} "
                                f"(cpu={budget.source.get('cpu')})")
            if budget.wall_ns is not None and r.wall_ns > budget.wall_ns:
                problems.append(f"wall time {fmt_ns(r.wall_ns)} is over the budget of {fmt_ns(budget.wall_ns)} "
                                f"(wall={budget.source.get('wall')})")
            problems += memory_problems(budget, r)
            if budget.share:
                problems += self._share_problems(r, budget.share)
        if self.regressed(r):
            problems.append(self._regression_text(item, r))
        return problems

    def _share_problems(self, r: ProfiledTest, shares: Dict[str, float]) -> List[str]:
        """Share budgets: each sample counts once for a key, however many of its frames match."""
        samples = self.measure.portable_profile(r).samples
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

    def _regression_text(self, item: pytest.Item, r: ProfiledTest) -> str:
        opts = self.options
        if r.regression is not None:
            lines = [r.regression]
        else:
            base = (r.baseline_cpu_ns or 0) * self.speed_ratio()
            growth = 100.0 * (r.cpu_ns - base) / base if base else math.inf
            lines = [f"CPU {fmt_ns(r.cpu_ns)} vs. {fmt_ns(base)} (first calls: the baseline has no warm rounds; "
                     f"+{growth:.0f}%, over {max(opts.tolerance_pct, FIRST_CALL_TOLERANCE_PCT):g}% and "
                     f"{fmt_ns(opts.noise_floor_ns)}" + (f"; fastest of {r.rounds} rounds" if r.rounds > 1 else "")
                     + f"; machine speed ×{1 / self.speed_ratio():.2f})"]
        entry = self.baseline.get(r.nodeid)
        stacks = entry.stacks() if entry is not None else None
        # Per round on both sides: the baseline's figures are its rounds' (see baseline_entry).
        warm, rounds = self.measure.warm_profile(r)
        now = [(names, w // rounds) for names, w in stacks_by_name(warm)]
        current = function_times(warm, rounds)
        old = {row[0]: (int(row[1]), int(row[2])) for row in (entry.functions() if entry is not None else [])}
        test_fn = getattr(getattr(item, "function", None), "__name__", None)
        rows = []
        for name in set(old) | set(current):
            d_self = current.get(name, (0, 0))[0] - old.get(name, (0, 0))[0]
            d_total = current.get(name, (0, 0))[1] - old.get(name, (0, 0))[1]
            # The standard library and the test function itself contain every change; they name
            # nothing unless their own code got slower.
            if d_self <= 0 and (d_total <= 0 or self.measure.names.is_stdlib(name)
                                or name.split(".")[-1] == test_fn):
                continue
            rows.append((d_self, d_total, name))
        # By the larger growth: a caller whose total carries the regression outranks a function
        # whose own time moved by a sample's worth of noise (ties: own time first).
        rows.sort(key=lambda row: (-max(row[0], row[1]), -row[0]))
        # The baseline kept its heaviest stacks and folded the rest into their call paths: the
        # current stacks are folded the same way, into those paths and their own heaviest.
        before = stacks_by_name(stacks)
        paths = _verdict.heaviest_prefixes(before, len(before)) | _verdict.heaviest_prefixes(now, BASELINE_STACKS)
        own_growth = {name: current.get(name, (0, 0))[0] - old.get(name, (0, 0))[0]
                      for name in set(current) | set(old)}
        path, gained = _verdict.blame_path(before, _verdict.fold(now, paths), own_growth)
        if path:
            r.culprit = (path[-1], gained)
            shown = " → ".join(path[-4:]) if len(path) <= 4 else "… → " + " → ".join(path[-3:])
            lines.append(f"the extra time runs down {shown} (+{fmt_ns(gained)})")
            lines.append("functions whose time grew most (self, total):")
            for d_self, d_total, name in rows[:6]:
                lines.append(f"  +{fmt_ns(d_self):>9} self  +{fmt_ns(d_total):>9} total  {name}")
        if stacks:
            try:
                from spprof import flamegraph

                svg = opts.make_dir("profiles") / (safe_name(r.nodeid) + ".diff.svg")
                flamegraph.diff_svg(_session.profile_from_stacks(stacks), self.measure.portable_profile(r), svg,
                                    title=f"{r.nodeid}: now vs. baseline")
                r.files["diff_svg"] = str(svg)
                lines.append(f"differential flame graph: {svg}")
            except Exception as exc:  # the verdict stands even if the graph cannot be drawn
                lines.append(f"(no differential flame graph: {exc})")
        return "\n".join(lines)

    def baseline_entry(self, r: ProfiledTest) -> Dict:
        """The test's entry in the baseline being saved: its figures, and its functions and
        stacks per round."""
        rounds = self.measure.round_profile(r)
        times = function_times(rounds)
        functions = [[name, own, total] for name, (own, total) in sorted(times.items(), key=lambda kv: -kv[1][1])]
        return {"cpu_ns": r.cpu_ns, "wall_ns": r.wall_ns, "waited_ns": r.waited_ns, "samples": r.samples,
                "warm_ns": r.warm_ns, "warm_speed_ns": r.warm_speed_ns, "speed_ns": r.speed_ns, "functions": functions,
                "stacks": _session.stacks_of(rounds, limit=BASELINE_STACKS)}
