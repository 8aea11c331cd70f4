"""Stress: the profiler must never crash or corrupt its host under churn."""

from __future__ import annotations

import gc
import threading
import time

import spprof
from workloads import burn_cpu, spin


def _background(stop: threading.Event, errors: list) -> list:
    """Threads that burn CPU, start short-lived threads, and churn code objects."""

    def burner():
        while not stop.is_set():
            spin(2000)

    def churner():
        while not stop.is_set():
            ts = [threading.Thread(target=spin, args=(500,)) for _ in range(5)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()

    def compiler(k):
        i = 0
        while not stop.is_set():
            src = (f"def g_{k}_{i}():\n    s = 0\n    for j in range(4000):\n        s += j * j\n"
                   f"    return s\ng_{k}_{i}()\n")
            exec(compile(src, f"<stress {k} {i}>", "exec"), {})
            i += 1
            if i % 50 == 0:
                gc.collect()

    def guarded(fn, *args):
        try:
            fn(*args)
        except BaseException as exc:  # surfaced by the test
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(fn, *args), name=f"bg-{n}")
               for n, (fn, args) in enumerate([(burner, ()), (churner, ()), (compiler, (1,)),
                                               (compiler, (2,))])]
    for t in threads:
        t.start()
    return threads


def _check(profile):
    for s in profile.samples:
        assert s.thread_id > 0 and s.weight_ns >= 0
        for f in s.frames:
            if f.filename.startswith("<stress "):
                k, i = f.filename[len("<stress "):-1].split()
                assert f.function_name in (f"g_{k}_{i}", "<module>"), (f, s)


def test_start_stop_in_a_loop_while_threads_churn():
    stop, errors = threading.Event(), []
    threads = _background(stop, errors)
    try:
        deadline = time.monotonic() + 4
        rounds = 0
        while time.monotonic() < deadline:
            spprof.start(interval_ms=1, memory_limit_mb=2)
            burn_cpu(0.005)
            _check(spprof.stop())
            rounds += 1
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert rounds > 10


def test_long_profile_under_gc_storm_and_thread_churn():
    stop, errors = threading.Event(), []
    spprof.start(interval_ms=1)
    threads = _background(stop, errors)
    try:
        time.sleep(3)
    finally:
        stop.set()
        for t in threads:
            t.join()
        profile = spprof.stop()
    assert not errors, errors
    _check(profile)
    names = {s.thread_name for s in profile.samples}
    assert {"bg-0", "bg-2", "bg-3"} <= names
    assert sum(1 for s in profile.samples for f in s.frames if f.filename.startswith("<stress ")) > 20
