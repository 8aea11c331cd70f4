"""The %%spprof / %spprof magics, driven through a real IPython shell."""

import html
import os
import re

import pytest

import spprof

pytest.importorskip("IPython")

from IPython.core.error import UsageError  # noqa: E402
from IPython.testing.globalipapp import start_ipython  # noqa: E402

import spprof.memprof as memprof  # noqa: E402
import spprof_jupyter  # noqa: E402
from spprof_jupyter import CellProfile  # noqa: E402
from spprof_jupyter._magic import split_options  # noqa: E402

WORK = """
def hot(n=1_500_000):
    s = 0
    for i in range(n):
        s += i * i
    return s

def cold(n=150_000):
    s = 0
    for i in range(n):
        s += i
    return s
"""


@pytest.fixture(scope="module")
def ip():
    shell = start_ipython()
    shell.run_line_magic("load_ext", "spprof_jupyter")
    result = shell.run_cell(WORK)
    assert result.success
    yield shell
    shell.run_line_magic("unload_ext", "spprof_jupyter")


def run(ip, code):
    result = ip.run_cell(code)
    return result


def ok(ip, code):
    result = ip.run_cell(code)
    assert result.success, result.error_in_exec or result.error_before_exec
    return result.result


def leaf_functions(profile):
    return [s.frames[-1].function_name for s in profile.samples if s.frames]


def test_cell_profiles_hot_function_and_binds_result(ip):
    r = ok(ip, "%%spprof\na = hot()\nb = cold()\n")
    assert isinstance(r, CellProfile)
    assert ip.user_ns["_spprof"] is r
    assert ip.user_ns["a"] == sum(i * i for i in range(1_500_000))  # variables stay
    assert "b" in ip.user_ns
    assert not spprof.is_active()
    leaves = leaf_functions(r.profile)
    assert leaves and max(set(leaves), key=leaves.count) == "hot"
    assert r.profile.interval_ms == spprof_jupyter.DEFAULT_INTERVAL_MS == 1
    assert r.profile.mode == "cpu"
    assert r.memory is None


def test_a_cell_with_threads_is_one_process(ip):
    # The cell's thread is trimmed, the helper's is not: both keep the process they ran in (a
    # mix of known and unknown pids read as two processes, each a root of the flame graph).
    r = ok(ip, "%%spprof\nimport threading\nt = threading.Thread(target=hot)\nt.start()\nhot()\nt.join()\n")
    assert len(r.profile.threads()) == 2
    assert {s.pid for s in r.profile.samples} == {os.getpid()}
    assert not any(line.startswith("pid ") for line in r.profile.to_collapsed().splitlines())


def test_a_cell_with_subprocesses_is_one_profile_of_its_processes(ip):
    child = "import time\\nt = time.thread_time()\\nwhile time.thread_time() - t < 0.3:\\n    pass\\n"
    r = ok(ip, f"%%spprof --subprocesses\nimport subprocess, sys\nsubprocess.run([sys.executable, '-c', '{child}'])\n"
               "hot()\n")
    pids = {s.pid for s in r.profile.samples}
    assert os.getpid() in pids  # the cell's own work
    (other,) = pids - {os.getpid()}
    assert sum(s.weight_ns for s in r.profile.samples if s.pid == other) >= 0.15e9
    assert f"python -c (pid {other});" in r.profile.to_collapsed()


def test_async_aware_cells_give_their_tasks_their_samples(ip):
    r = ok(ip, "%%spprof --async-aware\nimport asyncio\n"
               "async def nap():\n    await asyncio.sleep(0.2)\n"
               "async def both():\n"
               "    await asyncio.gather(asyncio.create_task(nap(), name='n1'),\n"
               "                         asyncio.create_task(nap(), name='n2'))\n"
               "asyncio.run(both())\n")
    assert r.profile.mode == "wall"
    waited = {}
    for s in r.profile.samples:
        if s.task in ("n1", "n2") and [f.function_name for f in s.frames][-2:] == ["nap", "sleep"]:
            waited[s.task] = waited.get(s.task, 0) + s.weight_ns
    assert waited.keys() == {"n1", "n2"} and min(waited.values()) >= 0.15e9, waited


def test_stacks_start_at_the_cell(ip):
    r = ok(ip, "%%spprof\nhot()\n")
    assert r.raw_profile is not None
    for s in r.profile.samples:
        if s.frames and any(f.function_name == "hot" for f in s.frames):
            assert s.frames[0].function_name == "<module>"
            assert s.frames[1].function_name == "hot"
    # the untrimmed profile keeps IPython's frames below the cell
    assert any(len(s.frames) > 2 for s in r.raw_profile.samples)


def test_cell_value_and_output_pass_through(ip, capsys):
    ok(ip, "%%spprof -q\nprint('hello from the cell')\nimport sys; print('to stderr', file=sys.stderr)\n21 * 2\n")
    out, err = capsys.readouterr()
    assert "hello from the cell" in out
    assert "to stderr" in err
    assert "42" in out  # the cell's last value is displayed as without the magic
    assert ip.user_ns["_spprof"].value == 42


def test_trailing_semicolon_hides_the_value(ip, capsys):
    ok(ip, "%%spprof -q\n12345 * 3;\n")
    out, _ = capsys.readouterr()
    assert "37035" not in out


def test_quiet_returns_none_but_binds(ip, capsys):
    ip.user_ns.pop("_spprof", None)
    r = ok(ip, "%%spprof -q\nhot(100_000)\n")
    assert r is None
    assert isinstance(ip.user_ns["_spprof"], CellProfile)
    assert "spprof:" not in capsys.readouterr().out


def test_line_magic(ip):
    r = ok(ip, "%spprof c = hot()")
    assert isinstance(r, CellProfile) and ip.user_ns["_spprof"] is r
    assert ip.user_ns["c"] == ip.user_ns["hot"]()  # not another test's variable: under xdist it may run elsewhere
    r = ok(ip, "%spprof -i 5 hot(-1)")  # the options end where the statement starts
    assert r.profile.interval_ms == 5 and r.value == 0
    r = ok(ip, "x_line = %spprof -q --top 2 hot()")
    assert ip.user_ns["x_line"] is None and ip.user_ns["_spprof"].top_n == 2


def test_split_options():
    assert split_options("-i 5 f(-1)") == ("-i 5", "f(-1)")
    assert split_options("--wall -o 'a b.svg' x = 1") == ("--wall -o 'a b.svg'", "x = 1")
    assert split_options("--memory 128 -q f()") == ("--memory 128 -q", "f()")
    assert split_options("--memory f()") == ("--memory", "f()")
    assert split_options("-- -x") == ("", "-x")
    assert split_options("f()") == ("", "f()")


def test_options(ip):
    r = ok(ip, "%%spprof --wall -i 2 --top 1\nimport time\ntime.sleep(0.05)\n")
    assert r.profile.mode == "wall" and r.profile.interval_ms == 2
    assert any(not s.on_cpu for s in r.profile.samples)
    text = repr(r)
    assert len(text.splitlines()[2:]) == 1  # summary, header, one row


def test_exception_propagates_after_profile_stopped(ip, capsys):
    result = run(ip, "%%spprof\nbefore = hot(200_000)\n1 / 0\nafter = 1\n")
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    assert not spprof.is_active()
    assert "before" in ip.user_ns and "after" not in ip.user_ns
    out = capsys.readouterr().out
    assert "ZeroDivisionError" in out and "1 / 0" in out  # the traceback shows the cell's line
    partial = ip.user_ns["_spprof"]
    assert isinstance(partial, CellProfile) and partial.profile is not None


def test_keyboard_interrupt_stops_profiling(ip):
    result = run(ip, "%%spprof\nhot(100_000)\nraise KeyboardInterrupt\n")
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    assert not spprof.is_active()


def test_top_level_await(ip):
    r = ok(ip, "%%spprof\nimport asyncio\nawait asyncio.sleep(0.01)\nawaited = hot()\nawait asyncio.sleep(0)\n")
    assert isinstance(r, CellProfile) and ip.user_ns["_spprof"] is r
    assert ip.user_ns["awaited"] == ip.user_ns["hot"]()
    assert "hot" in leaf_functions(r.profile)
    assert not spprof.is_active()
    # the value of an awaited last expression
    ok(ip, "%%spprof -q\nasync def seven():\n    return 7\nawait seven()\n")
    assert ip.user_ns["_spprof"].value == 7
    # the line form, outside a running event loop
    r = ok(ip, "%spprof await asyncio.sleep(0)")
    assert isinstance(r, CellProfile)


def test_async_exception_propagates(ip):
    result = run(ip, "%%spprof\nimport asyncio\nawait asyncio.sleep(0)\nraise ValueError('boom')\n")
    assert isinstance(result.error_in_exec, ValueError)
    assert not spprof.is_active()


def test_async_cell_transformer_leaves_other_cells(ip):
    transform = ip.transform_cell
    assert "_run_async_cell" in transform("%%spprof -i 2\nawait x()\n")
    assert "run_cell_magic('spprof', '-i 2'" in transform("%%spprof -i 2\nx()\n")
    assert transform("await x()\n") == "await x()\n"


def test_unknown_option_is_a_usage_error(ip, capsys):
    ip.user_ns.pop("not_run", None)
    result = run(ip, "%%spprof --bogus\nnot_run = 1\n")
    assert isinstance(result.error_in_exec, UsageError)
    assert "not_run" not in ip.user_ns
    assert "Traceback" not in capsys.readouterr().out
    for bad in ("%%spprof -i 0.5\nnot_run = 1\n", "%%spprof -o out.unknown\nnot_run = 1\n",
                "%%spprof stray\nnot_run = 1\n", "%spprof -q", "%%spprof -i abc\nnot_run = 1\n",
                "%%spprof -i inf\nnot_run = 1\n", "%%spprof -o nodir/x.json\nnot_run = 1\n"):
        result = run(ip, bad)
        assert isinstance(result.error_in_exec, UsageError), bad
        assert "not_run" not in ip.user_ns
    assert not spprof.is_active()


def test_nested_profile_is_a_usage_error(ip):
    spprof.start()
    try:
        result = run(ip, "%%spprof\nnot_run_nested = 1\n")
        assert isinstance(result.error_in_exec, UsageError)
        assert "already active" in str(result.error_in_exec)
        assert spprof.is_active()
    finally:
        spprof.stop()


def test_help(ip, capsys):
    doc = spprof_jupyter.SpprofMagics.spprof.__doc__
    for option in ("--interval", "--wall", "--memory", "--output", "--quiet", "--top"):
        assert option in doc
    ip.run_cell("%%spprof?")
    out = capsys.readouterr().out
    assert "--interval" in out and "Profile a cell" in out


def test_memory_option(ip):
    r = ok(ip, "%%spprof --memory 16\nblob = [bytes(1000) for _ in range(20_000)]\n")
    assert r.profile is None and r.memory is not None
    r = ok(ip, "%%spprof --memory 16 --cpu\nblob = [bytes(1000) for _ in range(20_000)]\n")
    assert r.profile is not None and r.memory is not None


KEEP = """
def keep_buffers(n):
    kept = []
    for _ in range(n):
        kept.append(bytearray(64 * 1024))
        scratch = bytearray(256 * 1024)  # freed again
    return kept
"""


def test_memory_option_estimates_the_live_heap(ip):
    ok(ip, KEEP)
    r = ok(ip, "%%spprof --memory 64\nkept = keep_buffers(160)\n")  # 10 MiB kept, 40 MiB freed
    truth = 160 * (64 * 1024)
    assert isinstance(r.memory, memprof.HeapSnapshot) and r.profile is None
    assert ip.user_ns["_spprof"] is r and r.memory_rate_kb == 64
    assert not memprof.is_running()
    assert 0.7 * truth <= r.memory.estimated_heap_bytes <= 1.3 * truth, r.memory.estimated_heap_bytes
    assert r.memory.top_allocators(1)[0]["function"] == "keep_buffers"
    assert "keep_buffers" in set(r.to_pandas("frames").function)  # the tables come from the snapshot
    assert "Memory flame graph" in r._repr_html_()
    pa = pytest.importorskip("pyarrow")
    top = pa.table(r.top(3)).to_pylist()  # a memory-only result analyses the snapshot, in bytes
    assert top[0]["function"] == "keep_buffers" and top[0]["self_bytes"] > 0.5 * truth
    assert pa.table(r.diff(r)).column("delta_self_bytes").to_pylist()[0] == 0

    r = ok(ip, "%%spprof --memory 64 --cpu\nkept = keep_buffers(160)\nhot()\n")
    assert isinstance(r.memory, memprof.HeapSnapshot) and r.profile is not None
    assert 0.7 * truth <= r.memory.estimated_heap_bytes <= 1.3 * truth, r.memory.estimated_heap_bytes
    assert "hot" in leaf_functions(r.profile)
    assert r.profile.mode == "cpu" and not spprof.is_active()
    page = r._repr_html_()
    assert "CPU flame graph" in page and "Memory flame graph" in page


def _srcdocs(page):
    return [html.unescape(m) for m in re.findall(r'srcdoc="([^"]*)"', page)]


def test_html_is_self_contained(ip):
    r = ok(ip, "%%spprof\nhot()\n")
    page = r._repr_html_()
    docs = _srcdocs(page)
    assert len(docs) == 1 and "<svg" in docs[0] and "init(null)" in docs[0]
    for text in [page, *docs]:
        assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, re.I)
        assert not re.search(r"<script[^>]*\ssrc\s*=", text, re.I)
        assert not re.search(r"<link\b", text, re.I)
        assert not re.search(r"""@import|url\(\s*['"]?(?!#)""", text, re.I)  # url(#id) is local
    assert "<table" in page and "<code>hot</code>" in page
    assert 'onload="' not in docs[0]


def test_plain_text_lists_top_functions(ip):
    r = ok(ip, "%%spprof --top 3\nhot()\ncold()\n")
    text = repr(r)
    assert text.startswith("spprof: ")
    rows = text.splitlines()[2:]
    assert 1 <= len(rows) <= 3
    assert "hot (" in rows[0]


def test_empty_profile_says_so(ip):
    r = ok(ip, "%%spprof\npass\n")
    if r.profile.total_weight_ns == 0:
        assert "no samples" in repr(r) and "no samples" in r._repr_html_()


def test_output_files(ip, tmp_path):
    for name in ("cell.svg", "cell.html", "cell.json", "cell.collapsed"):
        path = tmp_path / name
        ok(ip, f"%%spprof -q -o '{path}'\nhot(300_000)\n")
        assert path.exists() and path.stat().st_size > 0, name
    assert "<svg" in (tmp_path / "cell.svg").read_text()
    saved = ip.user_ns["_spprof"].save(tmp_path / "again.json")
    assert saved.exists()


def test_arrow_tables(ip):
    pa = pytest.importorskip("pyarrow")
    r = ok(ip, "%%spprof\nhot()\n")
    samples = pa.table(r.samples)
    assert samples.num_rows == len(r.profile.samples)
    frames = pa.table(r.frames)
    assert "hot" in frames.column("function").to_pylist()
    assert pa.table(r.top(5)).column("function").to_pylist()[0] == "hot"
    # What a notebook (and a terminal) shows for a table: its rows, with the function's name.
    assert "<td>hot</td>" in r.top(5)._repr_html_() and repr(r.top(5)).splitlines()[1].startswith("hot")
    pytest.importorskip("pandas")
    assert r.threads().to_pandas()["weight_ns"].sum() == r.profile.total_weight_ns
    df = r.to_pandas("frames")
    assert df[df.is_leaf].groupby("function", observed=True).weight_ns.sum().idxmax() == "hot"


def test_diff(ip):
    pa = pytest.importorskip("pyarrow")
    ok(ip, "%%spprof -q\nhot(); cold()\n")
    before = ip.user_ns["_spprof"]
    ok(ip, "%%spprof -q\nhot(3_000_000); cold(10)\n")
    after = ip.user_ns["_spprof"]
    table = pa.table(after.diff(before))
    assert "function" in table.column_names and table.num_rows >= 2
    assert table.column("function").to_pylist()[0] == "hot"
    assert pa.table(after.diff(before.profile)).num_rows == table.num_rows


def test_unload_removes_transformer(ip):
    shell = ip
    n = sum(getattr(t, "spprof", False) for t in shell.input_transformers_cleanup)
    assert n == 1
    spprof_jupyter.unload_ipython_extension(shell)
    assert not any(getattr(t, "spprof", False) for t in shell.input_transformers_cleanup)
    spprof_jupyter.load_ipython_extension(shell)
