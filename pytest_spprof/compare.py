"""Compare two ``pytest --spprof`` runs, e.g. of two CI jobs or branches, as a Markdown report.

    python -m pytest_spprof.compare BASE HEAD [--tolerance 25%] [--min-cpu 5ms] [-o report.md]

BASE and HEAD are each a run's ``.spprof`` directory or its ``results.json``. The report lists
the tests that got slower or faster and, from the ``run.arrow`` beside each ``results.json``
(read with pyarrow), the functions whose own time explains them: ready to post as a pull
request comment. Each run was made once, on a machine of its own, so a test's change is judged
against the two runs as wholes (see docs/pytest.md, "Comparing two runs"):

- the head run's pace is the median change of the tests, which takes out a faster or slower
  machine;
- a test is flagged when it moved beyond the tolerance and beyond 3 robust standard deviations
  of how much the tests moved between these two runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from spprof._units import fmt_ns

from ._budget import BudgetError, parse_percent, parse_time_ns
from ._report import explains, tally_culprits
from ._run import load_run
from ._session import HARNESS_FRAME_NAME, is_harness

RESULTS_FORMAT = "spprof-pytest-results"
#: Tests of at least this much CPU in both runs set the pace and the spread.
PACE_MIN_NS = 1_000_000
#: Fewer tests than this: no pace (a machine's speed cannot be told from a handful of tests).
PACE_MIN_TESTS = 20
#: How many robust standard deviations of the run's spread a flagged test moved.
SPREAD_SIGMAS = 3.0


class CompareError(Exception):
    """An input that cannot be compared: the message says which and why."""


class Run(NamedTuple):
    path: Path
    #: CPU time of each passed test (ns).
    cpu_ns: Dict[str, int]
    #: Tests that ran and did not pass.
    not_passed: List[str]
    #: Each test's self time per function (ns), from run.arrow; None without one.
    functions: Optional[Dict[str, Dict[str, int]]]


def load(path: str) -> Run:
    """A run from its ``.spprof`` directory or its ``results.json``."""
    p = Path(path)
    results = p / "results.json" if p.is_dir() else p
    if not results.is_file():
        raise CompareError(f"{path}: no such {'results.json' if p.is_dir() else 'file'}; give a run's "
                           ".spprof directory or its results.json (written by pytest --spprof)")
    try:
        data = json.loads(results.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CompareError(f"{results}: cannot be read as JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT or not isinstance(data.get("tests"), dict):
        raise CompareError(f"{results} is not the results.json of a pytest --spprof run")
    cpu, not_passed = {}, []
    for nodeid, test in data["tests"].items():
        if not isinstance(test, dict) or not isinstance(test.get("cpu_ns"), int):
            raise CompareError(f"{results}: the entry of {nodeid!r} has no cpu_ns")
        if test.get("outcome", "passed") == "passed":
            cpu[nodeid] = test["cpu_ns"]
        else:
            not_passed.append(nodeid)
    run_file = results.with_name("run.arrow")
    return Run(results, cpu, not_passed, function_times(run_file, cpu) if run_file.is_file() else None)


def function_times(run_file: Path, tests: Dict[str, int]) -> Dict[str, Dict[str, int]]:
    """Each test's self time per function from a run file, named the same in any checkout."""
    try:
        table = load_run(run_file)
    except ImportError:
        raise CompareError(f"reading {run_file} needs pyarrow: pip install pyarrow") from None
    except (OSError, ValueError) as exc:
        raise CompareError(f"{run_file}: {exc}") from None
    import pyarrow.compute as pc

    leaves = table.filter(pc.field("is_leaf")).select(["test_id", "function", "filename", "is_native", "weight_ns"])
    grouped = leaves.group_by(["test_id", "function", "filename", "is_native"]).aggregate([("weight_ns", "sum")])
    # Every file of the run (a dictionary column): the test files themselves are seldom leaves.
    filenames = {f for chunk in table.column("filename").chunks for f in chunk.dictionary.to_pylist() if f}
    root = rootdir(filenames, tests)
    times: Dict[str, Dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for test, function, filename, native, ns in zip(*(grouped.column(c).to_pylist() for c in (
            "test_id", "function", "filename", "is_native", "weight_ns_sum"))):
        times[test][portable_name(function or "<unknown>", filename or "<unknown>", native, root)] += ns
    return times


def rootdir(filenames: Sequence[str], tests: Dict[str, int]) -> Optional[str]:
    """Where the run's checkout was: the directory above a test file's absolute path (test ids
    start with the file's path relative to pytest's rootdir)."""
    test_files = {nodeid.split("::", 1)[0] for nodeid in tests}
    for filename in filenames:
        parts = filename.split(os.sep)
        for i in range(1, len(parts)):
            if os.sep.join(parts[i:]) in test_files:
                return os.sep.join(parts[:i]) + os.sep
    return None


_STDLIB = re.compile(r"/lib/python3\.\d+t?/")
_INSTALLED = re.compile(r"/(?:site|dist)-packages/")


def portable_name(function: str, filename: str, native: bool, root: Optional[str]) -> str:
    """``pkg.mod.Class.method``: the module from the file's place in the checkout, in
    site-packages or in the standard library; ``library:function`` for a native frame."""
    if native:
        return f"{os.path.basename(filename)}:{function}"
    if is_harness(filename) or function == HARNESS_FRAME_NAME:
        return HARNESS_FRAME_NAME
    if filename.startswith("<"):
        return f"{filename}.{function}"
    installed = _INSTALLED.split(filename)
    if len(installed) > 1:
        rel = installed[-1]
    elif root is not None and filename.startswith(root):
        rel = filename[len(root):]
        rel = rel[len("src/"):] if rel.startswith("src/") else rel
    elif _STDLIB.search(filename):
        rel = _STDLIB.split(filename)[-1]
    else:
        rel = filename.lstrip(os.sep)
    module = re.sub(r"(/__init__)?\.py$", "", rel).replace(os.sep, ".")
    return f"{module}.{function}"


class Change(NamedTuple):
    nodeid: str
    base_ns: int
    head_ns: int
    #: log(head / base), less the run's pace.
    shift: float
    #: (function, growth in ns at the head run's pace), the largest first.
    explained_by: List[Tuple[str, int]]


class Comparison(NamedTuple):
    base: Run
    head: Run
    pace: float
    spread: Optional[float]
    paced_tests: int
    limit: float
    regressed: List[Change]
    improved: List[Change]
    compared: int


def compare(base: Run, head: Run, tolerance_pct: float = 25.0, min_cpu_ns: int = 5_000_000) -> Comparison:
    both = sorted(set(base.cpu_ns) & set(head.cpu_ns))
    shifts = [math.log(head.cpu_ns[t] / base.cpu_ns[t]) for t in both
              if min(base.cpu_ns[t], head.cpu_ns[t]) >= PACE_MIN_NS]
    pace = statistics.median(shifts) if len(shifts) >= PACE_MIN_TESTS else 0.0
    # 1.4826 × the median absolute deviation: the standard deviation of a normal spread, which
    # the few tests that really changed do not inflate.
    spread = 1.4826 * statistics.median(abs(s - pace) for s in shifts) if len(shifts) >= PACE_MIN_TESTS else None
    limit = max(math.log1p(tolerance_pct / 100), SPREAD_SIGMAS * spread if spread else 0.0)
    regressed, improved = [], []
    for t in both:
        b, h = base.cpu_ns[t], head.cpu_ns[t]
        if max(b, h) < min_cpu_ns or min(b, h) <= 0:
            continue
        shift = math.log(h / b) - pace
        if abs(shift) <= limit:
            continue
        change = Change(t, b, h, shift, explain(base, head, t, pace) if shift > 0 else [])
        (regressed if shift > 0 else improved).append(change)
    regressed.sort(key=lambda c: -(c.head_ns - c.base_ns * math.exp(pace)))
    improved.sort(key=lambda c: c.head_ns - c.base_ns * math.exp(pace))
    return Comparison(base, head, pace, spread, len(shifts), limit, regressed, improved, len(both))


def explain(base: Run, head: Run, test: str, pace: float) -> List[Tuple[str, int]]:
    """The functions whose own time in ``test`` grew, at the head run's pace."""
    if base.functions is None or head.functions is None:
        return []
    before, after = base.functions.get(test, {}), head.functions.get(test, {})
    growth = {name: after.get(name, 0) - before.get(name, 0) * math.exp(pace) for name in set(before) | set(after)}
    return sorted(((n, int(g)) for n, g in growth.items() if g > 0), key=lambda x: -x[1])


def _pct(shift: float) -> str:
    return f"{math.expm1(shift) * 100:+.0f} %"


def markdown(c: Comparison, rows: int = 50) -> str:
    out = [f"## spprof: `{c.head.path}` compared with `{c.base.path}`", ""]
    if c.spread is not None:
        out.append(f"{c.compared} tests ran in both. The head run's pace: ×{math.exp(c.pace):.2f} (the median "
                   f"change of {c.paced_tests} tests of 1 ms or more, taken out below); tests moved by "
                   f"±{math.expm1(c.spread) * 100:.0f} % between the runs (robust standard deviation). "
                   f"Flagged: changes beyond {math.expm1(c.limit) * 100:.0f} %.")
    else:
        out.append(f"{c.compared} tests ran in both: too few of 1 ms or more to tell the machines' speeds apart. "
                   f"Flagged: changes beyond {math.expm1(c.limit) * 100:.0f} %.")
    out.append("")
    if not c.regressed and not c.improved:
        out += ["No test got slower or faster.", ""]
    if c.regressed:
        out += [f"### {len(c.regressed)} test{'s' if len(c.regressed) != 1 else ''} slower", "",
                "| test | base CPU | head CPU | change | functions that explain it (own time gained) |",
                "|---|---:|---:|---:|---|"]
        for ch in c.regressed[:rows]:
            why = ", ".join(f"`{name}` +{fmt_ns(ns)}" for name, ns in ch.explained_by[:3]) or "–"
            out.append(f"| `{ch.nodeid}` | {fmt_ns(ch.base_ns)} | {fmt_ns(ch.head_ns)} | {_pct(ch.shift)} | {why} |")
        if len(c.regressed) > rows:
            out.append(f"| … {len(c.regressed) - rows} more | | | | |")
        found = tally_culprits(ch.explained_by[0] for ch in c.regressed if ch.explained_by)
        if found:
            out += ["", "Functions that explain the slower tests (each test's largest growth):", ""]
            out += [f"- `{name}` {explains(n, ns, 'slower test')}"
                    for name, n, ns in found[:10]]
        elif c.base.functions is None or c.head.functions is None:
            out += ["", "No run.arrow beside both results.json: the functions that explain them are not known."]
        out.append("")
    if c.improved:
        out += [f"### {len(c.improved)} test{'s' if len(c.improved) != 1 else ''} faster", "",
                "| test | base CPU | head CPU | change |", "|---|---:|---:|---:|"]
        out += [f"| `{ch.nodeid}` | {fmt_ns(ch.base_ns)} | {fmt_ns(ch.head_ns)} | {_pct(ch.shift)} |"
                for ch in c.improved[:rows]]
        if len(c.improved) > rows:
            out.append(f"| … {len(c.improved) - rows} more | | | |")
        out.append("")
    only_base = len(set(c.base.cpu_ns) - set(c.head.cpu_ns) - set(c.head.not_passed))
    only_head = len(set(c.head.cpu_ns) - set(c.base.cpu_ns) - set(c.base.not_passed))
    failed = len(set(c.base.not_passed) | set(c.head.not_passed))
    if only_base or only_head or failed:
        out.append(f"Not compared: {only_head} test(s) only in the head run, {only_base} only in the base run, "
                   f"{failed} that failed or were skipped in one of them.")
    return "\n".join(out).rstrip() + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pytest_spprof.compare", description=__doc__.splitlines()[0])
    ap.add_argument("base", help="the base run: its .spprof directory or results.json")
    ap.add_argument("head", help="the run to judge: its .spprof directory or results.json")
    ap.add_argument("--tolerance", default="25%", help="smallest change flagged, e.g. 25%% (default)")
    ap.add_argument("--min-cpu", default="5ms", help="tests under this CPU time in both runs are not judged "
                                                     "(default 5ms)")
    ap.add_argument("--rows", type=int, default=50, help="tests listed per table (default 50)")
    ap.add_argument("-o", "--output", help="write the Markdown report here instead of to standard output")
    ap.add_argument("--fail-on-regression", action="store_true", help="exit with status 1 when a test got slower")
    args = ap.parse_args(argv)
    try:
        tolerance = parse_percent(args.tolerance, "--tolerance", bare_is_percent=True)
        min_cpu = parse_time_ns(args.min_cpu, "--min-cpu")
    except BudgetError as exc:
        ap.error(str(exc))
    if args.rows < 1:
        ap.error(f"--rows must be at least 1, not {args.rows}")
    try:
        comparison = compare(load(args.base), load(args.head), tolerance, min_cpu)
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = markdown(comparison, args.rows)
    if args.output:
        Path(args.output).write_text(report, encoding="utf-8")
    else:
        sys.stdout.write(report)
    return 1 if args.fail_on_regression and comparison.regressed else 0


if __name__ == "__main__":
    sys.exit(main())
