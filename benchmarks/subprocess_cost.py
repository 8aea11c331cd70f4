"""What ``subprocesses=True`` costs: per child process, and for a pool's whole run.

    python benchmarks/subprocess_cost.py [--runs 15]

Two workloads, each run three ways in turn (interleaved, so the machine's drift hits all alike):
without profiling, profiled with ``subprocesses=False`` (the parent only), and profiled with
``subprocesses=True`` (the children too). Wall time around the workload, in this process:

- ``child``: ``subprocess.run`` of a Python child that does 20 ms of CPU work. The difference
  is what one child pays: loading spprof, starting and stopping its sampler, writing its profile,
  and the parent's merge of it at ``stop()`` (timed apart: ``stop()`` is outside the workload).
- ``pool``: a 4-worker spawn pool mapping 16 tasks of 30 ms of CPU each.

Medians with their 95 % confidence intervals, and each median's ratio to the unprofiled one.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import subprocess
import sys
import time

from _timing import median_ci

import spprof

CHILD = "import time\nt = time.thread_time()\nwhile time.thread_time() - t < 0.02:\n    pass\n"


def burn(seconds: float) -> None:
    t = time.thread_time()
    while time.thread_time() - t < seconds:
        pass


def child() -> None:
    subprocess.run([sys.executable, "-c", CHILD], check=True)


def pool() -> None:
    with multiprocessing.get_context("spawn").Pool(4) as p:
        p.map(burn, [0.03] * 16, chunksize=1)


def timed(workload, how: str) -> tuple:
    """(workload seconds, stop() seconds)."""
    if how != "plain":
        spprof.start(interval_ms=10, subprocesses=how == "children")
    t0 = time.perf_counter()
    workload()
    t1 = time.perf_counter()
    if how != "plain":
        spprof.stop()
    return t1 - t0, time.perf_counter() - t1


def show(name: str, values: list, base: float) -> str:
    low, high = median_ci(values)
    m = statistics.median(values)
    return (f"  {name:<22} median {m * 1e3:8.1f} ms  (95% CI {low * 1e3:.1f}-{high * 1e3:.1f}, "
            f"n={len(values)})  {m / base:5.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    print(f"Python {sys.version.split()[0]}")
    for name, workload in (("child", child), ("pool", pool)):
        times = {"plain": [], "parent": [], "children": []}
        stops = {"parent": [], "children": []}
        timed(workload, "children")  # warm: bytecode caches, the page cache
        for _ in range(args.runs):
            for how in times:
                run, stop = timed(workload, how)
                times[how].append(run)
                if how in stops:
                    stops[how].append(stop)
        base = statistics.median(times["plain"])
        print(f"{name}:")
        print(show("not profiled", times["plain"], base))
        print(show("subprocesses=False", times["parent"], base))
        print(show("subprocesses=True", times["children"], base))
        for how, values in stops.items():
            print(f"  stop() with {how + ':':<10} median {statistics.median(values) * 1e3:6.1f} ms")


if __name__ == "__main__":
    main()
