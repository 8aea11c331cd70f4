"""pytest --spprof loses nothing that finished: kills, interrupts, failing outputs, odd test ids."""

from __future__ import annotations

import json
import signal

import pytest
from test_plugin import BURN, run

from pytest_spprof import _baseline, _verdict

# Three tests that finish, then one that ends the run in the way the test is parametrized with.
SUITE = BURN + """
import os, signal, pytest

@pytest.mark.parametrize("n", [1, 2, 3])
def test_done(n):
    burn(5)

def test_last():
    burn(5)
    how = open("how").read()
    if how == "interrupt":
        raise KeyboardInterrupt
    os.kill(os.getpid(), getattr(signal, how))
    burn(2000)  # SIGTERM lands here
"""


def _kill_run(pytester, how):
    pytester.makepyfile(test_suite=SUITE)
    (pytester.path / "how").write_text(how)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--spprof", "--spprof-save-baseline=base.json",
                                         "--spprof-save=all", timeout=300)


def test_sigkill_loses_only_the_test_in_flight(pytester):
    result = _kill_run(pytester, "SIGKILL")
    assert result.ret == -signal.SIGKILL
    journal = pytester.path / ".spprof" / "results.jsonl"
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    done = [f"test_suite.py::test_done[{n}]" for n in (1, 2, 3)]
    assert [r["nodeid"] for r in records] == done
    assert all(r["outcome"] == "passed" and r["cpu_ns"] > 0 for r in records)
    for r in records:  # each finished test's profile is on disk already
        assert (pytester.path / r["files"]["speedscope"]).is_file()
    # The baseline file was never written; the next step that reads it compacts the journal.
    assert not (pytester.path / "base.json").exists()
    tests = _baseline.environment(_baseline.load(pytester.path / "base.json", True))["tests"]
    assert sorted(tests) == done and all(len(e["warm_ns"]) == _verdict.ROUNDS - 1 for e in tests.values())
    pytester.makepyfile(test_suite=BURN + "def test_new():\n    burn(5)\n")
    run(pytester, "--spprof-save-baseline=base.json").assert_outcomes(passed=1)
    saved = json.loads((pytester.path / "base.json").read_text())
    assert sorted(_baseline.environment(saved)["tests"]) == [*done, "test_suite.py::test_new"]
    assert not list(pytester.path.glob("base.json.*"))  # journals compacted, no temporary file


def test_an_xdist_worker_killed_midway_loses_only_its_test_in_flight(pytester):
    pytester.makepyfile(test_suite=SUITE)
    (pytester.path / "how").write_text("SIGKILL")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--spprof", "-n", "1", timeout=300)
    assert "crashed" in result.stdout.str(), result.stdout.str()
    summary = json.loads((pytester.path / ".spprof" / "results.json").read_text())
    assert sorted(summary["tests"]) == [f"test_suite.py::test_done[{n}]" for n in (1, 2, 3)]


@pytest.mark.parametrize("how", ["SIGTERM", "interrupt"])
def test_sigterm_and_ctrl_c_write_what_is_done_and_keep_the_interrupted_test_out(pytester, how):
    result = _kill_run(pytester, how)
    assert result.ret == pytest.ExitCode.INTERRUPTED, result.stdout.str()
    summary = json.loads((pytester.path / ".spprof" / "results.json").read_text())
    outcomes = {k: v["outcome"] for k, v in summary["tests"].items()}
    assert outcomes == {**{f"test_suite.py::test_done[{n}]": "passed" for n in (1, 2, 3)},
                        "test_suite.py::test_last": "interrupted"}
    tests = _baseline.environment(json.loads((pytester.path / "base.json").read_text()))["tests"]
    assert "test_suite.py::test_last" not in tests and len(tests) == 3
    assert not (pytester.path / ".spprof" / "results.jsonl").exists()  # compacted


def test_a_test_that_stops_the_profiler_fails_alone(pytester):
    pytester.makepyfile(BURN + """
import spprof

def test_before():
    burn(5)

def test_stops():
    burn(5)
    spprof.stop()

def test_after():
    burn(200)  # enough CPU-timer ticks for a sample even on a loaded machine
""")
    result = run(pytester, "--spprof")
    result.assert_outcomes(passed=2, failed=1)
    assert "spprof: this test called spprof.stop()" in result.stdout.str()
    result.stdout.fnmatch_lines(["FAILED *::test_stops*"])
    summary = json.loads((pytester.path / ".spprof" / "results.json").read_text())
    # profiling resumed for the next test
    assert summary["tests"]["test_a_test_that_stops_the_profiler_fails_alone.py::test_after"]["samples"] > 0


def test_ids_that_differ_only_in_odd_characters_get_their_own_files(pytester):
    pytester.makepyfile("""
import pytest

@pytest.mark.parametrize("x", ["a/b", "a:b", "a_b", "a b", "é", "ü"])
def test_p(x):
    pass
""")
    run(pytester, "--spprof", "--spprof-save=all").assert_outcomes(passed=6)
    summary = json.loads((pytester.path / ".spprof" / "results.json").read_text())
    files = [t["files"]["speedscope"] for t in summary["tests"].values()]
    assert len(set(files)) == 6 and all((pytester.path / f).is_file() for f in files)


def test_one_output_that_fails_does_not_block_the_others(pytester):
    # The Markdown report's folder is replaced by a file while the tests run.
    pytester.makepyfile("""
import pathlib, shutil

def test_a():
    shutil.rmtree("reports")
    pathlib.Path("reports").write_text("in the way")
""")
    (pytester.path / "reports").mkdir()
    result = run(pytester, "--spprof", "--spprof-markdown=reports/spprof.md", "--spprof-save-baseline=base.json")
    result.assert_outcomes(passed=1)
    assert "could not write" in result.stdout.str() and "spprof.md" in result.stdout.str()
    assert (pytester.path / ".spprof" / "results.json").is_file() and (pytester.path / "base.json").is_file()
    assert not list(pytester.path.rglob("*.tmp*"))


def test_a_run_file_that_cannot_be_written_leaves_no_temporary_file(pytester):
    pytester.makepyfile("def test_a():\n    pass\n")
    (pytester.path / ".spprof" / "run.arrow").mkdir(parents=True)  # a folder in the way
    result = run(pytester, "--spprof")
    result.assert_outcomes(passed=1)
    assert "could not write" in result.stdout.str() and "run.arrow" in result.stdout.str()
    assert (pytester.path / ".spprof" / "results.json").is_file()
    assert not list((pytester.path / ".spprof").glob("*.tmp*"))
