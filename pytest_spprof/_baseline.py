"""Baseline files: per test and Python version, CPU/wall time and per-function figures.

Format (JSON, written without indentation)::

    {"format": "spprof-pytest-baseline", "version": 2,
     "environments": {"cpython-3.12": {"saved": "2025-...", "platform": "Linux-x86_64",
         "speed_ns": 1500000, "shifts": [-0.065, 0.021], "workers": 1,
         "tests": {"tests/test_x.py::test_a": {
             "cpu_ns": 1234, "wall_ns": 2345, "waited_ns": 1000, "samples": 3, "warm_ns": [1100, 1090, 1120, 1105],
             "speed_ns": 1510000, "warm_speed_ns": [1480000, 1495000, 1470000, 1502000],
             "earlier": [0.731, 0.702],
             "functions": [[qualified name, self_ns, total_ns], ...],
             "stacks": {"frames": [[qualified name, relative file, line], ...],
                        "stacks": [[[frame ids, root first], weight_ns], ...]}}}}}}

``cpu_ns`` is the test's first call, ``waited_ns`` how much of its ``wall_ns`` its thread spent
off CPU by its own doing (sleeping, waiting on I/O or another thread; not queued for a CPU;
absent from older files), ``warm_ns`` the rounds that followed it (see ``_verdict``),
``speed_ns`` the machine's speed figure when they ran (the environment's: at the end), and
``warm_speed_ns`` the speed around each warm round (absent from older files). ``earlier`` are
the test's earlier recordings, oldest first: each the median of a recording's warm rounds in
units of the calibration workload (see ``units``), brought to this recording's pace (see
``with_earlier``); ``shifts`` how the pace of each recording differed from the one before it (log
ratio; see ``_verdict.run_pace``), ``workers`` the processes that ran the last recording's
tests (pytest-xdist's, else 1). Functions are
module-qualified names (``pkg.mod.Class.method``) and files are relative to where
their module was found, so a baseline recorded in one checkout or environment compares in
another; stacks start at the test (the pytest harness is cut). Version 1 keyed functions by
absolute file paths and is not read.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from . import _journal

FORMAT = "spprof-pytest-baseline"
VERSION = 2
#: Recordings of a test that a baseline keeps, the newest included: how far a test's time moves
#: from one process to the next (a median of 11 % on attrs' suite, at the same machine speed) is
#: seen only across processes, never in the rounds of one.
RECORDINGS = 3
#: Tests both recordings need before the newer one's pace can be told from its tests' own moves.
SHARED_TESTS = 20


def environment_key() -> str:
    return f"{sys.implementation.name}-{sys.version_info[0]}.{sys.version_info[1]}"


class BaselineError(ValueError):
    pass


def load(path: Path, must_exist: bool) -> Dict[str, Any]:
    """The baseline at ``path`` with the entries of its journals (runs that were killed before
    they saved it, see ``_journal``) applied."""
    data = _load_file(path, must_exist and not _journal.baseline_journals(path))
    _apply_journals(data, _journal.baseline_journals(path))
    return data


def journal_entry(test_id: str, entry: Dict[str, Any]) -> Dict[str, Any]:
    """A line of a baseline journal: one test's entry for this Python."""
    return {"environment": environment_key(), "test": test_id, "entry": entry}


def _apply_journals(data: Dict[str, Any], journals: List[Path]) -> None:
    for path in journals:
        for line in _journal.read(path):
            if isinstance(line, dict) and _valid_entry(line.get("entry")) and isinstance(line.get("test"), str):
                env = data["environments"].setdefault(str(line.get("environment")), {"tests": {}})
                env["tests"][line["test"]] = line["entry"]


def _load_file(path: Path, must_exist: bool) -> Dict[str, Any]:
    if not path.exists():
        if must_exist:
            raise BaselineError(f"no baseline at {path}; record one first with "
                                f"pytest --spprof --spprof-save-baseline={path}")
        return {"format": FORMAT, "version": VERSION, "environments": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BaselineError(f"cannot read the spprof baseline {path}: {exc}. Delete it and record a new one "
                            "with --spprof-save-baseline") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BaselineError(f"{path} is not an spprof baseline file (no \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise BaselineError(f"the spprof baseline {path} has format version {data.get('version')!r}; this "
                            f"plugin reads version {VERSION}. Record a new one with --spprof-save-baseline")
    envs = data.get("environments")
    if not isinstance(envs, dict):
        raise BaselineError(f"the spprof baseline {path} is damaged: \"environments\" is not an object")
    for key, env in envs.items():
        tests = env.get("tests") if isinstance(env, dict) else None
        if not isinstance(tests, dict):
            raise BaselineError(f"the spprof baseline {path} is damaged: environment {key!r} has no tests")
        shifts = env.get("shifts", [])
        if not (isinstance(shifts, list) and all(map(_number, shifts))):
            raise BaselineError(f"the spprof baseline {path} is damaged: the shifts of {key!r} are not numbers")
        if not (_count(env.get("speed_ns", 1)) and env.get("speed_ns", 1) > 0):
            raise BaselineError(f"the spprof baseline {path} is damaged: the speed_ns of {key!r} is not a "
                                "positive integer")
        for test_id, entry in tests.items():
            if not _valid_entry(entry):
                raise BaselineError(f"the spprof baseline {path} is damaged: entry {test_id!r} of {key!r} "
                                    "needs non-negative integers cpu_ns and wall_ns, and functions as "
                                    "[name, self_ns, total_ns] rows. Record a new one with --spprof-save-baseline")
    return data


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _valid_entry(entry: Any) -> bool:
    if not (isinstance(entry, dict) and _count(entry.get("cpu_ns")) and _count(entry.get("wall_ns"))):
        return False
    for key in ("warm_ns", "warm_speed_ns"):
        rounds = entry.get(key, [])
        if not (isinstance(rounds, list) and all(_count(ns) for ns in rounds)):
            return False
    earlier = entry.get("earlier", [])
    if not (isinstance(earlier, list) and all(_number(u) and u > 0 for u in earlier)):
        return False
    if not (entry.get("speed_ns") is None or _count(entry["speed_ns"])):
        return False
    functions = entry.get("functions")
    return isinstance(functions, list) and all(
        isinstance(row, list) and len(row) == 3 and isinstance(row[0], str) and _count(row[1]) and _count(row[2])
        for row in functions)


class Entry(NamedTuple):
    """A test's baseline as a comparing run keeps it: tuples of numbers and one string are not
    tracked by the cycle collector, so a large baseline does not slow the tests that call
    ``gc.collect()`` (attrs' suite has such tests: parsed, a 1,400-test baseline made them 2x
    slower, and they were flagged)."""

    cpu_ns: int
    #: The first call's wall time.
    wall_ns: int
    warm_ns: Tuple[int, ...]
    #: The machine-speed figure when the test's rounds ran (0: unknown, use the environment's).
    speed_ns: int
    #: The speed around each warm round (empty in files saved before it was recorded).
    warm_speed_ns: Tuple[int, ...]
    #: The test's recordings in units of the calibration workload, oldest first, this one last
    #: (empty without per-round speeds).
    recordings: Tuple[float, ...]
    #: JSON of {"functions": ..., "stacks": ...}, parsed only to explain a regression.
    detail: str

    #: Of the first call's wall time, what its thread spent off CPU by its own doing (-1: not
    #: recorded; then all of wall time but CPU counts, a busy machine's queueing included).
    waited_ns: int

    def waits(self) -> float:
        """The first call's time running or waiting by its own doing, over its CPU time (1 when
        it waited for nothing): see ``_verdict.least_growth_ns``."""
        if self.cpu_ns <= 0:
            return 1.0
        if self.waited_ns >= 0:
            return (self.cpu_ns + self.waited_ns) / self.cpu_ns
        return self.wall_ns / self.cpu_ns if self.wall_ns > self.cpu_ns else 1.0

    def functions(self) -> Any:
        return json.loads(self.detail)["functions"]

    def stacks(self) -> Any:
        return json.loads(self.detail)["stacks"]


def entries(tests: Dict[str, Any]) -> Dict[str, Entry]:
    return {test: Entry(e["cpu_ns"], e["wall_ns"], tuple(e.get("warm_ns", ())), e.get("speed_ns") or 0,
                        tuple(e.get("warm_speed_ns", ())), recordings(e),
                        json.dumps({"functions": e["functions"], "stacks": e.get("stacks")}),
                        e.get("waited_ns", -1))
            for test, e in tests.items()}


def units(entry: Dict[str, Any]) -> Optional[float]:
    """The median of an entry's warm rounds, each in units of the calibration workload (its CPU
    time over the speed figure around it); None without per-round speeds."""
    rounds, speeds = entry.get("warm_ns") or [], entry.get("warm_speed_ns") or []
    if len(rounds) < 3 or len(speeds) != len(rounds) or not all(speeds):
        return None
    return statistics.median(ns / speed for ns, speed in zip(rounds, speeds)) or None


def recordings(entry: Dict[str, Any]) -> Tuple[float, ...]:
    """An entry's recordings, oldest first, its own last (see ``units``)."""
    own = units(entry)
    return (*map(float, entry.get("earlier", ())), own) if own else ()


def with_earlier(before: Dict[str, Tuple[float, ...]], tests: Dict[str, Any]) -> Tuple[Dict[str, Any], Optional[float]]:
    """New entries ``tests``, each with the test's earlier recordings (``before``, per test, as
    ``recordings`` gives them) kept in ``earlier``: at most RECORDINGS - 1, brought to the new
    recording's pace. Also that pace (the log of the shift), when there were enough tests to
    tell it. All are kept, however far from the new one: a test whose time has two modes
    (more-itertools' ``time_limited`` and ``callback_iter`` tests: 0.9 or 3 ms) must show it in
    its spread; dropping recordings 1.5x away hid it, and such tests were flagged. Code that
    changed on purpose has a wide spread until it is recorded again (fewer verdicts, never
    false ones).

    The pace is the median shift of all tests between the last recording and this one: a whole
    process ran up to 15 % faster or slower than another at the same calibration speed (attrs'
    suite), a shift the verdict sees in the run it judges (``_verdict.run_pace``); what remains
    is each test's own variation between processes, which the verdict allows for."""
    now = {test: units(entry) for test, entry in tests.items()}
    shifts = [math.log(own / before[test][-1]) for test, own in now.items() if own and before.get(test)]
    shift = statistics.median(shifts) if len(shifts) >= SHARED_TESTS else None
    pace = math.exp(shift or 0.0)
    out = {}
    for test, entry in tests.items():
        own = now[test]
        if own and before.get(test):
            entry = dict(entry, earlier=[round(u * pace, 6) for u in before[test][-(RECORDINGS - 1):]])
        out[test] = entry
    return out, shift


def environment(data: Dict[str, Any]) -> Dict[str, Any]:
    """This Python's section (``tests``, ``speed_ns``, ...), empty when there is none."""
    return data["environments"].get(environment_key()) or {}


def save(path: Path, data: Dict[str, Any], tests: Dict[str, Any], speed_ns: int,
         shift: Optional[float] = None, workers: int = 1) -> None:
    """Replace this Python's entries for ``tests`` (other tests and Pythons are kept).
    ``speed_ns`` is the machine-speed figure its times go with (see ``_verdict``), ``shift``
    the pace of this recording against the one before (see ``with_earlier``), kept in
    ``shifts`` with those of the recordings the tests keep; ``workers``, the processes that ran
    the tests (pytest-xdist's, else 1)."""
    env = data["environments"].setdefault(environment_key(), {"tests": {}})
    env["speed_ns"] = speed_ns
    env["workers"] = workers
    if shift is not None:
        env["shifts"] = [*env.get("shifts", []), round(shift, 4)][-(RECORDINGS - 1):]
    env["saved"] = datetime.now().astimezone().isoformat(timespec="seconds")
    env["platform"] = f"{platform.system()}-{platform.machine()}"
    env["python"] = platform.python_version()
    journals = _journal.baseline_journals(path)
    _apply_journals(data, journals)  # also those of killed runs that came after `data` was read
    env["tests"].update(tests)
    _journal.write_whole(path, json.dumps(data, separators=(",", ":"), sort_keys=True))
    for journal in journals:  # compacted
        journal.unlink(missing_ok=True)
