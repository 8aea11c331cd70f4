"""pytest --spprof: options, their names and bad values, and what the outputs hold."""

from __future__ import annotations

import json
import shutil

import pytest
from test_plugin import BURN, run

from pytest_spprof import load_profile


def test_warn_only_never_crashes_under_warnings_as_errors(pytester):
    pytester.makepyfile(BURN + """
import pytest

@pytest.mark.spprof(cpu="1ms")
def test_over():
    burn(20)

def test_after():
    pass
""")
    for args in (["-W", "error"], ["-o", "filterwarnings=error"]):
        result = run(pytester, "--spprof", "--spprof-warn-only", *args)
        assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
        result.assert_outcomes(passed=2)
        assert "INTERNALERROR" not in result.stdout.str()
        assert "is over the budget of 1.0 ms" in result.stdout.str()


def test_comparing_or_saving_a_baseline_turns_profiling_on(pytester):
    pytester.makepyfile(BURN + "def test_a():\n    burn(20)\n")
    run(pytester, "--spprof-save-baseline=base.json").assert_outcomes(passed=1)
    assert (pytester.path / "base.json").exists()
    result = run(pytester, "--spprof-compare=base.json")
    result.assert_outcomes(passed=1)
    assert "compared with the baseline" in result.stdout.str()
    assert (pytester.path / ".spprof" / "results.json").exists()


def test_rounds_keep_the_fastest_rounds_figures_and_profile_together(pytester):
    pytester.makepyfile(BURN + """
import pytest
calls = []

@pytest.mark.spprof(cpu="60ms")
def test_first_call_slow():
    calls.append(1)
    burn(120 if len(calls) == 1 else 20)
""")
    run(pytester, "--spprof", "--spprof-rounds=3", "--spprof-save=all").assert_outcomes(passed=1)
    out = pytester.path / ".spprof"
    (record,) = json.loads((out / "results.json").read_text())["tests"].values()
    assert record["rounds"] == 3 and record["cpu_ns"] < 60e6
    try:
        profile = load_profile(out / "run.arrow", "test_rounds_keep_the_fastest_rounds_figures_and_profile_together.py"
                                                  "::test_first_call_slow")
    except KeyError:  # a busy machine may deliver no sample in a 20 ms round
        weight = 0
    else:
        weight = profile.total_weight_ns
    # The profile is the fastest round's: nowhere near the 120 ms of the first.
    assert weight < 60e6
    (speedscope,) = (out / "profiles").glob("*.speedscope.json")
    profile = json.loads(speedscope.read_text())["profiles"][0]
    assert sum(profile["weights"]) < 60e6


def test_a_bare_tolerance_is_a_percentage(pytester):
    pytester.makepyfile("def test_a():\n    pass\n")
    run(pytester, "--spprof", "--spprof-save-baseline=base.json").assert_outcomes(passed=1)
    result = run(pytester, "--spprof", "--spprof-compare=base.json", "--spprof-tolerance=10")
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize("args, ini", [
    (["--spprof-interval=2"], ""),
    (["--spprof-interval-ms=2"], ""),
    ([], "spprof_interval = 2"),
    ([], "spprof_interval_ms = 2"),
])
def test_interval_by_either_name(pytester, args, ini):
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile("def test_a():\n    pass\n")
    run(pytester, "--spprof", *args).assert_outcomes(passed=1)
    for value in ("0", "inf", "nan", "1e400", "abc"):
        bad = run(pytester, "--spprof", f"--spprof-interval-ms={value}")
        assert bad.ret == pytest.ExitCode.USAGE_ERROR, value


def test_the_output_directory_ignores_itself(pytester):
    pytester.makepyfile("def test_a():\n    pass\n")
    run(pytester, "--spprof").assert_outcomes(passed=1)
    assert (pytester.path / ".spprof" / ".gitignore").read_text().splitlines()[-1] == "*"
    # A directory the user made is theirs: nothing is written to ignore it.
    (pytester.path / "mine").mkdir()
    run(pytester, "--spprof", "--spprof-dir=mine").assert_outcomes(passed=1)
    assert not (pytester.path / "mine" / ".gitignore").exists()


def test_a_test_is_charged_no_cpu_from_before_it_started(pytester):
    # Each short test follows another that burns CPU: the first sample in its window would
    # otherwise carry the CPU its thread used since the previous sample, taken before it began.
    pytester.makepyfile(BURN + """
import pytest

@pytest.mark.parametrize("n", range(20))
def test_short(n):
    burn(10)
""")
    run(pytester, "--spprof", "--spprof-interval=1").assert_outcomes(passed=20)
    out = pytester.path / ".spprof"
    tests = json.loads((out / "results.json").read_text())["tests"]
    sampled = 0
    for nodeid, record in tests.items():
        try:
            profile = load_profile(out / "run.arrow", nodeid)
        except KeyError:  # no sample fell in this test's window
            continue
        sampled += 1
        assert profile.total_weight_ns <= record["wall_ns"] + 500_000, (nodeid, profile.total_weight_ns, record)
    assert sampled >= 3  # of 20 tests: CPU timers fire on the kernel tick, less often under load


def test_stacks_start_at_the_test(pytester):
    pytester.makepyfile(BURN + """
import pytest

@pytest.fixture
def warm():
    burn(300)  # samples in both, even on a loaded machine

def test_a(warm):
    burn(300)
""")
    run(pytester, "--spprof", "--spprof-phases=all", "--spprof-save=all").assert_outcomes(passed=1)
    (speedscope,) = (pytester.path / ".spprof" / "profiles").glob("*.speedscope.json")
    data = json.loads(speedscope.read_text())
    frames = data["shared"]["frames"]
    stacks = [[frames[i]["name"] for i in stack] for stack in data["profiles"][0]["samples"] if stack]
    assert {"test_a", "warm"} <= {stack[0] for stack in stacks}
    for stack in stacks:
        # Nothing of pytest above the test or the fixture. (A sample in pytest's own code between
        # them has neither; here, with pytest running inside a test, it starts at that test.)
        if "test_a" in stack or "warm" in stack:
            assert stack[0] in ("test_a", "warm"), stack


def test_a_baseline_compares_in_another_checkout(pytester, tmp_path):
    pytester.makepyfile(BURN + """
def helper():
    burn(200)  # samples even on a loaded machine

def test_a():
    helper()
""")
    run(pytester, "--spprof", "--spprof-save-baseline=base.json").assert_outcomes(passed=1)
    moved = tmp_path / "elsewhere"
    shutil.copytree(pytester.path, moved)
    pytester.chdir()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--spprof", "--spprof-compare=base.json",
                                           "--spprof-tolerance=200", str(moved), "--rootdir", str(moved))
    result.assert_outcomes(passed=1)
    functions = {row[0] for env in json.loads((moved / "base.json").read_text())["environments"].values()
                 for entry in env["tests"].values() for row in entry["functions"]}
    assert "test_a_baseline_compares_in_another_checkout.helper" in functions, functions


def test_share_budgets_count_a_sample_once_and_name_real_functions(pytester):
    pytester.makepyfile(BURN + """
import json
import pytest

def outer():
    inner()

def inner():
    burn(300)  # samples even on a loaded machine (a test without any has no names to check)

@pytest.mark.spprof(share={"*er": "100%"})
def test_matches_twice_per_stack():
    outer()

@pytest.mark.spprof(share={"lib.*": "1%"})
def test_path_segments_do_not_match():
    for _ in range(100_000):
        json.dumps({"a": [1, 2, 3]})

@pytest.mark.spprof(share={"outr": "50%"})
def test_typo():
    outer()
""")
    result = run(pytester, "--spprof")
    result.assert_outcomes(passed=1, failed=2)
    out = result.stdout.str()
    typo = out.split("_ test_typo _")[1]
    assert "names no function of this test's profile" in typo and ".outer'" in typo
    # "lib.*" names a module lib, not every file under a lib/ directory (the standard library).
    segments = out.split("_ test_path_segments_do_not_match _")[1].split("_ test_typo _")[0]
    assert "'lib.*' names no function" in segments


def test_a_test_that_hides_sys_getframe_does_not_break_the_session(pytester):
    # The share budget needs the test's profile while its monkeypatch is still in force, so the
    # sampler restarts then: its start-up check must not need sys._getframe.
    pytester.makepyfile(BURN + """
import sys
import pytest

@pytest.mark.spprof(share={"burn": "100%"})
def test_without_getframe(monkeypatch):
    monkeypatch.delattr(sys, "_getframe")
    burn(20)

def test_after():
    burn(20)
""")
    result = run(pytester, "--spprof")
    result.assert_outcomes(passed=2)
    assert "INTERNALERROR" not in result.stdout.str() and "stopped profiling" not in result.stdout.str()


@pytest.mark.parametrize("option", ["--spprof-dir=afile/sub", "--spprof-markdown=afile/report.md",
                                    "--spprof-save-baseline=adir", "--spprof-dir=afile"])
def test_an_output_that_cannot_be_written_fails_before_the_tests_run(pytester, option):
    pytester.makepyfile("import pathlib\ndef test_a():\n    pathlib.Path('ran').touch()\n")
    (pytester.path / "afile").write_text("")
    (pytester.path / "adir").mkdir()
    result = run(pytester, "--spprof", option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert option.split("=")[0] in result.stderr.str()
    assert not (pytester.path / "ran").exists()
