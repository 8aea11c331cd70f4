"""Profiles as Arrow tables: schema, values, zero copy, and the round trips into pyarrow, pandas,
polars and duckdb."""

from __future__ import annotations

import dataclasses
import gc
import sys
import threading
import time
from collections import defaultdict
from datetime import datetime

import pytest

import spprof
from spprof import Frame, Profile, Sample, _native
from workloads import spin


def optional(name):
    """The library, or skip: CI installs every one of them (the `test` extra)."""
    return pytest.importorskip(name, reason=f"{name} is not installed (pip install '.[test]')")


def burn(seconds):
    deadline = time.thread_time_ns() + int(seconds * 1e9)
    while time.thread_time_ns() < deadline:
        spin(2000)


def recurse(depth, seconds):
    if depth:
        return recurse(depth - 1, seconds)
    burn(seconds)


@pytest.fixture(scope="module")
def recorded():
    """A real profile of two threads, with recursion (a function twice in one stack)."""
    spprof.start(interval_ms=1)
    t = threading.Thread(target=burn, args=(0.15,), name="helper")
    t.start()
    recurse(3, 0.25)
    t.join()
    return spprof.stop()


def frames(*names):
    return [Frame(n, f"/src/{n[0]}.py", 10 + i, n == "native") for i, n in enumerate(names)]


def made(samples):
    """A profile backed by one native store, as a recorded one is (so `_native()` is stable)."""
    now = datetime.now()
    data = Profile(now, now, 1.0, samples, 0, "3.x", "linux")._native()
    return Profile._from_native(data, start_time=now, end_time=now, interval_ms=1.0,
                                python_version="3.x", platform="linux")


@pytest.fixture
def handmade():
    """Known values: a recursive stack, a native leaf, a second thread, and an empty stack."""
    return made([
        Sample(1_000, 11, "MainThread", frames("main", "rec", "rec", "leaf"), 100, True),
        Sample(2_000, 22, "worker", frames("main", "native"), 200, False),
        Sample(3_000, 11, "MainThread", [], 400, True),
        Sample(4_000, 11, "MainThread", frames("main", "rec", "leaf"), 800, True),
    ])


# -- the native table -----------------------------------------------------------------------------

def test_unknown_kind_lists_the_kinds(handmade):
    with pytest.raises(ValueError, match="unknown Arrow table kind 'stacks'; kinds: 'samples', 'frames'"):
        handmade.to_arrow("stacks")
    with pytest.raises(ValueError, match="taken by another column"):
        _native.to_arrow(handmade._native(), "samples", "depth")


def test_table_conveniences(handmade):
    t = handmade.to_arrow()
    assert isinstance(t, _native.ArrowTable)
    assert len(t) == t.num_rows == 4 and t.num_batches == 1
    assert t.column_names == ["timestamp_ns", "thread_id", "thread_name", "weight_ns", "stack_id",
                              "depth", "function", "filename", "lineno", "on_cpu", "pid", "task"]
    assert "[4 rows x 12 columns]" in repr(t)
    f = handmade.to_arrow("frames")
    assert len(f) == 4 + 2 + 1 + 3  # one row per frame; one for the sample without frames
    assert f.column_names == ["sample_id", "depth", "function", "filename", "lineno", "is_native",
                              "is_leaf", "thread_id", "timestamp_ns", "weight_ns", "pid"]
    assert _native.to_arrow(handmade._native(), "frames", "weight_bytes").column_names[-2] == "weight_bytes"
    # Capsules that nobody consumes are released by their destructor.
    for _ in range(3):
        t.__arrow_c_stream__()
        t.__arrow_c_schema__()
    gc.collect()


def test_tables_show_their_first_rows(handmade, recorded):
    top = handmade.top(None)
    shown = repr(top).splitlines()
    assert shown[0].split() == top.column_names
    # Rows as the engine computed them, strings left and numbers right.
    for line, row in zip(shown[1:], top.rows()):
        assert line.split()[0] == row[0] and line.split()[2] == str(row[2])
    assert shown[-1] == f"[{len(top)} rows x {len(top.column_names)} columns]"
    assert top.rows(limit=2) == top.rows()[:2] and top.rows(limit=0) == []
    # Dictionary strings and 32-bit integers read back too (the samples table).
    assert handmade.to_arrow().rows(limit=1)[0][2] == "MainThread"
    # A long table shows 10 rows in the terminal and 20 in a notebook; never all of it.
    big = recorded.to_arrow("frames")
    assert len(big) > 100
    text = repr(big).splitlines()
    assert len(text) == 1 + 10 + 2 and text[-2] == f"… {len(big) - 10} more rows"
    page = big._repr_html_()
    assert page.count("<tr>") == 1 + 20 and f"first 20 of {len(big)} rows" in page
    odd = made([Sample(1, 1, "T", [Frame("<module>", "/src/a&b.py", 1)], 5, True)]).top(None)._repr_html_()
    assert "<td>&lt;module&gt;</td><td>/src/a&amp;b.py</td>" in odd


def test_tables_convert_themselves(recorded, monkeypatch):
    top = recorded.top(5)
    pa = optional("pyarrow")
    as_arrow = top.to_pyarrow()
    assert isinstance(as_arrow, pa.Table) and as_arrow.to_pylist()[0]["function"] == top.rows()[0][0]
    df = top.to_pandas()
    assert list(df.columns) == top.column_names and df["self_ns"].tolist() == [r[2] for r in top.rows()]
    pl = optional("polars")
    assert top.to_polars().shape == (len(top), len(top.column_names))
    assert recorded.threads().to_pandas()["weight_ns"].sum() == recorded.total_weight_ns
    monkeypatch.setitem(sys.modules, "polars", None)
    with pytest.raises(ImportError, match=r"to_polars\(\) needs polars: pip install polars"):
        top.to_polars()
    del pl


# -- pyarrow --------------------------------------------------------------------------------------

def test_schemas_and_dtypes(handmade):
    pa = optional("pyarrow")
    d = pa.dictionary(pa.int32(), pa.string())
    samples = pa.schema([
        pa.field("timestamp_ns", pa.int64(), nullable=False),
        pa.field("thread_id", pa.int64(), nullable=False),
        pa.field("thread_name", d, nullable=False),
        pa.field("weight_ns", pa.int64(), nullable=False),
        ("stack_id", pa.int64()),
        pa.field("depth", pa.int32(), nullable=False),
        ("function", d), ("filename", d), ("lineno", pa.int32()),
        pa.field("on_cpu", pa.bool_(), nullable=False),
        pa.field("pid", pa.int64(), nullable=False),
        ("task", d),
    ])
    frames_schema = pa.schema([
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("depth", pa.int32(), nullable=False),
        ("function", d), ("filename", d), ("lineno", pa.int32()),
        pa.field("is_native", pa.bool_(), nullable=False),
        pa.field("is_leaf", pa.bool_(), nullable=False),
        pa.field("thread_id", pa.int64(), nullable=False),
        pa.field("timestamp_ns", pa.int64(), nullable=False),
        pa.field("weight_ns", pa.int64(), nullable=False),
        pa.field("pid", pa.int64(), nullable=False),
    ])
    assert pa.table(handmade.to_arrow("samples")).schema == samples
    assert pa.table(handmade.to_arrow("frames")).schema == frames_schema
    assert handmade.to_pyarrow("frames").schema == frames_schema
    # __arrow_c_schema__ gives the same schema without reading any data.
    assert pa.schema(handmade.to_arrow()) == samples


def test_sample_values(handmade):
    pa = optional("pyarrow")
    rows = handmade.to_pyarrow().to_pylist()
    assert [r["timestamp_ns"] for r in rows] == [1_000, 2_000, 3_000, 4_000]
    assert [r["thread_id"] for r in rows] == [11, 22, 11, 11]
    assert [r["thread_name"] for r in rows] == ["MainThread", "worker", "MainThread", "MainThread"]
    assert [r["weight_ns"] for r in rows] == [100, 200, 400, 800]
    assert [r["depth"] for r in rows] == [4, 2, 0, 3]
    assert [r["function"] for r in rows] == ["leaf", "native", None, "leaf"]
    assert [r["filename"] for r in rows] == ["/src/l.py", "/src/n.py", None, "/src/l.py"]
    assert [r["lineno"] for r in rows] == [13, 11, None, 12]
    assert [r["on_cpu"] for r in rows] == [True, False, True, True]
    stack_ids = [r["stack_id"] for r in rows]
    assert stack_ids[2] is None and len({stack_ids[0], stack_ids[1], stack_ids[3]}) == 3
    # The dictionaries hold each string once, functions and files apart.
    functions = pa.table(handmade.to_arrow()).column("function").chunks[0].dictionary.to_pylist()
    assert sorted(functions) == ["leaf", "main", "native", "rec"]


def test_frame_values(handmade):
    optional("pyarrow")
    rows = handmade.to_pyarrow("frames").to_pylist()
    assert [(r["sample_id"], r["depth"], r["function"], r["is_leaf"]) for r in rows] == [
        (0, 0, "main", False), (0, 1, "rec", False), (0, 2, "rec", False), (0, 3, "leaf", True),
        (1, 0, "main", False), (1, 1, "native", True),
        (2, 0, None, True),  # no frame at all: one row, so the leaf rows add up to the total
        (3, 0, "main", False), (3, 1, "rec", False), (3, 2, "leaf", True),
    ]
    assert [r["is_native"] for r in rows if r["sample_id"] == 1] == [False, True]
    assert [r["lineno"] for r in rows if r["sample_id"] == 0] == [10, 11, 12, 13]
    assert rows[6]["filename"] is None and rows[6]["lineno"] is None
    for r in rows:
        s = handmade.samples[r["sample_id"]]
        assert (r["thread_id"], r["timestamp_ns"], r["weight_ns"]) == (s.thread_id, s.timestamp_ns, s.weight_ns)


def test_zero_copy_by_buffer_address(handmade):
    pa = optional("pyarrow")
    data = handmade._native()
    address = _native._testing._column_address(data, "timestamp_ns")
    first, second = pa.table(handmade.to_arrow()), pa.table(handmade.to_arrow())
    for table in (first, second):
        (chunk,) = table.column("timestamp_ns").chunks
        assert chunk.buffers()[1].address == address
        (chunk,) = table.column("weight_ns").chunks
        assert chunk.buffers()[1].address == _native._testing._column_address(data, "weight")
    # The Arrow buffers keep the profile's memory alive after the profile is gone.
    del handmade, data
    gc.collect()
    assert first.column("timestamp_ns").to_pylist() == [1_000, 2_000, 3_000, 4_000]
    assert second.column("weight_ns").to_pylist() == [100, 200, 400, 800]


def test_table_outlives_its_profile():
    pa = optional("pyarrow")
    t = made([Sample(5, 1, "t", frames("a"), 7)]).to_arrow("frames")
    gc.collect()
    assert pa.table(t).column("function").to_pylist() == ["a"]


def test_self_and_total_sums(recorded):
    optional("pyarrow")
    total = recorded.total_weight_ns
    assert total > 0
    samples = recorded.to_pyarrow("samples")
    frames_ = recorded.to_pyarrow("frames")
    assert sum(samples.column("weight_ns").to_pylist()) == total
    leaf = frames_.filter(frames_.column("is_leaf"))
    assert leaf.num_rows == len(recorded.samples)
    assert sum(leaf.column("weight_ns").to_pylist()) == total
    # Total time: each function once per sample.
    seen, per_function = set(), defaultdict(int)
    self_time = defaultdict(int)
    for r in frames_.select(["sample_id", "function", "weight_ns", "is_leaf"]).to_pylist():
        if r["is_leaf"]:
            self_time[r["function"]] += r["weight_ns"]
        if (r["sample_id"], r["function"]) not in seen:
            seen.add((r["sample_id"], r["function"]))
            per_function[r["function"]] += r["weight_ns"]
    assert sum(self_time.values()) == total
    assert all(self_time[f] <= per_function[f] <= total for f in per_function)
    assert per_function["recurse"] <= total
    expected = sum(s.weight_ns for s in recorded.samples
                   if any(f.function_name.endswith("recurse") for f in s.frames))
    assert sum(v for f, v in per_function.items() if f and f.endswith("recurse")) == expected
    assert set(samples.column("thread_name").to_pylist()) >= {"MainThread", "helper"}
    assert set(samples.column("thread_id").to_pylist()) == {s.thread_id for s in recorded.samples}


def test_edited_profile_exports_what_it_holds(recorded):
    optional("pyarrow")
    edited = dataclasses.replace(recorded, samples=[s for s in recorded.samples if s.thread_name == "helper"])
    assert edited.samples and len(edited.samples) < len(recorded.samples)
    t = edited.to_pyarrow()
    assert t.num_rows == len(edited.samples)
    assert set(t.column("thread_name").to_pylist()) == {"helper"}
    assert sum(t.column("weight_ns").to_pylist()) == edited.total_weight_ns


def test_frames_come_in_bounded_batches():
    pa = optional("pyarrow")
    deep = frames(*[f"f{i}" for i in range(10)])
    p = made([Sample(i, 1, "t", deep, 1) for i in range(10_000)])  # 100,000 rows
    t = p.to_arrow("frames")
    assert t.num_batches == 2
    table = pa.table(t)
    assert table.num_rows == 100_000
    assert [len(c) for c in table.column("depth").chunks] == [65_536, 34_464]
    assert table.column("is_leaf").to_pylist().count(True) == 10_000


def test_empty_profile():
    pa = optional("pyarrow")
    p = made([])
    for kind in ("samples", "frames"):
        t = pa.table(p.to_arrow(kind))
        assert t.num_rows == 0 and "timestamp_ns" in t.column_names


# -- pandas, polars, duckdb -----------------------------------------------------------------------

def test_pandas(handmade, recorded):
    pd = optional("pandas")
    optional("pyarrow")
    df = handmade.to_pandas()
    assert str(df["timestamp_ns"].dtype) == "int64"
    assert str(df["depth"].dtype) == "int32"
    assert str(df["function"].dtype) == "category"
    assert str(df["on_cpu"].dtype) == "bool"
    assert df["function"].isna().tolist() == [False, False, True, False]
    # Integer columns are views of the profile's memory.
    address = _native._testing._column_address(handmade._native(), "timestamp_ns")
    assert df["timestamp_ns"].to_numpy().ctypes.data == address
    fr = recorded.to_pandas("frames")
    self_time = fr[fr["is_leaf"]].groupby("function", observed=True)["weight_ns"].sum()
    assert self_time.sum() == recorded.total_weight_ns
    total = fr.drop_duplicates(["sample_id", "function"]).groupby("function", observed=True)["weight_ns"].sum()
    assert (total <= recorded.total_weight_ns).all()
    assert (total.reindex(self_time.index) >= self_time).all()
    if hasattr(pd.DataFrame, "from_arrow"):  # pandas >= 3 reads the capsule interface itself
        assert pd.DataFrame.from_arrow(handmade.to_arrow())["weight_ns"].tolist() == [100, 200, 400, 800]


def test_polars(handmade, recorded):
    pl = optional("polars")
    df = handmade.to_polars()
    assert df.schema["timestamp_ns"] == pl.Int64 and df.schema["depth"] == pl.Int32
    assert df.schema["lineno"] == pl.Int32 and df.schema["on_cpu"] == pl.Boolean
    assert df.schema["function"] == pl.Categorical
    assert df["function"].to_list() == ["leaf", "native", None, "leaf"]
    assert pl.DataFrame(handmade.to_arrow("frames")).height == 10
    fr = recorded.to_polars("frames")
    self_total = fr.filter(pl.col("is_leaf"))["weight_ns"].sum()
    assert self_total == recorded.total_weight_ns
    total = fr.unique(["sample_id", "function"]).group_by("function").agg(pl.col("weight_ns").sum())
    assert total["weight_ns"].max() <= recorded.total_weight_ns


def test_duckdb(handmade, recorded):
    duckdb = optional("duckdb")
    samples = handmade.to_arrow()  # noqa: F841 (duckdb finds the table by its variable name)
    frames_ = recorded.to_arrow("frames")  # noqa: F841
    assert duckdb.sql("select sum(weight_ns), count(*) from samples").fetchall() == [(1500, 4)]
    assert duckdb.sql("select function from samples where depth = 0").fetchall() == [(None,)]
    (leaf_total,), = duckdb.sql("select sum(weight_ns) from frames_ where is_leaf").fetchall()
    assert leaf_total == recorded.total_weight_ns
    totals = duckdb.sql("""
        select function, sum(weight_ns) as total
        from (select distinct sample_id, function, weight_ns from frames_)
        group by function order by total desc""").fetchall()
    assert all(total <= recorded.total_weight_ns for _, total in totals)


# -- missing libraries ----------------------------------------------------------------------------

@pytest.mark.parametrize("method, module", [
    ("to_pyarrow", "pyarrow"), ("to_pandas", "pandas"), ("to_pandas", "pyarrow"), ("to_polars", "polars"),
])
def test_missing_library_is_named(handmade, monkeypatch, method, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(ImportError, match=rf"{method}\(\) needs {module}: pip install {module}"):
        getattr(handmade, method)()
    # to_arrow needs none of them.
    assert len(handmade.to_arrow()) == 4
