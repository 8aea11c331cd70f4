"""Stacks resolve to the right names whatever shape the code has."""

from __future__ import annotations

import asyncio
import sys
import time

import spprof
from workloads import spin

QUALNAMES = sys.version_info >= (3, 11)  # co_qualname exists from 3.11


def names(profile):
    return [[f.function_name for f in s.frames] for s in profile.samples]


def burn_for(seconds, fn, *args):
    deadline = time.thread_time_ns() + int(seconds * 1e9)
    while time.thread_time_ns() < deadline:
        fn(*args)


def recurse(depth, n):
    if depth == 0:
        return spin(n)
    return recurse(depth - 1, n)


def test_deep_recursion_keeps_every_frame():
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 2000))
    try:
        with spprof.Profiler(interval_ms=1) as p:
            burn_for(0.5, recurse, 500, 5000)
    finally:
        sys.setrecursionlimit(limit)
    deep = [st for st in names(p.profile) if st.count("recurse") >= 501]
    assert len(deep) > 5, "samples taken at the bottom of the recursion"  # ~100 unloaded
    for st in deep:
        first = st.index("recurse")
        assert st[first:first + 501] == ["recurse"] * 501
        assert st[-1] in ("spin", "recurse")


def test_stacks_deeper_than_the_cap_keep_their_innermost_frames():
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 3000))
    try:
        with spprof.Profiler(interval_ms=1) as p:
            burn_for(0.5, recurse, 1500, 5000)
    finally:
        sys.setrecursionlimit(limit)
    # the ramp up and down of the recursion is shallower; at the bottom the whole stack is 1500
    # recurse frames plus pytest's
    deep = [st for st in names(p.profile) if st.count("recurse") >= 1010 or st[0] == "<truncated>"]
    assert len(deep) > 5  # ~100 unloaded; a loaded machine delivers fewer
    for st in deep:
        # 1024 innermost frames kept, under a marker root frame
        assert st[0] == "<truncated>" and len(st) == 1 + 1024, (st[:3], len(st))
        assert st[-1] in ("spin", "recurse") and st[-2] == "recurse"
    # at the bottom of the recursion nothing but recurse frames is left under the marker
    assert any(set(st[1:-1]) == {"recurse"} for st in deep)


class Worker:
    def method(self, n):
        return spin(n)

    @staticmethod
    def static(n):
        return spin(n)


def generator(n):
    while True:
        spin(n)
        yield


async def coroutine(n, rounds):
    for _ in range(rounds):
        spin(n)
        await asyncio.sleep(0)


def test_methods_generators_coroutines_lambdas_resolve_by_name():
    w = Worker()
    square = lambda n: spin(n)  # noqa: E731
    gen = generator(3000)
    with spprof.Profiler(interval_ms=1) as p:
        burn_for(0.25, w.method, 3000)
        burn_for(0.25, Worker.static, 3000)
        burn_for(0.25, next, gen)
        burn_for(0.25, square, 3000)
        t0 = time.thread_time_ns()
        while time.thread_time_ns() - t0 < 250_000_000:
            asyncio.run(coroutine(3000, 20))
    found = {f for st in names(p.profile) for f in st}
    if QUALNAMES:
        expected = {"Worker.method", "Worker.static", "generator", "coroutine",
                    "test_methods_generators_coroutines_lambdas_resolve_by_name.<locals>.<lambda>"}
    else:
        expected = {"method", "static", "generator", "coroutine", "<lambda>"}
    assert expected <= found, expected - found

    # The generator runs under the frame that resumed it.
    for st in names(p.profile):
        if "generator" in st:
            i = st.index("generator")
            assert i > 0 and "burn_for" in st[:i]
    # The coroutine runs under the event loop, below this test.
    for st in names(p.profile):
        if "coroutine" in st:
            assert st.index("coroutine") > st.index(
                "test_methods_generators_coroutines_lambdas_resolve_by_name")


def test_code_objects_freed_during_profiling_are_never_mislabelled():
    # Every iteration compiles a new function in a new "file", runs it and frees it, while the
    # sampler ticks every millisecond: freed code addresses get reused by the next iteration's.
    spprof.start(interval_ms=1)
    t0 = time.thread_time_ns()
    i = 0
    while time.thread_time_ns() - t0 < 1_500_000_000:
        src = f"def f_{i}():\n    s = 0\n    for j in range(3000):\n        s += j\n    return s\nf_{i}()\n"
        exec(compile(src, f"<generated {i}>", "exec"), {})
        i += 1
    profile = spprof.stop()
    generated = 0
    for s in profile.samples:
        for f in s.frames:
            if f.filename.startswith("<generated "):
                generated += 1
                k = f.filename[len("<generated "):-1]
                assert f.function_name in (f"f_{k}", "<module>"), (f, k)
    assert generated > 50
    assert i > 100


def test_code_dying_behind_an_unfinished_record_keeps_its_name():
    # A sampled thread preempted in the middle of writing its record stops the drain that a
    # code object's death makes; the samples behind it must still name the dead code, not
    # the same-sized code compiled next at its address.
    import gc

    from spprof._native import _testing

    source = ("def {}():\n"
              "    deadline = time.thread_time_ns() + 150_000_000\n"
              "    while time.thread_time_ns() < deadline:\n"
              "        pass\n")
    spprof.start(interval_ms=1)
    try:
        assert _testing._hold_cpu_record(True)
        ns = {"time": time}
        exec(compile(source.format("doomed"), "generated.py", "exec"), ns)
        t0 = time.thread_time_ns()
        ns.pop("doomed")()
        truth = time.thread_time_ns() - t0
        gc.collect()
        ns = {"time": time}
        exec(compile(source.format("reborn"), "generated.py", "exec"), ns)
    finally:
        _testing._hold_cpu_record(False)
    profile = spprof.stop()
    leaves = [s.frames[-1].function_name for s in profile.samples if s.frames]
    assert "reborn" not in leaves
    # Each sample weighs the CPU time since the thread's previous one: within a tick or two.
    doomed = sum(s.weight_ns for s in profile.samples if s.frames and s.frames[-1].function_name == "doomed")
    assert 0.8 * truth < doomed < 1.2 * truth, (doomed, truth)
