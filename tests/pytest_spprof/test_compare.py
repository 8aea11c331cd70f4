"""python -m pytest_spprof.compare: two runs (CI jobs, branches) compared as a Markdown report."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_spprof import compare as cmp

SUITE = {
    "pkg/__init__.py": "",
    "pkg/work.py": """
        import os, time

        def burn(ms):
            t = time.thread_time()
            while time.thread_time() - t < ms / 1000:
                x = 0
                for i in range(200):
                    x += i * i

        def helper():
            burn(60 if os.environ.get("SLOW_HELPER") else 15)

        def steady():
            burn(30)
    """,
    "tests/test_suite.py": """
        import pytest
        from pkg import work

        @pytest.mark.parametrize("i", range(24))
        def test_small(i):
            work.burn(2)

        def test_steady():
            work.steady()

        def test_calls_helper():
            work.steady()
            work.helper()
    """,
}


def checkout(root: Path) -> Path:
    for name, text in SUITE.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def pytest_run(cwd: Path, *args: str, slow: bool = False) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SLOW_HELPER"}
    if slow:
        env["SLOW_HELPER"] = "1"
    env["PYTHONPATH"] = str(cwd)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--spprof",
                           "--spprof-interval=1", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def compare_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest_spprof.compare", *args], capture_output=True, text=True,
                          timeout=120)


def test_a_slower_function_is_named_across_two_checkouts(tmp_path):
    # Two checkouts in different places, as two CI jobs have: names must not depend on the path.
    base, head = checkout(tmp_path / "base-job"), checkout(tmp_path / "elsewhere" / "head-job")
    pytest_run(base)
    pytest_run(head, slow=True)
    done = compare_cli(str(base / ".spprof"), str(head / ".spprof" / "results.json"), "--fail-on-regression")
    assert done.returncode == 1, done.stderr
    report = done.stdout
    slower = report.split("### ", 1)[1]
    assert slower.startswith("1 test slower"), report
    row = next(line for line in slower.splitlines() if "test_calls_helper" in line)
    # 45 ms more of burn, called from helper: burn's own time grew, and it is named first.
    assert row.split("|")[5].strip().startswith("`pkg.work.burn` +"), row
    assert "`pkg.work.burn` explains 1 slower test" in report
    assert "test_steady" not in report and "faster" not in report


def run_of(times, functions=None, not_passed=()):
    return cmp.Run(Path("r"), dict(times), list(not_passed), functions)


def test_a_slower_machine_is_not_a_regression_and_its_pace_is_taken_out():
    base = {f"t{i}": (10 + i) * 1_000_000 for i in range(40)}
    head = {t: int(ns * 1.6) for t, ns in base.items()}  # the head job ran on a slower machine
    head["t7"] = base["t7"] * 4  # and one test really got slower: 2.5x at that pace
    c = cmp.compare(run_of(base), run_of(head))
    assert math.isclose(math.exp(c.pace), 1.6, rel_tol=1e-6)
    assert [ch.nodeid for ch in c.regressed] == ["t7"] and not c.improved
    assert math.isclose(math.exp(c.regressed[0].shift), 2.5, rel_tol=1e-6)


def test_a_run_whose_tests_move_a_lot_flags_only_beyond_its_spread():
    base = {f"t{i}": 20_000_000 for i in range(40)}
    head = {t: int(ns * (1.3 if i % 2 else 1 / 1.3)) for i, (t, ns) in enumerate(base.items())}
    head["t0"] = base["t0"] * 5
    c = cmp.compare(run_of(base), run_of(head))
    assert c.spread is not None and c.limit > math.log(1.3)  # ±30 % is this pair of runs' noise
    assert [ch.nodeid for ch in c.regressed] == ["t0"]


def test_tests_under_the_minimum_or_not_passing_are_not_judged():
    base = {"fast": 100_000, "ok": 50_000_000}
    head = {"fast": 900_000, "ok": 50_000_000}
    c = cmp.compare(run_of(base), run_of(head, not_passed=["gone"]))
    assert not c.regressed and c.spread is None  # two tests: no pace either
    assert "1 that failed or were skipped" in cmp.markdown(c)


def test_blame_is_growth_at_the_runs_pace():
    base = run_of({"t": 100_000_000}, {"t": {"a.f": 50_000_000, "a.g": 50_000_000}})
    head = run_of({"t": 300_000_000}, {"t": {"a.f": 50_000_000, "a.g": 250_000_000}})
    assert cmp.explain(base, head, "t", pace=0.0) == [("a.g", 200_000_000)]
    assert cmp.explain(base, head, "t", pace=math.log(2))[0] == ("a.g", 150_000_000)


@pytest.mark.parametrize(("filename", "function", "expected"), [
    ("/ckout/src/pkg/mod.py", "Class.method", "pkg.mod.Class.method"),
    ("/ckout/tests/test_x.py", "test_a", "tests.test_x.test_a"),
    ("/venv/lib/python3.12/site-packages/attr/_make.py", "_make_init", "attr._make._make_init"),
    ("/usr/lib/python3.13/json/__init__.py", "dumps", "json.dumps"),
    ("/venv/lib/python3.12/site-packages/_pytest/runner.py", "call", "<pytest harness>"),
    ("<pytest>", "<pytest harness>", "<pytest harness>"),  # as the run file writes pytest's own code
    ("<string>", "<lambda>", "<string>.<lambda>"),
])
def test_names_do_not_depend_on_where_the_run_was(filename, function, expected):
    assert cmp.portable_name(function, filename, False, "/ckout/") == expected


def test_the_checkout_is_found_from_the_test_ids():
    assert cmp.rootdir({"/usr/lib/python3.12/os.py", "/w/job/tests/test_x.py"}, {"tests/test_x.py::test_a": 1}) \
        == "/w/job/"


def test_bad_inputs_are_clear_errors(tmp_path):
    missing = compare_cli(str(tmp_path / "nowhere"), str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "nowhere: no such file" in missing.stderr
    other = tmp_path / "baseline.json"
    other.write_text(json.dumps({"format": "spprof-pytest-baseline"}))
    wrong = compare_cli(str(other), str(other))
    assert wrong.returncode == 2 and "is not the results.json of a pytest --spprof run" in wrong.stderr
    garbage = tmp_path / "results.json"
    garbage.write_text("{not json")
    assert "cannot be read as JSON" in compare_cli(str(garbage), str(garbage)).stderr
    tolerance = compare_cli(str(other), str(other), "--tolerance", "lots")
    assert tolerance.returncode == 2 and "--tolerance" in tolerance.stderr and "Traceback" not in tolerance.stderr


def test_without_run_files_the_report_says_blame_is_unknown(tmp_path):
    base, head = checkout(tmp_path / "a"), checkout(tmp_path / "b")
    pytest_run(base, "--spprof-no-arrow")
    pytest_run(head, "--spprof-no-arrow", slow=True)
    out = tmp_path / "report.md"
    done = compare_cli(str(base / ".spprof"), str(head / ".spprof"), "-o", str(out))
    assert done.returncode == 0 and done.stdout == "", done.stderr
    report = out.read_text()
    assert "test_calls_helper" in report and "the functions that explain them are not known" in report
