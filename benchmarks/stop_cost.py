"""What ending a big profile costs: stop() time and peak memory against the store's size.

    python benchmarks/stop_cost.py [--threads 64] [--seconds 32] [--runs 3]

Each run is a fresh process: ``--threads`` threads sleep in short naps while spprof samples
them in wall mode every millisecond (64 threads for 32 s give about 2 M samples), then
``spprof.stop()`` is timed, the samples are read once (as a user iterating them would), and the
profile is saved as speedscope JSON. Memory is the process's peak RSS (``ru_maxrss``) above
its RSS just before profiling started, set against ``bytes_used`` of the profile's native store.
Targets: stop() under 2 s for 2 M samples, peak growth under 2x the store.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import json, os, resource, sys, tempfile, threading, time
    import spprof

    def rss_kb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

    n_threads, seconds = int(sys.argv[1]), float(sys.argv[2])
    stop = threading.Event()
    def napper():
        while not stop.is_set():
            time.sleep(0.005)
    threads = [threading.Thread(target=napper) for _ in range(n_threads)]
    for t in threads:
        t.start()
    base_kb = rss_kb()
    spprof.start(interval_ms=1, mode="wall", memory_limit_mb=1000)
    time.sleep(seconds)
    t0 = time.perf_counter()
    profile = spprof.stop()
    stop_s = time.perf_counter() - t0
    stop.set()
    for t in threads:
        t.join()
    t0 = time.perf_counter()
    weight = sum(s.weight_ns for s in profile.samples)
    iterate_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        profile.save(os.path.join(d, "p.json"))
        save_s = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"samples": len(profile.samples), "store_bytes": profile._data.bytes_used,
                      "stop_s": stop_s, "iterate_s": iterate_s, "save_s": save_s,
                      "peak_growth_bytes": (peak_kb - base_kb) * 1024, "weight": weight}))
""")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=32)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, "-c", CHILD, str(args.threads), str(args.seconds)],
                             capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{r['samples']:>9} samples  store {r['store_bytes'] / 2**20:7.1f} MB  stop() {r['stop_s']:6.2f} s  "
              f"iterate {r['iterate_s']:6.2f} s  save {r['save_s']:6.2f} s  "
              f"peak growth {r['peak_growth_bytes'] / 2**20:7.1f} MB "
              f"({r['peak_growth_bytes'] / r['store_bytes']:.2f}x the store)", flush=True)

    def med(key):
        values = [r[key] for r in rows]
        return statistics.median(values), min(values), max(values)

    for key, unit in (("samples", ""), ("stop_s", " s"), ("save_s", " s")):
        m, lo, hi = med(key)
        print(f"median {key}: {m:.6g}{unit} (range {lo:.6g}–{hi:.6g})")
    ratios = sorted(r["peak_growth_bytes"] / r["store_bytes"] for r in rows)
    print(f"median peak growth / store: {statistics.median(ratios):.2f}x (range {ratios[0]:.2f}–{ratios[-1]:.2f})")


if __name__ == "__main__":
    main()
