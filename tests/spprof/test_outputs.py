"""Speedscope and collapsed-stack outputs."""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import datetime
from pathlib import Path

import jsonschema
import pytest

import spprof
from workloads import spin

SCHEMA = json.loads((Path(__file__).parent.parent / "data" / "speedscope-schema.json").read_text())


def burn(seconds):
    deadline = time.thread_time_ns() + int(seconds * 1e9)
    while time.thread_time_ns() < deadline:
        spin(2000)


@pytest.fixture(scope="module")
def profile():
    def worker():
        with spprof.ThreadProfiler():
            burn(0.2)

    spprof.start(interval_ms=1)
    t = threading.Thread(target=worker, name="helper")
    t.start()
    burn(0.2)
    t.join()
    return spprof.stop()


def test_speedscope_validates_and_has_one_profile_per_thread(profile, tmp_path):
    doc = profile.to_speedscope()
    jsonschema.validate(doc, SCHEMA)
    names = [p["name"] for p in doc["profiles"]]
    assert any(n.startswith("MainThread") for n in names) and any(n.startswith("helper") for n in names)
    frames = doc["shared"]["frames"]
    empty = 0
    for p in doc["profiles"]:
        assert p["type"] == "sampled" and p["unit"] == "nanoseconds"
        assert len(p["samples"]) == len(p["weights"]) and p["endValue"] == sum(p["weights"])
        for stack in p["samples"]:
            # A tick can land while a thread starts or ends, before or after its first Python
            # frame: an empty stack, rare, but not an error.
            empty += not stack
            assert all(0 <= i < len(frames) for i in stack)
            names = [frames[i]["name"] for i in stack]
            if "burn" in names:  # root → leaf: the innermost frame is the last
                assert names[-1] in ("spin", "burn") and names.index("burn") >= len(names) - 2
    assert empty <= max(1, len(profile.samples) // 100), empty
    assert sum(sum(p["weights"]) for p in doc["profiles"]) == profile.total_weight_ns
    out = profile.save(tmp_path / "p.json")
    assert json.loads(out.read_text()) == doc


def test_collapsed_lines_are_distinct_stacks_with_counts(profile, tmp_path):
    text = profile.to_collapsed()
    lines = text.splitlines()
    assert lines
    stacks = [line.rsplit(" ", 1)[0] for line in lines]
    assert len(stacks) == len(set(stacks))
    total = 0
    for line in lines:
        stack, count = line.rsplit(" ", 1)
        total += int(count)
        for frame in stack.split(";"):
            assert re.fullmatch(r".+ \(.+:\d+\)", frame), frame
        if "burn (" in stack:
            assert stack.split(";")[-1].startswith(("spin ", "burn "))
    assert total == sum(1 for s in profile.samples if s.frames)
    profile.save(tmp_path / "p.txt", format="collapsed")
    assert (tmp_path / "p.txt").read_text() == text


def test_unknown_formats_are_rejected_with_the_supported_list(profile, tmp_path):
    with pytest.raises(ValueError, match="Unknown format: pdf .*speedscope, collapsed"):
        profile.save(tmp_path / "p.json", format="pdf")
    with pytest.raises(ValueError, match="Unknown format: .unknown: .*extension"):
        profile.save(tmp_path / "p.unknown")


def test_a_profile_built_or_filtered_in_python_writes_what_it_holds():
    f_main = spprof.Frame("main", "app.py", 3)
    f_work = spprof.Frame("work;odd", "app.py", 10)
    p = spprof.Profile(
        start_time=datetime.now(), end_time=datetime.now(), interval_ms=10,
        samples=[spprof.Sample(0, 1, "t", [f_main, f_work], 10),
                 spprof.Sample(5, 1, "t", [f_main, f_work], 20),
                 spprof.Sample(9, 2, None, [f_main], 5)],
        dropped_count=0, python_version="3.x", platform="test")
    assert p.to_collapsed() == "main (app.py:3) 1\nmain (app.py:3);work_odd (app.py:10) 2\n"
    doc = p.to_speedscope()
    jsonschema.validate(doc, SCHEMA)
    assert sorted(sum(x["weights"]) for x in doc["profiles"]) == [5, 30]


def test_filtering_samples_changes_the_output(profile):
    full = profile.to_collapsed()
    profile_copy = spprof.Profile(**{**profile.__dict__, "samples": profile.samples[:3]})
    assert profile_copy.to_collapsed() != full
    assert sum(int(x.rsplit(" ", 1)[1]) for x in profile_copy.to_collapsed().splitlines()) == 3
