"""Every thread, every clock: automatic thread sampling, wall mode, fork, signals."""

from __future__ import annotations

import _thread
import ctypes
import hashlib
import multiprocessing
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import spprof
import workloads
from workloads import assert_sampled, assert_shares_match, burn_cpu, python_threads


def samples_by_tid(profile):
    out = defaultdict(list)
    for s in profile.samples:
        out[s.thread_id].append(s)
    return out


@pytest.fixture(scope="module")
def c_thread_lib(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build the C-thread helper")
    out = tmp_path_factory.mktemp("cthread") / "libcthread.so"
    include = sysconfig.get_paths()["include"]
    src = Path(__file__).parent / "csrc" / "cthread.c"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", f"-I{include}", "-o", str(out), str(src), "-lpthread"],
                   check=True)
    lib = ctypes.CDLL(str(out))  # CDLL releases the GIL during calls: join can wait
    lib.start_c_thread.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_ulong)]
    lib.join_c_thread.argtypes = [ctypes.c_ulong]
    return lib


def test_threads_before_and_after_start_are_sampled_with_their_names(c_thread_lib):
    tids = {}
    go = threading.Event()

    def early():
        tids["early"] = threading.get_native_id()
        go.wait()
        burn_cpu(0.3)

    def named():
        tids["named"] = threading.get_native_id()
        burn_cpu(0.3)

    def pooled():
        tids["pooled"] = threading.get_native_id()
        burn_cpu(0.3)
        return threading.current_thread().name

    def raw_thread(done):
        tids["raw"] = threading.get_native_id()
        burn_cpu(0.3)
        done.release()

    before = threading.Thread(target=early, name="early-bird")
    before.start()
    spprof.start(interval_ms=1)
    go.set()
    t = threading.Thread(target=named, name="late-comer")
    t.start()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pool") as ex:
        pool_name = ex.submit(pooled).result()
    done = _thread.allocate_lock()
    done.acquire()
    _thread.start_new_thread(raw_thread, (done,))
    code = b"import workloads; workloads.c_thread_body()"
    handle = ctypes.c_ulong()
    assert c_thread_lib.start_c_thread(code, ctypes.byref(handle)) == 0
    assert c_thread_lib.join_c_thread(handle.value) == 0
    before.join(), t.join(), done.acquire()
    profile = spprof.stop()

    tids["c"] = workloads.C_THREAD_RESULT["tid"]
    by_tid = samples_by_tid(profile)
    for what, tid in tids.items():
        assert len(by_tid[tid]) >= 20, f"{what} thread: {len(by_tid[tid])} samples"
    assert {s.thread_name for s in by_tid[tids["early"]]} == {"early-bird"}
    assert {s.thread_name for s in by_tid[tids["named"]]} == {"late-comer"}
    assert {s.thread_name for s in by_tid[tids["pooled"]]} == {pool_name}
    # The C thread's Python frames are there, under the code PyRun_SimpleString ran.
    c_stacks = [[f.function_name for f in s.frames] for s in by_tid[tids["c"]]]
    assert any("c_thread_body" in [n.rsplit(".", 1)[-1] for n in st] for st in c_stacks)


def gil_free_hashing(seconds):
    data = b"x" * (1 << 20)
    deadline = time.thread_time_ns() + int(seconds * 1e9)
    while time.thread_time_ns() < deadline:
        hashlib.sha256(data).digest()  # releases the GIL while hashing


def test_threads_get_cpu_in_the_ratio_they_used_it():
    truth = {}

    def worker(name, seconds, fn):
        t0 = time.thread_time_ns()
        fn(seconds)
        truth[name] = (threading.get_native_id(), time.thread_time_ns() - t0)

    spprof.start(interval_ms=1)
    threads = [
        threading.Thread(target=worker, args=("a", 0.4, burn_cpu)),
        threading.Thread(target=worker, args=("b", 0.8, burn_cpu)),
        threading.Thread(target=worker, args=("hash", 0.8, gil_free_hashing)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    profile = spprof.stop()
    by_tid = samples_by_tid(profile)
    measured = {name: sum(s.weight_ns for s in by_tid[tid]) for name, (tid, _) in truth.items()}
    n = sum(len(by_tid[tid]) for tid, _ in truth.values())
    assert n > 150  # enough to judge; the bounds follow n
    assert_shares_match(measured, {name: cpu for name, (_, cpu) in truth.items()}, n)
    # Each thread's weights add up to the CPU it used, less at most a few ticks at each end.
    for name, (_, cpu) in truth.items():
        assert abs(measured[name] - cpu) <= 0.05 * cpu + 15_000_000, (name, measured[name], cpu)


def test_sleeping_thread_has_no_cpu_samples_but_wall_samples():
    def sleeper(out):
        out["tid"] = threading.get_native_id()
        time.sleep(0.6)

    ids = {}
    spprof.start(interval_ms=5)
    t = threading.Thread(target=sleeper, args=(ids,))
    t.start()
    burn_cpu(0.3)
    t.join()
    cpu_profile = spprof.stop()
    # While it sleeps, a thread uses no CPU and gets no CPU sample. Its start and exit run code
    # (CI's 3.9 once gave 4 samples in `_bootstrap`, after `sleeper` had returned): not judged here.
    in_sleeper = [s for s in samples_by_tid(cpu_profile)[ids["tid"]]
                  if any(f.function_name == "sleeper" for f in s.frames)]
    assert len(in_sleeper) <= 1, [(s.timestamp_ns, s.weight_ns, s.frames[-1]) for s in in_sleeper]

    burnt = threading.Event()

    def sleeper_until_burnt(out):
        # Sleeps until the main thread has burnt its CPU, then 0.3 s more while it joins: on a
        # loaded machine burning takes longer, so no fixed sleep would cover both.
        out["tid"] = threading.get_native_id()
        t0 = time.monotonic()
        burnt.wait()
        time.sleep(0.3)
        out["slept"] = time.monotonic() - t0

    with spprof.Profiler(interval_ms=5, mode="wall") as p:
        t = threading.Thread(target=sleeper_until_burnt, args=(ids,))
        t.start()
        burn_cpu(0.3)
        burnt.set()
        t.join()
    assert p.profile.mode == "wall"
    sleeping = samples_by_tid(p.profile)[ids["tid"]]
    expected = ids["slept"] / 0.005
    assert 0.3 * expected <= len(sleeping) <= 1.3 * expected, len(sleeping)  # ticks may be late under load
    assert sum(not s.on_cpu for s in sleeping) >= 0.9 * len(sleeping)
    assert any("sleeper" in f.function_name for s in sleeping for f in s.frames)
    total = sum(s.weight_ns for s in sleeping)
    assert 0.8 * ids["slept"] * 1e9 <= total <= ids["slept"] * 1e9 + 20e6, total
    main = samples_by_tid(p.profile)[threading.get_native_id()]
    burning = [s for s in main if any(f.function_name.endswith("burn_cpu") for f in s.frames)]
    joining = [s for s in main if any(f.function_name.endswith("join") for f in s.frames)]
    assert burning and joining
    # A burning thread is on the CPU far more often than a joining one; how often depends on
    # what else the machine runs (half the time, with two CPU-bound processes on two cores).
    assert sum(not s.on_cpu for s in joining) >= 0.85 * len(joining)
    assert sum(s.on_cpu for s in burning) / len(burning) > sum(s.on_cpu for s in joining) / len(joining) + 0.25


def test_falls_back_to_wall_mode_when_cpu_timers_are_refused():
    spprof._api._native._testing._refuse_cpu_timers(True)
    try:
        with pytest.warns(RuntimeWarning, match="refused.*wall-clock"):
            spprof.start(interval_ms=2)
        st = spprof.stats()
        assert st.mode == "wall" and "refused" in st.fallback_reason
        burn_cpu(0.1)
        profile = spprof.stop()
    finally:
        spprof._api._native._testing._refuse_cpu_timers(False)
    assert profile.mode == "wall"
    assert_sampled(profile, 0.1)


def _child_profiles(queue):
    try:
        ok = not spprof.is_active()
        spprof.start(interval_ms=1)
        burn_cpu(0.2)
        n = sum(s.weight_ns for s in spprof.stop().samples)
        queue.put((ok, n))
    except BaseException as exc:  # report, not hang the parent
        queue.put((False, repr(exc)))


def test_multiprocessing_fork_child_starts_stopped():
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    spprof.start(interval_ms=1)
    burn_cpu(0.15)
    proc = ctx.Process(target=_child_profiles, args=(queue,))
    proc.start()
    result = queue.get(timeout=60)
    proc.join(60)
    burn_cpu(0.15)
    profile = spprof.stop()
    assert proc.exitcode == 0
    assert result[0] is True and result[1] > 0.1e9, result  # the child's 0.2 s of CPU
    assert_sampled(profile, 0.3)


def test_an_application_sigprof_handler_keeps_working_and_is_restored():
    calls = []

    def handler(signum, frame):
        calls.append(signum)

    previous = signal.signal(signal.SIGPROF, handler)
    try:
        spprof.start(interval_ms=1)
        os.kill(os.getpid(), signal.SIGPROF)
        burn_cpu(0.3)  # Python runs the handler at the next bytecode boundary
        profile = spprof.stop()
        assert calls == [signal.SIGPROF]
        assert_sampled(profile, 0.3)  # and our ticks were not passed to it
        assert signal.getsignal(signal.SIGPROF) is handler
        os.kill(os.getpid(), signal.SIGPROF)
        burn_cpu(0.01)
        assert calls == [signal.SIGPROF] * 2
    finally:
        signal.signal(signal.SIGPROF, previous)


def test_sampling_on_another_signal():
    signum = signal.SIGRTMIN + 3
    with spprof.Profiler(interval_ms=1, signum=signum) as p:
        burn_cpu(0.3)
    assert_sampled(p.profile, 0.3)
    refused = ["SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGCONT", "SIGCHLD",
               "SIGPIPE", "SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGABRT", "SIGKILL", "SIGSTOP"]
    for name in refused:
        signum = getattr(signal, name)
        before = signal.getsignal(signum)
        with pytest.raises(ValueError, match=f"signum {name} cannot carry"):
            spprof.start(signum=signum)
        assert signal.getsignal(signum) == before and not spprof.is_active()
    with pytest.raises(TypeError, match="signum"):
        spprof.start(signum="SIGPROF")
    with pytest.raises(ValueError, match="mode"):
        spprof.start(mode="gpu")


SIGNAL_AFTER_STOP = """
import os, signal, sys
import spprof
from workloads import burn_cpu
signum, disposition = getattr(signal, sys.argv[1]), sys.argv[2]
if disposition == "ignore":
    signal.signal(signum, signal.SIG_IGN)
spprof.start(interval_ms=1, signum=signum)
burn_cpu(0.05)
spprof.stop()
os.kill(os.getpid(), signum)
burn_cpu(0.05)
print("survived")
"""


@pytest.mark.parametrize("name", ["SIGPROF", "SIGUSR1", "SIGALRM"])
@pytest.mark.parametrize("disposition", ["default", "ignore"])
def test_after_stop_the_signal_does_what_it_did_before(name, disposition, tmp_path):
    # The signal's default action (terminate) must come back at stop(), as must "ignore";
    # an application handler is restored by the test above.
    r = subprocess.run([sys.executable, "-c", SIGNAL_AFTER_STOP, name, disposition], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=str(Path(workloads.__file__).parent)))
    if disposition == "default":
        assert r.returncode == -getattr(signal, name), (r.returncode, r.stderr[-2000:])
    else:
        assert r.returncode == 0 and r.stdout.strip() == "survived", (r.returncode, r.stderr[-2000:])


def test_a_thread_that_blocks_the_signal_neither_crashes_nor_hangs():
    def blocked():
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPROF})
        burn_cpu(0.2)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGPROF})  # the pending tick lands now
        burn_cpu(0.05)

    with spprof.Profiler(interval_ms=1) as p:
        t = threading.Thread(target=blocked, name="blocked")
        t.start()
        burn_cpu(0.3)
        t.join()
    # Nothing while blocked: no sample in the first burn (the pending tick lands at the unblock).
    lines = [f.lineno for s in p.profile.samples if s.thread_name == "blocked"
             for f in s.frames if f.function_name.endswith("blocked")]
    assert lines and lines.count(blocked.__code__.co_firstlineno + 2) == 0, lines
    assert_sampled(p.profile, 0.3, thread_id=threading.get_native_id())


def test_interruptible_calls_still_work_in_wall_mode():
    results = {}

    def io_worker():
        r, w = os.pipe()
        t0 = time.monotonic()
        ready, _, _ = select.select([r], [], [], 0.25)
        results["select"] = (ready, time.monotonic() - t0)
        os.close(r), os.close(w)
        a, b = socket.socketpair()
        threading.Timer(0.1, b.sendall, args=(b"ping",)).start()
        results["recv"] = a.recv(4)
        a.close(), b.close()

    with spprof.Profiler(interval_ms=1, mode="wall"):
        t = threading.Thread(target=io_worker)
        t.start()
        t0 = time.monotonic()
        time.sleep(0.25)
        slept = time.monotonic() - t0
        proc = subprocess.run([sys.executable, "-c", "print('ok')"], capture_output=True, text=True)
        t.join()
    assert slept >= 0.25
    assert results["select"][0] == [] and results["select"][1] >= 0.25
    assert results["recv"] == b"ping"
    assert proc.returncode == 0 and proc.stdout == "ok\n"


def posix_timers() -> int:
    return open("/proc/self/timers").read().count("ID:")


def test_300_threads_at_once_and_2000_short_lived_threads_leave_nothing_behind():
    baseline, threads = posix_timers(), python_threads()
    spprof.start(interval_ms=1)
    barrier, counted = threading.Barrier(301), threading.Event()

    def at_once():
        burn_cpu(0.002)
        barrier.wait()
        counted.wait()  # alive until the count is taken, however slowly the machine runs

    crowd = [threading.Thread(target=at_once) for _ in range(300)]
    for t in crowd:
        t.start()
    barrier.wait()
    peak = spprof.stats().threads_sampled
    counted.set()
    for t in crowd:
        t.join()
    for _ in range(40):
        batch = [threading.Thread(target=burn_cpu, args=(0.001,)) for _ in range(50)]
        for t in batch:
            t.start()
        for t in batch:
            t.join()
    time.sleep(0.05)
    st = spprof.stats()
    profile = spprof.stop()
    # The crowd and this thread, and at most the threads there before (one of an earlier test may
    # end meanwhile: CI's loaded 3.13 run counted 301 of 302).
    assert 300 + 1 <= peak <= 300 + threads, (peak, threads)
    assert st.threads_sampled <= 2 + threads, st  # ended threads took their timers with them
    assert st.threads_seen >= 2300
    assert posix_timers() == baseline
    assert len({s.thread_id for s in profile.samples}) > 10


def test_an_application_that_handles_sigprof_keeps_it_to_itself():
    # An application that profiles itself with setitimer(ITIMER_PROF) and a SIGPROF handler:
    # spprof moves its own ticks to a free real-time signal, as a standard signal does not queue
    # (sharing SIGPROF lost about a quarter of the application's ticks).
    ticks = []
    previous = signal.signal(signal.SIGPROF, lambda signum, frame: ticks.append(signum))
    try:
        spprof.start(interval_ms=1)
        chosen = spprof.stats().signal
        signal.setitimer(signal.ITIMER_PROF, 0.002, 0.002)
        burn_cpu(0.2)
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        profile = spprof.stop()
    finally:
        signal.signal(signal.SIGPROF, previous)
    assert signal.SIGRTMIN < chosen <= signal.SIGRTMAX, chosen
    assert ticks and set(ticks) == {signal.SIGPROF}
    assert sum(s.weight_ns for s in profile.samples) > 0.1e9  # spprof sampled all along
    spprof.start(interval_ms=1)  # without an application handler: SIGPROF
    assert spprof.stats().signal == signal.SIGPROF
    spprof.stop()
