"""The ``%%spprof`` / ``%spprof`` magics."""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

import spprof
from spprof import Profile
from spprof._api import MAX_INTERVAL_MS, check_interval_ms
from spprof._ext import require as _native
from spprof._model import resolve_format
from spprof._paths import check_writable

from ._result import DEFAULT_TOP, CellProfile

#: Sampling interval of a cell (ms): cells are short, so sample as often as the profiler allows.
DEFAULT_INTERVAL_MS = 1.0
#: Average bytes between memory samples (KiB) for ``--memory`` without a value.
DEFAULT_MEMORY_RATE_KB = 64
#: The name the latest result is bound to in the user's namespace.
RESULT_NAME = "_spprof"

_ALLOW_TOP_LEVEL_AWAIT = getattr(ast, "PyCF_ALLOW_TOP_LEVEL_AWAIT", 0)
#: Options that take a value (the line magic tells them from the statement that follows).
_VALUE_OPTIONS = {"-i", "--interval", "-o", "--output", "--top"}
_TOKEN = re.compile(r"""\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|\S+)""")


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def split_options(line: str) -> Tuple[str, str]:
    """Split a line-magic line into its leading options and the statement after them
    (``%spprof -i 5 f(-1)``: ``"-i 5"``, ``"f(-1)"``); ``--`` ends the options explicitly."""
    pos = 0
    expect_value = False
    while True:
        m = _TOKEN.match(line, pos)
        if not m:
            break
        token = m.group(1)
        if expect_value:
            expect_value = False
        elif token == "--":
            return line[:m.start(1)], line[m.end():].strip()
        elif token.startswith("-") and len(token) > 1 and not token[1].isdigit():
            name = token.split("=", 1)[0]
            expect_value = name in _VALUE_OPTIONS and "=" not in token
            if name == "--memory" and "=" not in token:
                nxt = _TOKEN.match(line, m.end())
                if nxt and nxt.group(1).isdigit():
                    pos = nxt.end()
                    continue
        else:
            break
        pos = m.end()
    return line[:pos], line[pos:].strip()


class _Run:
    """One profiled execution: options checked and the code compiled before profiling starts."""

    def __init__(self, shell: Any, args: Any, source: str, is_cell: bool) -> None:
        self.shell = shell
        self.args = args
        self.is_cell = is_cell
        memprof = None
        if args.memory is not None:
            from spprof import memprof

            if args.memory < 1:
                raise UsageError(f"--memory: the sampling rate must be at least 1 KiB, got {args.memory}")
        self.memprof = memprof
        self.cpu = args.memory is None or args.cpu or args.wall or args.async_aware or args.interval is not None
        self.interval = DEFAULT_INTERVAL_MS if args.interval is None else args.interval
        try:
            check_interval_ms(self.interval)
        except ValueError:
            raise UsageError(f"-i/--interval must be a number of milliseconds from 1 to {MAX_INTERVAL_MS}, "
                             f"got {args.interval}") from None
        if args.top is not None and args.top < 0:
            raise UsageError(f"--top must be 0 or more, got {args.top}")
        if args.output:
            args.output = _unquote(args.output)
            try:
                resolve_format(Path(args.output), None)
                check_writable(args.output, "path")
            except ValueError as exc:
                raise UsageError(f"-o/--output: {exc}") from None
        if self.cpu and spprof.is_active():
            raise UsageError("profiling is already active (a %%spprof inside another, or spprof.start() "
                             "without stop()); stop it first")
        self._compile(source)

    # -- compiling ------------------------------------------------------------------------------

    def _compile(self, source: str) -> None:
        shell = self.shell
        code = shell.transform_cell(source)  # IPython syntax (magics, !cmd) inside the cell works
        self.filename = shell.compile.cache(code, shell.execution_count)  # tracebacks show the source
        tree = shell.compile.ast_parse(code, filename=self.filename)
        tree = shell.transform_ast(tree)
        flags = shell.compile.flags | (_ALLOW_TOP_LEVEL_AWAIT if shell.autoawait else 0)
        body: List[ast.stmt] = list(tree.body)
        last: Optional[ast.expr] = None
        if body and isinstance(body[-1], ast.Expr):
            last = body.pop().value  # type: ignore[attr-defined]
        self.display_value = self.is_cell and last is not None and not code.rstrip().endswith(";")
        self.body_code = compile(ast.Module(body=body, type_ignores=[]), self.filename, "exec", flags,
                                 dont_inherit=True)
        self.last_code = (compile(ast.Expression(body=last), self.filename, "eval", flags, dont_inherit=True)
                          if last is not None else None)
        self.is_async = any(c is not None and c.co_flags & inspect.CO_COROUTINE
                            for c in (self.body_code, self.last_code))

    # -- profiling ------------------------------------------------------------------------------

    def start(self) -> None:
        self.mem_cm = None
        if self.memprof is not None:
            self.mem_cm = self.memprof.MemoryProfiler(sampling_rate_kb=self.args.memory)
            self.mem_cm.__enter__()
        if self.cpu:
            try:
                wall = self.args.wall or self.args.async_aware
                spprof.start(interval_ms=self.interval, mode="wall" if wall else "cpu",
                             subprocesses=self.args.subprocesses, async_aware=self.args.async_aware)
            except BaseException:
                self._stop_memory()
                raise

    def _stop_memory(self) -> Any:
        if self.mem_cm is None:
            return None
        cm, self.mem_cm = self.mem_cm, None
        cm.__exit__(None, None, None)
        return getattr(cm, "snapshot", None)

    def stop(self, value: Any, failed: bool) -> Optional[CellProfile]:
        """Stop profiling (always: also on errors and KeyboardInterrupt), bind the result to
        ``_spprof``, save it with ``-o``, display the cell's value; the magic's return value."""
        raw = None
        try:
            if self.cpu and spprof.is_active():
                raw = spprof.stop()
        finally:
            memory = self._stop_memory()
        profile = self._trim(raw) if raw is not None else None
        result = CellProfile(profile, memory, raw_profile=raw, value=value,
                              top_n=DEFAULT_TOP if self.args.top is None else self.args.top,
                              interval_ms=self.interval if self.cpu else None,
                              memory_rate_kb=self.args.memory)
        self.shell.user_ns[RESULT_NAME] = result
        if failed:
            return None
        if self.args.output:
            result.save(self.args.output)
        if self.display_value and value is not None:
            display(value)
        return None if self.args.quiet else result

    def _trim(self, profile: Profile) -> Profile:
        """The profile with the stacks that run the cell starting at the cell: the IPython and
        kernel frames below it say nothing about the cell and crowd the flame graph. Cut in the
        native store, which keeps what it knows of the processes (``--subprocesses``)."""
        native = _native()
        data = profile._native()
        cell = [i for i, (function, filename, _, _) in enumerate(native.frames_of(data))
                if filename == self.filename and function.endswith("<module>")]
        return profile._derived(native.starting_at(data, cell)) if cell else profile

    # -- running --------------------------------------------------------------------------------

    def _namespaces(self) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        return self.shell.user_global_ns, self.shell.user_ns

    def run(self) -> Optional[CellProfile]:
        __tracebackhide__ = True  # noqa: F841  (IPython hides this frame in tracebacks)
        if self.is_async:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                # Not inside a running event loop (terminal IPython, InteractiveShell): run the
                # coroutine the way IPython runs an async cell.
                return self.shell.loop_runner(self.run_async())
            raise UsageError("top-level await in the %spprof line magic cannot run inside the kernel's "
                             "event loop; put the code in a %%spprof cell instead")
        g, ns = self._namespaces()
        self.start()
        value, failed = None, True
        try:
            exec(self.body_code, g, ns)
            if self.last_code is not None:
                value = eval(self.last_code, g, ns)
            failed = False
        finally:
            result = self.stop(value, failed)
        return result

    async def run_async(self) -> Optional[CellProfile]:
        __tracebackhide__ = True  # noqa: F841
        g, ns = self._namespaces()
        self.start()
        value, failed = None, True
        try:
            body = eval(self.body_code, g, ns)
            if inspect.iscoroutine(body):
                await body
            if self.last_code is not None:
                value = eval(self.last_code, g, ns)
                if self.last_code.co_flags & inspect.CO_COROUTINE:
                    value = await value
            failed = False
        finally:
            result = self.stop(value, failed)
        return result


@magics_class
class SpprofMagics(Magics):
    @magic_arguments()
    @argument("-i", "--interval", type=float, default=None, metavar="MS",
              help=f"sampling interval in milliseconds (default {DEFAULT_INTERVAL_MS:g}; CPU-time timers "
                   "fire at most once per kernel tick, about every 4 ms)")
    @argument("--wall", action="store_true",
              help="sample wall-clock time (threads that wait are sampled too) instead of CPU time")
    @argument("--memory", nargs="?", type=int, const=DEFAULT_MEMORY_RATE_KB, default=None, metavar="RATE_KB",
              help="profile memory (live heap at the end of the cell), one sample every RATE_KB KiB "
                   f"allocated on average (default {DEFAULT_MEMORY_RATE_KB}); alone it profiles memory only, "
                   "with --cpu, --wall or -i also CPU")
    @argument("--cpu", action="store_true", help="with --memory: profile CPU time as well")
    @argument("--subprocesses", action="store_true",
              help="profile the Python processes the cell starts too (multiprocessing, concurrent.futures, "
                   "subprocess): one profile, a root per process in its flame graph")
    @argument("--async-aware", action="store_true",
              help="sample wall-clock time and give the asyncio tasks the cell creates their own samples: a "
                   "waiting task shows the coroutines it awaits (a task column in the data)")
    @argument("-o", "--output", metavar="PATH",
              help="also save the profile to PATH; the format comes from the extension: .json "
                   "(speedscope), .collapsed/.folded/.txt, .svg (flame graph), .html")
    @argument("-q", "--quiet", action="store_true",
              help="display nothing and return None; the result is still bound to _spprof")
    @argument("--top", type=int, default=None, metavar="N",
              help=f"rows of the top-functions table (default {DEFAULT_TOP})")
    @argument("statement", nargs="*", help="(line magic) the statement to profile")
    @line_cell_magic
    def spprof(self, line: str, cell: Optional[str] = None) -> Optional[CellProfile]:
        """Profile a cell (``%%spprof``) or one statement (``%spprof stmt``) with spprof.

        The code runs in the notebook's namespace as it would without the magic: the variables it
        defines stay, its exceptions propagate (after profiling stopped), top-level ``await``
        works, output passes through. In a cell, the last expression's value is displayed as
        usual, before the profile. The value of the magic is a result with an inline flame graph
        and the top functions, also bound to ``_spprof``:

            r = _spprof
            r.profile                 # spprof.Profile (stacks start at the cell)
            r.samples, r.frames       # Arrow tables; r.to_pandas("frames"), r.to_polars(...)
            r.top(10), r.diff(older_result), r.save("cell.svg"), r.memory (with --memory)

        Examples::

            %%spprof
            result = work()

            %%spprof -i 5 --wall -o cell.html
            await fetch_all()

            %spprof -q work()         # result in _spprof only
        """
        __tracebackhide__ = True  # noqa: F841
        if cell is None:
            options, statement = split_options(line)
            args = parse_argstring(self.spprof, options)
            if not statement:
                raise UsageError("%spprof needs a statement to profile (or use the %%spprof cell magic)")
            source, is_cell = statement, False
        else:
            args = parse_argstring(self.spprof, line)
            if args.statement:
                raise UsageError(f"%%spprof: unexpected arguments {' '.join(args.statement)!r}; "
                                 "see %%spprof? for the options")
            source, is_cell = cell, True
        return _Run(self.shell, args, source, is_cell).run()


async def run_async_cell(shell: Any, line: str, cell: str) -> Optional[CellProfile]:
    """What a ``%%spprof`` cell with top-level ``await`` becomes (see ``async_cell_transformer``):
    awaited by IPython in its event loop, like any async cell."""
    __tracebackhide__ = True  # noqa: F841
    # IPython expands {variables} in a magic's line; the frame above is the cell's.
    args = parse_argstring(SpprofMagics.spprof, shell.var_expand(line, 1))
    if args.statement:
        raise UsageError(f"%%spprof: unexpected arguments {' '.join(args.statement)!r}")
    return await _Run(shell, args, cell, True).run_async()


_CELL_HEADER = re.compile(r"%%spprof(?=\s|$)(.*)$")


def _is_async(shell: Any, source: str) -> bool:
    try:
        code = shell.input_transformer_manager.transform_cell(source)
        compiled = compile(code, "<spprof>", "exec", _ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    except Exception:
        return False  # a syntax error shows when the magic compiles the cell itself
    return bool(compiled.co_flags & inspect.CO_COROUTINE)


def make_async_cell_transformer(shell: Any) -> Any:
    """A cleanup input transformer: a ``%%spprof`` cell whose body awaits at top level becomes
    ``await <run the cell under the profiler>``, so IPython runs it in its event loop (ipykernel's
    running loop included), as the same cell without the magic would be run. Other cells pass."""

    def spprof_async_cells(lines: List[str]) -> List[str]:
        if not lines or not shell.autoawait:
            return lines
        m = _CELL_HEADER.match(lines[0].rstrip("\n"))
        if not m:
            return lines
        body = "".join(lines[1:])
        if not _is_async(shell, body):
            return lines
        return [f"await __import__('spprof_jupyter')._run_async_cell("
                f"get_ipython(), {m.group(1).strip()!r}, {body!r})\n"]

    spprof_async_cells.spprof = True  # type: ignore[attr-defined]
    return spprof_async_cells
