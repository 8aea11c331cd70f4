"""Overhead of ``pytest --spprof`` on a real third-party test suite.

Downloads the sdist of a small pure-Python package with a self-contained test suite
(``more-itertools`` by default) with ``pip download --no-deps --no-binary :all:``, then runs its tests
with and without ``--spprof``, interleaved, and reports the medians and their ratio.

    python benchmarks/pytest_overhead.py [--package more-itertools==10.5.0] [--rounds 7]

With pytest-memray installed, ``pytest --memray`` is measured too (a peak-memory figure for every
test, as spprof's memory budgets give).

Targets: ``--spprof`` at most 10 % more wall time than plain pytest; a memory budget on every
test (the ini defaults ``spprof_memory_budget`` and ``spprof_peak_memory_budget``, which start
``spprof.memprof`` at 64 KiB sampling) at most 10 % more than ``--spprof`` alone.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--package", default="more-itertools==10.5.0")
    ap.add_argument("--tests", default="tests", help="the tests folder inside the sdist")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="spprof-overhead-"))
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                    "-d", str(work), args.package], check=True)
    (sdist,) = glob.glob(str(work / "*.tar.gz"))
    with tarfile.open(sdist) as tar:
        tar.extractall(work)  # noqa: S202 - a package we chose, in our own temp dir
    (src,) = [p for p in work.iterdir() if p.is_dir()]
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", args.tests]
    env_path = {"PYTHONPATH": str(src / "src") if (src / "src").is_dir() else str(src)}
    import os

    env = dict(os.environ, **env_path)
    # Bytecode caches as a user has them: without, every run compiles spprof's modules again.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    spprof = base + ["--spprof", f"--spprof-dir={work / 'prof'}"]
    memory = spprof + ["-o", "spprof_memory_budget=1GB", "-o", "spprof_peak_memory_budget=1GB"]
    variants = {"plain": base, "--spprof": spprof, "--spprof --spprof-no-arrow": spprof + ["--spprof-no-arrow"],
                "--spprof + memory budgets": memory}
    if importlib.util.find_spec("pytest_memray") is not None:  # the peer: peak memory of every test
        variants["--memray (pytest-memray)"] = base + ["--memray"]
    times: dict = {k: [] for k in variants}
    for k, cmd in variants.items():  # warm-up (and check that the suite passes)
        out = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stdout[-2000:], out.stderr[-2000:])
            return 1
        print(f"{k}: {out.stdout.strip().splitlines()[-1]}")
    for _ in range(args.rounds):
        for k, cmd in variants.items():
            t = time.perf_counter()
            subprocess.run(cmd, cwd=src, env=env, capture_output=True, check=True)
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:26s} median {med[k]:.3f} s  (min {min(v):.3f}, max {max(v):.3f}, {len(v)} rounds)")
    for k in variants:
        if k != "plain":
            print(f"overhead of {k}: {100 * (med[k] / med['plain'] - 1):+.1f} % wall time "
                  f"({args.package}, Python {sys.version.split()[0]})")
    # Rounds are interleaved, so each round's ratio compares runs made under the same load.
    ratios = sorted(m / s for m, s in zip(times["--spprof + memory budgets"], times["--spprof"]))
    print(f"memory budgets on every test over --spprof alone: {100 * (statistics.median(ratios) - 1):+.1f} % "
          f"(per-round ratios {100 * (ratios[0] - 1):+.1f} … {100 * (ratios[-1] - 1):+.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
