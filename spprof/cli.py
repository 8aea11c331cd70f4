"""``python -m spprof [options] script.py [args]`` / ``python -m spprof [options] -m module [args]``.

Profiles a whole program the way ``python -m cProfile`` does: the program sees its own
``sys.argv`` and runs as ``__main__``; its exit status is passed on.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from pathlib import Path
from typing import Any, List, Optional, Tuple

from . import _api, _ext
from ._model import FORMATS, resolve_format
from ._paths import check_writable
from ._summary import render

USAGE = ("python -m spprof [-i MS] [-o FILE] [--format FMT] [--subprocesses] [--async-aware] "
         "(script.py | -m module) [args ...]")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m spprof", usage=USAGE,
        description="Profile a Python program with spprof's in-process sampling profiler.")
    p.add_argument("-i", "--interval", type=float, default=10, metavar="MS",
                   help="sampling interval in milliseconds of CPU time (default: 10)")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write the profile here (format from the extension: .json speedscope, "
                        ".collapsed/.folded/.txt collapsed stacks, .svg flame graph, .html/.htm "
                        "flame graph and top functions); without it a summary of the hottest "
                        "functions goes to stderr")
    p.add_argument("--format", choices=sorted(FORMATS), help="output format (overrides the extension)")
    p.add_argument("--top", type=int, default=15, metavar="N",
                   help="functions in the summary (default: 15)")
    p.add_argument("--subprocesses", action="store_true",
                   help="profile the Python processes the program starts too (multiprocessing, "
                        "concurrent.futures, subprocess), merged into one profile whose flame graph "
                        "has a root per process")
    p.add_argument("--async-aware", action="store_true",
                   help="sample wall-clock time and give asyncio tasks their own samples: a waiting "
                        "task shows the coroutines it awaits instead of the event loop's select "
                        "(a task column in the data; tasks created after the start)")
    p.add_argument("-m", dest="module", metavar="module", help="run a library module as a script")
    p.add_argument("target", nargs="?", help="the script to profile")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the program")
    return p


#: Our options that take a value: what follows them is not the program.
_VALUE_OPTIONS = {"-i", "--interval", "-o", "--output", "--format", "--top"}


def _split_module(argv: List[str]) -> Tuple[List[str], Optional[str], List[str]]:
    """``[ours..., -m, module, theirs...]`` -> (ours, module, theirs): everything after the
    module is the module's, as with ``python -m``. Without ``-m``, (argv, None, [])."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "-m" and i + 1 < len(argv):
            return argv[:i], argv[i + 1], argv[i + 2:]
        if arg.startswith("-m") and len(arg) > 2:  # -mmodule
            return argv[:i], arg[2:], argv[i + 1:]
        if arg == "--" or not arg.startswith("-"):
            break  # the script: the rest is its own
        i += 2 if arg in _VALUE_OPTIONS else 1
    return argv, None, []


def main(argv: Optional[List[str]] = None) -> int:
    parser = _parser()
    ours, module, theirs = _split_module(sys.argv[1:] if argv is None else list(argv))
    opts = parser.parse_args(ours)
    opts.launcher = sys.argv[0]  # the `spprof` console script, or spprof/__main__.py
    if module is not None:
        if opts.target is not None:
            parser.error(f"give a script or -m module, not both ({opts.target!r} and -m {module})")
        opts.module = module
        program_args = theirs
    elif opts.target is None:
        parser.error("give a script to profile, or -m module")
    else:
        program_args = opts.args
    try:
        _api.check_interval_ms(opts.interval)
    except ValueError:
        parser.error(f"--interval must be a number of milliseconds from 1 to {_api.MAX_INTERVAL_MS}, "
                     f"got {opts.interval:g}")
    if opts.output is not None:
        try:
            resolve_format(Path(opts.output), opts.format)
            check_writable(opts.output, "-o")
        except ValueError as exc:
            parser.error(str(exc))

    if opts.module is not None:
        sys.argv = [opts.module, *program_args]
        sys.path.insert(0, os.getcwd())

        def run() -> None:
            runpy.run_module(opts.module, run_name="__main__", alter_sys=True)
    else:
        script = opts.target
        if not os.path.exists(script):
            parser.error(f"no such script: {script}")
        sys.argv = [script, *program_args]
        sys.path.insert(0, os.path.dirname(os.path.abspath(script)))

        def run() -> None:
            runpy.run_path(script, run_name="__main__")

    status = 0
    _api.start(interval_ms=opts.interval, subprocesses=opts.subprocesses,
               mode="wall" if opts.async_aware else "cpu", async_aware=opts.async_aware)
    try:
        run()
    except SystemExit as exc:
        status = _exit_status(exc.code)
    except BaseException:
        _finish(opts)
        raise
    _finish(opts)
    return status


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _without_launcher(data: Any, script: str) -> Any:
    """This process's samples (``ProfileData``) with each stack starting at the program: the
    frames of ``python -m spprof`` or the ``spprof`` command (``script``), of spprof's own code
    (with the imports it makes) and of runpy are cut from the root of the stacks, in the native
    store; samples of the launcher that are not in the program (start(), stop()) are left out.
    The stacks of the threads the program started do not start in the launcher: they stay."""
    here = os.path.realpath(os.path.dirname(__file__))
    ours = {os.path.realpath(runpy.__file__), os.path.realpath(script)}

    def launcher(filename: str) -> bool:  # the imports spprof's own code makes count too
        real = os.path.realpath(filename)
        return (filename in ("<frozen runpy>", "<frozen importlib._bootstrap>",
                             "<frozen importlib._bootstrap_external>")
                or real in ours or os.path.dirname(real) == here)

    native = _ext.require()
    frames = native.frames_of(data)
    ids = [i for i, (_, filename, _, _) in enumerate(frames) if launcher(filename)]
    # The program is what runpy's _run_code calls. Samples taken in start(), stop() or runpy's
    # preparations (os.fsdecode, importing pkgutil) leave the launcher elsewhere: left out.
    entries = [i for i in ids if frames[i][0] == "_run_code"]
    return native.below_launcher(data, ids, entries)


def _finish(opts: argparse.Namespace) -> None:
    if not _api.is_active():
        return  # the program stopped the profiler itself
    profile = _api._stop(own=lambda data: _without_launcher(data, opts.launcher))
    if opts.output is None:
        sys.stderr.write(render(profile, opts.top))
        return
    path = profile.save(opts.output, format=opts.format)
    fmt = resolve_format(path, opts.format)
    hints = {"speedscope": " (open it in https://www.speedscope.app)",
             "svg": " (open it in a browser)", "html": " (open it in a browser)"}
    hint = hints.get(fmt, "")
    print(f"spprof: wrote {len(profile.samples)} samples to {path}{hint}", file=sys.stderr)
