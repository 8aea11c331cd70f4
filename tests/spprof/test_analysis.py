"""spprof.analysis: top functions, threads, windows, filters and diffs against ground truth."""

from __future__ import annotations

import threading

import pytest

import spprof
from spprof import analysis
from workloads import burn_cpu, run_mix, spin

pa = pytest.importorskip("pyarrow", reason="the analysis tables are read back with pyarrow")


def alpha(n):
    return spin(n)


def beta(n):
    return spin(n)


def profile_mix(shares, seconds=1.0):
    with spprof.Profiler(interval_ms=1) as p:
        truth = run_mix({"alpha": alpha, "beta": beta}, shares, cpu_seconds=seconds)
    return p.profile, truth


@pytest.fixture(scope="module")
def mix():
    return profile_mix({"alpha": 1, "beta": 3}, seconds=2.0)


def rows(table):
    return pa.table(table).to_pylist()


def test_top_by_self_time_puts_the_hot_leaf_first_and_adds_up(mix):
    profile, _ = mix
    table = pa.table(profile.top(n=None))
    assert table.column_names == ["function", "filename", "self_ns", "total_ns", "self_pct", "total_pct",
                                  "samples"]
    top = table.to_pylist()
    assert top[0]["function"].endswith("spin")
    assert sum(r["self_ns"] for r in top) == sum(s.weight_ns for s in profile.samples if s.frames)
    assert abs(sum(r["self_pct"] for r in top) - 100) < 1e-6
    by_name = {r["function"].rsplit(".", 1)[-1]: r for r in top}
    # alpha and beta only call spin: no self time of their own to speak of, but their totals
    # split like the truth.
    assert by_name["beta"]["total_ns"] > 1.5 * by_name["alpha"]["total_ns"]  # truth: 3x
    assert by_name["beta"]["total_ns"] <= profile.total_weight_ns
    assert len(rows(profile.top(n=2))) == 2


def test_top_by_total_and_by_line_and_file(mix):
    profile, _ = mix
    total = rows(analysis.top(profile, n=5, by="total"))
    assert total[0]["total_ns"] >= total[-1]["total_ns"]
    assert total[0]["total_pct"] > 90  # the root frame is in nearly every sample
    lines = pa.table(analysis.top(profile, group="line"))
    assert "lineno" in lines.column_names and lines.column("lineno").to_pylist()[0] > 0
    files = pa.table(analysis.top(profile, group="file"))
    assert files.column_names[0] == "filename"
    assert files.to_pylist()[0]["filename"].endswith("workloads.py")


def test_threads_table_matches_per_thread_cpu():
    def worker():
        burn_cpu(0.3)

    with spprof.Profiler(interval_ms=1) as p:
        t = threading.Thread(target=worker, name="worker")
        t.start()
        burn_cpu(0.1)
        t.join()
    table = rows(p.profile.threads())
    names = [r["thread_name"] for r in table]
    assert names[0] == "worker" and "MainThread" in names
    assert sum(r["weight_ns"] for r in table) == p.profile.total_weight_ns
    assert abs(sum(r["share_pct"] for r in table) - 100) < 1e-6
    assert all(r["on_cpu_ns"] == r["weight_ns"] for r in table)  # CPU mode


def test_between_and_filter_narrow_the_profile(mix):
    profile, _ = mix
    mid = profile.samples[len(profile.samples) // 2].timestamp_ns
    first = profile.between(0, mid)
    second = profile.between(mid, 10**18)
    assert len(first.samples) + len(second.samples) == len(profile.samples)
    assert all(s.timestamp_ns < mid for s in first.samples)
    assert first.total_weight_ns + second.total_weight_ns == profile.total_weight_ns
    window = pa.table(analysis.between(profile, 0, mid))
    assert window.num_rows == len(first.samples)

    only_alpha = profile.filter(function="*alpha")
    assert only_alpha.samples and all(
        any(f.function_name.endswith("alpha") for f in s.frames) for s in only_alpha.samples)
    assert pa.table(analysis.matching(profile, function="*alpha")).num_rows == len(only_alpha.samples)
    assert len(profile.filter(file="*workloads.py").samples) > 0.9 * len(profile.samples)
    assert profile.filter(function="no such function").samples == []
    with pytest.raises(ValueError, match="pattern"):
        profile.filter()
    with pytest.raises(ValueError, match="before"):
        profile.between(10, 5)


def test_diff_names_the_function_that_got_slower(mix):
    baseline, base_truth = profile_mix({"alpha": 1, "beta": 1}, seconds=2.0)  # samples enough under load
    current, cur_truth = mix
    table = pa.table(current.diff(baseline))
    assert "delta_self_ns" in table.column_names and "delta_total_pct" in table.column_names
    diff_rows = table.to_pylist()
    by_name = {r["function"].rsplit(".", 1)[-1]: r for r in diff_rows}
    # beta's share grew from ~50% to ~75% of the work inside alpha+beta.
    assert by_name["beta"]["delta_total_pct"] > 10
    assert by_name["alpha"]["delta_total_pct"] < -5
    # Among the functions, beta is the first whose own (total) time grew the most.
    grew = max(("alpha", "beta"), key=lambda k: by_name[k]["delta_total_ns"])
    assert grew == "beta"
    # The rows are sorted by growth of self time.
    deltas = [r["delta_self_ns"] for r in diff_rows]
    assert deltas == sorted(deltas, reverse=True)
    same = rows(analysis.diff(current, current))
    assert all(r["delta_self_ns"] == 0 and r["delta_total_ns"] == 0 for r in same)


def test_bad_arguments_say_what_to_do(mix):
    profile, _ = mix
    with pytest.raises(ValueError, match="by must be"):
        profile.top(by="median")
    with pytest.raises(ValueError, match="group must be one of"):
        profile.top(group="module")
    with pytest.raises(ValueError, match="n must be"):
        profile.top(n=-1)
    with pytest.raises(TypeError, match="start_ns"):
        profile.between(0.5, 10)
    with pytest.raises(TypeError, match="baseline must be a spprof.Profile"):
        analysis.diff(42, profile)
    with pytest.raises(TypeError, match="baseline must be a spprof.Profile"):
        profile.diff(42)
    # Times beyond any sample are an empty or a whole window, never an overflow.
    assert len(profile.between(-2**70, 2**70).samples) == len(profile.samples)
    assert len(analysis.between(profile, 2**70, 2**71)) == 0
