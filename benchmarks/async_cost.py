"""What ``async_aware=True`` costs an asyncio program, per task step.

    python benchmarks/async_cost.py [--runs 15]

The workload is all task steps and no work: 50 tasks, each awaiting ``asyncio.sleep(0)``
through two coroutines 400 times (20,000 steps). It runs three ways in turn (interleaved, so
the machine's drift hits all alike): not profiled, profiled in wall mode, and profiled in wall
mode with ``async_aware=True``. Wall time around ``asyncio.run``, medians with their 95 %
confidence intervals, each median's ratio to the unprofiled one, and the difference between
the last two per step. A real program does work between its awaits: its ratio is closer to 1.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

from _timing import median_ci

import spprof

TASKS, ROUNDS = 50, 400


async def leaf() -> None:
    await asyncio.sleep(0)


async def middle() -> None:
    await leaf()


async def worker() -> None:
    for _ in range(ROUNDS):
        await middle()


async def main() -> None:
    await asyncio.gather(*(asyncio.create_task(worker()) for _ in range(TASKS)))


def timed(how: str) -> float:
    if how != "plain":
        spprof.start(interval_ms=10, mode="wall", async_aware=how == "tasks")
    t0 = time.perf_counter()
    asyncio.run(main())
    elapsed = time.perf_counter() - t0
    if how != "plain":
        spprof.stop()
    return elapsed


def main_() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    print(f"Python {sys.version.split()[0]}, {TASKS * ROUNDS} task steps per run")
    times = {"plain": [], "wall": [], "tasks": []}
    timed("tasks")  # warm
    for _ in range(args.runs):
        for how in times:
            times[how].append(timed(how))
    base = statistics.median(times["plain"])
    for how, label in (("plain", "not profiled"), ("wall", "mode='wall'"), ("tasks", "async_aware=True")):
        low, high = median_ci(times[how])
        m = statistics.median(times[how])
        print(f"  {label:<18} median {m * 1e3:7.1f} ms  (95% CI {low * 1e3:.1f}-{high * 1e3:.1f}, "
              f"n={args.runs})  {m / base:5.2f}x")
    per_step = (statistics.median(times["tasks"]) - statistics.median(times["wall"])) / (TASKS * ROUNDS)
    print(f"  async_aware costs {per_step * 1e6:.2f} µs per task step")


if __name__ == "__main__":
    main_()
