"""``python -m spprof`` profiles scripts and modules like ``python -m cProfile``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(*args, cwd=None):
    # Never the repository root: `python -m` would import the source tree instead of the install.
    cwd = cwd or Path(__file__).parent
    return subprocess.run([sys.executable, "-m", "spprof", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def test_profiles_a_script_into_a_speedscope_file(tmp_path):
    out = tmp_path / "profile.json"
    r = run("-i", "1", "-o", str(out), str(EXAMPLES / "hotspots.py"), "5")
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stderr and "speedscope" in r.stderr
    doc = json.loads(out.read_text())
    names = {f["name"] for f in doc["shared"]["frames"]}
    assert {"slow_sum", "parse_lines", "main", "<module>"} <= names


def test_summary_on_stderr_and_program_argv_and_exit_code(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        def busy():
            t = time.thread_time()
            while time.thread_time() - t < 0.3:
                pass
        busy()
        print("argv", sys.argv[1:], __name__)
        sys.exit(3)
    """))
    r = run(str(script), "a", "--b")
    assert r.returncode == 3
    assert "argv ['a', '--b'] __main__" in r.stdout
    assert "busy" in r.stderr and "self %" in r.stderr


def test_profiles_a_module_with_collapsed_output(tmp_path):
    pkg = tmp_path / "mymod.py"
    pkg.write_text("import sys\ndef spin():\n    return sum(i*i for i in range(3_000_000))\n"
                   "spin()\nprint(sys.argv)\n")
    out = tmp_path / "out.folded"
    r = run("-o", str(out), "-m", "mymod", "x", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "['mymod', 'x']" in r.stdout or "mymod.py', 'x']" in r.stdout
    assert "spin (" in out.read_text()


def test_everything_after_the_module_is_the_modules(tmp_path):
    (tmp_path / "tool.py").write_text("import sys\nprint(sys.argv[1:])\n")
    r = run("-i", "1", "-o", str(tmp_path / "out.collapsed"), "-m", "tool", "--its-args", "-o", "x", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "['--its-args', '-o', 'x']" in r.stdout
    r = run("-mtool", "-i", "5", cwd=tmp_path)
    assert r.returncode == 0 and "['-i', '5']" in r.stdout, r.stderr


def test_bad_options_are_usage_errors(tmp_path):
    for bad in ("0", "inf", "nan", "1e400"):
        r = run("-i", bad, str(EXAMPLES / "hotspots.py"))
        assert r.returncode == 2 and "from 1 to" in r.stderr, r.stderr
    # Before the program runs: a profile that cannot be written is not lost at the end.
    marker = tmp_path / "ran"
    script = tmp_path / "prog.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    r = run("-o", str(tmp_path / "nodir" / "x.json"), str(script))
    assert r.returncode == 2 and "does not exist" in r.stderr and not marker.exists(), r.stderr
    r = run("-o", str(tmp_path / "x.pdf"), str(EXAMPLES / "hotspots.py"))
    assert r.returncode == 2 and "extension" in r.stderr
    r = run(str(tmp_path / "missing.py"))
    assert r.returncode == 2 and "no such script" in r.stderr
    r = run()
    assert r.returncode == 2


def test_the_example_does_what_its_docstring_says():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import hotspots
    finally:
        sys.path.remove(str(EXAMPLES))
    assert 2.4 < hotspots.cpu_ratio() < 3.6  # "three times as long", with room for noise


def test_from_a_checkout_the_source_folder_hands_over_to_the_installed_spprof(tmp_path):
    # `python -m spprof` in the repository root imports the source folder first: without a
    # compiled extension of its own, it takes its modules from the installed spprof.
    import shutil

    import spprof

    installed = Path(spprof.__path__[0])
    shutil.copytree(installed, tmp_path / "spprof", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    code = "import spprof, sys; print(spprof.__path__[0]); print(spprof._native.__file__)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(installed), spprof._native.__file__]
    r = run("-o", str(tmp_path / "p.json"), str(EXAMPLES / "hotspots.py"), "2", cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "p.json").exists(), r.stderr
    # With no installed copy to hand over to, one error names the cause and the fix.
    r = subprocess.run([sys.executable, "-S", "-c", "import spprof; spprof.start()"], capture_output=True,
                       text=True, cwd=tmp_path, timeout=60)
    assert "compiled extension is not in" in r.stderr and "pip install ." in r.stderr, r.stderr
    assert "circular import" not in r.stderr


def test_stacks_start_at_the_program_and_a_double_dash_is_accepted(tmp_path):
    out = tmp_path / "out.collapsed"
    r = run("-i", "1", "-o", str(out), "--", str(EXAMPLES / "hotspots.py"), "3")
    assert r.returncode == 0, r.stderr
    roots = {line.split(";")[0].rsplit(":", 1)[0] for line in out.read_text().splitlines()}
    assert roots == {f"<module> ({EXAMPLES / 'hotspots.py'}"}, roots  # no runpy or CLI frame


def test_the_threads_the_program_starts_are_profiled(tmp_path):
    # Their stacks start in threading, not in the launcher: they were left out.
    script = tmp_path / "threads.py"
    script.write_text(textwrap.dedent("""
        import threading, time

        def burn(seconds):
            deadline = time.thread_time() + seconds
            while time.thread_time() < deadline:
                pass

        helper = threading.Thread(target=burn, args=(0.3,), name="helper")
        helper.start()
        burn(0.2)
        helper.join()
    """))
    out = tmp_path / "threads.json"
    r = run("-o", str(out), str(script))
    assert r.returncode == 0, r.stderr
    totals = {p["name"].split(" (")[0]: p["endValue"] for p in json.loads(out.read_text())["profiles"]}
    # CPU time: each thread within a sampling interval or two of what it burnt.
    assert abs(totals["helper"] - 0.3e9) < 0.05e9, totals
    assert abs(totals["MainThread"] - 0.2e9) < 0.05e9, totals


def test_samples_taken_in_start_and_stop_are_left_out_and_the_command_script_is_cut():
    # A sample in stop() can end in the standard library (contextlib, under _ctrl_c_after):
    # with the launcher cut, it would become a root of its own beside the program's. The
    # `spprof` command's script is the launcher's root.
    import contextlib
    import runpy
    from datetime import datetime

    import spprof
    from spprof import cli

    def stack(*frames):
        return [spprof.Frame(f, file, 1) for f, file in frames]

    launcher = [("<module>", "/venv/bin/spprof"), ("main", cli.__file__), ("run_path", runpy.__file__),
                ("_run_code", runpy.__file__)]
    stop = [("<module>", "/venv/bin/spprof"), ("main", cli.__file__), ("_finish", cli.__file__),
            ("stop", spprof._api.__file__), ("__enter__", contextlib.__file__)]
    # runpy decodes the script's path before it runs it: not the program either.
    prepare = [("<module>", "/venv/bin/spprof"), ("main", cli.__file__), ("run_path", runpy.__file__),
               ("_fscodec.<locals>.fsdecode", "<frozen os>")]
    # `python -m spprof` runs spprof itself through runpy's _run_code too.
    stop_module = [("_run_module_as_main", runpy.__file__), ("_run_code", runpy.__file__),
                   ("<module>", str(Path(cli.__file__).with_name("__main__.py"))), *stop[1:]]
    program = [("<module>", "/x/prog.py"), ("work", "/x/prog.py")]
    samples = [spprof.Sample(i, 1, "MainThread", frames, weight_ns=1000)
               for i, frames in enumerate([stack(*launcher, *program), stack(*stop), stack(*launcher),
                                           stack(*prepare), stack(*stop_module)])]
    now = datetime.now()
    whole = spprof.Profile(now, now, 1.0, samples, 0, "3.x", "linux")
    cut = whole._derived(cli._without_launcher(whole._native(), "/venv/bin/spprof"))
    assert [[f.function_name for f in s.frames] for s in cut.samples] == [["<module>", "work"]]
