"""What every user pays before the first sample: the CPU time of ``import spprof``, and of
importing it, starting and stopping a short profile.

    python benchmarks/startup_cost.py [--runs 31]

Each run is a fresh interpreter, which measures its own CPU time (``time.process_time_ns``)
around the import, around ``start()``, and around ``stop()`` of a profile that sampled 20 ms
of work (the work itself is not counted). The runs of the three are interleaved, and a run of
``import pathlib`` is the baseline measured the same way (a stdlib module of similar cost).
Targets: ``import spprof`` at most 15 ms, import + start + stop at most 20 ms.

Nothing here may import ``dataclasses`` (which imports ``inspect``, about as costly as all of
this): ``tests/spprof/test_model.py`` checks that it does not.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap

from _timing import median_ci

CHILD = textwrap.dedent("""
    import json as _json_for_output, sys, time
    what = sys.argv[1]
    t0 = time.process_time_ns()
    if what == "baseline":
        import pathlib
        print(_json_for_output.dumps({"import": time.process_time_ns() - t0}))
        raise SystemExit
    import spprof
    t1 = time.process_time_ns()
    spprof.start(interval_ms=1)
    t2 = time.process_time_ns()
    end = time.thread_time() + 0.02
    while time.thread_time() < end:
        pass
    t3 = time.process_time_ns()
    profile = spprof.stop()
    t4 = time.process_time_ns()
    assert len(profile.samples) > 0
    print(_json_for_output.dumps({"import": t1 - t0, "start": t2 - t1, "stop": t4 - t3}))
""")


#: As installed code runs: from its bytecode cache (compiling spprof's modules costs more than
#: importing them), which a first, uncounted run writes where it is missing.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run(what: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, what], capture_output=True, text=True, check=True,
                         env=ENV)
    return {k: v / 1e6 for k, v in json.loads(out.stdout).items()}


def show(name: str, values: list) -> str:
    low, high = median_ci(values)
    return f"{name:<28} median {statistics.median(values):6.1f} ms  (95% CI {low:.1f}-{high:.1f}, n={len(values)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=31)
    args = ap.parse_args()
    baseline, imports, totals = [], [], []
    run("spprof")
    for _ in range(args.runs):
        baseline.append(run("baseline")["import"])
        r = run("spprof")
        imports.append(r["import"])
        totals.append(r["import"] + r["start"] + r["stop"])
    print(f"Python {sys.version.split()[0]}")
    print(show("import pathlib (baseline)", baseline))
    print(show("import spprof", imports) + "   target <= 15 ms")
    print(show("import + start + stop", totals) + "   target <= 20 ms")


if __name__ == "__main__":
    main()
