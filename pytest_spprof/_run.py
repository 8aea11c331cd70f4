"""The whole-run file ``.spprof/run.arrow``: every test's samples as one Arrow table.

An Arrow IPC *file* (``pyarrow.ipc.open_file``, ``polars.read_ipc``) holding the ``"frames"`` table
of ``spprof.Profile.to_arrow`` for every profiled test (a row per frame of every sample, root
first), with two more columns: ``test_id`` (the pytest node id) and ``thread_name``; strings are
dictionary-encoded. ``sample_id`` is unique in the file; ``timestamp_ns`` counts from the start of
the test's window. Stacks are cut as the tests' profiles are (``_session.cut_harness``): from the
test function or fixture on, a sample in pytest's own code as one ``<pytest harness>`` frame, and
no sample taken while pytest reported the test's subtests. The schema metadata has
``format = spprof-pytest-run``.

The file is written by the native module (``spprof_engine::run_file``), so writing it needs
neither pyarrow nor its start-up time; reading it back here needs pyarrow.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Iterable, List, Tuple

FORMAT = b"spprof-pytest-run"


def write_run(path: Path, chunks: Iterable[Any], results: Iterable[Any],
              reports: Tuple[List[Tuple[int, int]], int]) -> Path:
    """Write the samples of the tests' windows, taken from the session's chunks, cut as the
    tests' profiles are: from the test function or fixture on, less the samples of ``reports``
    (when the thread running the tests was in pytest's report hooks, and that thread)."""
    from spprof import _native

    from ._session import frame_role

    role = functools.lru_cache(maxsize=None)(frame_role)  # a frame per line: names repeat

    def roles_of(data: Any) -> bytes:
        return bytes(role(function, file) for function, file, _, _ in _native.frames_of(data))

    results = list(results)
    windows = [(r.t0, r.t1, i) for i, r in enumerate(results)]
    _native.write_run(os.fspath(path), [(c.skeleton._data, c.origin_ns, roles_of(c.skeleton._data)) for c in chunks],
                      windows, [r.nodeid for r in results], *reports)
    return path


def merge_runs(path: Path, parts: List[Path]) -> Path:
    """Join the run files of pytest-xdist workers into one."""
    from spprof import _native

    _native.merge_runs(os.fspath(path), [os.fspath(p) for p in parts])
    return path


def load_run(path: Any) -> Any:
    """The whole-run table written by ``pytest --spprof`` (a ``pyarrow.Table``)."""
    import pyarrow as pa

    with pa.memory_map(os.fspath(path)) as source:
        table = pa.ipc.open_file(source).read_all()
    if (table.schema.metadata or {}).get(b"format") != FORMAT:
        raise ValueError(f"{os.fspath(path)} is not an spprof pytest run file")
    return table


def load_profile(path: Any, test_id: str) -> Any:
    """The ``spprof.Profile`` of one test of a run file (outputs and analysis work on it)."""
    import platform
    from datetime import datetime

    import pyarrow.compute as pc

    from spprof import Frame, Profile, Sample

    table = load_run(path)
    rows = table.filter(pc.equal(table.column("test_id").cast("string"), test_id)).to_pylist()
    if not rows:
        raise KeyError(f"no samples of {test_id!r} in {os.fspath(path)}")
    by_sample: dict = {}
    for row in rows:
        by_sample.setdefault(row["sample_id"], []).append(row)
    samples = []
    for _, frames in sorted(by_sample.items()):
        frames.sort(key=lambda f: f["depth"])
        first = frames[0]
        stack = tuple(Frame(f["function"], f["filename"], f["lineno"], bool(f["is_native"]))
                      for f in frames if f["function"] is not None)
        samples.append(Sample(first["timestamp_ns"], first["thread_id"], first["thread_name"], stack,
                              first["weight_ns"], pid=first.get("pid", 0)))
    now = datetime.now().astimezone()
    return Profile(now, now, 1.0, samples, 0, platform.python_version(), f"{platform.system()}-{platform.machine()}")
