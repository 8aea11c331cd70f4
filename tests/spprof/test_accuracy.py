"""The profile agrees with ground truth measured by the thread's CPU clock."""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict

import spprof
from workloads import assert_shares_match, calibrate, run_mix, spin, weight_by_function


def alpha(n):
    return spin(n)


def beta(n):
    return spin(n)


def gamma(n):
    return spin(n)


def test_three_functions_get_their_measured_share_of_cpu():
    spprof.start(interval_ms=1)
    cpu0 = time.thread_time_ns()
    truth = run_mix({"alpha": alpha, "beta": beta, "gamma": gamma},
                    {"alpha": 1, "beta": 2, "gamma": 3}, cpu_seconds=2.5)
    cpu_used = time.thread_time_ns() - cpu0
    profile = spprof.stop()

    measured = weight_by_function(profile, ["alpha", "beta", "gamma"])
    n = sum(1 for s in profile.samples
            if any(f.function_name.endswith(("alpha", "beta", "gamma")) for f in s.frames))
    # The bounds below follow n; this only asks for enough to judge (CPU timers fire on the
    # kernel's 4 ms tick, and less often under load).
    assert n > 100, f"too few samples to judge: {n}"
    assert_shares_match(measured, truth, n)

    # Weights are CPU time: the profile accounts for the CPU the thread used, less what ran after
    # its last sample (a few ms; on a loaded machine, where ticks come rarer, up to a few %).
    total = profile.total_weight_ns
    assert total <= cpu_used * 1.02 + 5_000_000
    assert total >= cpu_used - max(30_000_000, 0.05 * cpu_used), (total, cpu_used)


def two_loops(n1, n2, clock):
    t0 = clock()
    for _ in range(n1): spin(1)  # noqa: E701  LOOP-ONE
    t1 = clock()
    for _ in range(n2): spin(1)  # noqa: E701  LOOP-TWO
    t2 = clock()
    return t1 - t0, t2 - t1


def _line_of(marker: str) -> int:
    import inspect

    lines, first = inspect.getsourcelines(two_loops)
    return first + next(i for i, line in enumerate(lines) if marker in line)


def test_two_loops_of_one_function_split_by_line():
    rng = random.Random(2)
    unit = max(1, calibrate(100_000) // 40)  # iterations of `spin(1)` per ~100 µs / 40
    truth = defaultdict(int)
    spprof.start(interval_ms=1)
    deadline = time.thread_time_ns() + 2_500_000_000
    while time.thread_time_ns() < deadline:
        c0 = time.thread_time_ns()
        a, b = two_loops(rng.randint(1, 10) * unit, rng.randint(1, 30) * unit, time.thread_time_ns)
        # The rest of the call: its clock reads, entry and return (an upper bound of the time
        # on two_loops' other lines, which a loaded machine makes larger).
        truth["other"] += time.thread_time_ns() - c0 - a - b
        truth["one"] += a
        truth["two"] += b
    profile = spprof.stop()

    line_one, line_two = _line_of("LOOP-ONE"), _line_of("LOOP-TWO")
    measured = defaultdict(int)
    n = 0
    for s in profile.samples:
        for f in s.frames:
            if f.function_name.endswith("two_loops"):
                n += 1
                if f.lineno == line_one:
                    measured["one"] += s.weight_ns
                elif f.lineno == line_two:
                    measured["two"] += s.weight_ns
                else:
                    measured["other"] += s.weight_ns
                break
    assert n > 100
    # The time on two_loops' other lines is no more than the measured bound, within 4 s.e.
    p_other = truth["other"] / sum(truth.values())
    assert measured["other"] / sum(measured.values()) <= p_other + 4 * math.sqrt(p_other * (1 - p_other) / n) + 0.01, \
        (measured, dict(truth))
    assert_shares_match({k: measured[k] for k in ("one", "two")}, {k: truth[k] for k in ("one", "two")}, n)


def leaf(n):
    return spin(n)


def middle(n):
    return leaf(n)


def outer(n):
    return middle(n)


def test_frames_run_from_root_to_leaf():
    with spprof.Profiler(interval_ms=1) as p:
        deadline = time.thread_time_ns() + 400_000_000
        while time.thread_time_ns() < deadline:
            outer(20_000)
    stacks = [[f.function_name.rsplit(".", 1)[-1] for f in s.frames] for s in p.profile.samples]
    hits = [st for st in stacks if "outer" in st]
    assert len(hits) > 20
    for st in hits:
        i = st.index("outer")
        assert st[i:i + 3] == ["outer", "middle", "leaf"][: len(st) - i], st
        # Innermost frame is last, and the test function is further toward the root.
        assert st.index("test_frames_run_from_root_to_leaf") < i
    assert any(st[-1] == "spin" and st[-2:] == ["leaf", "spin"] for st in hits)
