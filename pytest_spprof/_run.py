"""The whole-run file ``.spprof/run.arrow``: every test's samples as one Arrow table.

An Arrow IPC *file* (``pyarrow.ipc.open_file``) holding the ``"frames"`` table of
``spprof.Profile.to_arrow`` for every profiled test (a row per frame of every sample, root first),
with two more columns: ``test_id`` (the pytest node id, dictionary-encoded) and ``thread_name``.
``sample_id`` is unique in the file; ``timestamp_ns`` counts from the start of the test's window.
Needs pyarrow (``pip install 'spprof[arrow]'``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Optional

FORMAT = b"spprof-pytest-run"


def write_run(path: Path, chunks: Iterable[Any], results: Iterable[Any]) -> Optional[Path]:
    """Write the samples of the tests' windows, taken from the session's chunks (each converted
    to Arrow once, so the cost does not grow with the number of tests)."""
    import bisect

    import numpy as np  # pyarrow needs it anyway
    import pyarrow as pa
    import pyarrow.compute as pc

    # Arrays are built from numpy, not lists: pa.array(list) imports pandas (0.3 s) when installed.
    windows = sorted((r.t0, r.t1, r.nodeid) for r in results)
    starts = [w[0] for w in windows]
    names = _strings(pa, np, [w[2] for w in windows])
    tables = []
    sample_base = 0
    for chunk in chunks:
        if not chunk.profile.samples:
            continue
        samples = _table(pa, chunk.profile.to_arrow("samples"))
        test_idx: list = []
        offsets: list = []
        for ts in samples.column("timestamp_ns").to_pylist():
            t = ts + chunk.origin_ns
            i = bisect.bisect_right(starts, t) - 1
            if i >= 0 and t < windows[i][1]:
                test_idx.append(i)
                offsets.append(t - windows[i][0])
            else:
                test_idx.append(None)
                offsets.append(None)
        frames = _table(pa, chunk.profile.to_arrow("frames"))
        sid = frames.column("sample_id")
        missing = np.array([i is None for i in test_idx], dtype=bool)
        idx = _ints(pa, np, np.array([-1 if i is None else i for i in test_idx], dtype=np.int32),
                    missing, pa.int32()).take(sid)
        keep = pc.is_valid(idx)
        frames = frames.set_column(frames.schema.get_field_index("timestamp_ns"), "timestamp_ns",
                                   _ints(pa, np, np.array([o or 0 for o in offsets], dtype=np.int64),
                                         missing, pa.int64()).take(sid))
        frames = frames.set_column(frames.schema.get_field_index("sample_id"), "sample_id",
                                   pc.add(sid, sample_base))
        frames = frames.append_column("thread_name", samples.column("thread_name").combine_chunks().take(sid))
        frames = frames.append_column("test_id", pa.DictionaryArray.from_arrays(idx, names))
        frames = frames.filter(keep)
        sample_base += samples.num_rows
        tables.append(frames.cast(_plain_strings(frames.schema)))
    if not tables:
        return None
    table = pa.concat_tables(tables)
    # One dictionary per column for the whole file (the IPC file format cannot replace them).
    table = table.cast(_dictionary_strings(table.schema)).combine_chunks()
    table = table.replace_schema_metadata({b"format": FORMAT, b"version": b"1"})
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=64 * 1024)
    os.replace(tmp, path)
    return path


def _ints(pa: Any, np: Any, values: Any, missing: Any, type_: Any) -> Any:
    validity = pa.py_buffer(np.packbits(~missing, bitorder="little").tobytes())
    return pa.Array.from_buffers(type_, len(values), [validity, pa.py_buffer(values.tobytes())])


def _strings(pa: Any, np: Any, items: list) -> Any:
    data = [x.encode() for x in items]
    offsets = np.zeros(len(data) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum([len(d) for d in data])
    return pa.Array.from_buffers(pa.string(), len(data), [None, pa.py_buffer(offsets.tobytes()),
                                                          pa.py_buffer(b"".join(data))])


def _table(pa: Any, arrow: Any) -> Any:
    # Not pa.table(): it checks for pandas objects, which imports pandas (0.3 s) when installed.
    from_stream = getattr(pa.RecordBatchReader, "from_stream", None)
    return from_stream(arrow).read_all() if from_stream is not None else pa.table(arrow)


def _plain_strings(schema: Any) -> Any:
    import pyarrow as pa

    return pa.schema([pa.field(f.name, pa.string()) if pa.types.is_dictionary(f.type) else f for f in schema])


def _dictionary_strings(schema: Any) -> Any:
    import pyarrow as pa

    return pa.schema([pa.field(f.name, pa.dictionary(pa.int32(), pa.string())) if pa.types.is_string(f.type)
                      else f for f in schema])


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
                              first["weight_ns"]))
    now = datetime.now().astimezone()
    return Profile(now, now, 1.0, samples, 0, platform.python_version(), f"{platform.system()}-{platform.machine()}")
