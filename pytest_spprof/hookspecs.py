"""Hooks the spprof plugin calls (implement them in a conftest.py or plugin)."""

from __future__ import annotations

from typing import Any


def pytest_spprof_result(item: Any, result: Any) -> None:
    """Called after spprof's verdict on a test: ``result`` is its ``ProfiledTest`` (cpu_ns,
    wall_ns, samples, outcome, problems, baseline_cpu_ns; ``result.profile`` may still be None
    until the session ends)."""
