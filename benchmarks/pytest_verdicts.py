"""False alarms and detection of ``pytest --spprof-compare`` on real third-party test suites.

    python benchmarks/pytest_verdicts.py --suite attrs --runs 10 --detect 10
    python benchmarks/pytest_verdicts.py --suite more-itertools --modes serial,xdist --runs 10

For a suite (the package's sdist, downloaded with pip, its tests run against its source):

1. plain pytest once per mode, and ``--spprof-save-baseline`` ``--recordings`` times (3: the
   recordings a baseline keeps), serially, and as many times with ``-n 2`` when the xdist mode
   is run (timed: what recording costs);
2. ``--runs`` compare runs per mode on the unchanged code, each followed by a plain run of the
   same mode (the cost ratio): ``serial``, ``xdist`` (``-n 2``, against the ``-n 2`` baseline,
   or the serial one with ``--xdist-baseline serial``) and ``loaded`` (serial, while a
   CPU-bound process competes for the cores). Every flagged test is a false alarm;
3. ``--detect`` compare runs (serial) after slowing one library function: a loop is inserted at
   the top of its body, sized so that it adds at least 25 % to the first call of half the tests
   of 20 ms or more that call it (or by ``--loops``: first calls are noisy, and the sizing
   settled on 4,000 iterations in one run and 64,000 in another). The tests it really slowed by
   25 % or more are found from warm rounds: a baseline is recorded on the slowed code and
   compared, round by round at the machine speed measured around each, with the unchanged one
   (at the pace of the tests that do not call the function). Per run: the share of those tests
   that are flagged, whether the function blamed first (the culprit) is the slowed one, and
   whether the run caught the regression (a slowed test flagged, the slowed function named
   first for most of them).

Every figure is printed with the command line that produced it; nothing is asserted.
"""

from __future__ import annotations

import argparse
import ast
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from pytest_spprof._baseline import units  # a test's warm rounds, each over the machine speed around it

SUITES = {
    # name: (pip requirement, extra test dependencies, pytest arguments)
    "more-itertools": ("more-itertools==10.5.0", [], ["tests"]),
    "attrs": ("attrs==26.1.0", ["hypothesis", "cloudpickle", "pympler"],
              ["tests", "--deselect", "tests/test_converters.py::TestPipe::test_wrapped_annotation"]),
}


def prepare(name: str, work: Path):
    requirement, deps, args = SUITES[name]
    if deps:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *deps], check=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                    "-d", str(work), requirement], check=True)
    (sdist,) = glob.glob(str(work / "*.tar.gz"))
    with tarfile.open(sdist) as tar:
        tar.extractall(work)  # noqa: S202 - a package we chose, in our own temp dir
    (src,) = [p for p in work.iterdir() if p.is_dir()]
    package_root = src / "src" if (src / "src").is_dir() else src
    return src, package_root, args


class Suite:
    def __init__(self, name: str, work: Path) -> None:
        self.src, self.package_root, self.args = prepare(name, work)
        self.env = dict(os.environ, PYTHONPATH=str(self.package_root), PYTHONHASHSEED="0")
        self.base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *self.args]
        self.out = work / "spprof"
        self.baseline = work / "baseline.json"

    def run(self, extra, mode="serial"):
        cmd = self.base + (["-n", "2"] if mode == "xdist" else []) + list(extra)
        hog = None
        if mode == "loaded":
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            t = time.perf_counter()
            proc = subprocess.run(cmd, cwd=self.src, env=self.env, capture_output=True, text=True)
            elapsed = time.perf_counter() - t
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
        if proc.returncode not in (0, 1):
            sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return elapsed, proc

    def compare(self, mode, baseline=None):
        shutil.rmtree(self.out, ignore_errors=True)
        elapsed, _ = self.run([f"--spprof-compare={baseline or self.baseline}", f"--spprof-dir={self.out}",
                               "--spprof-save=none"], mode)
        tests = json.loads((self.out / "results.json").read_text())["tests"]
        flagged = {k: v for k, v in tests.items() if v["problems"]}
        return elapsed, tests, flagged


def spread(values):
    values = sorted(values)
    return f"median {statistics.median(values):.2f} (min {values[0]:.2f}, max {values[-1]:.2f}, n={len(values)})"


def slow_down(suite: Suite, baseline: dict, min_cpu_ns: int):
    """Insert a loop at the top of the library function with the most self time in the tests of
    ``min_cpu_ns`` or more; returns (its qualified name, the tests that call it, the patch)."""
    package = {p.name for p in suite.package_root.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    weight = {}
    for entry in baseline.values():
        if entry["cpu_ns"] < min_cpu_ns:
            continue
        for name, self_ns, _total in entry["functions"]:
            if name.split(".")[0] in package and "<" not in name:
                weight[name] = weight.get(name, 0) + self_ns
    def patchable(name):
        module, _, qualname = name.rpartition(".")
        path = suite.package_root.joinpath(*module.split(".")).with_suffix(".py")
        if not path.exists():
            path = suite.package_root.joinpath(*module.split("."), "__init__.py")
        node = path.exists() and find_function(ast.parse(path.read_text()), qualname)
        return bool(node) and node.body[-1].lineno > node.lineno

    target = max((n for n in weight if patchable(n)), key=weight.get)
    callers = [t for t, e in baseline.items()
               if statistics.median(e["warm_ns"] or [e["cpu_ns"]]) >= min_cpu_ns
               and any(row[0] == target for row in e["functions"])]
    module, _, qualname = target.rpartition(".")
    parts = module.split(".")
    path = suite.package_root.joinpath(*parts).with_suffix(".py")
    if not path.exists():
        path = suite.package_root.joinpath(*parts, "__init__.py")
    return target, callers, path, qualname


def find_function(tree: ast.AST, qualname: str):
    """The def of ``qualname`` (``Class.method``, ``outer.<locals>.inner``) in a module's AST."""
    nodes = [tree]
    for part in (p for p in qualname.split(".") if p != "<locals>"):
        found = [c for n in nodes for c in ast.iter_child_nodes(n)
                 if isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and c.name == part]
        if not found:
            return None
        nodes = found
    node = nodes[0]
    return node if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None


def patch(path: Path, qualname: str, loops: int, original: str) -> None:
    """Insert the loop as the first statement of the function's body (after its docstring)."""
    node = find_function(ast.parse(original), qualname)
    assert node is not None, qualname
    body = node.body
    has_doc = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant)
    first = body[1] if has_doc and len(body) > 1 else body[0]
    lines = original.splitlines(keepends=True)
    line = lines[first.lineno - 1]
    assert first.lineno > node.lineno, f"{qualname}: its body shares the def's line"
    indent = line[: len(line) - len(line.lstrip())]
    lines.insert(first.lineno - 1, f"{indent}for _spprof_slowdown in range({loops}): pass\n")
    path.write_text("".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", choices=sorted(SUITES), default="attrs")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--modes", default="serial,xdist,loaded")
    ap.add_argument("--detect", type=int, default=10)
    ap.add_argument("--recordings", type=int, default=3, help="times the baseline is recorded (default 3)")
    ap.add_argument("--xdist-baseline", choices=("xdist", "serial"), default="xdist",
                    help="what the xdist runs compare with: a baseline recorded with -n 2 too, as "
                         "docs/pytest.md advises (default), or the serial one")
    ap.add_argument("--loops", type=int, default=0,
                    help="the slowdown's loop iterations per call (default: sized as below, from first calls)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix=f"spprof-verdicts-{args.suite}-"))
    suite = Suite(args.suite, work)
    print(f"{args.suite}: {' '.join(sys.argv)} (Python {sys.version.split()[0]}, {os.cpu_count()} cores)")
    modes = args.modes.split(",")

    plain = {m: [] for m in modes}
    for m in modes:  # warm-up, and the suite must pass
        elapsed, proc = suite.run([], m)
        plain[m].append(elapsed)
        print(f"plain {m}: {proc.stdout.strip().splitlines()[-1]} in {elapsed:.1f} s")
    ref_mode = "serial" if "serial" in plain else modes[0]
    ref = plain[ref_mode][0]
    for i in range(args.recordings):
        elapsed, _ = suite.run([f"--spprof-save-baseline={suite.baseline}", f"--spprof-dir={suite.out}",
                                "--spprof-save=none"])
        print(f"recording {i + 1} of the baseline: {elapsed:.1f} s ({elapsed / ref:.1f}x plain {ref_mode})")
    baselines = {m: suite.baseline for m in modes}
    if "xdist" in modes and args.xdist_baseline == "xdist":
        baselines["xdist"] = work / "baseline-n2.json"
        for i in range(args.recordings):
            elapsed, _ = suite.run([f"--spprof-save-baseline={baselines['xdist']}", f"--spprof-dir={suite.out}",
                                    "--spprof-save=none"], "xdist")
            print(f"recording {i + 1} of the -n 2 baseline: {elapsed:.1f} s ({elapsed / plain['xdist'][0]:.1f}x "
                  "plain xdist)")
    baseline = next(iter(json.loads(suite.baseline.read_text())["environments"].values()))["tests"]

    for m in modes if args.runs else ():
        costs, alarms = [], []
        for i in range(args.runs):
            elapsed, tests, flagged = suite.compare(m, baselines[m])
            plain_elapsed, _ = suite.run([], m)
            costs.append(elapsed / plain_elapsed)
            alarms.append(len(flagged))
            rerun = sum(1 for v in tests.values() if v["rounds"] > 1)
            details = "".join(f"\n    {k}: {v['problems'][0].splitlines()[0]}" for k, v in flagged.items())
            print(f"  {m} run {i + 1}: {len(flagged)} of {len(tests)} tests flagged ({rerun} re-run to confirm), "
                  f"{elapsed:.1f} s (plain {plain_elapsed:.1f} s){details}")
        print(f"{m}: false alarms per run {alarms} (runs with none: {alarms.count(0)}/{len(alarms)}); "
              f"compare/plain wall time {spread(costs)}")

    if args.detect:
        target, callers, path, qualname = slow_down(suite, baseline, 20_000_000)
        original = path.read_text()
        loops = args.loops or 1000
        while True:  # size the slowdown, unless given: half the callers gain 25 % or more
            patch(path, qualname, loops, original)
            if args.loops:
                break
            _, tests, _ = suite.compare("serial")
            gains = {t: tests[t]["cpu_ns"] / baseline[t]["cpu_ns"] - 1 for t in callers if t in tests}
            if gains and statistics.median(gains.values()) >= 0.25 or loops > 10**7:
                break
            loops *= 4
        # What the slowdown adds, from warm rounds (a first call's gain is too noisy to say): a
        # baseline recorded on the slowed code against the unchanged one, each round divided by
        # the machine speed measured around it.
        slowed_path = work / "slowed.json"
        suite.run([f"--spprof-save-baseline={slowed_path}", f"--spprof-dir={suite.out}", "--spprof-save=none"])
        slowed = next(iter(json.loads(slowed_path.read_text())["environments"].values()))["tests"]
        ratios = {t: units(slowed[t]) / units(baseline[t]) for t in slowed
                  if t in baseline and units(baseline[t]) and units(slowed[t])}
        # The pace of that recording: from the tests of 5 ms or more that do not call the slowed
        # function (most attrs tests create classes, so most call it, shorter ones unsampled).
        untouched = [r for t, r in ratios.items() if statistics.median(baseline[t]["warm_ns"]) >= 5_000_000
                     and not any(row[0] == target for row in baseline[t]["functions"])]
        pace = statistics.median(untouched) if len(untouched) >= 5 else 1.0
        gains = {t: ratios[t] / pace - 1 for t in callers if t in ratios}
        eligible = [t for t, g in gains.items() if g >= 0.25]
        print(f"slowed {target} ({loops} loop iterations per call); {len(eligible)} of its {len(callers)} callers "
              f"of >= 20 ms gain >= 25 % in warm rounds (gains {spread([100 * g for g in gains.values()])} %; "
              f"the recording on slowed code ran at pace x{pace:.2f}, from {len(untouched)} tests)")
        detected, named, caught = [], [], 0
        for i in range(args.detect):
            _, tests, flagged = suite.compare("serial")
            hits = [t for t in eligible if t in flagged]
            detected.append(len(hits) / max(1, len(eligible)))
            named.append(sum(1 for t in hits if (tests[t].get("culprit") or [None])[0] == target) / max(1, len(hits)))
            caught += bool(hits) and named[-1] > 0.5
            print(f"  detect run {i + 1}: {len(hits)}/{len(eligible)} flagged, culprit right in "
                  f"{named[-1]:.0%}; other tests flagged: {len(set(flagged) - set(eligible))}")
        path.write_text(original)
        print(f"detection: {spread([100 * d for d in detected])} % of the slowed tests flagged per run; "
              f"culprit named first in {spread([100 * n for n in named])} % of them; "
              f"regression caught and blamed right in {caught} of {args.detect} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
