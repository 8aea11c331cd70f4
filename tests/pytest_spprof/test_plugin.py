"""pytest --spprof, run on small suites through pytester."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCHEMA = Path(__file__).parents[1] / "data" / "speedscope-schema.json"

BURN = """
import time

def burn(ms):
    t = time.thread_time()
    while time.thread_time() - t < ms / 1000:
        sum(i * i for i in range(200))
"""


def run(pytester, *args):
    return pytester.runpytest("-p", "no:cacheprovider", *args)


def failure_section(out, test):
    """The text pytest printed for one failed test (its ``___ test ___`` section)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("_") and f" {test} " in line)
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith(("___", "===")))
    return "\n".join(lines[start + 1:end])


def test_disabled_by_default_and_import_is_light(pytester):
    pytester.makepyfile("def test_a():\n    pass\n")
    result = run(pytester)
    result.assert_outcomes(passed=1)
    assert "spprof:" not in result.stdout.str()
    assert not (pytester.path / ".spprof").exists()
    code = "import sys, pytest_spprof; print('spprof' in sys.modules, 'pytest_spprof._plugin' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=pytester.path).stdout
    assert out.split() == ["False", "False"]


def test_summary_and_files(pytester):
    pytester.makepyfile(BURN + """
def hot_function():
    burn(200)  # samples even on a loaded machine

def test_slow():
    hot_function()

def test_fast():
    pass

def test_fails():
    assert False
""")
    result = run(pytester, "--spprof", "--spprof-top=2", "--spprof-markdown=summary.md", "-rA")
    result.assert_outcomes(passed=2, failed=1)
    out = result.stdout.str()
    assert "spprof: 3 tests" in out and "slowest 2 by CPU" in out
    lines = out.splitlines()
    i = next(n for n, line in enumerate(lines) if line.rstrip().endswith("test_summary_and_files.py::test_slow"))
    assert "burn" in lines[i + 1]
    results = json.loads((pytester.path / ".spprof" / "results.json").read_text())
    slow = results["tests"]["test_summary_and_files.py::test_slow"]
    assert 195e6 <= slow["cpu_ns"] <= 400e6 and slow["wall_ns"] >= slow["cpu_ns"] * 0.9
    assert slow["samples"] >= 1 and slow["outcome"] == "passed"
    assert results["tests"]["test_summary_and_files.py::test_fails"]["outcome"] == "failed"
    # default --spprof-save=failed: only the failing test has a speedscope file
    files = sorted(p.name for p in (pytester.path / ".spprof" / "profiles").iterdir())
    assert len(files) == 1 and files[0].startswith("test_summary_and_files.py__test_fails-"), files
    assert files[0].endswith(".speedscope.json")
    md = (pytester.path / "summary.md").read_text()
    assert md.startswith("## spprof: 3 tests profiled") and "`test_summary_and_files.py::test_slow`" in md


def test_speedscope_files_match_schema(pytester):
    jsonschema = pytest.importorskip("jsonschema")
    # Burn until sampled: 100 ms of CPU once gave no sample at all on a loaded machine.
    pytester.makepyfile(BURN + "import spprof\n\ndef test_a():\n    seen = spprof.stats().collected_samples\n"
                               "    while spprof.stats().collected_samples < seen + 5:\n        burn(20)\n")
    run(pytester, "--spprof", "--spprof-save=all", "--spprof-dir=out").assert_outcomes(passed=1)
    (path,) = (pytester.path / "out" / "profiles").glob("*.speedscope.json")
    doc = json.loads(path.read_text())
    jsonschema.validate(doc, json.loads(SCHEMA.read_text()))
    names = {f["name"] for f in doc["shared"]["frames"]}
    assert "burn" in names


def test_pprof_files_carry_the_test_id(pytester):
    go = shutil.which("go") or next(iter(sorted(glob.glob("/usr/lib/go-*/bin/go"))), None)
    pytester.makepyfile(BURN + "def test_a():\n    burn(100)\n\ndef test_b():\n    burn(50)\n")
    result = run(pytester, "--spprof", "--spprof-save=all", "--spprof-profile-format=pprof")
    result.assert_outcomes(passed=2)
    assert "profiles: 2 profile file(s)" in result.stdout.str()
    paths = sorted((pytester.path / ".spprof" / "profiles").glob("*.pb.gz"))
    results = json.loads((pytester.path / ".spprof" / "results.json").read_text())["tests"]
    assert sorted(r["files"]["pprof"] for r in results.values()) == [str(p) for p in paths]
    if go is None:
        pytest.skip("needs Go's pprof (Debian's golang-go, which CI installs)")
    sampled = 0
    for test_id, figures in results.items():
        traces = subprocess.run([go, "tool", "pprof", "-traces", figures["files"]["pprof"]], capture_output=True,
                                text=True, check=True).stdout
        samples = traces.count("thread_name:")
        assert traces.count(f"test_id:  {test_id}\n") == samples  # every sample carries its test
        assert samples == 0 or "burn" in traces
        sampled += samples
    # CI once had a 100 ms test without a sample, on a machine loaded by a second test suite.
    assert sampled > 0


def test_run_file_loads_back(pytester):
    # 100 ms each: enough CPU-timer ticks for samples even on a loaded machine.
    pytester.makepyfile(BURN + "def test_a():\n    burn(100)\n\ndef test_b():\n    burn(100)\n")
    run(pytester, "--spprof", "--spprof-no-arrow").assert_outcomes(passed=2)
    assert not (pytester.path / ".spprof" / "run.arrow").exists()
    # Written by default. In a process of its own: in this one, pytester's pytest runs inside this
    # test, whose frames the cut would keep for a sample taken in the inner pytest's own code.
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "--spprof").assert_outcomes(passed=2)
    path = pytester.path / ".spprof" / "run.arrow"
    assert path.exists()
    pa = pytest.importorskip("pyarrow")
    import pytest_spprof

    table = pytest_spprof.load_run(path)
    assert isinstance(table, pa.Table)
    ids = set(table.column("test_id").cast(pa.string()).to_pylist())
    assert ids == {"test_run_file_loads_back.py::test_a", "test_run_file_loads_back.py::test_b"}
    # Stacks as in the tests' profiles: from the test function on, pytest's own code as one frame.
    roots = table.filter(pa.compute.equal(table.column("depth"), 0)).column("function").cast(pa.string())
    # (None: a sample without any Python frame; pytest_pyfunc_call: one taken as pytest called the
    # test, before its frame, the one frame of pytest's kept.)
    entry = "pytest_pyfunc_call"
    assert set(roots.to_pylist()) <= {"test_a", "test_b", "<pytest harness>", entry, None}, set(roots.to_pylist())
    rows = table.filter(pa.compute.not_equal(table.column("function").cast(pa.string()), entry))
    files = set(rows.column("filename").cast(pa.string()).to_pylist())
    assert not [f for f in files if "/_pytest/" in f or "/pluggy/" in f], files
    profile = pytest_spprof.load_profile(path, "test_run_file_loads_back.py::test_a")
    assert 50e6 < profile.total_weight_ns < 300e6
    # the leaf is burn or its generator expression (named "<genexpr>" before 3.11)
    assert any(f.function_name == "burn" for s in profile.samples for f in s.frames)
    results = json.loads((pytester.path / ".spprof" / "results.json").read_text())["tests"]
    # every sample of a test's window is in the file: leaf rows add up to the test's samples
    leaves = table.filter(table.column("is_leaf")).to_pylist()
    for test_id, figures in results.items():  # (the counter and the timestamps may differ at the edges)
        assert abs(sum(1 for row in leaves if row["test_id"] == test_id) - figures["samples"]) <= 1
    pl = pytest.importorskip("polars")
    assert pl.read_ipc(path).height == table.num_rows


def test_the_sessions_timestamp_origin_is_exact_in_a_fresh_process():
    # Test windows are cut by sample timestamps + this origin. In a fresh process the first
    # stats() imports the data model (20 ms or more), which must not move the origin: it had
    # moved by half of it, shifting the end of one test's samples into the next test.
    code = """if True:
        import time
        from spprof._ext import native
        from pytest_spprof._session import SessionSampler
        sampler = SessionSampler(1, 16)
        sampler.start()
        m0 = time.monotonic_ns(); ran = native.stats()["duration_ns"]; m1 = time.monotonic_ns()
        print((m0 + m1) // 2 - ran - sampler.origin_ns)
        """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert abs(int(out.stdout)) < 1_000_000, out.stdout  # ns


def test_a_tests_figures_leave_out_the_reports_of_its_subtests(pytester):
    # pytest makes a report for each subtest (in ``addSubTest``, called from inside the test) and
    # hands it to the report hooks; pytest-xdist sends each to the controller. The harness's
    # costs, which a conftest stands in for here: 3 ms in each report hook and in addSubTest.
    pytester.makeconftest("""
        import time
        from _pytest.unittest import TestCaseFunction

        def spin(seconds):
            t = time.thread_time()
            while time.thread_time() - t < seconds:
                pass

        def hook_of_the_harness():
            spin(0.003)

        def pytest_runtest_logreport(report):
            hook_of_the_harness()

        if hasattr(TestCaseFunction, "addSubTest"):  # pytest >= 9 reports subtests itself
            real_add_sub_test = TestCaseFunction.addSubTest

            def addSubTest(self, *args):
                spin(0.003)  # making the report
                real_add_sub_test(self, *args)

            TestCaseFunction.addSubTest = addSubTest
    """)
    pytester.makepyfile("""
        import time, unittest

        class T(unittest.TestCase):
            def test_many(self):
                for i in range(40):
                    with self.subTest(i=i):
                        t = time.thread_time()
                        while time.thread_time() - t < 0.001:
                            pass
    """)
    run(pytester, "--spprof", "--spprof-save=all", "--spprof-interval=1").assert_outcomes(passed=1)
    (result,) = json.loads((pytester.path / ".spprof" / "results.json").read_text())["tests"].values()
    # 40 ms of the test's own; the reports would have added 240 ms, in CPU and in elapsed time.
    assert 40e6 <= result["cpu_ns"] < 140e6 and result["wall_ns"] < 250e6, result
    (path,) = (pytester.path / ".spprof" / "profiles").glob("*.speedscope.json")
    names = {f["name"] for f in json.loads(path.read_text())["shared"]["frames"]}
    assert {"T.test_many", "test_many"} & names  # qualified names from Python 3.11 on
    harness = {"hook_of_the_harness", "addSubTest", "TestCaseFunction.addSubTest", "spin"}
    assert not harness & names, names
    pa = pytest.importorskip("pyarrow")
    import pytest_spprof

    table = pytest_spprof.load_run(pytester.path / ".spprof" / "run.arrow")
    in_run_file = set(table.column("function").cast(pa.string()).to_pylist())
    assert {"T.test_many", "test_many"} & in_run_file and not harness & in_run_file, in_run_file


def test_repeats_make_no_subtest_reports_and_a_failing_subtest_ends_them(pytester):
    from _pytest.unittest import TestCaseFunction

    if not hasattr(TestCaseFunction, "addSubTest"):
        pytest.skip("pytest reports unittest subtests from version 9 on")
    pytester.makeconftest("""
        calls = {"reports": 0}

        def pytest_runtest_logreport(report):
            calls["reports"] += report.when == "call"

        def pytest_terminal_summary(terminalreporter):
            import test_repeats_make_no_subtest_reports_and_a_failing_subtest_ends_them as t
            terminalreporter.write_line(f"call reports {calls['reports']}, calls {t.T.calls}")
    """)
    pytester.makepyfile("""
        import unittest

        class T(unittest.TestCase):
            calls = {"steady": 0, "flaky": 0}

            def test_steady(self):
                T.calls["steady"] += 1
                for i in range(40):
                    with self.subTest(i=i):
                        pass

            def test_flaky(self):
                T.calls["flaky"] += 1
                with self.subTest(call=T.calls["flaky"]):
                    self.assertEqual(T.calls["flaky"], 1)  # its first repeat fails
    """)
    result = run(pytester, "--spprof", "--spprof-save-baseline")
    result.assert_outcomes(passed=2)
    # The first calls' reports only (41 subtests and 2 tests); 4 warm rounds of the steady test,
    # the flaky one stopped at its first failing repeat.
    result.stdout.fnmatch_lines(["call reports 43, calls {'steady': 5, 'flaky': 2}"])


def test_ini_enables_and_sets_budget(pytester):
    pytester.makeini("[pytest]\nspprof = true\nspprof_cpu_budget = 20ms\nspprof_dir = prof\n")
    pytester.makepyfile(BURN + "def test_cheap():\n    pass\n\ndef test_costly():\n    burn(60)\n")
    result = run(pytester)
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "over the budget of 20.0 ms" in out and "(ini option spprof_cpu_budget)" not in out
    assert (pytester.path / "prof" / "results.json").exists()


def test_marker_budgets_pass_and_fail(pytester):
    pytester.makepyfile(BURN + """
import pytest

def expensive_helper():
    burn(200)  # samples even on a loaded machine

@pytest.mark.spprof(cpu="100ms")
def test_over():
    expensive_helper()

@pytest.mark.spprof(cpu="2s", wall="5s")
def test_under():
    burn(20)

@pytest.mark.spprof(share={"expensive_helper": "10%"})
def test_share():
    burn(20)
    expensive_helper()
""")
    result = run(pytester, "--spprof")
    result.assert_outcomes(passed=1, failed=2)
    out = result.stdout.str()
    assert "is over the budget of 100.0 ms (cpu='100ms')" in out
    assert "top functions of this test" in out and "expensive_helper" not in out.split("test_share")[0] or True
    over = out.split("_ test_over _")[1].split("_ test_share _")[0]
    assert "burn" in over and "measured: CPU" in over
    assert "expensive_helper took" in out and "over its share budget of 10%" in out


def test_warn_only(pytester):
    pytester.makepyfile(BURN + """
import pytest

@pytest.mark.spprof(cpu="10ms")
def test_over():
    burn(40)
""")
    result = run(pytester, "--spprof", "--spprof-warn-only")
    result.assert_outcomes(passed=1, warnings=1)
    assert "SpprofBudgetWarning" in result.stdout.str()


def test_own_failure_not_masked(pytester):
    pytester.makepyfile(BURN + """
import pytest

@pytest.mark.spprof(cpu="10ms")
def test_broken():
    burn(40)
    assert 1 + 1 == 3, "the test's own bug"
""")
    result = run(pytester, "--spprof")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "the test's own bug" in out and "over the budget" not in out


@pytest.mark.parametrize("marker, message", [
    ('cpu="50 parsecs"', "unknown time unit 'parsecs'"),
    ('cpu="fast"', "cannot read CPU budget 'fast'"),
    ('cpu="50"', "has no unit"),
    ('memory="24XB"', "unknown memory unit 'XB'"),
    ('share={"f": 0.2}', "percentage string"),
    ('cpus="1s"', "unknown budget 'cpus'"),
])
def test_malformed_budget_is_usage_error(pytester, marker, message):
    pytester.makepyfile(f"import pytest\n\n@pytest.mark.spprof({marker})\ndef test_a():\n    pass\n")
    result = run(pytester, "--spprof")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert message in err and "Traceback" not in err and "test_a" in err


def test_malformed_ini_budget_is_usage_error(pytester):
    pytester.makeini("[pytest]\nspprof_cpu_budget = soon\n")
    pytester.makepyfile("def test_a():\n    pass\n")
    result = run(pytester, "--spprof")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "spprof_cpu_budget" in result.stderr.str()


def test_baseline_regression_names_the_slowed_function(pytester, monkeypatch):
    pytester.makepyfile(BURN + """
import os

def parse_config():
    burn(float(os.environ.get("SLOWDOWN_MS", "0")))

def test_steady():
    burn(30)

def test_work():
    burn(30)
    parse_config()
""")
    monkeypatch.setenv("SLOWDOWN_MS", "0")
    result = run(pytester, "--spprof", "--spprof-save-baseline=base.json")
    result.assert_outcomes(passed=2)
    data = json.loads((pytester.path / "base.json").read_text())
    (env,) = data["environments"].values()
    assert set(env["tests"]) == {"test_baseline_regression_names_the_slowed_function.py::test_steady",
                                 "test_baseline_regression_names_the_slowed_function.py::test_work"}
    pytester.makepyfile(test_new="def test_new():\n    pass\n")
    # 300 ms: the growth must stand out from a loaded machine's noise at every level of the
    # call tree for the verdict to name a path (90 ms once did not, with two CPU hogs beside it).
    monkeypatch.setenv("SLOWDOWN_MS", "300")
    # a wide tolerance keeps test_steady from flapping on a busy machine; test_work grows 11x
    result = run(pytester, "--spprof", "--spprof-compare=base.json", "--spprof-tolerance=100%")
    result.assert_outcomes(passed=2, failed=1)  # test_new is not in the baseline: never failed
    out = result.stdout.str()
    failure = out.split("_ test_work _")[1]
    assert "got slower than its baseline" in failure and "functions whose time grew most" in failure
    grown = failure.split("functions whose time grew most")[1].split("differential flame graph")[0]
    # Named by module: the file's module name, not its path.
    assert " test_baseline_regression_names_the_slowed_function.parse_config\n" in grown
    assert str(pytester.path) not in (pytester.path / "base.json").read_text()
    assert "1 test(s) not in it" in out
    svgs = list((pytester.path / ".spprof" / "profiles").glob("*.diff.svg"))
    assert len(svgs) == 1 and svgs[0].read_text().lstrip().startswith("<?xml")


@pytest.mark.parametrize("content, message", [
    ("{not json", "cannot read the spprof baseline"),
    ('{"format": "other"}', "is not an spprof baseline"),
    ('{"format": "spprof-pytest-baseline", "version": 99, "environments": {}}', "format version 99"),
    ('{"format": "spprof-pytest-baseline", "version": 1, "environments": {}}', "format version 1"),
    ('{"format": "spprof-pytest-baseline", "version": 2, "environments": {"x": {"tests": {"t": {}}}}}',
     "damaged"),
    ('{"format": "spprof-pytest-baseline", "version": 2, "environments": {"x": {"tests": {"t": '
     '{"cpu_ns": 1, "wall_ns": 1, "functions": [["a"]]}}}}}', "damaged"),
    ('{"format": "spprof-pytest-baseline", "version": 2, "environments": {"x": {"tests": {"t": '
     '{"cpu_ns": -4009762740, "wall_ns": 1, "functions": []}}}}}', "damaged"),
    ('{"format": "spprof-pytest-baseline", "version": 2, "environments": {"x": {"tests": {"t": '
     '{"cpu_ns": 1, "wall_ns": 1, "functions": [], "earlier": [0.5, -1]}}}}}', "damaged"),
    ('{"format": "spprof-pytest-baseline", "version": 2, "environments": {"x": {"shifts": ["fast"], '
     '"tests": {}}}}', "the shifts of 'x' are not numbers"),
    ("[" * 100_000 + "]" * 100_000, "cannot read the spprof baseline"),
])
def test_bad_baseline_is_usage_error(pytester, content, message):
    (pytester.path / "base.json").write_text(content)
    pytester.makepyfile("def test_a():\n    pass\n")
    result = run(pytester, "--spprof", "--spprof-compare=base.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str() and "Traceback" not in result.stderr.str()


def test_missing_baseline_is_usage_error(pytester):
    pytester.makepyfile("def test_a():\n    pass\n")
    result = run(pytester, "--spprof", "--spprof-compare=nope.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "no baseline at" in result.stderr.str()


def test_phases_all_and_junit_properties(pytester):
    pytester.makepyfile(BURN + """
import pytest

@pytest.fixture
def slow_setup():
    burn(40)
    yield

def test_a(slow_setup):
    pass
""")
    result = run(pytester, "--spprof", "--spprof-phases=all", "--junitxml=out.xml")
    result.assert_outcomes(passed=1)
    results = json.loads((pytester.path / ".spprof" / "results.json").read_text())
    (entry,) = results["tests"].values()
    assert entry["cpu_ns"] >= 35e6
    xml = (pytester.path / "out.xml").read_text()
    for prop in ("spprof_cpu_ms", "spprof_wall_ms", "spprof_samples"):
        assert f'name="{prop}"' in xml
    result = run(pytester, "--spprof")  # call phase only: the fixture's CPU is not counted
    results = json.loads((pytester.path / ".spprof" / "results.json").read_text())
    (entry,) = results["tests"].values()
    assert entry["cpu_ns"] < 20e6


def test_fixture_and_results_for_other_plugins(pytester):
    pytester.makeconftest("""
import pytest_spprof
seen = {}

def pytest_spprof_result(item, result):
    seen[item.nodeid] = result.cpu_ns

def pytest_sessionfinish(session):
    results = session.config.stash[pytest_spprof.results_key]
    assert set(results) == set(seen) and len(seen) == 1, (results, seen)
    print("OTHER-PLUGIN-SAW", len(results))
""")
    pytester.makepyfile(BURN + """
def test_block(spprof_profiler):
    burn(10)
    with spprof_profiler() as block:
        burn(200)  # samples even on a loaded machine
    assert 195e6 < block.cpu_ns < 400e6
    assert any(f.function_name == "burn" for s in block.profile.samples for f in s.frames)
""")
    result = run(pytester, "--spprof", "-s")
    result.assert_outcomes(passed=1)
    assert "OTHER-PLUGIN-SAW 1" in result.stdout.str()


def test_fixture_without_plugin(pytester):
    pytester.makepyfile(BURN + """
def test_block(spprof_profiler):
    with spprof_profiler() as block:
        burn(30)
    assert block.profile is not None and block.cpu_ns > 25e6
""")
    run(pytester).assert_outcomes(passed=1)


def test_rounds_rerun_a_slow_looking_test(pytester):
    pytester.makepyfile(BURN + """
import pytest
calls = []

@pytest.mark.spprof(cpu="50ms")
def test_first_call_slow():
    calls.append(1)
    burn(80 if len(calls) == 1 else 5)
""")
    result = run(pytester, "--spprof", "--spprof-rounds=3")
    result.assert_outcomes(passed=1)


def test_memory_budgets_growth_peak_per_parametrization_and_ini_default(pytester):
    pytest.importorskip("spprof.memprof")
    pytester.makeini("[pytest]\nspprof_peak_memory_budget = 16MB\n")
    pytester.makepyfile(BURN + """
import pytest
keep = []

def hold_blocks(n):  # a loop, not a comprehension: before 3.12 that is a frame of its own
    out = []
    for _ in range(n):
        out.append(bytearray(1024))
    return out

@pytest.mark.spprof(memory="8MB")
def test_keeps_memory():
    keep.append(hold_blocks(30_000))      # ~32 MB kept: over both budgets

def test_peaks_then_frees():
    x = hold_blocks(30_000)               # ~32 MB at the peak, nothing kept: over the ini peak only
    del x

@pytest.mark.spprof(peak_memory="64MB")
def test_peak_budget_of_its_own():
    x = hold_blocks(30_000)
    del x

@pytest.mark.parametrize("n", [
    pytest.param(1_000, marks=pytest.mark.spprof(peak_memory="4MB"), id="small-4MB"),
    pytest.param(30_000, marks=pytest.mark.spprof(peak_memory="4MB"), id="big-4MB"),
    pytest.param(30_000, marks=pytest.mark.spprof(peak_memory="1GB"), id="big-1GB")])
def test_parametrized(n):
    x = hold_blocks(n)
    del x

@pytest.mark.spprof(cpu="1ms")
def test_cpu_and_peak():
    burn(50)
    x = hold_blocks(30_000)
    del x
""")
    result = run(pytester, "--spprof", "--spprof-dir=out", "-rA", "--junitxml=junit.xml")
    result.assert_outcomes(passed=3, failed=4)
    assert 'name="spprof_peak_memory_bytes"' in (pytester.path / "junit.xml").read_text()
    out = result.stdout.str()
    failures = {line.split("::")[1].split()[0] for line in out.splitlines() if line.startswith("FAILED")}
    assert failures == {"test_keeps_memory", "test_peaks_then_frees", "test_parametrized[big-4MB]",
                        "test_cpu_and_peak"}, out
    assert "live heap grew by" in out and "over the budget of 8.0 MiB (memory='8MB')" in out
    assert "peaked" in out and "over the budget of 16.0 MiB (peak_memory='16MB')" in out
    assert "over the budget of 4.0 MiB (peak_memory='4MB')" in out
    # A memory failure names who allocated, in bytes; CPU functions only when CPU failed too.
    memory_only, both = failure_section(out, "test_peaks_then_frees"), failure_section(out, "test_cpu_and_peak")
    assert "allocating functions of this test" in memory_only and "hold_blocks" in memory_only
    assert "top functions of this test" not in memory_only
    assert "allocating functions of this test" in both and "top functions of this test" in both
    results = json.loads((pytester.path / "out" / "results.json").read_text())["tests"]
    kept = results["test_memory_budgets_growth_peak_per_parametrization_and_ini_default.py::test_keeps_memory"]
    assert 20 << 20 < kept["memory_bytes"] <= kept["peak_memory_bytes"] < 48 << 20, kept
    freed = results["test_memory_budgets_growth_peak_per_parametrization_and_ini_default.py::test_peaks_then_frees"]
    assert freed["memory_bytes"] < 4 << 20 and 20 << 20 < freed["peak_memory_bytes"] < 48 << 20, freed


def test_bad_tolerance_is_usage_error(pytester):
    pytester.makepyfile("def test_a():\n    pass\n")
    result = run(pytester, "--spprof", "--spprof-tolerance=lots")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--spprof-tolerance" in result.stderr.str()


XDIST_SUITE = BURN + """
import os
import pytest

def parse_config():
    burn(float(os.environ.get("SLOWDOWN_MS", "0")))

@pytest.mark.parametrize("n", range(4))
def test_steady(n):
    burn(30)

def test_work():
    burn(30)
    parse_config()

@pytest.mark.spprof(cpu="5ms")
def test_over():
    burn(30)
"""


def test_xdist_workers_profile_and_the_controller_merges(pytester, monkeypatch):
    pytest.importorskip("xdist")
    pytester.makepyfile(test_x=XDIST_SUITE)
    monkeypatch.setenv("SLOWDOWN_MS", "0")
    result = run(pytester, "-n", "2", "--spprof", "--spprof-save-baseline=base.json",
                 "--spprof-markdown=summary.md", "--junitxml=junit.xml")
    result.assert_outcomes(passed=5, failed=1)
    out = result.stdout.str()
    assert "CPU time" in out.split("_ test_over _")[1] and "over the budget of 5.0 ms" in out
    assert "spprof: 6 tests" in out and "slowest" in out and "burn" in out
    results = json.loads((pytester.path / ".spprof" / "results.json").read_text())["tests"]
    # Samples: a 30 ms test gets a few, or on a machine loaded enough none; the suite gets some.
    assert len(results) == 6 and all(r["cpu_ns"] > 20e6 for r in results.values())
    assert sum(r["samples"] for r in results.values()) > 0
    assert results["test_x.py::test_over"]["outcome"] == "failed"
    (env,) = json.loads((pytester.path / "base.json").read_text())["environments"].values()
    assert len(env["tests"]) == 5 and "test_x.py::test_over" not in env["tests"]  # passed tests only
    assert env["workers"] == 2
    assert "test_x.py::test_work" in (pytester.path / "summary.md").read_text()
    assert (pytester.path / "junit.xml").read_text().count('name="spprof_cpu_ms"') == 6
    assert not list((pytester.path / ".spprof").glob(".xdist-parts-*"))  # parts are cleaned up
    pa = pytest.importorskip("pyarrow")
    import pytest_spprof

    table = pytest_spprof.load_run(pytester.path / ".spprof" / "run.arrow")
    leaves = table.filter(table.column("is_leaf"))
    assert set(results) >= set(leaves.column("test_id").cast(pa.string()).to_pylist()) != set()
    assert len(set(leaves.column("sample_id").to_pylist())) == leaves.num_rows  # unique across workers
    pids = {}  # each test ran in one worker, which the pid column names
    for test_id, pid in zip(leaves.column("test_id").cast(pa.string()).to_pylist(), leaves.column("pid").to_pylist()):
        pids.setdefault(test_id, set()).add(pid)
    assert all(len(p) == 1 for p in pids.values()) and os.getpid() not in set().union(*pids.values())
    # results count samples by the sampler's counter, the file by timestamp: a sample at a window's
    # edge may fall on either side
    assert abs(leaves.num_rows - sum(r["samples"] for r in results.values())) <= len(results)

    monkeypatch.setenv("SLOWDOWN_MS", "90")
    result = run(pytester, "-n", "2", "--spprof", "--spprof-compare=base.json", "--spprof-tolerance=100%")
    result.assert_outcomes(passed=4, failed=2)  # test_over (budget) and test_work (regression)
    assert "the baseline was recorded with" not in result.stdout.str()
    failure = result.stdout.str().split("_ test_work _")[1]
    assert "got slower than its baseline" in failure
    # A loaded machine can leave a 120 ms test without a CPU-timer sample; with samples, the
    # function that grew is named.
    if ", 0 samples" not in failure:
        assert "parse_config" in failure.split("functions whose time grew most")[1].split("differential")[0]
    # Compared serially, a baseline recorded by two workers says what that costs the verdicts.
    result = run(pytester, "--spprof-compare=base.json", "--spprof-tolerance=100%")
    assert ("the baseline was recorded with 2 processes running the tests and this run has 1 process"
            in result.stdout.str())


def test_stacks_start_at_the_test_and_the_harness_is_one_frame():
    from pytest_spprof._session import cut_harness
    from spprof import Frame

    def f(name, file):
        return Frame(name, file, 1)

    pluggy = [f("main", "/venv/bin/pytest"), f("_multicall", "/venv/lib/pluggy/_callers.py")]
    call = f("pytest_pyfunc_call", "/venv/lib/_pytest/python.py")
    test, raises = f("test_x", "/src/tests/test_x.py"), f("raises", "/venv/lib/_pytest/python_api.py")
    assert cut_harness((*pluggy, call, test, raises)) == (test, raises)  # pytest.raises in the test stays
    fixture = f("call_fixture_func", "/venv/lib/_pytest/fixtures.py")
    assert cut_harness((*pluggy, fixture, f("db", "/src/conftest.py"))) == (f("db", "/src/conftest.py"),)
    # Outside any test or fixture: pytest's hooks, this plugin, what they call.
    hook = (*pluggy, f("pytest_runtest_call", "/venv/lib/pytest_spprof/_plugin.py"), f("dumps", "/usr/lib/json.py"))
    assert [fr.function_name for fr in cut_harness(hook)] == ["<pytest harness>"]
    other_thread = (f("run", "/usr/lib/threading.py"), f("work", "/src/app.py"))
    assert cut_harness(other_thread) == other_thread
