"""Regression verdicts on unchanged code: pytest-benchmark's ``--benchmark-compare-fail`` beside
spprof's ``--spprof-compare``, on the same tests, in the same run.

    python benchmarks/vs_pytest_benchmark.py [--runs 10] [--threshold 15]

The tests (written to a temporary folder) each run one more-itertools function on a fixed input
through pytest-benchmark's ``benchmark`` fixture. pytest-benchmark saves a run, then compares
``--runs`` runs against it and fails the ones whose median grew by ``--threshold`` percent
(``--benchmark-compare-fail=median:15%``). spprof records a baseline of the same tests three
times (the fixture calls the function once with ``--benchmark-disable``), and compares
``--runs`` runs with the same tolerance. Nothing changed between the runs, so every failure is a false alarm. Also
printed: each compare run's wall time. Needs ``pip install pytest-benchmark more-itertools``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pytest_spprof._baseline import RECORDINGS

CASES = {
    "chunked": "list(mit.chunked(range(60_000), 7))",
    "windowed": "list(mit.windowed(range(20_000), 5))",
    "distinct_permutations": "list(mit.distinct_permutations([1, 1, 2, 2, 3, 3, 4, 4]))",
    "unique_everseen": "list(mit.unique_everseen(i % 997 for i in range(100_000)))",
    "collapse": "list(mit.collapse([[i, [i, (i,)]] for i in range(10_000)]))",
    "interleave_longest": "list(mit.interleave_longest(range(30_000), range(20_000), range(10_000)))",
    "partition": "[list(p) for p in mit.partition(lambda x: x % 3, range(60_000))]",
    "run_length": "list(mit.run_length.encode(i // 3 for i in range(60_000)))",
    "sliding_window": "list(mit.sliding_window(range(30_000), 4))",
    "split_at": "list(mit.split_at(range(60_000), lambda x: x % 100 == 0))",
    "bucket": "[list(b[k]) for b in [mit.bucket(range(60_000), key=lambda x: x % 5)] for k in range(5)]",
    "set_partitions": "list(mit.set_partitions(range(8), 3))",
}


def write_tests(folder: Path) -> None:
    lines = ["import more_itertools as mit", ""]
    for name, expr in CASES.items():
        lines += [f"def test_{name}(benchmark):", f"    benchmark(lambda: {expr})", ""]
    (folder / "test_mit_benchmarks.py").write_text("\n".join(lines))


def pytest(folder: Path, *args: str) -> tuple:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=folder,
                          capture_output=True, text=True)
    return time.perf_counter() - t0, proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threshold", type=float, default=15)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="spprof-vs-benchmark-"))
    write_tests(folder)
    _, proc = pytest(folder, "--benchmark-only", "--benchmark-save=base")
    if proc.returncode != 0:
        sys.exit(proc.stdout[-3000:] + proc.stderr[-3000:])
    for _ in range(RECORDINGS):  # as docs/pytest.md tells users to
        _, proc = pytest(folder, "--benchmark-disable", "--spprof-save-baseline=base.json")
        if proc.returncode != 0:
            sys.exit(proc.stdout[-3000:] + proc.stderr[-3000:])
    rows = {"pytest-benchmark": ([], []), "spprof": ([], [])}
    for i in range(args.runs):
        elapsed, proc = pytest(folder, "--benchmark-only", "--benchmark-compare=0001",
                               f"--benchmark-compare-fail=median:{args.threshold:g}%")
        # "test_x (0001_base) - Field 'median' has failed PercentageRegressionCheck: ..."
        failed = sorted(set(re.findall(r"(test_\w+) \(0001\w*\) - Field", proc.stdout + proc.stderr)))
        rows["pytest-benchmark"][0].append(len(failed))
        rows["pytest-benchmark"][1].append(elapsed)
        elapsed, proc = pytest(folder, "--benchmark-disable", "--spprof-compare=base.json",
                               f"--spprof-tolerance={args.threshold:g}", "--spprof-dir=out")
        tests = json.loads((folder / "out" / "results.json").read_text())["tests"]
        flagged = sorted(t.split("::")[-1] for t, r in tests.items() if r["problems"])
        rows["spprof"][0].append(len(flagged))
        rows["spprof"][1].append(elapsed)
        print(f"run {i + 1}: pytest-benchmark flagged {failed or 'none'}; spprof flagged {flagged or 'none'}")
    print(f"{len(CASES)} tests, {args.runs} compare runs of unchanged code, threshold {args.threshold:g} %, "
          f"Python {sys.version.split()[0]}")
    for tool, (alarms, times) in rows.items():
        print(f"{tool:17} false alarms per run {alarms} (runs with none: {alarms.count(0)}/{len(alarms)}); "
              f"wall time per run median {statistics.median(times):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
