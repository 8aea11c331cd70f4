"""spprof.memprof: accuracy against measured ground truth, lifecycle, threads, fork, outputs.

Bounds come from the sampling statistics: an allocation of s bytes is sampled with probability
p = 1 - exp(-s/R) and then stands for s/p bytes, so the estimate of a set of allocations has
variance sum(s^2 (1 - p) / p). Assertions allow 4 standard deviations (plus the 10% the issue
asks for on the total, which the workload keeps well above 4 sigma).
"""

from __future__ import annotations

import gc
import json
import math
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import jsonschema
import pytest

import spprof
import spprof.memprof as memprof

SCHEMA = json.loads((Path(__file__).parent.parent / "data" / "speedscope-schema.json").read_text())
RATE = 64 * 1024


@pytest.fixture(autouse=True)
def memprof_stopped():
    yield
    if memprof.is_running():
        memprof.stop()


def sigma(sizes, rate=RATE):
    var = 0.0
    for s in sizes:
        p = -math.expm1(-s / rate)
        var += s * s * (1 - p) / p
    return math.sqrt(var)


# Three allocating functions, each keeping a known amount alive; the leaf frame of each
# allocation is the function itself (no comprehension frames).
def keep_large(out, n=32):
    for _ in range(n):
        out.append(bytearray(512 * 1024))


def keep_medium(out, n=256):
    for _ in range(n):
        out.append(bytes(64 * 1024))


def keep_small(out):
    for _ in range(4000):
        out.append(bytes(1000))


def churn(rounds):
    """Allocate and free much more than is kept."""
    for _ in range(rounds):
        tmp = []
        for _ in range(200):
            tmp.append(bytes(4000))
            tmp.append(bytearray(70_000))
        del tmp


def run_workload():
    kept = {"keep_large": [], "keep_medium": [], "keep_small": []}
    for i in range(4):
        churn(3)
        keep_large(kept["keep_large"], 48) if i == 0 else None
        keep_medium(kept["keep_medium"]) if i == 1 else None
        keep_small(kept["keep_small"]) if i == 2 else None
    return kept


def test_live_heap_estimate_and_split_match_the_truth():
    gc.collect()
    memprof.start(sampling_rate_kb=RATE // 1024)
    kept = run_workload()
    snap = memprof.get_snapshot()
    memprof.stop()
    sizes = {name: [sys.getsizeof(o) for o in objs] for name, objs in kept.items()}
    truth = {name: sum(s) for name, s in sizes.items()}
    total_truth = sum(truth.values())
    all_sizes = [s for v in sizes.values() for s in v]
    total_sigma = sigma(all_sizes)
    assert 4 * total_sigma < 0.1 * total_truth  # the workload is large enough for the 10% bound
    assert snap.live_samples >= 200, snap.live_samples
    # Live allocations besides the kept objects (their lists, the snapshot's own objects) are
    # small next to the kept 40 MB; the 10% bound covers them.
    assert abs(snap.estimated_heap_bytes - total_truth) < 0.1 * total_truth, (
        snap.estimated_heap_bytes, total_truth, total_sigma)
    sites = {d["function"]: d for d in snap.top_allocators(20)}
    for name, t in truth.items():
        est = sites[name]["estimated_bytes"]
        assert abs(est - t) < 4 * sigma(sizes[name]) + 0.02 * t, (name, est, t)
        assert sites[name]["filename"] == __file__
        assert sites[name]["stack"][-1].function_name == name
        assert sites[name]["count"] > 0
    # The churn was freed: it is not live.
    assert "churn" not in sites or sites["churn"]["estimated_bytes"] < 0.02 * total_truth
    # Shown, the snapshot is a summary of the top sites, not its hundreds of samples.
    shown = repr(snap)
    assert len(shown.splitlines()) <= 12 and len(shown) < 2_000 and len(snap.samples) >= 200
    assert shown.splitlines()[1].split()[-2] == snap.top_allocators(1)[0]["function"]
    assert snap._repr_html_().count("<tr>") == 1 + min(10, len(snap.top_allocators(10)))
    stats = memprof.get_stats()
    assert stats.freed_samples > stats.live_samples
    assert stats.total_samples >= stats.live_samples + stats.freed_samples
    assert stats.sources == ["python"] and stats.sampling_rate_bytes == RATE
    assert 0 < stats.heap_map_load_percent < 1


def test_current_peak_and_who_allocated_since_reset_match_the_truth():
    # As tracemalloc's get_traced_memory()/reset_peak(): the peak is the high-water mark since
    # the reset, which freed memory still counts in; allocations_since_reset_peak() says who.
    memprof.start(sampling_rate_kb=RATE // 1024)
    held = []
    keep_large(held, 16)
    memprof.reset_peak()
    current0, peak0 = memprof.get_traced_memory()
    assert peak0 == current0 >= 0.5 * 16 * 512 * 1024
    transient = []
    keep_medium(transient, 512)  # 32 MiB at the peak, all freed
    medium = [sys.getsizeof(o) for o in transient]
    del transient
    kept = []
    keep_small(kept)
    small = [sys.getsizeof(o) for o in kept]
    current, peak = memprof.get_traced_memory()
    allocated = memprof.allocations_since_reset_peak()
    memprof.stop()
    assert abs(current - current0 - sum(small)) < 4 * sigma(small) + 0.1 * sum(small), (current - current0, small)
    assert abs(peak - current0 - sum(medium)) < 4 * sigma(medium + small) + 0.05 * sum(medium), (peak - current0)
    by_leaf = {}
    for s in allocated.samples:
        by_leaf[s.frames[-1].function_name] = by_leaf.get(s.frames[-1].function_name, 0) + s.weight_ns
    assert "keep_large" not in by_leaf  # before the reset
    assert abs(by_leaf["keep_medium"] - sum(medium)) < 4 * sigma(medium) + 0.02 * sum(medium)
    assert abs(by_leaf["keep_small"] - sum(small)) < 4 * sigma(small) + 0.02 * sum(small)
    assert allocated.to_speedscope()["profiles"][0]["unit"] == "bytes"


def test_memory_freed_after_stop_is_not_live():
    memprof.start(sampling_rate_kb=64)
    kept = []
    keep_large(kept)
    memprof.stop()
    before = memprof.get_snapshot()
    assert before.estimated_heap_bytes >= 0.9 * 32 * 512 * 1024
    del kept
    after = memprof.get_snapshot()
    assert after.estimated_heap_bytes < before.estimated_heap_bytes - 0.9 * 32 * 512 * 1024
    assert not any(d["function"] == "keep_large" for d in after.top_allocators(50))
    assert memprof.get_stats().state == "stopped"


def test_restart_begins_a_new_profile_and_snapshots_while_running():
    memprof.start(sampling_rate_kb=64)
    first = []
    keep_large(first)
    running = memprof.get_snapshot()
    assert any(d["function"] == "keep_large" for d in running.top_allocators(5))
    memprof.stop()
    memprof.start(sampling_rate_kb=64)
    again = memprof.get_snapshot()
    assert not any(d["function"] == "keep_large" for d in again.top_allocators(50))
    memprof.stop()


def test_errors():
    with pytest.raises(ValueError, match="at least 1"):
        memprof.start(sampling_rate_kb=0)
    with pytest.raises(ValueError):
        memprof.start(sampling_rate_kb=float("nan"))
    with pytest.raises(TypeError, match="number"):
        memprof.start(sampling_rate_kb="512")
    memprof.start(sampling_rate_kb=512)
    with pytest.raises(RuntimeError, match="already running.*stop"):
        memprof.start()
    memprof.stop()
    with pytest.raises(RuntimeError, match="not running"):
        memprof.stop()
    with pytest.raises(ValueError):
        memprof.get_snapshot().top_allocators(-1)


def run_python(code, **env_vars):
    # Away from the repository root, where `python -c` would import the source tree.
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).parent,
                          env=dict(os.environ, **env_vars))


def test_shutdown_is_one_way_and_restores_the_allocators():
    r = run_python("""
        import spprof.memprof as m
        try:
            m.get_snapshot()
        except RuntimeError as e:
            print("before:", "start()" in str(e))
        print(m.get_stats().sources, m.get_stats().state)
        m.start(sampling_rate_kb=16)
        x = [bytes(10000) for _ in range(1000)]
        print(m.get_stats().sources)
        m.shutdown()
        m.shutdown()
        print(m.get_stats().sources, m.get_stats().state)
        for call in (m.start, m.get_snapshot, m.stop):
            try:
                call()
            except RuntimeError as e:
                print("refused:", "new process" in str(e) or "before" in str(e))
        del x
        y = [bytes(10000) for _ in range(1000)]  # still allocating fine with the originals back
        print("ok")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n") == [
        "before: True", "[] never", "['python']", "[] shutdown",
        "refused: True", "refused: True", "refused: True", "ok", ""], r.stdout


@pytest.mark.parametrize("allocator", ["pymalloc", "pymalloc_debug", "malloc"])
def test_small_objects_frees_and_addresses_under_each_allocator(allocator):
    # Under pymalloc (with or without the debug hooks) frees of MEM/OBJ are not wrapped: samples
    # are made RAW blocks, whose frees pymalloc passes on to RAW. The debug hooks put a header
    # before the block the program gets, so the free is seen at another address than the one
    # reported. Under malloc, MEM/OBJ frees are wrapped. In each case: kept objects are
    # estimated, freed ones are not live, and samples carry the objects' own addresses.
    r = run_python("""
        import json, sys
        import spprof.memprof as m

        def keep_small(out):
            for _ in range(100_000):
                out.append(bytes(200))

        def churn():
            for _ in range(20):
                tmp = [bytes(200) for _ in range(20_000)]
                del tmp

        m.start(sampling_rate_kb=16)
        kept = []
        churn(); keep_small(kept); churn()
        snap = m.get_snapshot()
        size = sys.getsizeof(kept[0])
        ids = {id(b) for b in kept}
        mine = [s for s in snap.samples if s.stack and s.stack[-1].function_name == "keep_small"]
        objects = [s for s in mine if s.size == size]
        print(json.dumps({
            "est": sum(s.estimated_bytes for s in mine), "size": size, "n": len(kept),
            "list": sys.getsizeof(kept) - sys.getsizeof([]),
            "churn": sum(s.estimated_bytes for s in snap.samples
                         if any(f.function_name == "churn" for f in s.stack)),
            "objects": len(objects), "at_ids": sum(s.address in ids for s in objects),
            "pymalloc": sys.getallocatedblocks() > 0}))
    """, PYTHONMALLOC=allocator)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["pymalloc"] == (allocator != "malloc")
    truth = out["size"] * out["n"] + out["list"]
    bound = 4 * sigma([out["size"]] * out["n"], 16 * 1024) + 0.02 * truth
    assert abs(out["est"] - truth) < bound, (out["est"], truth, bound)
    # 190 MB churned and freed. What may stay live is pymalloc's own table of arenas, which it
    # grows with PyMem_RawRealloc while serving churn() (12 KB on 3.9): far under 1 MB, where
    # missed frees would leave about 190 MB.
    assert out["churn"] < 1e6, out
    assert out["objects"] > 100 and out["at_ids"] == out["objects"], out


def test_tracemalloc_started_later_wraps_memprof_and_stopping_it_keeps_the_hooks():
    import tracemalloc

    memprof.start(sampling_rate_kb=64)
    tracemalloc.start()
    kept = []
    keep_large(kept)
    tracemalloc.stop()  # puts back the allocators it wrapped: ours
    stats = memprof.get_stats()
    assert stats.unhooked_domains == [] and stats.sources[0] == "python"
    kept.clear()  # frees still seen: only the next 32 blocks are live
    keep_large(kept)
    truth = 32 * 512 * 1024
    snap = memprof.get_snapshot()
    assert abs(snap.estimated_heap_bytes - truth) <= 4 * sigma([512 * 1024] * 32) + 0.05 * truth


def test_tracemalloc_stop_removing_the_hooks_is_reported_and_start_hooks_again():
    # tracemalloc started first: memprof wraps tracemalloc's hooks, and tracemalloc.stop()
    # puts back the allocators tracemalloc had wrapped, dropping memprof's.
    r = run_python("""
        import json, tracemalloc, warnings
        import spprof.memprof as m

        def keep(n):
            return [bytearray(512 * 1024) for _ in range(n)]

        tracemalloc.start()
        m.start(sampling_rate_kb=64)
        before = m.get_stats()
        kept = keep(32)
        tracemalloc.stop()
        after = m.get_stats()
        del kept  # freed behind memprof's back: the samples stay live
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            stale = m.get_snapshot().estimated_heap_bytes
        m.stop()
        m.start(sampling_rate_kb=64)
        again = m.get_stats()
        kept = keep(32)
        live = m.get_snapshot().estimated_heap_bytes
        del kept
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            freed = m.get_snapshot().estimated_heap_bytes
        print(json.dumps({
            "before": [before.sources, before.unhooked_domains],
            "after": [after.sources, after.unhooked_domains],
            "warnings": [(x.category.__name__, str(x.message)) for x in w],
            "stale": stale, "again": [again.sources, again.unhooked_domains],
            "live": live, "freed": freed}))
    """)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    truth = 32 * 512 * 1024
    bound = 4 * sigma([512 * 1024] * 32) + 0.05 * truth
    assert out["before"] == [["python"], []]
    assert out["after"] == [[], ["PYMEM_DOMAIN_RAW", "PYMEM_DOMAIN_MEM", "PYMEM_DOMAIN_OBJ"]]
    [(category, message)] = out["warnings"]
    assert category == "RuntimeWarning" and "tracemalloc.stop()" in message, message
    assert abs(out["stale"] - truth) <= bound  # what the warning is about
    assert out["again"] == [["python"], ["PYMEM_DOMAIN_RAW"]]
    assert abs(out["live"] - truth) <= bound
    assert out["freed"] == 0


def test_context_manager_leaves_a_snapshot():
    with memprof.MemoryProfiler(sampling_rate_kb=64) as mp:
        kept = []
        keep_large(kept)
    assert not memprof.is_running()
    assert mp.snapshot is not None and mp.snapshot.live_samples >= 25
    h = mp.snapshot.frame_pointer_health
    assert h.confidence in ("low", "medium", "high") and "native" in h.recommendation
    del kept


def test_threads_allocating():
    results, tids = {}, set()

    def worker(name):
        out = []
        keep_large(out)
        results[name] = out
        tids.add(threading.get_native_id())

    memprof.start(sampling_rate_kb=64)
    threads = [threading.Thread(target=worker, args=(f"alloc-{i}",), name=f"alloc-{i}") for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = memprof.get_snapshot()
    memprof.stop()
    truth = 3 * 32 * 512 * 1024
    est = sum(s.estimated_bytes for s in snap.samples if s.stack and s.stack[-1].function_name == "keep_large")
    assert abs(est - truth) < 0.05 * truth, (est, truth)
    assert {s.thread_id for s in snap.samples if s.stack[-1].function_name == "keep_large"} == tids
    # Threads that ended before the snapshot are named "Thread <tid>" (names come from threading).
    assert len(snap.to_speedscope()["profiles"]) >= 3
    assert len({s.thread_id for s in snap.samples}) >= 3


def test_code_dying_behind_an_unfinished_record_keeps_its_name():
    # A thread preempted while it writes a record (a native malloc without the GIL) stops the
    # drain that a code object's death makes, and records behind it may name that code. They
    # must be resolved to its names, not read from its freed memory, which the same-sized code
    # compiled next reuses (this crashed on 3.15 under load).
    r = run_python("""
        import gc, json
        import spprof.memprof as mp
        from spprof._native import _testing
        source = (
            "def {}():\\n"
            "    out = []\\n"
            "    for _ in range(2000):\\n"
            "        out.append(bytearray(4096))\\n"
            "    return out\\n")
        mp.start(sampling_rate_kb=4)
        assert _testing._hold_memprof_record(True)
        ns = {}
        exec(compile(source.format("doomed"), "generated.py", "exec"), ns)
        kept = ns.pop("doomed")()
        gc.collect()
        ns = {}
        exec(compile(source.format("reborn"), "generated.py", "exec"), ns)
        _testing._hold_memprof_record(False)
        sites = {d["function"]: d["estimated_bytes"] for d in mp.get_snapshot().top_allocators(5)}
        print(json.dumps(sites))
    """)
    assert r.returncode == 0, r.stderr
    sites = json.loads(r.stdout)
    assert "reborn" not in sites
    truth = 2000 * 4096
    assert 0.85 * truth < sites.get("doomed", 0) < 1.15 * truth, sites


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")
def test_fork_child_starts_stopped_and_can_profile():
    memprof.start(sampling_rate_kb=64)
    kept = []
    keep_large(kept)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            s = memprof.get_stats()
            ok = s.state == "stopped" and s.live_samples == 0 and s.sources == []
            memprof.start(sampling_rate_kb=64)
            mine = []
            keep_large(mine)
            snap = memprof.get_snapshot()
            memprof.stop()
            ok = ok and snap.estimated_heap_bytes >= 0.9 * 32 * 512 * 1024
            code = 0 if ok else 3
            os.write(w, repr((s.state, s.live_samples, snap.estimated_heap_bytes)).encode())
        finally:
            os._exit(code)
    os.close(w)
    msg = os.read(r, 1000)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0, msg
    assert memprof.is_running()  # the parent goes on
    memprof.stop()
    del kept


def test_cpu_and_memory_profiling_together():
    spprof.start(interval_ms=1)
    memprof.start(sampling_rate_kb=64)
    kept = []
    for _ in range(20):
        keep_medium(kept, 64)
        kept.clear()
    keep_large(kept)
    cpu = spprof.stop()
    snap = memprof.get_snapshot()
    memprof.stop()
    assert len(cpu.samples) > 0
    assert any(d["function"] == "keep_large" for d in snap.top_allocators(5))


@pytest.fixture(scope="module")
def snapshot():
    memprof.start(sampling_rate_kb=64)
    kept = []
    keep_large(kept)
    keep_medium(kept)
    snap = memprof.get_snapshot()
    memprof.stop()
    del kept
    return snap


def test_speedscope_is_in_bytes_and_validates(snapshot, tmp_path):
    path = snapshot.save(tmp_path / "heap.json")
    doc = json.loads(path.read_text())
    jsonschema.validate(doc, SCHEMA)
    assert all(p["unit"] == "bytes" for p in doc["profiles"])
    total = sum(sum(p["weights"]) for p in doc["profiles"])
    assert total == snapshot.estimated_heap_bytes


def test_collapsed_svg_html_in_bytes(snapshot, tmp_path):
    text = snapshot.save(tmp_path / "heap.collapsed").read_text()
    weights = {}
    for line in text.splitlines():
        stack, w = line.rsplit(" ", 1)
        weights[stack] = int(w)
    with_stack = sum(s.estimated_bytes for s in snapshot.samples if s.stack)
    assert sum(weights.values()) == with_stack
    assert any("keep_large" in k for k in weights)
    svg = snapshot.save(tmp_path / "heap.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "keep_large" in svg and "bytes" in svg
    html = snapshot.save(tmp_path / "heap.html").read_text()
    assert "<html" in html.lower() and "keep_medium" in html


def test_arrow_has_weight_bytes(snapshot):
    t = snapshot.to_arrow()
    assert "weight_bytes" in t.column_names and len(t) == snapshot.live_samples
    pa = pytest.importorskip("pyarrow")
    table = pa.table(t)
    assert table.column("weight_bytes").to_pylist() == [s.estimated_bytes for s in snapshot.samples]


def test_samples_carry_addresses_sizes_and_stacks(snapshot):
    big = [s for s in snapshot.samples if s.stack and s.stack[-1].function_name == "keep_large"]
    # Failed once under CPU load (scripts/with-cpu-load), not reproduced since: say what was seen.
    seen = [(s.size, s.weight, [f.function_name for f in s.stack[-3:]]) for s in snapshot.samples[:30]]
    assert big, seen
    for s in big:
        what = (s.size, s.address, s.lifetime_ns, s.weight, s.estimated_bytes, s.stack[-1])
        assert s.size >= 512 * 1024 and s.address % 8 == 0 and s.lifetime_ns is None, what
        assert s.weight == 64 * 1024, what
        assert s.size <= s.estimated_bytes < s.size * 1.01, what
        assert s.stack[-1].filename == __file__ and s.stack[-1].lineno > 0, what


def test_a_heap_too_big_for_the_live_map_raises_the_rate_and_warns():
    # 1 M live blocks of 1.5 KB at a 1 KiB rate: more live samples than half the heap map holds.
    # The rate doubles instead of samples being refused (the estimate was 59 % low, unwarned).
    r = run_python("""
        import json, warnings
        from spprof import memprof
        memprof.start(sampling_rate_kb=1)
        keep = [bytearray(1500) for _ in range(1_000_000)]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            estimate = memprof.get_snapshot().estimated_heap_bytes
        stats = memprof.get_stats()
        print(json.dumps({"estimate": estimate, "raises": stats.sampling_rate_raises,
                          "rate": stats.sampling_rate_bytes, "warnings": [str(w.message) for w in caught]}))
    """)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    truth = 1_000_000 * (1500 + sys.getsizeof(bytearray()))
    assert out["raises"] >= 1 and out["rate"] >= 2048, out
    assert any("sampling rate was doubled" in w for w in out["warnings"]), out["warnings"]
    assert abs(out["estimate"] - truth) < 0.05 * truth, (out["estimate"], truth)
