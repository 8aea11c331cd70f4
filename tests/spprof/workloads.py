"""CPU workloads with ground truth measured by the thread's own CPU clock.

Each workload interleaves its parts in random order in chunks much shorter than the sampling
period, so that the sampler cannot alias with the workload's rhythm.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections import defaultdict
from typing import Callable, Dict, Iterable, Mapping

from spprof import Profile


def python_threads() -> int:
    """The threads running Python in this process now, the caller's included (under pytest-xdist
    the worker has an execnet thread too): spprof samples each of them from ``start()`` on."""
    return len(sys._current_frames())


def spin(n: int) -> int:
    x = 0
    for i in range(n):
        x += i
    return x


def calibrate(target_ns: int = 300_000) -> int:
    """Iterations of ``spin`` that take about ``target_ns`` of CPU."""
    n = 1000
    while True:
        t0 = time.thread_time_ns()
        spin(n)
        dt = time.thread_time_ns() - t0
        if dt > 2_000_000:
            return max(1, int(n * target_ns / dt))
        n *= 2


def run_mix(parts: Mapping[str, Callable[[int], object]], shares: Mapping[str, float],
            cpu_seconds: float, seed: int = 1) -> Dict[str, int]:
    """Call the parts in random order, each with a chunk of work, ``shares`` of the time each.
    Returns the CPU nanoseconds measured inside each part."""
    rng = random.Random(seed)
    n = calibrate()
    names = list(parts)
    weights = [shares[k] for k in names]
    truth: Dict[str, int] = defaultdict(int)
    deadline = time.thread_time_ns() + int(cpu_seconds * 1e9)
    while time.thread_time_ns() < deadline:
        name = rng.choices(names, weights)[0]
        t0 = time.thread_time_ns()
        parts[name](n)
        truth[name] += time.thread_time_ns() - t0
    return dict(truth)


def weight_by_function(profile: Profile, names: Iterable[str], *, tid: int | None = None
                       ) -> Dict[str, int]:
    """Sum of sample weights per named function, attributing each sample to the innermost frame
    whose function is one of ``names``."""
    wanted = set(names)
    out: Dict[str, int] = defaultdict(int)
    for s in profile.samples:
        if tid is not None and s.thread_id != tid:
            continue
        for f in reversed(s.frames):
            short = f.function_name.rsplit(".", 1)[-1]
            if short in wanted:
                out[short] += s.weight_ns
                break
    return dict(out)


def assert_shares_match(measured: Mapping[str, int], truth: Mapping[str, int], n_samples: int,
                        sigmas: float = 4.5, slack: float = 0.02) -> None:
    """Each part's share of the measured weight is within ``sigmas`` binomial standard
    deviations (for ``n_samples`` samples) of its true share, plus a small ``slack`` for the
    work outside the parts (loop overhead, clock reads)."""
    total_m = sum(measured.values())
    total_t = sum(truth.values())
    assert total_m > 0 and total_t > 0, (measured, truth)
    for name, t in truth.items():
        p = t / total_t
        got = measured.get(name, 0) / total_m
        bound = sigmas * math.sqrt(p * (1 - p) / n_samples) + slack
        assert abs(got - p) <= bound, (
            f"{name}: profile share {got:.3f}, measured truth {p:.3f}, allowed ±{bound:.3f} "
            f"({n_samples} samples); profile {dict(measured)}, truth {dict(truth)}")


def assert_sampled(profile, cpu_seconds: float, thread_id=None) -> None:
    """The profile (the samples of ``thread_id``, when given) accounts for at least half of
    ``cpu_seconds``. By weight, not by count: CPU-time timers fire on the kernel's tick (every
    4 ms at HZ=250), and on a loaded machine less often, but each sample weighs the time since
    the thread's previous one. Give it 0.3 s or more: under load, 0.1 s got no sample at times."""
    samples = [s for s in profile.samples if thread_id is None or s.thread_id == thread_id]
    weight = sum(s.weight_ns for s in samples)
    assert samples and weight >= 0.5 * cpu_seconds * 1e9, (len(samples), weight, cpu_seconds)


def burn_cpu(seconds: float, n: int = 2000) -> None:
    """Run ``spin`` until this thread has used ``seconds`` of CPU."""
    deadline = time.thread_time_ns() + int(seconds * 1e9)
    while time.thread_time_ns() < deadline:
        spin(n)


#: Filled by ``c_thread_body`` (run from a thread created in C): its native id.
C_THREAD_RESULT: Dict[str, int] = {}


def c_thread_body() -> None:
    import threading

    C_THREAD_RESULT["tid"] = threading.get_native_id()
    burn_cpu(0.6)  # it is found by the periodic scan, up to ~100 ms after it starts
