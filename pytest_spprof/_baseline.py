"""Baseline files: per test and Python version, CPU/wall time and per-function figures.

Format (JSON, written without indentation)::

    {"format": "spprof-pytest-baseline", "version": 2,
     "environments": {"cpython-3.12": {"saved": "2025-...", "platform": "Linux-x86_64",
         "speed_ns": 1500000,
         "tests": {"tests/test_x.py::test_a": {
             "cpu_ns": 1234, "wall_ns": 2345, "samples": 3, "warm_ns": [1100, 1090, 1120, 1105],
             "speed_ns": 1510000, "warm_speed_ns": [1480000, 1495000, 1470000, 1502000],
             "functions": [[qualified name, self_ns, total_ns], ...],
             "stacks": {"frames": [[qualified name, relative file, line], ...],
                        "stacks": [[[frame ids, root first], weight_ns], ...]}}}}}}

``cpu_ns`` is the test's first call, ``warm_ns`` the rounds that followed it (see ``_verdict``),
``speed_ns`` the machine's speed figure when they ran (the environment's: at the end), and
``warm_speed_ns`` the speed around each warm round (absent from older files). Functions are
module-qualified names (``pkg.mod.Class.method``) and files are relative to where
their module was found, so a baseline recorded in one checkout or environment compares in
another; stacks start at the test (the pytest harness is cut). Version 1 keyed functions by
absolute file paths and is not read.
"""

from __future__ import annotations

import json
import platform
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Tuple

from . import _journal

FORMAT = "spprof-pytest-baseline"
VERSION = 2


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


def _valid_entry(entry: Any) -> bool:
    if not (isinstance(entry, dict) and _count(entry.get("cpu_ns")) and _count(entry.get("wall_ns"))):
        return False
    for key in ("warm_ns", "warm_speed_ns"):
        rounds = entry.get(key, [])
        if not (isinstance(rounds, list) and all(_count(ns) for ns in rounds)):
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
    warm_ns: Tuple[int, ...]
    #: The machine-speed figure when the test's rounds ran (0: unknown, use the environment's).
    speed_ns: int
    #: The speed around each warm round (empty in files saved before it was recorded).
    warm_speed_ns: Tuple[int, ...]
    #: JSON of {"functions": ..., "stacks": ...}, parsed only to explain a regression.
    detail: str

    def functions(self) -> Any:
        return json.loads(self.detail)["functions"]

    def stacks(self) -> Any:
        return json.loads(self.detail)["stacks"]


def entries(tests: Dict[str, Any]) -> Dict[str, Entry]:
    return {test: Entry(e["cpu_ns"], tuple(e.get("warm_ns", ())), e.get("speed_ns") or 0,
                        tuple(e.get("warm_speed_ns", ())),
                        json.dumps({"functions": e["functions"], "stacks": e.get("stacks")}))
            for test, e in tests.items()}


def environment(data: Dict[str, Any]) -> Dict[str, Any]:
    """This Python's section (``tests``, ``speed_ns``, ...), empty when there is none."""
    return data["environments"].get(environment_key()) or {}


def save(path: Path, data: Dict[str, Any], tests: Dict[str, Any], speed_ns: int) -> None:
    """Replace this Python's entries for ``tests`` (other tests and Pythons are kept).
    ``speed_ns`` is the machine-speed figure its times go with (see ``_verdict``)."""
    env = data["environments"].setdefault(environment_key(), {"tests": {}})
    env["speed_ns"] = speed_ns
    env["saved"] = datetime.now().astimezone().isoformat(timespec="seconds")
    env["platform"] = f"{platform.system()}-{platform.machine()}"
    env["python"] = platform.python_version()
    journals = _journal.baseline_journals(path)
    _apply_journals(data, journals)  # also those of killed runs that came after `data` was read
    env["tests"].update(tests)
    _journal.write_whole(path, json.dumps(data, separators=(",", ":"), sort_keys=True))
    for journal in journals:  # compacted
        journal.unlink(missing_ok=True)
