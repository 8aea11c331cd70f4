"""How close the profiles come to ground truth measured in the same run, on this interpreter.

    python benchmarks/accuracy.py [--cpu-seconds 3] [--rounds 3]

- Function shares: three functions called in random order for 1:2:3 of the CPU; the truth is each
  call's `time.thread_time_ns()`. Printed: each function's share in the profile and in truth, and
  the binomial standard error of a share from that many samples.
- Line split: two loops in one function, split about 1:3.
- Handler time: nanoseconds the signal handler spent per sample (its own measurement).
- memprof: the live-heap estimate at 64 KiB against the bytes actually held (bytearrays of
  known sizes), as a relative error, per round.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections import defaultdict

import spprof
import spprof.memprof as memprof


def spin(n):
    x = 0
    for i in range(n):
        x += i
    return x


def alpha(n):
    return spin(n)


def beta(n):
    return spin(n)


def gamma(n):
    return spin(n)


def two_loops(n1, n2, clock):
    t0 = clock()
    for _ in range(n1): spin(1)  # noqa: E701  LOOP-ONE
    t1 = clock()
    for _ in range(n2): spin(1)  # noqa: E701  LOOP-TWO
    return t1 - t0, clock() - t1


def iterations_per(target_ns):
    n = 1000
    while True:
        t0 = time.thread_time_ns()
        spin(n)
        dt = time.thread_time_ns() - t0
        if dt > 2_000_000:
            return max(1, int(n * target_ns / dt))
        n *= 2


def function_shares(cpu_seconds, rng):
    parts = {"alpha": (alpha, 1), "beta": (beta, 2), "gamma": (gamma, 3)}
    n = iterations_per(300_000)
    truth = defaultdict(int)
    spprof.start(interval_ms=1)
    deadline = time.thread_time_ns() + int(cpu_seconds * 1e9)
    while time.thread_time_ns() < deadline:
        name = rng.choices(list(parts), [w for _, w in parts.values()])[0]
        t0 = time.thread_time_ns()
        parts[name][0](n)
        truth[name] += time.thread_time_ns() - t0
    profile = spprof.stop()
    measured, samples = defaultdict(int), 0
    for s in profile.samples:
        hit = next((f.function_name for f in s.frames if f.function_name in parts), None)
        if hit:
            measured[hit] += s.weight_ns
            samples += 1
    return measured, truth, samples, profile


def line_split(cpu_seconds, rng):
    unit = max(1, iterations_per(100_000) // 40)
    truth = defaultdict(int)
    spprof.start(interval_ms=1)
    deadline = time.thread_time_ns() + int(cpu_seconds * 1e9)
    while time.thread_time_ns() < deadline:
        a, b = two_loops(rng.randint(1, 10) * unit, rng.randint(1, 30) * unit, time.thread_time_ns)
        truth["LOOP-ONE"] += a
        truth["LOOP-TWO"] += b
    profile = spprof.stop()
    first = two_loops.__code__.co_firstlineno
    lines = {first + 2: "LOOP-ONE", first + 4: "LOOP-TWO"}
    measured, samples = defaultdict(int), 0
    for s in profile.samples:
        frame = next((f for f in s.frames if f.function_name == "two_loops"), None)
        if frame is not None:
            measured[lines.get(frame.lineno, "other")] += s.weight_ns
            samples += 1
    return measured, truth, samples


def memprof_error(rate_kb, rng):
    sizes = [rng.choice((64, 512, 4096, 65536)) for _ in range(20_000)]
    memprof.start(sampling_rate_kb=rate_kb)
    held = [bytearray(size) for size in sizes]
    estimate = memprof.get_snapshot().estimated_heap_bytes
    memprof.stop()
    true_bytes = sum(sizes)
    del held
    return estimate / true_bytes - 1


def report(title, measured, truth, samples):
    total_m = sum(measured[k] for k in truth) or 1
    total_t = sum(truth.values())
    print(f"  {title} ({samples} samples):")
    for k in sorted(truth):
        p = truth[k] / total_t
        se = math.sqrt(p * (1 - p) / max(1, samples))
        print(f"    {k:>9}: profile {measured[k] / total_m:6.1%}  truth {p:6.1%}  "
              f"(binomial s.e. {se:.1%})")
    if "other" in measured:
        print(f"    other lines: {measured['other'] / (total_m + measured['other']):.1%}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(f"Python {sys.version.split()[0]}")
    rng = random.Random(1)
    handler = []
    for r in range(args.rounds):
        print(f"round {r + 1}")
        measured, truth, samples, profile = function_shares(args.cpu_seconds, rng)
        report("function shares", measured, truth, samples)
        handler.append(profile._data.handler_ns / max(1, len(profile.samples)))
        report("line split", *line_split(args.cpu_seconds, rng))
        print(f"  memprof at 64 KiB: estimate {memprof_error(64, rng):+.1%} against the bytes held")
    print(f"signal handler: {', '.join(f'{ns / 1e3:.2f}' for ns in handler)} µs per sample")
    memprof.shutdown()


if __name__ == "__main__":
    main()
