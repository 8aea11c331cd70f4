"""pprof output, read back by Go's own ``go tool pprof``: the figures it prints are our analysis'."""

from __future__ import annotations

import asyncio
import glob
import gzip
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import spprof
import spprof.memprof as memprof
from spprof._model import resolve_format
from workloads import burn_cpu, run_mix, spin

#: Go's toolchain: on PATH, or Debian's, which scripts/sid-python mounts into the sid root.
GO = shutil.which("go") or next(iter(sorted(glob.glob("/usr/lib/go-*/bin/go"))), None)
needs_go = pytest.mark.skipif(GO is None, reason="needs Go's pprof (Debian's golang-go, which CI installs)")
#: A row of ``go tool pprof -top``: flat, flat%, sum%, cum, cum%, then the node's name.
ROW = re.compile(r"^\s*(\d+)(?:ns|B)?\s+\S+%\s+\S+%\s+(\d+)(?:ns|B)?\s+\S+%\s+(.+)$")


def pprof(*args: str) -> str:
    out = subprocess.run([GO, "tool", "pprof", *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def go_top(path: Path, *options: str) -> dict:
    """{(function, file): (flat, cum)} as ``go tool pprof -top`` prints them, exact."""
    rows = {}
    for line in pprof("-top", "-nodecount=100000", "-nodefraction=0", "-filefunctions", *options,
                      str(path)).splitlines():
        m = ROW.match(line)
        if m:
            function, _, file = m.group(3).partition(" ")
            rows[(function, file)] = (int(m.group(1)), int(m.group(2)))
    return rows


def ours(profile) -> dict:
    return {(fn, file): (own, total) for fn, file, own, total, *_ in profile.top(None).rows()}


def alpha(n):
    return spin(n)


def beta(n):
    return spin(n)


@pytest.fixture(scope="module")
def recorded():
    """Two threads; the main one splits its CPU 1:3 between alpha and beta."""
    with spprof.Profiler(interval_ms=1) as p:
        t = threading.Thread(target=burn_cpu, args=(0.15,), name="helper")
        t.start()
        run_mix({"alpha": alpha, "beta": beta}, {"alpha": 1, "beta": 3}, cpu_seconds=0.4)
        t.join()
    return p.profile


def test_the_format_comes_from_the_extension(recorded, tmp_path):
    assert resolve_format(Path("x.pb.gz"), None) == resolve_format(Path("x.pprof"), None) == "pprof"
    path = recorded.save(tmp_path / "cpu.pb.gz")
    data = path.read_bytes()
    assert data == recorded.to_pprof() and gzip.decompress(data)
    with pytest.raises(TypeError, match="labels must be a dict of str to str"):
        recorded.to_pprof(labels={"test_id": 3})


@needs_go
def test_go_pprof_prints_our_self_and_total_times(recorded, tmp_path):
    path = recorded.save(tmp_path / "cpu.pb.gz")
    theirs, mine = go_top(path, "-unit=ns"), ours(recorded)
    assert mine and theirs == mine
    header = pprof("-top", "-nodecount=1", "-unit=ns", str(path))
    assert "Type: cpu" in header and f"Total samples = {recorded.total_weight_ns}ns" in header


@needs_go
def test_each_sample_carries_its_thread_and_the_labels_given(recorded, tmp_path):
    path = tmp_path / "labelled.pb.gz"
    path.write_bytes(recorded.to_pprof(labels={"test_id": "tests/test_x.py::test_y"}))
    traces = pprof("-traces", str(path))
    threads = {(s.thread_name, s.thread_id) for s in recorded.samples}
    assert {name for name, _ in threads} >= {"MainThread", "helper"}
    for name, tid in threads:  # go prints the string labels first, then the numbers
        assert re.search(rf"thread_name:\s+{name}\n\s+pid:\s+{os.getpid()}\n\s+thread_id:\s+{tid}\n", traces), name
    assert traces.count("test_id:  tests/test_x.py::test_y") == traces.count("thread_name:")


@needs_go
def test_asyncio_tasks_are_a_label(tmp_path):
    async def nap():
        await asyncio.sleep(0.1)

    async def main():
        await asyncio.gather(asyncio.create_task(nap(), name="napper-1"), asyncio.create_task(nap(), name="napper-2"))

    with spprof.Profiler(interval_ms=1, mode="wall", async_aware=True) as p:
        asyncio.run(main())
    traces = pprof("-traces", str(p.profile.save(tmp_path / "tasks.pb.gz")))
    tasks = re.findall(r"^\s+task:\s+(\S+)$", traces, re.M)
    assert {"napper-1", "napper-2"} <= set(tasks), traces
    # One trace per stack and thread entry; only the tasks' carry the label.
    assert len(tasks) == len({(s.task, s.thread_id, s.frames) for s in p.profile.samples if s.task})


def keep_big(out):
    for _ in range(200):
        out.append(bytearray(100_000))


@needs_go
def test_a_heap_snapshot_is_inuse_space_and_objects(tmp_path):
    memprof.start(sampling_rate_kb=64)
    try:
        kept = []
        keep_big(kept)
        snap = memprof.get_snapshot()
    finally:
        memprof.stop()
    path = snap.save(tmp_path / "heap.pb.gz")
    space = go_top(path, "-sample_index=inuse_space", "-unit=B")
    assert space == ours(snap.to_profile())
    assert "Type: inuse_space" in pprof("-top", "-nodecount=1", str(path))
    # Objects: each sample stands for 1/p allocations of its size (a small one sampled by chance
    # for hundreds), summed per stack and rounded.
    objects = go_top(path, "-sample_index=inuse_objects")
    site = next(v for (fn, _), v in objects.items() if fn == "keep_big")
    expected = sum(s.estimated_bytes / s.size for s in snap.samples if s.stack[-1].function_name == "keep_big")
    assert abs(site[0] - expected) <= 1, (site, expected)
    # The 200 arrays kept: sampled with p = 0.78 each, so the estimate is 200 +- 8 (1 sigma).
    arrays = sum(s.estimated_bytes / s.size for s in snap.samples if s.size >= 100_000)
    assert 150 <= arrays <= 250, arrays


@needs_go
def test_the_command_line_writes_pprof(tmp_path):
    script = tmp_path / "hot.py"
    script.write_text("def hot():\n    return sum(i * i for i in range(3_000_000))\n\nhot()\n")
    out = tmp_path / "cli.pb.gz"
    subprocess.run([sys.executable, "-m", "spprof", "-o", str(out), str(script)], check=True,
                   capture_output=True, cwd=tmp_path)
    names = {fn for fn, _ in go_top(out, "-unit=ns")}
    assert "hot" in names and "<module>" in names
