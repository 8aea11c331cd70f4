"""pytest_spprof: the pytest plugin of spprof.

``pytest --spprof`` (or ``spprof = true`` in the ini file) profiles every test with spprof, prints
the slowest tests with their hottest functions, enforces budgets
(``@pytest.mark.spprof(cpu="50ms", wall="200ms", memory="24MB", share={"pkg.mod.func": "20%"})``)
and compares against a saved baseline (``--spprof-save-baseline`` / ``--spprof-compare``).
See docs/pytest.md for the options.

This module is imported by every pytest run (the ``pytest11`` entry point), so it imports
nothing of spprof: the working part, ``pytest_spprof._plugin``, is imported only when the plugin
is enabled.

For other plugins: ``item.stash[pytest_spprof.result_key]`` is the ``ProfiledTest`` of a test
(cpu_ns, wall_ns, samples, outcome, problems, baseline_cpu_ns, files; ``.profile`` once cut), and
``config.stash[pytest_spprof.results_key]`` maps node ids to them. The hook
``pytest_spprof_result(item, result)`` is called when a test's figures are final.

Under pytest-xdist each worker profiles its own tests (budgets and baseline comparisons are
decided there, the hook is called there); the controller merges the workers' results, baselines
and run files at the end of the session, and fills its ``config.stash[results_key]`` then
(without ``.profile``: the profiles stay in the workers, their files in ``--spprof-dir``).
"""

from __future__ import annotations

from typing import Any, Dict

import pytest

#: ``item.stash[result_key]``: the test's ProfiledTest (when --spprof is on).
result_key = pytest.StashKey[Any]()
#: ``config.stash[results_key]``: {node id: ProfiledTest} for the run.
results_key = pytest.StashKey[Dict[str, Any]]()
#: ``item.stash[budget_key]``: the test's parsed budget.
budget_key = pytest.StashKey[Any]()
#: ``config.stash[seeded_hypothesis_key]``: spprof gave Hypothesis its seed (see pytest_configure).
seeded_hypothesis_key = pytest.StashKey[bool]()

PLUGIN_NAME = "spprof-session"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("spprof", "spprof: profile every test, budgets and baselines")
    add = group.addoption
    add("--spprof", action="store_true", default=None,
        help="profile every test with spprof (ini: spprof = true)")
    add("--spprof-phases", choices=("call", "all"), default=None,
        help="profile the test call only (default) or setup, call and teardown (ini: spprof_phases)")
    add("--spprof-dir", default=None, metavar="DIR",
        help="where profiles and summaries go (default .spprof/; ini: spprof_dir)")
    add("--spprof-save", choices=("all", "failed", "none"), default=None,
        help="which tests get a profile file (default: failed; ini: spprof_save)")
    add("--spprof-profile-format", choices=("speedscope", "pprof"), default=None,
        help="the format of those files: speedscope JSON (default) or pprof .pb.gz, whose samples "
             "carry the test id (ini: spprof_profile_format)")
    add("--spprof-top", default=None, metavar="N",
        help="tests listed in the summary, slowest by CPU first (default 10; ini: spprof_top)")
    add("--spprof-interval", "--spprof-interval-ms", dest="spprof_interval", default=None, metavar="MS",
        help="sampling interval in ms (default 1; CPU timers fire at the kernel tick; ini: spprof_interval)")
    add("--spprof-warn-only", action="store_true", default=False,
        help="budgets and regressions warn instead of failing the test (ini: spprof_warn_only)")
    add("--spprof-save-baseline", nargs="?", const="", default=None, metavar="PATH",
        help="record per-test CPU/wall time and per-function profiles (default .spprof/baseline.json; "
             "turns --spprof on)")
    add("--spprof-compare", nargs="?", const="", default=None, metavar="PATH",
        help="fail tests whose CPU time grew beyond the tolerance since the baseline (turns --spprof on)")
    add("--spprof-tolerance", default=None, metavar="PCT",
        help="allowed CPU growth against the baseline, e.g. 20 or 20%% (default 15%%; ini: spprof_tolerance)")
    add("--spprof-noise-floor", default=None, metavar="TIME",
        help="growth below this is never a regression (default 2ms; ini: spprof_noise_floor)")
    add("--spprof-rounds", default=None, metavar="N",
        help="re-run the call of a test that looks over budget or regressed up to N-1 times; "
             "the fastest round counts (default 1)")
    add("--spprof-no-arrow", action="store_true", default=False,
        help="do not write the whole run as one Arrow IPC file, run.arrow (ini: spprof_arrow = false)")
    add("--spprof-markdown", default=None, metavar="PATH",
        help="write a Markdown summary (for a CI job summary)")
    parser.addini("spprof", "profile every test with spprof", type="bool", default=False)
    for name, help_ in (("spprof_phases", "call or all"), ("spprof_dir", "output directory"),
                        ("spprof_save", "all, failed or none"), ("spprof_top", "tests in the summary"),
                        ("spprof_profile_format", "speedscope or pprof"),
                        ("spprof_interval", "sampling interval in ms"),
                        ("spprof_interval_ms", "sampling interval in ms (the older name of spprof_interval)"),
                        ("spprof_cpu_budget", "default CPU budget of every test, e.g. 500ms"),
                        ("spprof_wall_budget", "default wall-time budget of every test"),
                        ("spprof_memory_budget", "default budget of every test's live-heap growth, e.g. 64MB"),
                        ("spprof_peak_memory_budget", "default budget of every test's peak live heap, e.g. 256MB"),
                        ("spprof_tolerance", "allowed CPU growth against the baseline, e.g. 20%"),
                        ("spprof_noise_floor", "growth below this is never a regression, e.g. 2ms"),
                        ("spprof_rounds", "rounds for tests that look slow"),
                        ("spprof_baseline", "baseline file path"),
                        ("spprof_markdown", "Markdown summary path")):
        parser.addini(name, f"spprof: {help_}", default="")
    parser.addini("spprof_warn_only", "spprof: warn instead of failing", type="bool", default=False)
    parser.addini("spprof_arrow", "spprof: write the whole-run Arrow file run.arrow", type="bool", default=True)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


#: The seed Hypothesis' tests run with when a baseline is saved or compared (see pytest_configure).
HYPOTHESIS_SEED = 0


@pytest.hookimpl(tryfirst=True)  # before Hypothesis' plugin reads its seed option
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "spprof(cpu=None, wall=None, memory=None, peak_memory=None, share=None): performance budget "
        "of the test under pytest --spprof, e.g. cpu=\"50ms\", peak_memory=\"64MB\", share={\"pkg.mod.func\": \"20%\"}")
    enabled = config.getoption("spprof")
    if enabled is None:
        enabled = config.getini("spprof")
    # Saving or comparing a baseline needs the profile: asking for either turns profiling on.
    wants_baseline = any(config.getoption(name) is not None for name in ("spprof_compare", "spprof_save_baseline"))
    if not (enabled or wants_baseline):
        return
    # A Hypothesis test draws new examples on every call, unless it has a seed: then every round
    # and every run test the same examples, and compare. Its rounds varied by up to 2.6x without
    # one (attrs' suite). The user's own --hypothesis-seed wins.
    if wants_baseline and getattr(config.option, "hypothesis_seed", HYPOTHESIS_SEED) is None:
        config.option.hypothesis_seed = str(HYPOTHESIS_SEED)  # as the command line gives it
        config.stash[seeded_hypothesis_key] = True
    from ._plugin import SpprofPlugin

    config.pluginmanager.register(SpprofPlugin(config), PLUGIN_NAME)


@pytest.fixture
def spprof_profiler(request: Any) -> Any:
    """Profile a block inside a test::

        def test_x(spprof_profiler):
            with spprof_profiler() as block:
                work()
            assert block.cpu_ns < 50_000_000
            block.profile.save("x.json")
    """
    from ._block import BlockProfiler

    plugin = request.config.pluginmanager.get_plugin(PLUGIN_NAME)
    return BlockProfiler(plugin.measure.sampler if plugin is not None else None)


def load_run(path: Any) -> Any:
    """The whole-run table ``.spprof/run.arrow`` as a ``pyarrow.Table`` (see ``_run``)."""
    from ._run import load_run as _load

    return _load(path)


def load_profile(path: Any, test_id: str) -> Any:
    """One test's ``spprof.Profile`` from a whole-run file."""
    from ._run import load_profile as _load

    return _load(path, test_id)
