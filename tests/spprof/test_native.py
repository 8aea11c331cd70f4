"""Native stack unwinding: C frames merged with Python frames at the right places.

A small C library (csrc/native_burn.c) burns CPU in a known function and calls back into Python
through a ctypes callback, so the expected stack is Python -> C -> Python. Ground truth is each
part's CPU time, measured with the thread CPU clock around and inside the callback; bounds come
from the binomial error of the sample shares.
"""

from __future__ import annotations

import ctypes
import math
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import spprof

pytestmark = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and platform.machine() == "x86_64"),
    reason="native unwinding is implemented for Linux x86-64")


@pytest.fixture(scope="module")
def lib_path(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build the native test library")
    out = tmp_path_factory.mktemp("native") / "libnativeburn.so"
    src = Path(__file__).parent / "csrc" / "native_burn.c"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(out), str(src)], check=True)
    return out


CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)


def load(path):
    lib = ctypes.CDLL(str(path))
    lib.spprof_test_call_back.argtypes = [CALLBACK, ctypes.c_long]
    return lib


@pytest.fixture(autouse=True)
def native_off_afterwards():
    yield
    spprof.set_native_unwinding(False)


def test_available_and_argument_checks():
    assert spprof.native_unwinding_available() is True
    with pytest.raises(TypeError, match="True or False"):
        spprof.set_native_unwinding("yes")


def test_capture_native_stack_sees_the_c_function_that_called_back(lib_path):
    lib = load(lib_path)
    seen = []

    def callback(x):
        seen.append(spprof.capture_native_stack())
        return x

    assert lib.spprof_test_call_back(CALLBACK(callback), 1000) == 2
    (frames,) = seen
    names = [f.symbol for f in frames]
    assert all(isinstance(f, spprof.NativeFrame) and f.ip > 0 for f in frames)
    assert "spprof_test_call_back" in names and "_PyEval_EvalFrameDefault" in names
    c_frame = frames[names.index("spprof_test_call_back")]
    assert c_frame.filename == str(lib_path) and c_frame.resolved and 0 < c_frame.offset < 4096
    # Innermost first: the eval loop running `callback` is inside (before) the C function.
    assert names.index("_PyEval_EvalFrameDefault") < names.index("spprof_test_call_back")
    assert not any("_native" in f.filename for f in frames[:1])  # spprof's own frames left out


def run_workload(lib, calls=12, native_iterations=40_000_000, callback_ms=40):
    """Python -> C (burns) -> Python callback (burns); returns measured CPU ns per part."""
    truth = {"native": 0, "callback": 0}

    def py_callback(x):
        t0 = time.thread_time_ns()
        while time.thread_time_ns() - t0 < callback_ms * 1_000_000:
            sum(range(200))
        truth["callback"] += time.thread_time_ns() - t0
        return x

    cb = CALLBACK(py_callback)

    def py_caller():
        for _ in range(calls):
            t0 = time.thread_time_ns()
            before = truth["callback"]
            lib.spprof_test_call_back(cb, native_iterations)
            truth["native"] += time.thread_time_ns() - t0 - (truth["callback"] - before)

    py_caller()
    return truth


def find(sample, name):
    """Index (root first) of the Python frame named `name` (qualified names end with it)."""
    for i, f in enumerate(sample.frames):
        if not f.is_native and (f.function_name == name or f.function_name.endswith("." + name)):
            return i
    return None


def test_native_frames_sit_between_the_python_frames_with_the_right_share(lib_path):
    lib = load(lib_path)
    spprof.set_native_unwinding(True)
    spprof.start(interval_ms=1)
    truth = run_workload(lib)
    profile = spprof.stop()
    me = threading.get_native_id()
    samples = [s for s in profile.samples if s.thread_id == me and find(s, "py_caller") is not None]
    assert len(samples) > 50  # ~1 s of CPU: 250 at the kernel tick, fewer under load
    native_w = callback_w = 0
    for s in samples:
        names = [f.function_name for f in s.frames]  # root first
        if "spprof_test_call_back" not in names:
            continue
        c = names.index("spprof_test_call_back")
        caller = find(s, "py_caller")
        assert s.frames[c].is_native and not s.frames[caller].is_native
        assert caller < c  # the caller is outside the C function
        callback = find(s, "py_callback")
        if callback is not None:
            assert c < callback  # the callback inside it, not at one end
            assert not s.frames[callback].is_native
            callback_w += s.weight_ns
        elif "spprof_test_native_burn" in names:
            assert names.index("spprof_test_native_burn") == c + 1
            native_w += s.weight_ns
        # no eval-loop frame is left once merged
        assert "_PyEval_EvalFrameDefault" not in names
    total_truth = truth["native"] + truth["callback"]
    p = truth["native"] / total_truth
    n = len(samples)
    got = native_w / (native_w + callback_w)
    assert abs(got - p) < 4 * math.sqrt(p * (1 - p) / n) + 0.03, (got, p, n, truth)


def test_collapsed_output_marks_native_frames(lib_path, tmp_path):
    lib = load(lib_path)
    spprof.set_native_unwinding(True)
    spprof.start(interval_ms=1)
    run_workload(lib, calls=3)
    profile = spprof.stop()
    path = tmp_path / "p.collapsed"
    profile.save(path, format="collapsed")
    text = path.read_text()
    assert "[native] spprof_test_call_back" in text and "py_callback" in text


def test_without_native_unwinding_only_python_frames(lib_path):
    lib = load(lib_path)
    spprof.start(interval_ms=1)
    run_workload(lib, calls=2)
    profile = spprof.stop()
    assert profile.samples and not any(f.is_native for s in profile.samples for f in s.frames)


def test_no_crash_under_thread_churn_and_dlopen_dlclose(lib_path, tmp_path):
    import _ctypes

    spprof.set_native_unwinding(True)
    spprof.start(interval_ms=1)
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            ts = [threading.Thread(target=sum, args=(range(20000),)) for _ in range(4)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()

    churner = threading.Thread(target=churn)
    churner.start()
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < 2.0:
        copy = tmp_path / f"libcopy{i}.so"  # a new object each time, loaded and unloaded
        shutil.copy(lib_path, copy)
        lib = load(copy)
        lib.spprof_test_call_back(CALLBACK(lambda x: x), 2_000_000)
        handle = lib._handle
        del lib
        _ctypes.dlclose(handle)
        i += 1
    stop.set()
    churner.join()
    profile = spprof.stop()
    assert i > 5 and len(profile.samples) > 20
    assert any(f.is_native for s in profile.samples for f in s.frames)


def test_sorted_key_runs_under_the_c_sort():
    # Python -> C (sorted) -> Python (the key): the C frames sit between the two Python frames.
    def slow_key(v):
        s = 0
        for i in range(300):
            s += i
        return -v

    def caller():
        for _ in range(40):
            sorted(range(2000), key=slow_key)

    spprof.set_native_unwinding(True)
    spprof.start(interval_ms=1)
    caller()
    profile = spprof.stop()
    hits = 0
    for s in profile.samples:
        k, c = find(s, "slow_key"), find(s, "caller")
        if k is None:
            continue
        assert c is not None and c < k
        between = s.frames[c + 1:k]
        assert between and all(f.is_native for f in between), [f.function_name for f in between]
        hits += 1
    assert hits > 20
