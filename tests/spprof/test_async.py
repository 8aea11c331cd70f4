"""asyncio-aware profiles (``async_aware=True``): a running task gets its loop thread's ticks,
a waiting task a sample per tick with the coroutines it awaits, and both carry the task."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

import spprof
from spprof._tasks import await_chain

INTERVAL_MS = 1


def burn(seconds):
    """Keep the event loop's thread busy for ``seconds`` of wall time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


async def napper(compute_s, sleep_s, rounds, truth, name):
    """Alternate ``compute_s`` of busy loop and ``sleep_s`` of await; ``truth[name]`` is
    (its lifetime, the time it computed), measured on the clock the samples are weighed with."""
    t0 = time.monotonic_ns()
    busy = 0
    for _ in range(rounds):
        b0 = time.monotonic_ns()
        burn(compute_s)
        busy += time.monotonic_ns() - b0
        await asyncio.sleep(sleep_s)
    truth[name] = (time.monotonic_ns() - t0, busy)


def gathered(truth):
    async def main():
        await asyncio.gather(
            asyncio.create_task(napper(0.01, 0.04, 5, truth, "light"), name="light"),
            asyncio.create_task(napper(0.03, 0.01, 5, truth, "heavy"), name="heavy"),
            asyncio.create_task(napper(0.0, 0.02, 8, truth, "idle"), name="idle"),
        )
    return main()


@pytest.fixture(scope="module")
def recorded():
    truth = {}
    spprof.start(interval_ms=INTERVAL_MS, mode="wall", async_aware=True)
    asyncio.run(gathered(truth))
    return spprof.stop(), truth


def per_task(profile):
    """{task: [weight, weight in burn, weight awaiting asyncio.sleep]}."""
    out = defaultdict(lambda: [0, 0, 0])
    for s in profile.samples:
        names = [f.function_name for f in s.frames]
        row = out[s.task]
        row[0] += s.weight_ns
        if "burn" in names:
            row[1] += s.weight_ns
        elif names[-1:] == ["sleep"]:
            row[2] += s.weight_ns
    return out


def test_each_task_is_weighed_by_its_known_compute_and_wait_times(recorded):
    profile, truth = recorded
    rows = per_task(profile)
    interval = INTERVAL_MS * 1_000_000
    for name, (lifetime, busy) in truth.items():
        weight, computing, sleeping = rows[name]
        # A tick's weight is the time since the loop thread's previous tick: only the ticks at
        # the task's step boundaries (two per round, at most) may land on the wrong side.
        slack = 2 * 8 * interval
        assert abs(weight - lifetime) <= slack, (name, weight, lifetime)
        assert abs(computing - busy) <= slack, (name, computing, busy)
        assert abs(sleeping - (lifetime - busy)) <= slack, (name, sleeping, lifetime - busy)
    # The heavy task computes most of its life, the light one a fifth of it at most.
    assert rows["heavy"][1] > rows["heavy"][2]
    assert rows["light"][2] > 2 * rows["light"][1]


def test_a_waiting_task_shows_the_coroutines_it_awaits_not_the_loop(recorded):
    profile, _ = recorded
    waiting = [s for s in profile.samples if s.task == "light" and not s.on_cpu]
    stacks = {tuple(f.function_name for f in s.frames) for s in waiting}
    assert ("napper", "sleep") in stacks, stacks
    # The running task's stacks start at its coroutine too: no event loop, no tracer frame.
    running = [s for s in profile.samples if s.task == "heavy" and any(f.function_name == "burn" for f in s.frames)]
    assert running and all(s.frames[0].function_name == "napper" for s in running), running
    # A task's stacks are cut below the tracer's step; the tracer shows only where a tick fell
    # in its own code (its cost).
    for s in profile.samples:
        if s.task is not None:
            above = [f for f in s.frames[:-1] if f.filename.endswith("_tasks.py") and f.function_name.endswith("_step")]
            assert not above, s.frames
    # The loop's idle ticks were the tasks'; what is left of the thread's own is not select.
    # (Only the loop's thread: under pytest-xdist, execnet's threads are sampled too.)
    loop_thread = [s for s in profile.samples if s.thread_id == threading.get_native_id()]
    own = [s for s in loop_thread if s.task is None]
    assert sum(s.weight_ns for s in own) < 0.2 * sum(s.weight_ns for s in loop_thread), own


def test_the_task_is_in_every_output(recorded, tmp_path):
    profile, _ = recorded
    table = profile.to_arrow().to_pyarrow()
    tasks = {t for t in table.column("task").to_pylist()}
    assert {"light", "heavy", "idle"} <= tasks
    threads = {row[-1] for row in profile.threads().rows()}
    assert {"light", "heavy", "idle"} <= threads
    names = [p["name"] for p in profile.to_speedscope()["profiles"]]
    assert any(re.fullmatch(r"MainThread light \(tid \d+\)", n) for n in names), names
    again = spprof.Profile(profile.start_time, profile.end_time, profile.interval_ms, list(profile.samples), 0,
                           profile.python_version, profile.platform, "wall")
    assert {s.task for s in again.samples} == {s.task for s in profile.samples}
    assert again.to_arrow().to_pyarrow().column("task").to_pylist() == table.column("task").to_pylist()


def test_tasks_of_loops_in_two_threads_are_apart():
    truth = {}

    def loop_thread(name):
        async def one():
            await asyncio.create_task(napper(0.02, 0.02, 3, truth, name), name=name)
        asyncio.run(one())

    with spprof.Profiler(interval_ms=INTERVAL_MS, mode="wall", async_aware=True) as p:
        threads = [threading.Thread(target=loop_thread, args=(f"loop-{i}",), name=f"loop-{i}") for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    by_task = {s.task: s.thread_name for s in p.profile.samples if s.task and s.task.startswith("loop-")}
    assert by_task == {"loop-0": "loop-0", "loop-1": "loop-1"}


def test_tasks_work_as_before_under_tracing_and_after_it():
    # Results, exceptions, cancellation and the task's own view of its coroutine go through.
    async def fails():
        await asyncio.sleep(0)
        raise KeyError("boom")

    async def forever():
        await asyncio.sleep(3600)

    async def main():
        assert await asyncio.create_task(asyncio.sleep(0, result=42)) == 42
        with pytest.raises(KeyError):
            await asyncio.create_task(fails())
        t = asyncio.create_task(forever())
        await asyncio.sleep(0)
        assert "forever" in repr(t)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        return asyncio.create_task(forever())

    import asyncio.base_events as base_events

    before = base_events.BaseEventLoop.create_task
    loop = asyncio.new_event_loop()
    try:
        with spprof.Profiler(mode="wall", async_aware=True):
            left = loop.run_until_complete(main())
        assert base_events.BaseEventLoop.create_task is before  # put back at stop
        # A task traced while profiling runs on after it.
        left.cancel()
        with pytest.raises(asyncio.CancelledError):
            loop.run_until_complete(left)
    finally:
        loop.close()


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="asyncio steps tasks only in a running loop from 3.14")
def test_a_task_stepped_without_a_running_loop():
    # CPython's own asyncio tests step tasks with loop._run_once() by hand: there is no running
    # loop, and asyncio.current_task() raises. The task must step as it would unprofiled.
    loop = asyncio.new_event_loop()
    try:
        with spprof.Profiler(mode="wall", async_aware=True):
            future = loop.create_future()

            async def waits():
                return await future

            task = loop.create_task(waits())
            loop._run_once()  # its first step: it now waits for the future
            assert not task.done()
            future.set_result(5)
            for _ in range(10):  # two steps: the future's callback, then the task's
                if not task.done():
                    loop._run_once()
        assert task.result() == 5
    finally:
        loop.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")
def test_a_forked_child_does_not_trace():
    import asyncio.base_events as base_events

    original = base_events.BaseEventLoop.create_task
    with spprof.Profiler(mode="wall", async_aware=True):
        pid = os.fork()
        if pid == 0:
            ok = base_events.BaseEventLoop.create_task is original and asyncio.run(asyncio.sleep(0, result=1)) == 1
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_profiling_from_inside_a_coroutine():
    # The task that starts the profile existed before it: not traced. The one it starts is,
    # and stop() ends its wait, which it is still in.
    async def main():
        spprof.start(interval_ms=INTERVAL_MS, mode="wall", async_aware=True)
        sleeper = asyncio.create_task(asyncio.sleep(10), name="sleeper")
        t0 = time.monotonic_ns()
        await asyncio.sleep(0.1)
        waited = time.monotonic_ns() - t0
        profile = spprof.stop()
        sleeper.cancel()
        return profile, waited

    profile, waited = asyncio.run(main())
    sleeping = sum(s.weight_ns for s in profile.samples if s.task == "sleeper")
    assert abs(sleeping - waited) <= 4 * INTERVAL_MS * 1_000_000, (sleeping, waited)
    assert {s.task for s in profile.samples} <= {"sleeper", None}


def test_the_await_chain_reads_suspended_coroutines_outermost_first():
    class Pause:
        def __await__(self):
            yield

    async def inner():
        await Pause()

    async def outer():
        await inner()

    coro = outer()
    coro.send(None)  # suspended in Pause's yield
    try:
        chain = await_chain(coro)
        assert [f[0].rpartition(".")[2] for f in chain] == ["outer", "inner", "__await__"]
        assert chain[0][1] == __file__ and chain[1][2] == inner.__code__.co_firstlineno + 1
    finally:
        coro.close()


def test_bad_arguments_are_refused_before_anything_starts():
    with pytest.raises(TypeError, match="async_aware must be True or False"):
        spprof.start(mode="wall", async_aware="yes")
    with pytest.raises(ValueError, match="async_aware=True needs mode='wall'"):
        spprof.start(async_aware=True)
    with pytest.raises(ValueError, match="needs mode='wall'"):
        spprof.Profiler(async_aware=True)
    with pytest.raises(ValueError, match="needs mode='wall'"):
        spprof.profile(async_aware=True)
    assert not spprof.is_active()


def test_the_command_line_option_on_the_example(tmp_path):
    example = Path(__file__).resolve().parents[2] / "examples" / "tasks.py"
    out = tmp_path / "tasks.json"
    r = subprocess.run([sys.executable, "-m", "spprof", "--async-aware", "-o", str(out), str(example)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    profiles = {p["name"].split()[1]: p for p in json.loads(out.read_text())["profiles"]
                if re.fullmatch(r"MainThread \S+ \(tid \d+\)", p["name"])}
    assert {"slow", "fast", "big"} <= profiles.keys(), profiles.keys()
    # Each task lives its wait and its decoding (or longer: others' decoding holds the loop).
    assert profiles["slow"]["endValue"] >= 0.38e9 and profiles["fast"]["endValue"] >= 0.09e9
    summary = subprocess.run([sys.executable, "-m", "spprof", "--async-aware", str(example)],
                             capture_output=True, text=True, timeout=120, cwd=tmp_path).stderr
    assert re.search(r"s wall in [\d.]+ s", summary), summary
