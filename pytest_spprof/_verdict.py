"""Is a test slower than its baseline? The statistics behind ``--spprof-compare``.

A single CPU measurement per test is too noisy to judge on: the first call pays imports,
caches and compilation, which test order (and xdist's scheduling) moves between tests, and a
busy machine slows everything. So a verdict rests on *warm* rounds (the test's call repeated in
the same process) compared with the warm rounds the baseline recorded, both scaled by the
machine's speed measured in the same run:

1. screening: the first call's CPU, against the slowest of the baseline's rounds; only a test
   that looks slower by half the tolerance and the noise floor goes on (nothing is re-run);
2. confirmation: the call runs ``rounds`` more times (stopping early at the ``GATES``
   when the first rounds are clearly not slower); the test regressed when its warm rounds
   are slower than the baseline's by a one-sided Mann-Whitney U test at ``alpha``, *and* their
   median grew by at least the tolerance, the noise floor and what the test's time moves by
   between processes (an effect-size floor: a small but consistent change is not a regression
   worth a failure, and a shift that unchanged code shows from one process to the next is not
   one at all).

Each warm round is timed between two runs of a short calibration workload, and divided by the
faster of them (``round_speed_ns``): this machine's speed moves by tens of percent from one
10 ms stretch to the next, and a round's speed figure follows its round (correlation 0.78 on
the 2-core VM) where one figure per test does not.

The calibration does not see everything: at the same calibration speed, a whole process runs up
to 15 % faster or slower than another (attrs' suite, three recordings), and each test then moves
by a few percent more on its own (a standard deviation of 4-7 % for the median test of 20 ms
or more, up to 13 %). The run's pace (``run_pace``,
the median of its tests' first calls against the baseline's) takes out the first; a baseline of
several recordings (``_baseline.with_earlier``) measures the second for each test
(``spread_floor``).

docs/design.md gives the reasons and the measured false-alarm and detection rates.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from spprof._units import fmt_ns

#: One-sided significance level of the confirmation test: it lets one of 4 baseline rounds sit
#: above one of 5 current rounds (p = 2/126), as a collection or a busy moment makes one (the
#: measurements: docs/design.md). The between-process floor guards the rest.
ALPHA = 0.02
#: Warm rounds run to confirm a suspected regression, and recorded per test in a baseline.
ROUNDS = 5
#: A regression's growth must pass this many of the test's between-process spreads.
SPREAD_Z = 3.0
#: The weight, in degrees of freedom, of the suite's typical spread in each test's own figure: a
#: spread from three recordings is itself rough (two degrees of freedom).
PRIOR_DF = 2
#: Tests of 1 ms or more whose first calls set the run's pace before it is used.
PACE_TESTS = 50


def _speed_workload() -> int:
    x = 0
    for i in range(20_000):
        x += i * i
    return x


def round_speed_ns() -> int:
    """CPU nanoseconds one short run of the calibration workload takes now (about 1.5 ms)."""
    t0 = time.thread_time_ns()
    _speed_workload()
    return max(1, time.thread_time_ns() - t0)


def normalised(rounds: Sequence[int], speeds: Sequence[int], reference: float) -> List[float]:
    """Each round's CPU time as it would have been at the machine speed ``reference``."""
    return [ns * reference / speed for ns, speed in zip(rounds, speeds)]


def machine_speed_ns() -> int:
    """CPU nanoseconds a fixed pure-Python workload takes now (least of 5 runs): a baseline's
    figures are scaled by the ratio of this between then and now."""
    best = None
    for _ in range(5):
        t0 = time.thread_time_ns()
        _speed_workload()
        dt = time.thread_time_ns() - t0
        best = dt if best is None else min(best, dt)
    return max(1, best or 1)


@lru_cache(maxsize=256)
def _u_distribution(n: int, m: int) -> Sequence[int]:
    """Counts of each value of the Mann-Whitney U statistic over all C(n+m, n) orderings."""
    # f(n, m)[u]: arrangements of n x's and m y's with u (x > y) pairs.
    if n == 0 or m == 0:
        return (1,)
    a, b = _u_distribution(n - 1, m), _u_distribution(n, m - 1)
    size = n * m + 1
    out = [0] * size
    for u, c in enumerate(a):  # the largest element is an x: it beats all m y's
        out[u + m] += c
    for u, c in enumerate(b):  # the largest element is a y
        out[u] += c
    return tuple(out)


def mann_whitney_greater(current: Sequence[float], baseline: Sequence[float]) -> float:
    """One-sided p-value that ``current`` is stochastically greater than ``baseline`` (exact
    distribution; ties count half)."""
    n, m = len(current), len(baseline)
    if n == 0 or m == 0:
        return 1.0
    u2 = sum(2 if x > y else 1 if x == y else 0 for x in current for y in baseline)
    dist = _u_distribution(n, m)
    total = sum(dist)
    # P(U >= observed); with ties, U = u2 / 2 rounded down (conservative).
    return sum(dist[u2 // 2:]) / total


@dataclass(frozen=True)
class Verdict:
    regressed: bool
    #: The evidence, e.g. "CPU 132 ms vs. 76 ms (baseline median of 4 warm rounds; +75 %,
    #: p = 0.008; machine speed ×0.93)".
    evidence: str
    #: Growth of the median, as a fraction (0.75 = +75 %).
    growth: float
    p_value: Optional[float] = None


Speeds = Tuple[Sequence[int], Sequence[int]]


def run_pace(shifts: Sequence[float], limit: float) -> float:
    """How much slower this process runs its tests than the baseline's did, at the same
    calibration speed: from the log ratios of first calls (each over its speed figure) of the
    tests judged so far, once there are PACE_TESTS; 1 before, and when it runs faster (only
    slowness is corrected, as for the speed figure: an early, rough pace must not make alarms).
    At most ``limit``, the largest shift between the baseline's own recordings: a regression in
    code that most tests run slows the whole run. Slowing attrs' class builder made its run 2.6x
    slower; taken for a slow process, it got 7-10 tests flagged instead of hundreds."""
    if len(shifts) < PACE_TESTS:
        return 1.0
    return min(limit, max(1.0, math.exp(statistics.median(shifts))))


def _log_sd(recordings: Sequence[float]) -> float:
    return statistics.stdev(math.log(u) for u in recordings)


def typical_spread(all_recordings: Iterable[Sequence[float]]) -> Optional[float]:
    """The median between-process spread (sd of log time) of the tests recorded more than once;
    None when none was."""
    spreads = [_log_sd(r) for r in all_recordings if len(r) >= 2]
    return statistics.median(spreads) if spreads else None


def spread_floor(recordings: Sequence[float], typical: Optional[float]) -> Optional[float]:
    """The growth (0.2 = +20 %) unchanged code stays below in a new process: SPREAD_Z
    between-process spreads of this test (its own, from its recordings, pooled with the suite's
    ``typical`` one), allowing for the baseline's median being an estimate too. None when the
    baseline was recorded once (nothing is known of the spread)."""
    if typical is None:
        return None
    k = len(recordings)
    own_df = max(0, k - 1)
    variance = ((own_df * _log_sd(recordings) ** 2 if own_df else 0.0) + PRIOR_DF * typical ** 2) / (own_df + PRIOR_DF)
    return math.exp(SPREAD_Z * math.sqrt(variance * (1 + 1 / max(1, k)))) - 1


def at_recordings_mean(rounds: Sequence[int], recordings: Sequence[float]) -> List[float]:
    """A baseline's rounds (those of its last recording) scaled to the geometric mean of all its
    ``recordings``: the figure a verdict compares with."""
    if not recordings:
        return list(rounds)
    scale = math.exp(statistics.fmean(map(math.log, recordings))) / recordings[-1]
    return [ns * scale for ns in rounds]


def least_growth_ns(then_ns: float, waits: float, tolerance_pct: float, noise_floor_ns: int) -> float:
    """The least CPU a regression must add to a test whose time was ``then_ns``: the noise floor,
    and the tolerance of the test's whole duration, ``waits`` times its CPU (the baseline's first
    call's wall time over its CPU time): for a test that computes, the tolerance again. The CPU
    of a test that mostly waits (on a thread, a sleep, I/O) follows how what it waits for is
    scheduled, and growth that is small against its duration is not one to fail on."""
    return max(noise_floor_ns, then_ns * max(1.0, waits) * tolerance_pct / 100)


def _comparable(current: Sequence[int], baseline: Sequence[int], speed_ratio: float,
                speeds: Optional[Speeds], pace: float = 1.0) -> Tuple[List[float], List[float], float]:
    """The rounds in the same units: with per-round ``speeds`` (current's, baseline's), each
    round at the baseline's median speed; else the baseline scaled by ``speed_ratio``; the
    current ones at the baseline's ``pace``. Also the speed ratio that applies (> 1: this
    machine is slower now)."""
    if speeds is not None and len(speeds[0]) == len(current) and len(speeds[1]) == len(baseline):
        reference = statistics.median(speeds[1])
        return ([ns / pace for ns in normalised(current, speeds[0], reference)],
                normalised(baseline, speeds[1], reference), statistics.median(speeds[0]) / reference)
    return [ns / pace for ns in current], [b * speed_ratio for b in baseline], speed_ratio


def judge(current: Sequence[int], baseline: Sequence[int], speed_ratio: float, tolerance_pct: float,
          noise_floor_ns: int, what: str, speeds: Optional[Speeds] = None, pace: float = 1.0,
          floor: Optional[float] = None, waits: float = 1.0) -> Verdict:
    """Compare warm rounds ``current`` with the baseline's: each at the same machine speed with
    per-round ``speeds`` (current's, baseline's), else the baseline scaled by ``speed_ratio``
    (its machine speed now over then: > 1 when this machine is slower now), and at the
    baseline's ``pace`` (see run_pace). The growth must pass the tolerance and the test's
    between-process ``floor`` (see spread_floor), and add what ``least_growth_ns`` asks."""
    now_rounds, then_rounds, ratio = _comparable(current, baseline, speed_ratio, speeds, pace)
    now, then = statistics.median(now_rounds), statistics.median(then_rounds)
    growth = now / then - 1 if then else float("inf")
    p = mann_whitney_greater(now_rounds, then_rounds)
    needed = max(tolerance_pct / 100, floor or 0.0)
    least = least_growth_ns(then, waits, tolerance_pct, noise_floor_ns)
    regressed = p < ALPHA and growth >= needed and now - then >= least
    p_text = "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
    how = "each round at the baseline's machine speed" if speeds is not None else "the baseline scaled"
    if pace > 1:
        how += f" and the run's pace (×{1 / pace:.2f})"
    limit = f"; it moves by up to {floor * 100:.0f}% between runs" if needed == floor else ""
    if waits >= 2:
        limit += f"; it waits {1 - 1 / waits:.0%} of its time, of which a regression must add {tolerance_pct:g}%"
    evidence = (f"CPU {fmt_ns(statistics.median(current))} vs. {fmt_ns(statistics.median(baseline))} "
                f"({what}: median of {len(current)} warm rounds vs. {len(baseline)} in the baseline; "
                f"{growth * 100:+.0f}% with {how}, {p_text}{limit}; machine speed ×{1 / ratio:.2f})")
    return Verdict(regressed, evidence, growth, p)


#: The gates a suspect of the screening passes before it gets all its ROUNDS: after this many
#: warm rounds, their median must be past this share of the growth a regression needs (most
#: suspects are first-call noise, which one round clears; docs/design.md has the figures).
GATES = ((1, 0.5), (2, 1.0))


def could_regress(current: Sequence[int], baseline: Sequence[int], speed_ratio: float,
                  tolerance_pct: float, speeds: Optional[Speeds] = None, pace: float = 1.0,
                  floor: Optional[float] = None, share: float = 1.0) -> bool:
    """After a first few warm rounds: is their median past ``share`` of the growth a regression
    needs (the tolerance and the floor)? If not, more rounds are unlikely to make a regression
    of it (the verdict needs the median past all of it)."""
    now_rounds, then_rounds, _ = _comparable(current, baseline, speed_ratio, speeds, pace)
    needed = max(tolerance_pct / 100, floor or 0.0)
    return statistics.median(now_rounds) >= statistics.median(then_rounds) * (1 + share * needed)


def looks_slower(cold_ns: int, baseline: Sequence[int], speed_ratio: float, tolerance_pct: float,
                 noise_floor_ns: int, pace: float = 1.0, waits: float = 1.0) -> bool:
    """Screening: the first call is slower than the slowest of the baseline's rounds (first call
    and warm ones) by half the tolerance and ``least_growth_ns`` at half the tolerance. Half: a
    regression of the tolerance must not hide in first-call noise. The slowest round: a test
    whose rounds vary by themselves (caches that fill up) is not re-run for nothing. The cost: a
    baseline round caught by a collection or a busy moment hides a slowed test's first call."""
    then = max(baseline) * speed_ratio * pace
    return (cold_ns > then * (1 + tolerance_pct / 200)
            and cold_ns - then > least_growth_ns(then, waits, tolerance_pct / 2, noise_floor_ns))


Stack = Tuple[Tuple[str, ...], int]


def heaviest_prefixes(stacks: Sequence[Stack], limit: int) -> set:
    """Every prefix (root first) of the ``limit`` heaviest stacks."""
    heaviest = sorted(stacks, key=lambda s: -s[1])[:limit]
    return {names[:depth] for names, _ in heaviest for depth in range(len(names) + 1)}


def fold(stacks: Sequence[Stack], prefixes: set) -> List[Stack]:
    """The stacks cut to their longest prefix in ``prefixes``, merged: every prefix keeps its
    total weight, so a baseline that keeps only its heaviest stacks still gives every call path
    it keeps its whole time (without the fold, the stacks it dropped looked like growth)."""
    out: Dict[Tuple[str, ...], int] = defaultdict(int)
    for names, weight in stacks:
        depth = len(names)
        while depth and names[:depth] not in prefixes:
            depth -= 1
        out[names[:depth]] += weight
    return list(out.items())


def blame_path(baseline: Sequence[Stack], current: Sequence[Stack], own_growth: Dict[str, int],
               share: float = 0.8) -> Tuple[Tuple[str, ...], int]:
    """Where a test's extra time went: the call path (root first) down which the growth runs,
    ending at the function blamed, and that growth (ns). From the root, follow the call that
    carries at least ``share`` of its caller's growth; where none does, the growth is in that
    function's own code, or in the own code of one function it reaches through several calls
    (then that function ends the path), or spread out. Stacks are (function names, root first;
    weight), possibly folded; ``own_growth`` is each function's self-time growth, from stacks
    that are not (a folded stack ends above its leaf: its leaves would credit a caller)."""
    grown: Dict[Tuple[str, ...], int] = defaultdict(int)
    for stacks, sign in ((current, 1), (baseline, -1)):
        for names, weight in stacks:
            for depth in range(1, len(names) + 1):
                grown[names[:depth]] += sign * weight
    children: Dict[Tuple[str, ...], List[Tuple[str, ...]]] = defaultdict(list)
    for path in grown:
        children[path[:-1]].append(path)
    path: Tuple[str, ...] = ()
    total = sum(grown[p] for p in children[()])
    while children[path]:
        best = max(children[path], key=lambda p: grown[p])
        if total <= 0 or grown[best] < share * total:
            break
        path, total = best, grown[best]
    # The growth may be one function's own code reached by several calls (a helper three callers
    # use): the function whose self time grew by ``share`` of it, or by half of it and 3x any
    # other's (the rest is then spread thin: sampling noise, a little time in the callers).
    if own_growth and total > 0:
        (name, ns), *rest = sorted(own_growth.items(), key=lambda kv: -kv[1])
        second = rest[0][1] if rest else 0
        if ns >= share * total or (2 * ns >= total and ns >= 3 * second):
            return (path if path and path[-1] == name else path + (name,)), ns
    return path, total
