"""Memory-profiler overhead: wall time of an allocation-heavy workload with and without
spprof.memprof, next to tracemalloc (and memray when it is installed).

    python benchmarks/memprof_overhead.py [--workload python|numpy] [--rounds 7] [--seconds 1.0]
                                          [--json out.json]

Workloads: ``python`` (pure Python: small objects, dicts, strings, buffers; ~20 M allocations/s),
``numpy`` (array arithmetic making temporaries: native allocations through malloc) and ``mixed``
(a typical program's mix: parsing JSON records, regular expressions, aggregating in dicts,
sorting, formatting a report, arithmetic), for the usage guide's "< 0.1 % on typical programs". Configs
marked ``+preload`` run with ``LD_PRELOAD=libspprof_alloc.so`` (native allocations tracked);
``baseline+preload`` is the library loaded and the profiler never started (its idle cost).

Every run is a fresh interpreter (a child process), because allocator hooks stay installed until
``shutdown()`` and tracking frees after ``stop()`` is part of the contract: a baseline measured
in a process that has run the profiler would not be a baseline. Runs are interleaved (baseline,
512 KB, 64 KB, tracemalloc, ...), each figure is the median over the rounds, and overheads are
ratios of medians against the baseline of the same run.

Target (issue 5): <= 1% at 512 KB on this allocation-heavy workload.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from _timing import calibrate


class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y


def workload(iterations):
    keep = []
    for _ in range(iterations):
        objs = [Point(j, str(j)) for j in range(200)]          # small objects and strings
        d = {str(k): (k, k * 2.5) for k in range(200)}          # dicts, tuples, floats
        s = "-".join(o.y for o in objs)                         # a medium string
        b = bytearray(4096)                                     # a buffer
        keep.append((objs[0], d.get("7"), len(s), b[:16]))
        if len(keep) > 1000:
            keep.clear()
    return len(keep)


def numpy_workload(iterations):
    import numpy as np

    a = np.arange(20_000, dtype=np.float64)
    total = 0.0
    for i in range(iterations):
        b = a * 1.5 + i                       # temporaries: 160 KB each
        c = np.sqrt(b[::2]) - np.sin(b[1::2])
        d = np.concatenate([c, c[:100]])
        total += float(d.sum()) + float(np.cumsum(d[:1000])[-1])
        small = [np.array([i, i + 1.0]) for _ in range(20)]   # many small arrays
        total += small[-1][0]
    return total


_RECORDS = None


def mixed_workload(iterations):
    import json
    import re

    global _RECORDS
    if _RECORDS is None:
        _RECORDS = json.dumps([{"id": i, "user": f"user{i % 97}", "path": f"/api/v1/items/{i % 13}",
                                "ms": (i * 37) % 1000 / 10, "tags": ["a", "b", "c"][: i % 4]}
                               for i in range(300)])
    pattern = re.compile(r"/api/v(\d+)/(\w+)/(\d+)")
    report = []
    for it in range(iterations):
        per_user = {}
        for r in json.loads(_RECORDS):
            m = pattern.match(r["path"])
            key = (r["user"], m.group(2))
            total, n = per_user.get(key, (0.0, 0))
            per_user[key] = (total + r["ms"], n + 1)
        slowest = sorted(per_user.items(), key=lambda kv: kv[1][0] / kv[1][1], reverse=True)[:10]
        report = [f"{u:>8} {what:6} {t / n:8.2f} ms" for (u, what), (t, n) in slowest]
        acc = 0
        for k in range(3000):                   # plain arithmetic: no allocation
            acc = (acc * 31 + k) % 1_000_003
        report.append(str(acc + it))
    return len(report)


WORKLOADS = {"python": workload, "numpy": numpy_workload, "mixed": mixed_workload}


def child(config, iterations, workload_name):
    run = WORKLOADS[workload_name]
    config = config.split("+")[0]
    if config == "tracemalloc":
        import tracemalloc

        tracemalloc.start()
    elif config == "memray":
        import memray

        # A fresh directory: memray refuses to overwrite a capture file (one left by a killed run).
        capture = os.path.join(tempfile.mkdtemp(prefix="spprof-bench-"), "capture.memray")
        tracker = memray.Tracker(capture, native_traces=False)
        tracker.__enter__()
    elif config.startswith("spprof"):
        import spprof.memprof as memprof

        memprof.start(sampling_rate_kb=int(config.split("-")[1]))
    if workload_name == "numpy":
        import numpy  # noqa: F401  (imported before the clock starts)
    t0 = time.perf_counter()
    run(iterations)
    dt = time.perf_counter() - t0
    extra = {}
    if config.startswith("spprof"):
        stats = memprof.get_stats()
        extra = {"samples": stats.total_samples, "sources": stats.sources}
    elif config == "memray":
        tracker.__exit__(None, None, None)
        shutil.rmtree(os.path.dirname(capture))
    print(json.dumps({"seconds": dt, **extra}))


def run_child(config, iterations, workload_name):
    env = dict(os.environ)
    if config.endswith("+preload"):
        import spprof.memprof

        env["LD_PRELOAD"] = spprof.memprof.preload_path()
    out = subprocess.run([sys.executable, __file__, "--child", config, "--iterations", str(iterations),
                          "--workload", workload_name], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--json")
    ap.add_argument("--child")
    ap.add_argument("--iterations", type=int)
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="python")
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.iterations, args.workload)
    configs = ["baseline", "spprof-512", "spprof-64", "baseline+preload", "spprof-512+preload",
               "spprof-64+preload", "tracemalloc"]
    try:
        import memray  # noqa: F401

        configs.append("memray")
    except ImportError:
        print("memray is not installed: leaving it out", file=sys.stderr)
    iterations = calibrate(WORKLOADS[args.workload], args.seconds, start=16)
    times = {c: [] for c in configs}
    samples = {}
    for _ in range(args.rounds):
        for c in configs:
            r = run_child(c, iterations, args.workload)
            times[c].append(r["seconds"])
            if "samples" in r:
                samples[c] = r["samples"]
    base = statistics.median(times["baseline"])
    result = {"python": sys.version.split()[0], "workload": args.workload, "iterations": iterations,
              "rounds": args.rounds, "configs": {}}
    print(f"Python {result['python']}, {args.workload} workload, {iterations} iterations, "
          f"median of {args.rounds} interleaved runs")
    for c in configs:
        med = statistics.median(times[c])
        result["configs"][c] = {"median_s": med, "overhead_pct": 100 * (med / base - 1),
                                "samples": samples.get(c)}
        extra = f"  ({samples[c]} samples)" if c in samples else ""
        print(f"  {c:20s} {med:8.3f} s  {100 * (med / base - 1):+7.2f} %{extra}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
