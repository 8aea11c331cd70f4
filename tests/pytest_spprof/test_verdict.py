"""The statistics of regression verdicts (pytest_spprof._verdict), and a verdict end to end."""

from __future__ import annotations

import itertools
import json
import math
import random
import subprocess
import sys
from collections import defaultdict
from math import comb

import pytest
from test_plugin import run

from pytest_spprof import _baseline, _verdict


def brute_force_p(current, baseline):
    """P(U >= observed) by enumerating every assignment of the pooled values to the groups."""
    pooled = list(current) + list(baseline)
    n = len(current)

    def u(xs, ys):
        return sum(2 if x > y else 1 if x == y else 0 for x in xs for y in ys) // 2

    observed = u(current, baseline)
    hits = total = 0
    for chosen in itertools.combinations(range(len(pooled)), n):
        xs = [pooled[i] for i in chosen]
        ys = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        total += 1
        hits += u(xs, ys) >= observed
    return hits / total


def test_mann_whitney_matches_enumeration():
    rng = random.Random(3)
    for _ in range(30):
        n, m = rng.randint(1, 6), rng.randint(1, 6)
        current = [rng.randint(0, 9) for _ in range(n)]  # distinct values and ties
        baseline = [rng.randint(0, 9) for _ in range(m)]
        if len(set(current + baseline)) == n + m:
            assert _verdict.mann_whitney_greater(current, baseline) == pytest.approx(brute_force_p(current, baseline))
    # Complete separation: the smallest p the sizes allow.
    assert _verdict.mann_whitney_greater([5, 6, 7, 8, 9], [1, 2, 3, 4]) == pytest.approx(1 / comb(9, 4))
    assert _verdict.mann_whitney_greater([1, 2, 3], [1, 2, 3]) > 0.5


def test_judge_needs_significance_and_the_effect_floor():
    base = [100_000_000, 101_000_000, 99_000_000, 100_500_000]
    slower = [130_000_000, 131_000_000, 129_000_000, 130_500_000, 130_200_000]
    verdict = _verdict.judge(slower, base, 1.0, 15, 2_000_000, "the test's call")
    assert verdict.regressed and verdict.p_value < _verdict.ALPHA
    assert verdict.evidence.startswith("CPU 130.2 ms vs. 100.2 ms") and "+30%" in verdict.evidence
    # Consistently 5 % slower: significant, but under the effect floor.
    assert not _verdict.judge([int(b * 1.05) for b in base] + [105_000_000], base, 1.0, 15, 2_000_000, "x").regressed
    # 30 % slower, but the machine is 30 % slower now too.
    assert not _verdict.judge(slower, base, 1.3, 15, 2_000_000, "x").regressed
    # Overlapping rounds: not significant.
    assert not _verdict.judge([90_000_000, 140_000_000, 95_000_000, 150_000_000, 99_000_000], base, 1.0, 15,
                              2_000_000, "x").regressed


def test_judge_compares_each_round_at_the_machine_speed_measured_around_it():
    base = [6_500_000, 6_600_000, 6_400_000, 6_500_000]
    base_speed = [1_500_000, 1_520_000, 1_480_000, 1_500_000]
    # +47 % because the machine ran 47 % slower around these rounds (the false alarms of attrs'
    # Hypothesis tests): no regression, though one figure for the whole test saw no change.
    slow_machine = [9_500_000, 9_600_000, 9_400_000, 9_550_000, 9_500_000]
    slow_speed = [2_200_000, 2_230_000, 2_180_000, 2_210_000, 2_200_000]
    assert _verdict.judge(slow_machine, base, 1.0, 15, 2_000_000, "x").regressed
    verdict = _verdict.judge(slow_machine, base, 1.0, 15, 2_000_000, "x", (slow_speed, base_speed))
    assert not verdict.regressed and "machine speed ×0.68" in verdict.evidence
    # The same times at the baseline's speed: a regression, stated with how it was compared.
    same_speed = [1_500_000, 1_510_000, 1_490_000, 1_500_000, 1_505_000]
    verdict = _verdict.judge(slow_machine, base, 1.0, 15, 2_000_000, "x", (same_speed, base_speed))
    assert verdict.regressed and "+46% with each round at the baseline's machine speed" in verdict.evidence
    assert _verdict.could_regress(slow_machine[:2], base, 1.0, 15, (same_speed[:2], base_speed))
    assert not _verdict.could_regress(slow_machine[:2], base, 1.0, 15, (slow_speed[:2], base_speed))
    # The first gate: one round past half the growth a regression needs.
    assert _verdict.could_regress([108_000_000], [100_000_000] * 4, 1.0, 15, share=0.5)
    assert not _verdict.could_regress([107_000_000], [100_000_000] * 4, 1.0, 15, share=0.5)


def test_a_test_is_judged_against_how_much_it_moves_between_processes():
    base = [100_000_000, 101_000_000, 99_000_000, 100_500_000]
    slower = [125_000_000, 126_000_000, 124_000_000, 125_500_000, 125_200_000]
    # Recorded once: nothing is known of the spread, the tolerance alone decides.
    assert _verdict.spread_floor([0.70], None) is None
    assert _verdict.judge(slower, base, 1.0, 15, 2_000_000, "x").regressed
    # A test that moved by 20 % between recordings needs far more than +25 %.
    floor = _verdict.spread_floor([0.60, 0.75, 0.66], typical=0.05)
    assert 0.3 < floor < 0.8
    verdict = _verdict.judge(slower, base, 1.0, 15, 2_000_000, "x", floor=floor)
    assert not verdict.regressed and f"it moves by up to {floor * 100:.0f}% between runs" in verdict.evidence
    # A steady test, in a suite whose tests typically move by 4 %: +25 % is a regression.
    steady = _verdict.spread_floor([0.700, 0.705, 0.698], typical=0.04)
    assert steady < 0.25 and _verdict.judge(slower, base, 1.0, 15, 2_000_000, "x", floor=steady).regressed
    # One recording of its own: the suite's typical spread stands in, and the baseline's median
    # is as rough as the new one's.
    assert _verdict.spread_floor([0.7], typical=0.04) == pytest.approx(math.exp(3 * 0.04 * math.sqrt(2)) - 1)
    assert _verdict.typical_spread([[0.7], [1.0, 1.1], [2.0, 2.0, 2.0], [3.0, 3.3, 3.6]]) == pytest.approx(
        _verdict._log_sd([1.0, 1.1]), rel=0.2)
    assert _verdict.typical_spread([[0.7], [0.8]]) is None


def test_the_runs_pace_takes_out_a_process_that_is_slower_as_a_whole():
    # A whole process 12 % slower at the same calibration speed (+-3 % per test).
    shifts = [math.log(1.12) + 0.03 * math.sin(i) for i in range(_verdict.PACE_TESTS)]
    assert _verdict.run_pace(shifts[:-1], 1.2) == 1.0  # too few tests yet
    pace = _verdict.run_pace(shifts, 1.2)
    assert pace == pytest.approx(1.12, rel=0.02)
    base = [100_000_000, 101_000_000, 99_000_000, 100_500_000]
    moved = [113_000_000, 112_500_000, 112_000_000, 113_500_000, 112_800_000]
    assert _verdict.judge(moved, base, 1.0, 10, 2_000_000, "x").regressed
    verdict = _verdict.judge(moved, base, 1.0, 10, 2_000_000, "x", pace=pace)
    assert not verdict.regressed and "the run's pace (×0.89)" in verdict.evidence
    # A process that runs faster is not corrected: that would make alarms of noise.
    assert _verdict.run_pace([-x for x in shifts], 1.2) == 1.0
    # Nor by more than the baseline's own recordings moved: most of the suite may have regressed.
    assert _verdict.run_pace([x * 3 for x in shifts], 1.2) == 1.2


def test_screening_re_runs_a_first_call_past_every_baseline_round():
    baseline = [295_000_000, 308_000_000, 305_000_000, 330_000_000, 304_000_000]
    assert _verdict.looks_slower(442_000_000, baseline, 1.0, 15, 2_000_000)
    assert not _verdict.looks_slower(350_000_000, baseline, 1.0, 15, 2_000_000)  # within 7.5 % of 330
    assert not _verdict.looks_slower(442_000_000, baseline, 1.0, 15, 2_000_000, pace=1.5)


def test_a_test_that_mostly_waits_must_grow_by_the_tolerance_of_its_duration():
    base = [1_400_000, 1_450_000, 1_380_000, 1_420_000]  # 1.4 ms of CPU in a 210 ms test
    doubled = [3_200_000, 3_100_000, 3_300_000, 3_250_000, 3_150_000]
    assert _verdict.judge(doubled, base, 1.0, 15, 1_000_000, "x").regressed
    verdict = _verdict.judge(doubled, base, 1.0, 15, 1_000_000, "x", waits=150)
    assert not verdict.regressed and "it waits 99% of its time, of which a regression must add 15%" in verdict.evidence
    assert not _verdict.looks_slower(3_200_000, base, 1.0, 15, 1_000_000, waits=150)
    # What it computes still counts: +40 ms is 19 % of its duration.
    assert _verdict.judge([b + 40_000_000 for b in doubled], base, 1.0, 15, 1_000_000, "x", waits=150).regressed
    # A test that computes needs what it needed before.
    assert _verdict.least_growth_ns(100_000_000, 1.004, 15, 2_000_000) == pytest.approx(15_060_000)


WAITING_SUITE = """
import os, time

def work():
    return sum(i * i for i in range(int(os.environ.get("WORK", "50000"))))

def test_waits():
    work()
    time.sleep(0.1)

def test_computes():
    work()
"""


def test_a_test_that_mostly_waits_is_not_flagged_for_cpu_its_duration_does_not_feel(pytester, monkeypatch):
    pytester.makepyfile(WAITING_SUITE)
    run(pytester, "--spprof-save-baseline=base.json").assert_outcomes(passed=2)
    monkeypatch.setenv("WORK", "250000")  # 5x the CPU: some ms more, in a test of 100 ms
    result = run(pytester, "--spprof-compare=base.json", "--spprof-tolerance=100")
    result.assert_outcomes(passed=1, failed=1)
    assert "_ test_computes _" in result.stdout.str()


QUEUED_SUITE = """
import time

def burn(ms):
    t = time.thread_time()
    while time.thread_time() - t < ms / 1000:
        pass

def test_sleeps():
    burn(20)
    time.sleep(0.1)

def test_burns():
    burn(40)
"""


def test_waiting_is_the_test_own_not_a_busy_machine_queue(pytester):
    # Three processes burn the CPU while the baseline is recorded: the burning test sits in the
    # run queue, which is not waiting (a 4x regression of such a test had passed as noise).
    pytester.makepyfile(QUEUED_SUITE)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        run(pytester, "--spprof-save-baseline=base.json").assert_outcomes(passed=2)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    (env,) = json.loads((pytester.path / "base.json").read_text())["environments"].values()
    burns, sleeps = env["tests"]["test_waiting_is_the_test_own_not_a_busy_machine_queue.py::test_burns"], \
        env["tests"]["test_waiting_is_the_test_own_not_a_busy_machine_queue.py::test_sleeps"]
    # Page faults, and the GIL held by the resolver thread while the hogs keep it off a CPU, are
    # waits of the test's own; counting queueing too had made a test's wait 2.3x its CPU time.
    assert burns["waited_ns"] < 0.5 * burns["cpu_ns"], burns
    assert sleeps["waited_ns"] >= 90_000_000, sleeps
    entry = _baseline.entries({"t": burns})["t"]
    assert entry.waits() < 1.5 and _baseline.entries({"t": sleeps})["t"].waits() > 3
    # A baseline saved before the figure existed judges by wall time, as then.
    older = {k: v for k, v in burns.items() if k != "waited_ns"}
    assert _baseline.entries({"t": older})["t"].waits() == max(1.0, burns["wall_ns"] / burns["cpu_ns"])


def own_growth(before, now):
    """Each function's self-time growth, from the leaves of ``before`` and ``now``."""
    def leaves(stacks):
        own = defaultdict(int)
        for names, weight in stacks:
            own[names[-1]] += weight
        return own

    then, current = leaves(before), leaves(now)
    return {name: current.get(name, 0) - then.get(name, 0) for name in set(then) | set(current)}


def blame(before, now, unfolded=None):
    """Blame, with own times from ``unfolded`` (before, now) stacks, else from the ones given."""
    return _verdict.blame_path(before, now, own_growth(*(unfolded or (before, now))))


def test_blame_survives_a_baseline_that_kept_only_its_heaviest_stacks():
    # A Hypothesis test has thousands of small stacks; the baseline keeps 200. Cut off, the
    # others looked like growth in the current run, and blame stopped at the engine above them.
    many = [(("test", "engine", f"draw{i}"), 1_000) for i in range(400)]
    before = many + [(("test", "engine", "run", "work"), 100_000)]
    now = many + [(("test", "engine", "run", "work"), 150_000)]
    truncated = sorted(before, key=lambda s: -s[1])[:200]
    assert blame(truncated, now)[0][-1] == "engine"
    kept = _verdict.fold(before, _verdict.heaviest_prefixes(before, 200))
    assert sum(w for _, w in kept) == sum(w for _, w in before) and len(kept) <= 202
    paths = _verdict.heaviest_prefixes(kept, len(kept)) | _verdict.heaviest_prefixes(now, 200)
    path, grown = blame(kept, _verdict.fold(now, paths), unfolded=(before, now))
    assert path == ("test", "engine", "run", "work") and grown == 50_000


def test_blame_finds_a_helper_whose_calls_were_folded_away():
    # A Hypothesis test reaches the slowed helper through hundreds of call paths; folded into
    # the kept paths, its stacks end above it, and only the functions' own times still show it.
    before = [(("test", "engine", f"draw{i}", "helper"), 1_000) for i in range(400)]
    now = [(("test", "engine", f"draw{i}", "helper"), 1_500) for i in range(400)]
    kept = _verdict.fold(before, _verdict.heaviest_prefixes(before, 50))
    paths = _verdict.heaviest_prefixes(kept, len(kept)) | _verdict.heaviest_prefixes(now, 50)
    folded = _verdict.fold(now, paths)
    assert blame(kept, folded)[0][-1] == "engine"  # own times from the folded stacks: lost
    own = own_growth(before, now)
    assert _verdict.blame_path(kept, folded, own) == (("test", "engine", "helper"), 200_000)
    # With a little noise in other functions (a sample or two more here and there), the helper
    # still stands out: half of the growth and more than 3x any other function's.
    noisy = {**own, "helper": 150_000, "engine": 40_000}
    assert _verdict.blame_path(kept, folded, noisy)[0][-1] == "helper"
    assert _verdict.blame_path(kept, folded, {**noisy, "engine": 60_000})[0][-1] == "engine"


def test_blame_follows_the_growth_down_the_call_path():
    base = [(("test", "lib.parse", "lib.tokenize"), 10), (("test", "lib.render"), 10)]
    # lib.tokenize's own code got slower.
    cur = [(("test", "lib.parse", "lib.tokenize"), 30), (("test", "lib.render"), 10)]
    assert blame(base, cur) == (("test", "lib.parse", "lib.tokenize"), 20)
    # lib.parse's own code got slower: the growth stops there.
    cur = [(("test", "lib.parse"), 20), (("test", "lib.parse", "lib.tokenize"), 10), (("test", "lib.render"), 10)]
    assert blame(base, cur) == (("test", "lib.parse"), 20)
    # Growth spread over two calls: the test is the last function that carries it.
    cur = [(("test", "lib.parse", "lib.tokenize"), 20), (("test", "lib.render"), 20)]
    assert blame(base, cur) == (("test",), 20)
    # One helper's own code, reached through two callers: the helper is blamed.
    base = [(("test", "lib.parse", "lib.compile"), 10), (("test", "lib.render", "lib.compile"), 10)]
    cur = [(("test", "lib.parse", "lib.compile"), 20), (("test", "lib.render", "lib.compile"), 20)]
    assert blame(base, cur) == (("test", "lib.compile"), 20)


SUITE = """
import os
import pytest

def work(n):
    return sum(i * i for i in range(n))

def parse_config():
    work(int(os.environ.get("EXTRA", "0")))

@pytest.mark.parametrize("n", range(4))
def test_steady(n):
    work(200_000)

def test_work():
    work(200_000)
    parse_config()
"""


def test_a_regression_is_judged_on_warm_rounds_and_blamed(pytester, monkeypatch):
    pytester.makepyfile(SUITE)
    run(pytester, "--spprof-save-baseline=base.json").assert_outcomes(passed=5)
    entry = json.loads((pytester.path / "base.json").read_text())
    (env,) = entry["environments"].values()
    assert env["speed_ns"] > 0 and env["workers"] == 1
    assert all(len(test["warm_ns"]) == _verdict.ROUNDS - 1 for test in env["tests"].values())
    monkeypatch.setenv("EXTRA", "1000000")  # test_work does 6x the work
    # A wide tolerance: this suite shares the machine with the one running it.
    result = run(pytester, "--spprof-compare=base.json", "--spprof-tolerance=100", "--junitxml=junit.xml",
                 "--spprof-markdown=summary.md")
    result.assert_outcomes(passed=4, failed=1)
    out = result.stdout.str()
    failure = out.split("_ test_work _")[1]
    assert "median of 5 warm rounds vs. 4 in the baseline" in failure and "machine speed ×" in failure
    # (With CI set, pytest repeats the whole message in its short summary: take the first.)
    path = next(line for line in failure.splitlines() if "the extra time runs down" in line)
    assert "_blamed.test_work → test_a_regression_is_judged_on_warm_rounds_and_blamed.parse_config" in path
    assert "explains 1 regressed test" in out
    junit = (pytester.path / "junit.xml").read_text()
    assert 'name="spprof_culprit"' in junit  # the test's, and the run's summary:
    summary = junit.split('<property name="spprof_culprit_1" value="')[1].split('"')[0]
    assert summary.startswith("test_a_regression_is_judged_on_warm_rounds_and_blamed.") and \
        "explains 1 regressed test, +" in summary, summary
    assert "| culprit | regressed tests | time gained |" in (pytester.path / "summary.md").read_text()


def entry(units, speed=1_000_000):
    """A baseline entry whose warm rounds take ``units`` of the calibration workload."""
    return {"cpu_ns": 1, "wall_ns": 1, "functions": [], "warm_ns": [int(units * speed)] * 4,
            "warm_speed_ns": [speed] * 4}


def test_a_baseline_keeps_earlier_recordings_at_the_new_ones_pace():
    tests = [f"t{i}" for i in range(_baseline.SHARED_TESTS)]
    before = {t: (1.0 + i,) for i, t in enumerate(tests)}
    # The new process ran every test 10 % slower, and t0 5 % more on its own.
    new = {t: entry((1.0 + i) * 1.1 * (1.05 if i == 0 else 1)) for i, t in enumerate(tests)}
    new["fresh"] = entry(2.0)  # a new test has no earlier recordings
    merged, shift = _baseline.with_earlier(before, new)
    assert shift == pytest.approx(math.log(1.1))
    assert merged["t1"]["earlier"] == [pytest.approx(2.2)]
    assert _baseline.recordings(merged["t0"]) == (pytest.approx(1.1), pytest.approx(1.155))
    assert "earlier" not in merged["fresh"]
    # Too few tests in both to tell the pace from the tests' own moves: none is taken out.
    one = {"t1": entry(2.2)}
    assert _baseline.with_earlier({"t1": (2.0,)}, one) == ({"t1": {**one["t1"], "earlier": [2.0]}}, None)
    # At most RECORDINGS in all; one 2x away is kept (a test with two modes shows them).
    merged, _ = _baseline.with_earlier({"t1": (4.1, 2.0, 2.1)}, {"t1": entry(2.0)})
    assert merged["t1"]["earlier"] == [2.0, 2.1] and _baseline.RECORDINGS == 3
    merged, _ = _baseline.with_earlier({"t1": (2.0, 4.1)}, {"t1": entry(2.0)})
    assert merged["t1"]["earlier"] == [2.0, 4.1]


def test_saving_a_baseline_again_adds_a_recording(pytester):
    pytester.makepyfile(SUITE)
    run(pytester, "--spprof-save-baseline=base.json").stdout.fnmatch_lines(
        ["*baseline saved: *base.json (recording 1 of the 3 each test keeps)"])
    result = run(pytester, "--spprof-compare=base.json")
    result.stdout.fnmatch_lines(["*the baseline holds one recording per test: record it 2 more times*"])
    for n in (2, 3, 3):
        run(pytester, "--spprof-save-baseline=base.json").stdout.fnmatch_lines([f"*(recording {n} of the 3*"])
    (env,) = json.loads((pytester.path / "base.json").read_text())["environments"].values()
    steady = env["tests"]["test_saving_a_baseline_again_adds_a_recording.py::test_steady[0]"]
    assert len(steady["earlier"]) == 2 and all(u > 0 for u in steady["earlier"])
    assert "holds one recording" not in run(pytester, "--spprof-compare=base.json").stdout.str()


HYPOTHESIS_SUITE = """
import os
from hypothesis import HealthCheck, given, settings, strategies as st

# No deadline or health check: under CPU load an example can take longer than Hypothesis allows.
@settings(max_examples=20, database=None, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.integers()))
def test_draws(xs):
    with open(os.environ["DRAWS"], "a") as f:
        f.write(repr(xs) + "\\n")
"""


# Every call of the test function, warm rounds included, goes through pytest_pyfunc_call.
ROUND_MARKER = """
import os
import pytest

@pytest.hookimpl(hookwrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    with open(os.environ["DRAWS"], "a") as f:
        f.write("round\\n")
    yield
"""


def test_hypothesis_draws_the_same_examples_in_every_round_when_a_baseline_is_involved(pytester, monkeypatch):
    pytest.importorskip("hypothesis")
    pytester.makepyfile(HYPOTHESIS_SUITE)
    pytester.makeconftest(ROUND_MARKER)
    draws = pytester.path / "draws.txt"
    monkeypatch.setenv("DRAWS", str(draws))

    def calls(*args):
        draws.unlink(missing_ok=True)
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
        assert result.ret == 0, "\n".join(result.outlines[-40:])  # why, in CI's short log too
        return result.stdout.str(), draws.read_text().split("round\n")[1:]

    out, rounds = calls("--spprof-save-baseline=base.json")
    assert "Hypothesis runs with --hypothesis-seed=0" in out
    assert len(rounds) == _verdict.ROUNDS and all(r == rounds[0] for r in rounds)
    # In a compare run too, and the same examples as the baseline's.
    out, again = calls("--spprof-compare=base.json")
    assert again[0] == rounds[0]
    # The user's own seed is left alone (on CPython 3.15, Hypothesis 6.170 draws these same
    # examples with seed 7 as with 0, so the examples cannot tell).
    out, seeded = calls("--spprof-save-baseline=base.json", "--hypothesis-seed=7")
    assert "Hypothesis runs with" not in out
    assert all(r == seeded[0] for r in seeded)


SUBTESTS_SUITE = """
import unittest

class Cases(unittest.TestCase):
    def test_many(self):
        for n in range(3):
            with self.subTest(n=n):
                self.assertEqual(n, n)
"""

COUNT_RESULTS = """
import os

def pytest_spprof_result(item, result):
    with open(os.environ["RESULTS"], "a") as f:
        f.write(item.nodeid + "\\n")
"""


def test_a_test_called_again_is_judged_and_counted_once(pytester, monkeypatch):
    # pytest reports each subtest as it ends, through the same hooks as a test: the warm rounds'
    # repeats were judged again per subtest (a checkpoint and a baseline entry each), and the
    # terminal counted their subtests 5 times.
    pytester.makepyfile(SUBTESTS_SUITE)
    pytester.makeconftest(COUNT_RESULTS)
    results = pytester.path / "results.txt"
    monkeypatch.setenv("RESULTS", str(results))
    result = run(pytester, "--spprof-save-baseline=base.json")
    result.assert_outcomes(passed=1)
    assert results.read_text().splitlines() == [f"{pytester.path.name[:-1]}.py::Cases::test_many"]
    (env,) = json.loads((pytester.path / "base.json").read_text())["environments"].values()
    (entry,) = env["tests"].values()
    assert len(entry["warm_ns"]) == _verdict.ROUNDS - 1
    if "subtests passed" in result.stdout.str():  # pytest >= 9 reports subtests
        assert "3 subtests passed" in result.stdout.str()
    # Under pytest-xdist the controller counts what the workers send it.
    pytest.importorskip("xdist")
    result = run(pytester, "-q", "-n", "1", "--spprof-save-baseline=base.json")
    result.assert_outcomes(passed=1)
    if "subtests passed" in result.stdout.str():
        assert "3 subtests passed" in result.stdout.str()


def test_warnings_of_the_repeats_are_not_counted_again(pytester):
    pytester.makepyfile("""
        import warnings

        def test_warns():
            warnings.warn("old API", DeprecationWarning)
            sum(i * i for i in range(20_000))
    """)
    result = run(pytester, "--spprof-save-baseline=base.json")
    result.assert_outcomes(passed=1, warnings=1)
    (env,) = json.loads((pytester.path / "base.json").read_text())["environments"].values()
    assert len(env["tests"]["test_warnings_of_the_repeats_are_not_counted_again.py::test_warns"]["warm_ns"]) == 4
    # As an error, the first call fails, and there is nothing to repeat.
    run(pytester, "--spprof-save-baseline=base.json", "-W", "error::DeprecationWarning").assert_outcomes(failed=1)


def test_a_unittest_case_that_did_not_pass_is_not_called_again(pytester):
    # unittest's failures and skips are kept on the item until the report: the call raises
    # nothing, and the repeats had added a second skip (and failure) to the report.
    pytester.makepyfile("""
import unittest

class Cases(unittest.TestCase):
    @unittest.skipIf(True, "never here")
    def test_skipped(self):
        pass

    def test_failing(self):
        self.fail("no")

    def test_passing(self):
        pass
""")
    result = run(pytester, "--spprof-save-baseline=base.json", "-rs")
    result.assert_outcomes(passed=1, failed=1, skipped=1)
    assert "SKIPPED [1]" in result.stdout.str()
    (env,) = json.loads((pytester.path / "base.json").read_text())["environments"].values()
    assert [test.rsplit("::", 1)[1] for test in env["tests"]] == ["test_passing"]


def test_ctrl_c_in_a_warm_round_ends_the_run(pytester):
    pytester.makepyfile("""
import os, signal
calls = []

def test_interrupted_in_its_second_call():
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGINT)

def test_never_reached():
    pass
""")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--spprof-save-baseline=base.json")
    assert result.ret == pytest.ExitCode.INTERRUPTED, result.stdout.str()
    assert "test_never_reached" not in (pytester.path / ".spprof" / "results.json").read_text()
