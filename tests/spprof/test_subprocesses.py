"""One profile across processes (``subprocesses=True``): children started by multiprocessing
(fork, spawn, forkserver), concurrent.futures and subprocess are merged into the parent's
profile, and a child that dies costs only its own samples."""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from collections import defaultdict

import pytest

import spprof
from spprof import _subprocesses
from workloads import assert_shares_match, burn_cpu, run_mix, spin

METHODS = [m for m in ("fork", "spawn", "forkserver") if m in multiprocessing.get_all_start_methods()]


def alpha(n):
    return spin(n)


def beta(n):
    return spin(n)


def task(seed):
    """A pool task: alpha and beta at 1:2 of its CPU, measured by the worker's own clock."""
    truth = run_mix({"alpha": alpha, "beta": beta}, {"alpha": 1, "beta": 2}, cpu_seconds=0.06, seed=seed)
    return os.getpid(), truth


def leaf_weights(profile, pid=None):
    """Weight per (pid, function) of the samples whose innermost frame is alpha or beta."""
    out = defaultdict(int)
    for s in profile.samples:
        for f in reversed(s.frames):
            if f.function_name in ("alpha", "beta"):
                out[(s.pid, f.function_name)] += s.weight_ns
                break
    return out


@pytest.mark.parametrize("method", METHODS)
def test_a_pool_of_4_workers_is_one_profile_with_their_measured_cpu_split(method):
    with spprof.Profiler(interval_ms=1, subprocesses=True) as p:
        with multiprocessing.get_context(method).Pool(4) as pool:
            results = pool.map(task, range(12), chunksize=1)
    profile = p.profile

    truth = defaultdict(int)
    for _, parts in results:
        for name, ns in parts.items():
            truth[name] += ns
    workers = {pid for pid, _ in results}
    weights = leaf_weights(profile)
    # Every worker that ran a task is in the profile, under its own pid, and nothing of alpha or
    # beta is filed under the parent (which only waited).
    assert workers <= {s.pid for s in profile.samples}
    assert {pid for pid, _ in weights} <= workers
    measured = {name: sum(w for (_, n), w in weights.items() if n == name) for name in ("alpha", "beta")}
    n = sum(1 for s in profile.samples if any(f.function_name in ("alpha", "beta") for f in s.frames))
    assert n > 100, f"too few samples to judge: {n}"
    assert_shares_match(measured, truth, n)
    # Weights are CPU time: the workers' alpha and beta samples account for what they measured.
    assert 0.75 * sum(truth.values()) <= sum(measured.values()) <= 1.1 * sum(truth.values()) + 20e6

    # A worker's stacks start where multiprocessing runs it, not in the frames of the parent's
    # Pool() call that a forked worker was copied in.
    roots = {s.frames[0].function_name for s in profile.samples
             if any(f.function_name in ("alpha", "beta") for f in s.frames)}
    assert roots and all(name.endswith("_bootstrap") for name in roots), roots

    # Each process is a root of the flame graph, and each process's thread a speedscope profile.
    labels = {line.split(";", 1)[0] for line in profile.to_collapsed().splitlines()}
    assert all(f"(pid {pid})" in " ".join(labels) for pid in workers)
    assert all(label.endswith(")") and "(pid " in label for label in labels), labels
    names = [q["name"] for q in profile.to_speedscope()["profiles"]]
    assert all(any(f"(pid {pid}): MainThread" in name for name in names) for pid in workers), names
    threads = profile.threads().to_pandas()
    assert workers <= set(threads.pid)
    # The children's samples are on the parent's clock.
    assert all(0 <= s.timestamp_ns <= profile.total_duration_ms * 1e6 + 50e6 for s in profile.samples)


def child_burns_and_returns_pid(seconds):
    burn_cpu(seconds)
    return os.getpid()


def test_process_pool_executor_and_subprocess_children_are_merged(tmp_path):
    script = tmp_path / "child_script.py"
    script.write_text(textwrap.dedent("""
        import time

        def child_work():
            t = time.thread_time()
            while time.thread_time() - t < 0.3:
                pass

        child_work()
    """))
    with spprof.Profiler(interval_ms=2, subprocesses=True) as p:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as executor:
            pool_pids = set(executor.map(child_burns_and_returns_pid, [0.3, 0.3]))
        child = subprocess.run([sys.executable, str(script)])
    assert child.returncode == 0
    profile = p.profile
    by_pid = defaultdict(int)
    for s in profile.samples:
        by_pid[s.pid] += s.weight_ns
    for pid in pool_pids:
        assert by_pid[pid] >= 0.15e9, dict(by_pid)
    script_samples = [s for s in profile.samples if any(f.function_name == "child_work" for f in s.frames)]
    assert sum(s.weight_ns for s in script_samples) >= 0.15e9
    (script_pid,) = {s.pid for s in script_samples}
    assert script_pid not in pool_pids | {os.getpid()}
    roots = profile.to_collapsed()
    assert f"python child_script.py (pid {script_pid});" in roots
    assert "SpawnProcess-" in roots


def crash():
    import faulthandler

    faulthandler.disable()  # pytest's would print the crash the test asks for
    os.abort()


@pytest.mark.skipif("fork" not in METHODS, reason="needs the fork start method")
def test_grandchildren_forked_by_a_profiled_child_are_in_the_profile(tmp_path):
    # The child's workers inherit its SIGTERM handler with the fork: each must take it over, or
    # Pool.terminate() kills them before they write.
    script = tmp_path / "middle.py"
    script.write_text(textwrap.dedent("""
        import multiprocessing, os, time

        def grandchild_work(seconds):
            t = time.thread_time()
            while time.thread_time() - t < seconds:
                pass
            return os.getpid()

        if __name__ == "__main__":
            with multiprocessing.get_context("fork").Pool(2) as pool:
                print(*set(pool.map(grandchild_work, [0.2, 0.2], chunksize=1)))
    """))
    with spprof.Profiler(interval_ms=2, subprocesses=True) as p:
        out = subprocess.run([sys.executable, str(script)], check=True, capture_output=True, text=True)
    workers = {int(pid) for pid in out.stdout.split()}
    by_pid = defaultdict(int)
    for s in p.profile.samples:
        if any(f.function_name == "grandchild_work" for f in s.frames):
            by_pid[s.pid] += s.weight_ns
    assert set(by_pid) == workers and all(w >= 0.1e9 for w in by_pid.values()), (dict(by_pid), workers)


def test_a_child_that_profiles_itself_takes_over(tmp_path):
    # The child's own start() would find profiling active (for the parent) and refuse: the
    # parent's profile of it ends there instead, with what it sampled so far.
    script = tmp_path / "own.py"
    script.write_text(textwrap.dedent("""
        import time
        import spprof

        def before():
            t = time.thread_time()
            while time.thread_time() - t < 0.2:
                pass

        def mine():
            t = time.thread_time()
            while time.thread_time() - t < 0.2:
                pass

        before()
        with spprof.Profiler(interval_ms=2) as p:
            mine()
        print(sum(s.weight_ns for s in p.profile.samples if s.frames[-1].function_name == "mine"))
    """))
    with spprof.Profiler(interval_ms=2, subprocesses=True) as p:
        out = subprocess.run([sys.executable, str(script)], check=True, capture_output=True, text=True)
    assert int(out.stdout) >= 0.1e9, out  # the child's own profile has its own work
    functions = {f.function_name for s in p.profile.samples for f in s.frames}
    assert "before" in functions and "mine" not in functions


def test_a_killed_or_crashed_child_costs_only_its_own_samples():
    ctx = multiprocessing.get_context("fork" if "fork" in METHODS else "spawn")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a child that died says nothing
        with spprof.Profiler(interval_ms=2, subprocesses=True) as p:
            killed = ctx.Process(target=burn_cpu, args=(30,))
            crashed = ctx.Process(target=crash)
            fine = ctx.Process(target=burn_cpu, args=(0.3,))
            for child in (killed, crashed, fine):
                child.start()
            crashed.join()
            fine.join()
            time.sleep(0.2)
            killed.kill()
            killed.join()
            burn_cpu(0.3)
    assert crashed.exitcode == -signal.SIGABRT and killed.exitcode == -signal.SIGKILL
    assert fine.exitcode == 0
    by_pid = defaultdict(int)
    for s in p.profile.samples:
        by_pid[s.pid] += s.weight_ns
    assert by_pid[fine.pid] >= 0.15e9 and by_pid[os.getpid()] >= 0.15e9, dict(by_pid)
    assert killed.pid not in by_pid and crashed.pid not in by_pid


def test_a_terminated_worker_leaves_its_profile_and_still_dies_of_sigterm():
    ctx = multiprocessing.get_context(METHODS[0])
    with spprof.Profiler(interval_ms=2, subprocesses=True) as p:
        worker = ctx.Process(target=burn_cpu, args=(30,))
        worker.start()
        time.sleep(0.5)
        worker.terminate()
        worker.join()
    assert worker.exitcode == -signal.SIGTERM
    assert sum(s.weight_ns for s in p.profile.samples if s.pid == worker.pid) > 0


@pytest.mark.parametrize("method", METHODS)
def test_pools_ended_by_terminate_never_hang(tmp_path, method):
    # Pool.terminate() sends SIGTERM as the workers are leaving or entering their wait for a
    # task: a Python-level handler could miss it (a hang), and a worker dying in the middle of
    # writing lost its profile. In a process of its own, so that a hang fails the test.
    script = tmp_path / "pools.py"
    script.write_text(textwrap.dedent(f"""
        import multiprocessing
        import spprof

        if __name__ == "__main__":
            for _ in range(50):
                with spprof.Profiler(interval_ms=1, subprocesses=True) as p:
                    with multiprocessing.get_context({method!r}).Pool(4) as pool:
                        pool.map(abs, range(8))
            print("done")
    """))
    out = subprocess.run([sys.executable, "-W", "ignore", str(script)], capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0 and out.stdout.strip() == "done", out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "FATAL" not in out.stderr, out.stderr[-3000:]


def test_a_child_that_cannot_be_profiled_is_named_in_a_warning(tmp_path):
    with pytest.warns(RuntimeWarning, match=r"1 child process\(es\) are not in the profile: pid (\d+): "
                                            r"interval_ms must be"):
        with spprof.Profiler(interval_ms=2, subprocesses=True):
            env = dict(os.environ)
            interval, rest = env[_subprocesses.ENV].split(" ", 1)
            env[_subprocesses.ENV] = f"0.5 {rest}"  # what no spprof.start() accepts
            subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)


def test_a_child_without_spprof_says_why(tmp_path):
    # A copy of _child_site beside a spprof that cannot be imported (as for a Python that
    # spprof was not built for).
    site = tmp_path / "spprof" / "_child_site"
    site.mkdir(parents=True)
    (site / "sitecustomize.py").write_text(open(os.path.join(_subprocesses.SITE, "sitecustomize.py")).read())
    (tmp_path / "spprof" / "__init__.py").write_text("raise ImportError('no spprof for this Python')\n")
    with pytest.warns(RuntimeWarning, match=r"pid \d+: Python [\d.]+ \(.*\): no spprof for this Python"):
        with spprof.Profiler(interval_ms=2, subprocesses=True):
            env = dict(os.environ, PYTHONPATH=str(site))
            out = subprocess.run([sys.executable, "-c", "import sys; print('spprof' in sys.modules)"],
                                 env=env, check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "False"


def test_the_programs_own_sitecustomize_still_runs(tmp_path):
    (tmp_path / "sitecustomize.py").write_text("import os\nos.environ['THEIRS_RAN'] = '1'\n")
    code = "import os, spprof; print(os.environ.get('THEIRS_RAN'), spprof.is_active())"
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(tmp_path)
    try:
        with spprof.Profiler(interval_ms=2, subprocesses=True):
            out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
        after = os.environ["PYTHONPATH"]
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = saved
    assert out.stdout.split() == ["1", "True"]
    assert after == str(tmp_path)  # as it was before start()


def test_stop_puts_the_environment_back_and_removes_the_folder():
    before = {k: os.environ.get(k) for k in (_subprocesses.ENV, _subprocesses.ENV_DIR, "PYTHONPATH")}
    spprof.start(interval_ms=2, subprocesses=True)
    folder = os.environ[_subprocesses.ENV_DIR]
    assert os.path.isdir(folder) and os.environ["PYTHONPATH"].startswith(_subprocesses.SITE)
    spprof.stop()
    assert {k: os.environ.get(k) for k in before} == before
    assert not os.path.exists(folder)
    # A child started after stop() is not profiled.
    out = subprocess.run([sys.executable, "-c", "import sys; print('spprof' in sys.modules)"],
                         check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "False"


def test_bad_subprocesses_argument_is_refused_before_anything_starts():
    for call in (lambda: spprof.start(subprocesses="yes"), lambda: spprof.Profiler(subprocesses=1)):
        with pytest.raises(TypeError, match="subprocesses must be True or False"):
            call()
    assert not spprof.is_active() and _subprocesses.ENV not in os.environ


def test_the_command_line_profiles_subprocesses(tmp_path):
    example = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "examples", "pool.py")
    out = tmp_path / "pool.json"
    done = subprocess.run([sys.executable, "-m", "spprof", "--subprocesses", "-i", "2", "-o", str(out), example],
                          check=True, cwd=tmp_path, capture_output=True, text=True)
    assert "spprof: wrote" in done.stderr
    names = [q["name"] for q in json.loads(out.read_text())["profiles"]]
    assert any(name.startswith("python pool.py (pid ") for name in names), names
    assert sum("PoolWorker-" in name for name in names) >= 2, names
    summary = subprocess.run([sys.executable, "-m", "spprof", "--subprocesses", example],
                             check=True, cwd=tmp_path, capture_output=True, text=True).stderr
    assert re.search(r"s CPU in [\d.]+ s \(\d processes\)", summary), summary
    assert "checksum (" in summary.splitlines()[2], summary  # the workers' hottest function
