"""What the plugin tells people: a test's failure text, its JUnit properties, the terminal
summary and the Markdown summary. Figures come from the engine's analysis; this only formats."""

from __future__ import annotations

import hashlib
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import pytest

from spprof._units import fmt_bytes, fmt_ns

from . import _baseline
from ._measure import ProfiledTest


def safe_name(nodeid: str) -> str:
    """A file name for a test's outputs: readable, and unique through a hash of the whole id
    (ids that differ only in characters a file name cannot hold would collide otherwise).
    results.json maps each test id to its files."""
    name = re.sub(r"[^A-Za-z0-9_.\-\[\]]+", "_", nodeid.replace("::", "__"))[:120]
    return f"{name}-{hashlib.sha1(nodeid.encode()).hexdigest()[:10]}"


def _short(path: str) -> str:
    try:
        rel = os.path.relpath(path)
        return rel if not rel.startswith("..") else path
    except ValueError:
        return path


def _processes(n: int) -> str:
    return "1 process" if n == 1 else f"{n} processes"


def record_properties(item: pytest.Item, r: ProfiledTest) -> None:
    """The final figures as JUnit XML properties (``--junitxml``)."""
    item.user_properties.append(("spprof_cpu_ms", f"{r.cpu_ns / 1e6:.3f}"))
    item.user_properties.append(("spprof_wall_ms", f"{r.wall_ns / 1e6:.3f}"))
    item.user_properties.append(("spprof_samples", str(r.samples)))
    for name, value in (("spprof_memory_bytes", r.memory_bytes),
                        ("spprof_peak_memory_bytes", r.peak_memory_bytes)):
        if value is not None:
            item.user_properties.append((name, str(value)))


def hottest(profile: Any, n: int = 3) -> List[Tuple[str, str, float]]:
    """The ``n`` functions with the most self time: (function, file, percent)."""
    return [(fn, _short(file), round(pct, 1)) for fn, file, own, _, pct, *_ in profile.top(n).rows() if own]


def _function_lines(profile: Any, n: int, fmt: Any) -> List[str]:
    return [f"  {pct:5.1f}% {fmt(own):>9}  total {fmt(total):>9}  {fn}  ({_short(file)})"
            for fn, file, own, total, pct, *_ in profile.top(n).rows() if own]


def failure_message(r: ProfiledTest, problems: List[str], regressed_only: bool, profile: Any,
                    memory_only: bool) -> str:
    """The failure: the problems, the figures, and the functions behind them (the allocating
    ones for a memory budget, the hottest for the rest)."""
    lines = [f"spprof: {r.nodeid} got slower than its baseline" if regressed_only
             else f"spprof: {r.nodeid} broke its performance budget"]
    lines += ["  " + p.replace("\n", "\n  ") for p in problems]
    lines.append(f"measured: CPU {fmt_ns(r.cpu_ns)} (test thread), wall {fmt_ns(r.wall_ns)}, {r.samples} samples")
    if r._allocations is not None:
        allocating = _function_lines(r._allocations, 5, fmt_bytes)
        lines += (["allocating functions of this test (bytes allocated in it, freed or not; self, total):"]
                  + allocating if allocating else ["allocating functions: none sampled"])
    if not memory_only:
        top = _function_lines(profile, 5, fmt_ns)
        lines += (["top functions of this test (self time, total time):"] + top if top else
                  ["top functions: none (no samples: the test ran shorter than the sampling tick, "
                   "or a busy machine delivered none)"])
    return "\n".join(lines)


def tally_culprits(blamed: Iterable[Tuple[str, int]]) -> List[Tuple[str, int, int]]:
    """(function, regressed tests it is blamed first for, the time it gained in them), from each
    regressed test's (culprit, time it gained); the most tests first."""
    tally: Dict[str, List[int]] = defaultdict(lambda: [0, 0])
    for name, ns in blamed:
        tally[name][0] += 1
        tally[name][1] += ns
    return sorted(((name, n, ns) for name, (n, ns) in tally.items()), key=lambda c: (-c[1], -c[2]))


def culprits(results: Dict[str, ProfiledTest]) -> List[Tuple[str, int, int]]:
    return tally_culprits(r.culprit for r in results.values() if r.culprit is not None and r.problems)


def explains(n: int, ns: int, what: str = "regressed test") -> str:
    return f"explains {n} {what}{'s' if n > 1 else ''}, +{fmt_ns(ns)} in total"


def record_culprits(config: pytest.Config, results: Dict[str, ProfiledTest]) -> None:
    """The run's culprits as properties of the JUnit XML test suite (``--junitxml``):
    ``spprof_culprit_1`` = "pkg.mod.f explains 229 regressed tests, +1.2 s in total", ..."""
    from _pytest.junitxml import xml_key

    xml = config.stash.get(xml_key, None)
    if xml is not None:
        for i, (name, n, ns) in enumerate(culprits(results)[:10], 1):
            xml.add_global_property(f"spprof_culprit_{i}", f"{name} {explains(n, ns)}")


@dataclass
class RunReport:
    """The run's results and what happened to them, for the terminal and Markdown summaries."""

    results: Dict[str, ProfiledTest]
    phases: str
    top: int
    warn_only: bool
    dir: Path
    #: Tests failed (or warned about) by spprof.
    problems: int = 0
    #: Warn-only messages that could not be warned (warnings are errors in this run).
    unraised: List[str] = field(default_factory=list)
    #: Outputs that could not be written.
    output_errors: List[str] = field(default_factory=list)
    sampler_error: Optional[str] = None
    dropped: int = 0
    run_file: Optional[Path] = None
    compare_path: Optional[Path] = None
    new_tests: List[str] = field(default_factory=list)
    workers: int = 1
    baseline_workers: int = 1
    #: The compared baseline holds one recording per test.
    single_recording: bool = False
    save_baseline: Optional[Path] = None
    #: Which recording of most tests the saved baseline now holds (1: the first).
    recording: int = 1

    def slowest(self) -> List[ProfiledTest]:
        return sorted(self.results.values(), key=lambda r: -r.cpu_ns)[: self.top]

    def culprit_lines(self) -> List[str]:
        found = culprits(self.results)
        if not found:
            return []
        lines = ["regressions explained by (the function blamed first in each regressed test):"]
        lines += [f"  {name} {explains(n, ns)}"
                  for name, n, ns in found[:10]]
        return lines

    def terminal(self, tr: pytest.TerminalReporter) -> None:
        total_cpu = sum(r.cpu_ns for r in self.results.values())
        tr.write_sep("=", f"spprof: {len(self.results)} tests, {fmt_ns(total_cpu)} CPU "
                          f"(test threads, {self.phases} phase{'s' if self.phases == 'all' else ''})")
        if self.top:
            tr.write_line(f"slowest {min(self.top, len(self.results))} by CPU:")
            tr.write_line(f"{'CPU':>10} {'wall':>10} {'samples':>8}  test / hottest functions (self time)")
            for r in self.slowest():
                tr.write_line(f"{fmt_ns(r.cpu_ns):>10} {fmt_ns(r.wall_ns):>10} {r.samples:>8}  {r.nodeid}")
                hot = ", ".join(f"{fn} ({file}) {pct:.0f}%" for fn, file, pct in r.hottest)
                if hot:
                    tr.write_line(f"{'':>31}  {hot}")
        for message in self.unraised:
            tr.write_line(message)
        if self.sampler_error is not None:
            tr.write_line(f"spprof stopped profiling during the run (tests after it have no samples): "
                          f"{self.sampler_error}")
        for line in self.culprit_lines():
            tr.write_line(line)
        if self.problems:
            verb = "warned about" if self.warn_only else "failed"
            tr.write_line(f"spprof {verb} {self.problems} test(s) over budget or slower than the baseline")
        if self.compare_path is not None:
            tr.write_line(f"compared with the baseline {self.compare_path} "
                          f"({_baseline.environment_key()}); {len(self.new_tests)} test(s) not in it")
            if self.baseline_workers != self.workers:
                tr.write_line(f"the baseline was recorded with {_processes(self.baseline_workers)} running the tests "
                              f"and this run has {_processes(self.workers)}: a run that is slower as a whole is "
                              "taken for the workers' doing, and so is a regression in code most tests run; "
                              "record the baseline with the same -n for verdicts that tell them apart")
            if self.single_recording:
                tr.write_line(f"the baseline holds one recording per test: record it {_baseline.RECORDINGS - 1} "
                              "more times (run --spprof-save-baseline again) so that verdicts allow for how much "
                              "each test's time moves between runs")
        if self.save_baseline is not None and not any(str(self.save_baseline) in e for e in self.output_errors):
            tr.write_line(f"baseline saved: {self.save_baseline} (recording {self.recording} of the "
                          f"{_baseline.RECORDINGS} each test keeps)")
        for error in self.output_errors:
            tr.write_line(f"spprof {error}", red=True)
        if self.dropped:
            tr.write_line(f"spprof dropped {self.dropped} samples (memory limit)")
        saved = sum(1 for r in self.results.values() if {"speedscope", "pprof"} & set(r.files))
        tr.write_line(f"profiles: {saved} profile file(s) under {self.dir / 'profiles'}; "
                      f"summary {self.dir / 'results.json'}"
                      + (f"; whole run {self.run_file}" if self.run_file else ""))

    def markdown(self) -> str:
        out = [f"## spprof: {len(self.results)} tests profiled", ""]
        failing = [r for r in self.results.values() if r.problems]
        if failing:
            out += [f"**{len(failing)} test(s) over budget or slower than the baseline**"
                    + (" (warnings only)" if self.warn_only else ""), ""]
            for r in failing:
                out.append(f"- `{r.nodeid}`: " + "; ".join(p.splitlines()[0] for p in r.problems))
            out.append("")
        found = culprits(self.results)
        if found:
            out += ["| culprit | regressed tests | time gained |", "|---|---:|---:|"]
            out += [f"| `{name}` | {n} | +{fmt_ns(ns)} |" for name, n, ns in found[:10]]
            out.append("")
        out += ["| test | CPU | wall | samples | baseline CPU | hottest functions |",
                "|---|---:|---:|---:|---:|---|"]
        for r in self.slowest():
            hot = ", ".join(f"`{fn}` {pct:.0f}%" for fn, _, pct in r.hottest)
            base = fmt_ns(r.baseline_cpu_ns) if r.baseline_cpu_ns is not None else "–"
            out.append(f"| `{r.nodeid}` | {fmt_ns(r.cpu_ns)} | {fmt_ns(r.wall_ns)} | {r.samples} | {base} | {hot} |")
        return "\n".join(out) + "\n"
