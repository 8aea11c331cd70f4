"""A test's budget (marker over ini defaults), and parsing of budget and tolerance strings:
"50ms", "0.2s", "24MB", "20%"."""

from __future__ import annotations

import math
import re
from typing import Any, Dict, Optional

import pytest

TIME_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
              "min": 60_000_000_000}
#: Binary multiples (as pytest-memray does): "24MB" is 24 MiB.
MEMORY_UNITS = {"b": 1, "kb": 1 << 10, "kib": 1 << 10, "k": 1 << 10, "mb": 1 << 20, "mib": 1 << 20,
                "m": 1 << 20, "gb": 1 << 30, "gib": 1 << 30, "g": 1 << 30}

_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-zµ%]*)\s*$")


class SpprofBudgetWarning(pytest.PytestWarning):
    """A test broke an spprof budget or regressed, under ``--spprof-warn-only``."""


class BudgetError(ValueError):
    """A malformed budget, tolerance or unit (turned into a pytest.UsageError by the plugin)."""


def _split(text: str, what: str, example: str) -> tuple[float, str]:
    m = _NUMBER.match(text)
    if not m:
        raise BudgetError(f"cannot read {what} {text!r}: expected a number and a unit, e.g. {example}")
    value = float(m.group(1))
    if not math.isfinite(value):
        raise BudgetError(f"{what} {text!r} is not a finite number")
    return value, m.group(2)


def parse_time_ns(value: Any, what: str = "time") -> int:
    """A duration: a string with a unit (ns, us, µs, ms, s, min) or a number of seconds."""
    if isinstance(value, bool):
        raise BudgetError(f"{what} must be a duration such as \"50ms\", not {value!r}")
    if isinstance(value, (int, float)):
        if not (math.isfinite(value) and value >= 0):
            raise BudgetError(f"{what} must be a non-negative duration, not {value!r}")
        return int(round(value * 1e9))
    if not isinstance(value, str):
        raise BudgetError(f"{what} must be a duration such as \"50ms\", not {type(value).__name__}")
    number, unit = _split(value, what, '"50ms"')
    if not unit:
        raise BudgetError(f"{what} {value!r} has no unit; write e.g. \"{value.strip()}ms\" "
                          f"(units: {', '.join(TIME_UNITS)})")
    if unit not in TIME_UNITS:
        raise BudgetError(f"unknown time unit {unit!r} in {what} {value!r}; use one of {', '.join(TIME_UNITS)}")
    return int(round(number * TIME_UNITS[unit]))


def parse_bytes(value: Any, what: str = "memory") -> int:
    """A size: a string with a unit (B, KB, MB, GB; binary multiples) or a number of bytes."""
    if isinstance(value, bool):
        raise BudgetError(f"{what} must be a size such as \"24MB\", not {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise BudgetError(f"{what} must be a non-negative size, not {value!r}")
        return value
    if not isinstance(value, str):
        raise BudgetError(f"{what} must be a size such as \"24MB\", not {type(value).__name__}")
    number, unit = _split(value, what, '"24MB"')
    if not unit:
        raise BudgetError(f"{what} {value!r} has no unit; write e.g. \"{value.strip()}MB\" (units: B, KB, MB, GB)")
    if unit.lower() not in MEMORY_UNITS:
        raise BudgetError(f"unknown memory unit {unit!r} in {what} {value!r}; use B, KB, MB or GB")
    return int(round(number * MEMORY_UNITS[unit.lower()]))


def parse_percent(value: Any, what: str = "share", bare_is_percent: bool = False) -> float:
    """A percentage: "20%" (a string with a percent sign); with ``bare_is_percent`` a bare number
    ("20", as a command-line option is typed) is a percentage too."""
    if not isinstance(value, str):
        raise BudgetError(f"{what} must be a percentage string such as \"20%\", not {value!r}")
    number, unit = _split(value, what, '"20%"')
    if unit != "%" and not (bare_is_percent and unit == ""):
        raise BudgetError(f"{what} {value!r} must be a percentage such as \"20%\"")
    return number


BUDGET_KEYS = ("cpu", "wall", "memory", "peak_memory", "share")


class Budget:
    """The limits that apply to one test (marker over ini defaults)."""

    __slots__ = ("cpu_ns", "wall_ns", "memory_bytes", "peak_memory_bytes", "share", "source")

    def __init__(self) -> None:
        self.cpu_ns: Optional[int] = None
        self.wall_ns: Optional[int] = None
        #: Net growth of the live heap over the test, and its high-water mark above the start.
        self.memory_bytes: Optional[int] = None
        self.peak_memory_bytes: Optional[int] = None
        self.share: Dict[str, float] = {}
        #: what the user wrote, per key, for messages
        self.source: Dict[str, str] = {}

    def watches_memory(self) -> bool:
        return self.memory_bytes is not None or self.peak_memory_bytes is not None

    def set(self, key: str, value: Any, where: str) -> None:
        if value is None:
            return
        try:
            self._set(key, value)
        except BudgetError as exc:
            raise BudgetError(f"{where}: {exc}") from None
        self.source[key] = repr(value)

    def _set(self, key: str, value: Any) -> None:
        if key == "cpu":
            self.cpu_ns = parse_time_ns(value, "CPU budget")
        elif key == "wall":
            self.wall_ns = parse_time_ns(value, "wall-time budget")
        elif key == "memory":
            self.memory_bytes = parse_bytes(value, "memory budget")
        elif key == "peak_memory":
            self.peak_memory_bytes = parse_bytes(value, "peak memory budget")
        elif key == "share":
            if not isinstance(value, dict) or not value:
                raise BudgetError(f"the share budget must be a dict such as "
                                  f"{{\"pkg.mod.func\": \"20%\"}}, not {value!r}")
            for name, pct in value.items():
                if not isinstance(name, str) or not name:
                    raise BudgetError(f"share budget: function names must be strings, not {name!r}")
                self.share[name] = parse_percent(pct, f"share budget of {name!r}")
        else:
            raise BudgetError(f"unknown budget {key!r}; the spprof marker takes "
                              f"{', '.join(BUDGET_KEYS)}")


def budget_of(item: Any, defaults: Budget) -> Budget:
    """The budget of a collected test: the ini defaults, overridden by its spprof markers (the
    closest marker wins)."""
    budget = Budget()
    budget.cpu_ns, budget.wall_ns = defaults.cpu_ns, defaults.wall_ns
    budget.memory_bytes, budget.peak_memory_bytes = defaults.memory_bytes, defaults.peak_memory_bytes
    budget.source = dict(defaults.source)
    for mark in reversed(list(item.iter_markers(name="spprof"))):
        if mark.args:
            raise BudgetError(f"the spprof marker of {item.nodeid} takes keyword arguments only "
                              "(cpu=, wall=, memory=, peak_memory=, share=)")
        for key, value in mark.kwargs.items():
            budget.set(key, value, f"the spprof marker of {item.nodeid}")
    return budget
