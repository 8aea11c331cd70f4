"""pytest_spprof: the pytest plugin of spprof (``pytest --spprof``).

Registered through the ``pytest11`` entry point. Per-test profiling, budgets and baselines are
not built yet; today the plugin only adds the ``--spprof`` option, which says so.
"""

from __future__ import annotations

from typing import Any


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("spprof", "spprof profiling")
    group.addoption("--spprof", action="store_true", default=False,
                    help="profile every test with spprof (not available yet in this version)")


def pytest_configure(config: Any) -> None:
    if config.getoption("spprof", default=False):
        import pytest

        raise pytest.UsageError(
            "--spprof: per-test profiling is not available in this version of spprof yet")
