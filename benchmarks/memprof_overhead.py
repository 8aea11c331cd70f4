"""Memory-profiler overhead: wall time of an allocation-heavy workload with and without
spprof.memprof, next to tracemalloc (and memray when it is installed).

    python benchmarks/memprof_overhead.py [--workload python|numpy|mixed] [--rounds 7]
                                          [--seconds 1.0] [--configs a,b] [--json out.json]

Workloads: ``python`` (pure Python: small objects, dicts, strings, buffers; ~20 M allocations/s),
``numpy`` (array arithmetic making temporaries: native allocations through malloc) and ``mixed``
(everyday operations: parsing JSON records, regular expressions, aggregating in dicts, sorting,
formatting a report, integer arithmetic). ``mixed`` turns out to be the most allocation-dense of
the three (tracemalloc costs it 25x): in CPython every integer result over 256 is a new object. Configs
marked ``+preload`` run with ``LD_PRELOAD=libspprof_alloc.so`` (native allocations tracked);
``baseline+preload`` is the library loaded and the profiler never started (its idle cost).

Every run is a fresh interpreter (a child process), because allocator hooks stay installed until
``shutdown()`` and tracking frees after ``stop()`` is part of the contract: a baseline measured
in a process that has run the profiler would not be a baseline. Runs are interleaved (baseline,
512 KB, 64 KB, tracemalloc, ...); a configuration's overhead is the median over the rounds of its
time relative to the baseline of the same round, shown with its quartiles (the noise) and the
median's distribution-free 95 % confidence interval (how well the rounds pin it down).

Target: <= 1% at 512 KB on this allocation-heavy workload.
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

from _timing import calibrate, median_ci


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
        for k in range(3000):                   # arithmetic: a new int object per result
            acc = (acc * 31 + k) % 1_000_003
        report.append(str(acc + it))
    return len(report)


WORKLOADS = {"python": workload, "numpy": numpy_workload, "mixed": mixed_workload}
CONFIGS = ("baseline", "spprof-512", "spprof-64", "baseline+preload", "spprof-512+preload",
           "spprof-64+preload", "tracemalloc", "memray")


def child(config, iterations, workload_name):
    run = WORKLOADS[workload_name]
    if workload_name == "numpy":
        import numpy  # noqa: F401  (imported before the clock starts)
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
    ap.add_argument("--configs", help="comma-separated subset of: " + ", ".join(CONFIGS))
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.iterations, args.workload)
    configs = args.configs.split(",") if args.configs else list(CONFIGS)
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        ap.error(f"unknown configs: {', '.join(sorted(unknown))}")
    if "memray" in configs:
        try:
            import memray  # noqa: F401
        except ImportError:
            print("memray is not installed: leaving it out", file=sys.stderr)
            configs.remove("memray")
    configs = ["baseline"] + [c for c in configs if c != "baseline"]
    iterations = calibrate(WORKLOADS[args.workload], args.seconds, start=16)
    times = {c: [] for c in configs}
    samples = {}
    for _ in range(args.rounds):
        for c in configs:
            r = run_child(c, iterations, args.workload)
            times[c].append(r["seconds"])
            if "samples" in r:
                samples[c] = r["samples"]
    result = {"python": sys.version.split()[0], "workload": args.workload, "iterations": iterations,
              "rounds": args.rounds, "configs": {}}
    print(f"Python {result['python']}, {args.workload} workload, {iterations} iterations, "
          f"{args.rounds} interleaved rounds; overhead = median over rounds of the time relative to "
          "that round's baseline [quartiles], CI = the median's 95% confidence interval")
    for c in configs:
        # Relative to the baseline of the same round: slow drifts of the machine cancel out.
        ratios = sorted(100 * (t / b - 1) for t, b in zip(times[c], times["baseline"]))
        q1, med, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        lo, hi = median_ci(ratios)
        result["configs"][c] = {"median_s": statistics.median(times[c]), "overhead_pct": med,
                                "quartiles_pct": [q1, q3], "median_ci95_pct": [lo, hi],
                                "rounds_pct": ratios, "samples": samples.get(c)}
        extra = f"  ({samples[c]} samples)" if c in samples else ""
        print(f"  {c:20s} {statistics.median(times[c]):8.3f} s  {med:+7.2f} %  "
              f"[{q1:+.2f}, {q3:+.2f}]  CI [{lo:+.2f}, {hi:+.2f}]{extra}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
