"""Is a test slower than its baseline? The statistics behind ``--spprof-compare``.

A single CPU measurement per test is too noisy to judge on: the first call pays imports,
caches and compilation, which test order (and xdist's scheduling) moves between tests, and a
busy machine slows everything. So a verdict rests on *warm* rounds (the test's call repeated in
the same process) compared with the warm rounds the baseline recorded, both scaled by the
machine's speed measured in the same run:

1. screening: the first call's CPU, against the slowest of the baseline's rounds; only a test
   that looks slower by half the tolerance and the noise floor goes on (nothing is re-run);
2. confirmation: the call runs ``rounds`` more times; the test regressed when its warm rounds
   are slower than the baseline's by a one-sided Mann-Whitney U test at ``alpha``, *and* their
   median grew by at least the tolerance and the noise floor (an effect-size floor: a small but
   consistent change is not a regression worth a failure).

docs/design.md gives the reasons and the measured false-alarm and detection rates.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

from ._units import fmt_ns

#: One-sided significance level of the confirmation test. With 4 baseline rounds and 5 current
#: ones, complete separation gives p = 1/126 < 0.01.
ALPHA = 0.01
#: Warm rounds run to confirm a suspected regression, and recorded per test in a baseline.
ROUNDS = 5


def _speed_workload() -> int:
    x = 0
    for i in range(20_000):
        x += i * i
    return x


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


def judge(current: Sequence[int], baseline: Sequence[int], speed_ratio: float, tolerance_pct: float,
          noise_floor_ns: int, what: str) -> Verdict:
    """Compare warm rounds ``current`` with the baseline's, the baseline scaled by
    ``speed_ratio`` (its machine speed now over then: > 1 when this machine is slower now)."""
    scaled = [b * speed_ratio for b in baseline]
    now, then = statistics.median(current), statistics.median(scaled)
    growth = now / then - 1 if then else float("inf")
    p = mann_whitney_greater(current, scaled)
    regressed = p < ALPHA and growth * 100 >= tolerance_pct and now - then >= noise_floor_ns
    p_text = "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
    evidence = (f"CPU {fmt_ns(now)} vs. {fmt_ns(then)} ({what}: median of {len(current)} warm rounds "
                f"vs. {len(baseline)} in the baseline; {growth * 100:+.0f}%, {p_text}; "
                f"machine speed ×{1 / speed_ratio:.2f})")
    return Verdict(regressed, evidence, growth, p)


def could_regress(current: Sequence[int], baseline: Sequence[int], speed_ratio: float,
                  tolerance_pct: float) -> bool:
    """After a first few warm rounds: is their median past the tolerance? If not, more rounds
    could not make a regression of it (the verdict needs the median past it)."""
    then = statistics.median(baseline) * speed_ratio
    return statistics.median(current) >= then * (1 + tolerance_pct / 100)


def looks_slower(cold_ns: int, baseline: Sequence[int], speed_ratio: float, tolerance_pct: float,
                 noise_floor_ns: int) -> bool:
    """Screening: the first call is slower than the slowest of the baseline's rounds (first call
    and warm ones) by half the tolerance and the noise floor. Half: a regression of the
    tolerance must not hide in first-call noise. The slowest round: a test whose rounds vary a
    lot by themselves (Hypothesis draws new examples every round) is not re-run for nothing."""
    then = max(baseline) * speed_ratio
    return cold_ns > then * (1 + tolerance_pct / 200) and cold_ns - then > noise_floor_ns


def blame_path(baseline: Sequence[Tuple[Tuple[str, ...], int]], current: Sequence[Tuple[Tuple[str, ...], int]],
               share: float = 0.8) -> Tuple[Tuple[str, ...], int]:
    """Where a test's extra time went: the call path (root first) down which the growth runs,
    ending at the function blamed, and that growth (ns). From the root, follow the call that
    carries at least ``share`` of its caller's growth; where none does, the growth is in that
    function's own code, or in the own code of one function it reaches through several calls
    (then that function ends the path), or spread out. Stacks are (function names, root first;
    weight)."""
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
    # The growth may be one function's own code reached by several calls (a helper that three
    # callers use): the function whose self time below ``path`` grew by ``share`` of it.
    own: Dict[str, int] = defaultdict(int)
    for stacks, sign in ((current, 1), (baseline, -1)):
        for names, weight in stacks:
            if names[: len(path)] == path and len(names) > len(path):
                own[names[-1]] += sign * weight
    if own and total > 0:
        name, ns = max(own.items(), key=lambda kv: kv[1])
        if ns >= share * total:
            return path + (name,), ns
    return path, total
