"""spprof beside other Python CPU profilers: what each costs, and how close its profile comes to
the truth, on the same workload in the same run.

    python benchmarks/peers.py [--rounds 5] [--seconds 2] [--tools spprof-10,pyinstrument,...]

The workload (written to a temporary folder) calls three functions, ``alpha``, ``beta`` and
``gamma``, in random order, with 1 : 2 : 3 of the work (a loop that calls a small function, so
the cost of tools that trace calls shows as it would in most code), as many times as take ``--seconds``
without a profiler (a fixed amount of work, so a profiler's cost shows); it measures the CPU
time of every call with ``time.thread_time_ns()`` and writes the totals: the truth. Each tool
runs it as its command line says (profile written to a file), rounds interleaved in a new random
order each round. Printed per tool:

- **wall time**, median over the rounds, and its overhead against the plain run of the same
  rounds (the whole command: start-up, sampling, writing the profile);
- **share error**: each function's share of the three functions' time in the profile (inclusive,
  so a sample counts for the function wherever it is on the stack) against its share in the
  truth; the largest difference, in percentage points (median over the rounds).

Tools, each where it is installed: ``spprof-10``/``spprof-1`` (``python -m spprof -i 10|1``),
``pyinstrument`` (its default 1 ms interval, pstats output), ``py-spy-100``/``py-spy-1000``
(``py-spy record -r``; needs ptrace permission), ``scalene`` (``run --cpu-only``, JSON), and on CPython
3.15+ ``cpython-sampling`` (``python -m profiling.sampling run``, 1 kHz). Run on 3.15 with
``scripts/sid-python /opt/spprof-ci-3.15/bin/python benchmarks/peers.py`` (a virtualenv in the
sid root with spprof installed). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

FUNCTIONS = ("alpha", "beta", "gamma")

WORKLOAD = '''
import json, random, sys, time

def step(i):  # calls as much as loops: the cost of tools that trace calls shows too
    return i % 7

def alpha():
    x = 0
    for i in range(5_000):
        x += step(i) + i * i
    return x

def beta():
    x = 0
    for i in range(10_000):
        x += step(i) + i * i
    return x

def gamma():
    x = 0
    for i in range(15_000):
        x += step(i) + i * i
    return x

truth = {"alpha": 0, "beta": 0, "gamma": 0}
calls = [alpha, beta, gamma]
rng = random.Random(1)
for _ in range(int(sys.argv[2])):  # a fixed amount of work: a profiler's cost shows in the time
    f = rng.choice(calls)
    t0 = time.thread_time_ns()
    f()
    truth[f.__name__] += time.thread_time_ns() - t0
with open(sys.argv[1], "w") as out:
    json.dump(truth, out)
'''


def frame_name(frame: str) -> str:
    """The function of a collapsed frame: ``func (file:line)`` (spprof, py-spy) or
    ``file:func:line`` (CPython's profiling.sampling)."""
    if " (" in frame:
        name = frame.split(" (")[0]
    else:
        parts = frame.rsplit(":", 2)
        name = parts[-2] if len(parts) == 3 else frame
    return name.rsplit(".", 1)[-1]


def collapsed_weights(path: Path) -> Dict[str, float]:
    """Inclusive weight per target function from collapsed stacks (``a;b;c weight``)."""
    out = dict.fromkeys(FUNCTIONS, 0.0)
    for line in path.read_text().splitlines():
        stack, _, weight = line.rpartition(" ")
        names = {frame_name(frame) for frame in stack.split(";")}
        for f in FUNCTIONS:
            if f in names:
                out[f] += float(weight)
    return out


def pstats_weights(path: Path) -> Dict[str, float]:
    out = dict.fromkeys(FUNCTIONS, 0.0)
    for (_, _, name), (_, _, _, cumulative, _) in pstats.Stats(str(path)).stats.items():  # type: ignore[attr-defined]
        if name in out:
            out[name] += cumulative
    return out


def scalene_weights(path: Path) -> Dict[str, float]:
    out = dict.fromkeys(FUNCTIONS, 0.0)
    for data in json.loads(path.read_text()).get("files", {}).values():
        for row in data.get("functions", []):
            name = row.get("line", "").rsplit(".", 1)[-1]
            if name in out:
                out[name] += row.get("n_cpu_percent_python", 0) + row.get("n_cpu_percent_c", 0)
    return out


class Tool:
    def __init__(self, name: str, command: Callable[[Path, Path], List[str]],
                 weights: Optional[Callable[[Path], Dict[str, float]]], output: str) -> None:
        self.name, self.command, self.weights, self.output = name, command, weights, output


def tools(py: str) -> Dict[str, Tool]:
    def spprof(ms: int) -> Callable[[Path, Path], List[str]]:
        return lambda script, out: [py, "-m", "spprof", "-i", str(ms), "-o", str(out), str(script)]

    found = {
        "plain": Tool("plain", lambda script, out: [py, str(script)], None, ""),
        "spprof-10": Tool("spprof-10", spprof(10), collapsed_weights, ".collapsed"),
        "spprof-1": Tool("spprof-1", spprof(1), collapsed_weights, ".collapsed"),
    }
    if subprocess.run([py, "-c", "import pyinstrument"], capture_output=True).returncode == 0:
        found["pyinstrument"] = Tool("pyinstrument", lambda s, o: [py, "-m", "pyinstrument", "-r", "pstats", "-o",
                                                                   str(o), str(s)], pstats_weights, ".pstats")
    py_spy = shutil.which("py-spy", path=os.path.dirname(py)) or shutil.which("py-spy")
    if py_spy:
        for rate in (100, 1000):
            found[f"py-spy-{rate}"] = Tool(
                f"py-spy-{rate}", lambda s, o, r=rate: [py_spy, "record", "-r", str(r), "-f", "raw", "-o", str(o),
                                                         "--", py, str(s)], collapsed_weights, ".txt")
    if subprocess.run([py, "-c", "import scalene"], capture_output=True).returncode == 0:
        found["scalene"] = Tool("scalene", lambda s, o: [py, "-m", "scalene", "run", "--cpu-only", "-o", str(o),
                                                         str(s)], scalene_weights, ".json")
    if subprocess.run([py, "-c", "import profiling.sampling"], capture_output=True).returncode == 0:
        found["cpython-sampling"] = Tool(
            "cpython-sampling", lambda s, o: [py, "-m", "profiling.sampling", "run", "-r", "1000", "--mode", "cpu",
                                              "--collapsed", "-o", str(o), str(s)], collapsed_weights, ".txt")
    return found


def calibrate(work: Path, seconds: float) -> int:
    """Calls of the workload that take about ``seconds`` without a profiler."""
    script = work / "calibrate.py"
    script.write_text(WORKLOAD.replace("sys.argv[1]", repr(str(work / "calibrate.json")))
                      .replace("int(sys.argv[2])", "300"))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(script)], check=True)
    return max(1, int(300 * seconds / (time.perf_counter() - t0)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--tools", default="", help="comma-separated subset (default: every one installed)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="spprof-peers-"))
    available = tools(sys.executable)
    chosen = ["plain", *[t for t in (args.tools.split(",") if args.tools else available) if t != "plain"]]
    missing = [t for t in chosen if t not in available]
    if missing:
        sys.exit(f"not installed here: {', '.join(missing)} (available: {', '.join(available)})")
    calls = calibrate(work, args.seconds)
    wall: Dict[str, List[float]] = {t: [] for t in chosen}
    error: Dict[str, List[float]] = {t: [] for t in chosen}
    for r in range(args.rounds):
        order = chosen[:]
        random.Random(r).shuffle(order)
        for name in order:
            tool = available[name]
            truth_path, out = work / f"truth-{name}.json", work / f"profile-{name}{tool.output}"
            script = work / "workload.py"
            script.write_text(WORKLOAD.replace("sys.argv[1]", repr(str(truth_path)))
                              .replace("int(sys.argv[2])", repr(calls)))
            t0 = time.perf_counter()
            proc = subprocess.run(tool.command(script, out), capture_output=True, text=True, cwd=work)
            wall[name].append(time.perf_counter() - t0)
            if proc.returncode != 0:
                sys.exit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
            if tool.weights is not None:
                truth = json.loads(truth_path.read_text())
                got = tool.weights(out)
                t_total, g_total = sum(truth.values()), sum(got.values())
                error[name].append(max(abs(100 * got[f] / g_total - 100 * truth[f] / t_total) if g_total else 100.0
                                       for f in FUNCTIONS))
    base = statistics.median(wall["plain"])
    print(f"{args.rounds} rounds of a {args.seconds:g} s workload ({calls} calls), Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cores")
    print(f"{'tool':18} {'wall (median)':>14} {'overhead':>9} {'share error (pp)':>17}")
    for name in chosen:
        med = statistics.median(wall[name])
        err = f"{statistics.median(error[name]):.1f}" if error[name] else "-"
        print(f"{name:18} {med:12.3f} s {100 * (med / base - 1):+8.1f}% {err:>17}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
