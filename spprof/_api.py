"""The CPU profiler API: start/stop, Profiler, @profile, thread registration."""

from __future__ import annotations

import _thread
import atexit
import contextlib
import functools
import numbers
import os
import signal as _signal
import sys
import threading
import warnings
from datetime import datetime

from . import _ext
from ._ext import native as _native

# Annotations only: `import spprof` stays cheap (typing, dataclasses and the model's imports
# cost most of it); the model is imported when a profile is made.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Iterator, List, Optional, Tuple, TypeVar, Union

    from ._model import NativeFrame, PathLike, Profile, ProfilerStats

    F = TypeVar("F", bound=Callable[..., Any])


class _Run:
    """What stop() needs of the start() call."""

    def __init__(self, start_time: datetime, interval_ms: float, output_path: Optional[PathLike],
                 children: Any = None, origin_ns: int = 0, tasks: Any = None) -> None:
        self.start_time, self.interval_ms, self.output_path = start_time, interval_ms, output_path
        # With subprocesses=True: the children's folder (a _subprocesses.Children), and where
        # this process's clock started, to put the children's samples (and the tasks') on it.
        self.children, self.origin_ns = children, origin_ns
        # With async_aware=True: the asyncio tasks' steps and waits (a _tasks.Tracker).
        self.tasks = tasks
        # In a child profiled for its parent: what gives the parent its samples, so that the
        # child's own start() can take over (set by hand_over_on_start).
        self.handover: Optional[Callable[[], None]] = None


_run: Optional[_Run] = None
# start() and stop() run one at a time, so that concurrent calls from several threads each
# either succeed or raise the documented RuntimeError (and _run always matches the session).
_lifecycle = threading.Lock()


#: Bounds of start()'s numbers: a tick at least every hour, a store of at most 1 TiB.
MAX_INTERVAL_MS = 3_600_000
MAX_MEMORY_LIMIT_MB = 1 << 20


def _check_number(name: str, value: Any, minimum: float, maximum: float, unit: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of {unit}, not {type(value).__name__}")
    if not minimum <= value <= maximum:  # also rejects NaN and infinities
        raise ValueError(f"{name} must be a number of {unit} from {minimum:g} to {maximum:g}, got {value!r}")
    return float(value)


def check_interval_ms(value: Any) -> float:
    """The sampling interval every front end accepts, in ms; TypeError/ValueError otherwise."""
    return _check_number("interval_ms", value, 1, MAX_INTERVAL_MS, "milliseconds")


def _check_output_path(output_path: Any) -> None:
    if output_path is not None and not isinstance(output_path, (str, os.PathLike)):
        raise TypeError(
            f"output_path must be a str or os.PathLike, not {type(output_path).__name__}")
    if output_path is not None:
        from ._paths import check_writable

        check_writable(output_path, "output_path")


MODES = ("cpu", "wall")
#: The signals that may carry sampling ticks: those no application relies on the default action
#: of (job control, termination requests, crashes, SIGCHLD, SIGPIPE are refused).
_TICK_SIGNALS = frozenset({_signal.SIGPROF, _signal.SIGVTALRM, _signal.SIGALRM, _signal.SIGUSR1, _signal.SIGUSR2,
                           *range(_signal.SIGRTMIN, _signal.SIGRTMAX + 1)})


def _check_mode_and_signal(mode: Any, signum: Any) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be 'cpu' (CPU time, the default) or 'wall' (elapsed time), not {mode!r}")
    if signum is None:
        return
    if isinstance(signum, bool) or not isinstance(signum, int):
        raise TypeError(f"signum must be a signal number (e.g. signal.SIGPROF), not {type(signum).__name__}")
    if signum not in _TICK_SIGNALS:
        try:
            name = _signal.Signals(signum).name
        except ValueError:
            name = str(signum)
        raise ValueError(f"signum {name} cannot carry sampling ticks; use signal.SIGPROF (the default), "
                         "SIGVTALRM, SIGALRM, SIGUSR1, SIGUSR2 or a real-time signal such as signal.SIGRTMIN + 1")


def _tick_signal(native: Any, signum: Optional[int]) -> int:
    """The signal asked for, or SIGPROF; when the application handles SIGPROF itself, a free
    real-time signal instead: a standard signal does not queue, so sharing SIGPROF lost about a
    quarter of the application's ticks (and some of ours)."""
    if signum is not None:
        return signum
    if not native.signal_handled_by_another(_signal.SIGPROF):
        return _signal.SIGPROF
    for candidate in range(_signal.SIGRTMIN + 1, _signal.SIGRTMAX + 1):
        if not native.signal_handled_by_another(candidate):
            return candidate
    return _signal.SIGPROF


def _register_this_thread(name: str) -> None:
    if _native is not None and _native.is_active():
        try:
            _native.register_thread(name)
        except RuntimeError as exc:  # never break the user's thread over profiling
            warnings.warn(f"spprof could not sample thread {name!r}: {exc}", RuntimeWarning, stacklevel=3)


def _install_thread_start_hooks() -> None:
    """Threads register themselves before running their target, so even short-lived threads
    are sampled from their first instruction: ``threading.Thread`` through its bootstrap, raw
    ``_thread.start_new_thread`` threads through a wrapper of their function. Threads started
    any other way (e.g. from C) are found by the resolver thread's periodic scan."""
    original = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]
    if getattr(original, "__spprof_hook__", False):
        return

    def _bootstrap_inner(self: threading.Thread) -> None:
        _register_this_thread(self.name)
        original(self)

    start_new_thread = _thread.start_new_thread

    def _start_new_thread(function: Callable[..., Any], args: tuple, kwargs: Any = None) -> int:
        def run(*a: Any, **kw: Any) -> Any:
            _register_this_thread(f"Thread-{threading.get_native_id()}")
            return function(*a, **kw)

        return start_new_thread(run, args, kwargs or {})

    _bootstrap_inner.__spprof_hook__ = True  # type: ignore[attr-defined]
    threading.Thread._bootstrap_inner = _bootstrap_inner  # type: ignore[attr-defined]
    _thread.start_new_thread = _start_new_thread
    if hasattr(_thread, "start_new"):  # the old alias
        _thread.start_new = _start_new_thread  # type: ignore[attr-defined]


def _check_subprocesses(subprocesses: Any) -> None:
    if not isinstance(subprocesses, bool):
        raise TypeError(f"subprocesses must be True or False, not {type(subprocesses).__name__}")


def _check_async_aware(async_aware: Any, mode: str) -> None:
    if not isinstance(async_aware, bool):
        raise TypeError(f"async_aware must be True or False, not {type(async_aware).__name__}")
    if async_aware and mode != "wall":
        raise ValueError("async_aware=True needs mode='wall': a task that waits uses no CPU time, "
                         "so only wall-clock samples can show it")


def start(interval_ms: float = 10, output_path: Optional[PathLike] = None,
          memory_limit_mb: float = 100, *, mode: str = "cpu",
          signum: Optional[int] = None, subprocesses: bool = False, async_aware: bool = False) -> None:
    """Start profiling every Python thread.

    ``mode="cpu"`` (default) samples each thread's CPU time; ``mode="wall"`` samples every thread
    on the monotonic clock, running or waiting. ``signum`` is the signal that carries the
    sampling ticks: by default SIGPROF, or a free real-time signal when the application has its
    own SIGPROF handler. ``subprocesses=True`` profiles the Python processes this one starts
    (multiprocessing, concurrent.futures, subprocess) too: ``stop()`` merges their profiles
    into this one (a ``pid`` per sample, the processes as the flame graph's roots).
    ``async_aware=True`` (wall mode) gives the asyncio tasks their own samples: a task that runs
    gets the ticks of its event loop's thread, and a task that waits gets a sample per tick with
    the chain of coroutines it awaits (``Sample.task``, a ``task`` column).

    Raises ``RuntimeError`` if profiling is already active, ``ValueError`` if ``interval_ms < 1``.
    """
    global _run
    interval = check_interval_ms(interval_ms)
    limit = _check_number("memory_limit_mb", memory_limit_mb, 0.25, MAX_MEMORY_LIMIT_MB, "MB")
    _check_output_path(output_path)
    _check_mode_and_signal(mode, signum)
    _check_subprocesses(subprocesses)
    _check_async_aware(async_aware, mode)
    native = _ext.require()
    run = _run
    if run is not None and run.handover is not None:
        run.handover()  # this process was profiled for its parent: that profile ends here
    with _lifecycle:
        if native.is_active():
            raise RuntimeError("Profiler already running: profiling is already active; call spprof.stop() "
                               "first (spprof.is_active() tells)")
        _install_thread_start_hooks()
        _, fallback = native.start(int(interval * 1_000_000), int(limit * 1024 * 1024),
                                   threading.current_thread().name, mode == "wall",
                                   _tick_signal(native, signum), _native_unwinding)
        children = None
        if subprocesses:
            from ._subprocesses import Children

            try:
                children = Children(sys.modules[__name__], interval_ms, mode, memory_limit_mb)
            except BaseException:
                native.stop()
                raise
        tasks = None
        if async_aware:
            from ._tasks import Tracker

            tasks = Tracker(native.samples_taken)
            tasks.install()
        _run = _Run(datetime.now().astimezone(), interval_ms, output_path, children,
                    clock_origin_ns() if subprocesses or async_aware else 0, tasks)
    if fallback:
        warnings.warn(f"spprof: CPU-time timers are refused here ({fallback}); sampling wall-clock "
                      "time instead (see spprof.stats().fallback_reason)", RuntimeWarning, stacklevel=2)


def hand_over_on_start(handover: Callable[[], None]) -> None:
    """Have a ``start()`` made while the running profile is one a child process takes for its
    parent call ``handover`` first (which stops it), instead of refusing to start."""
    if _run is not None:
        _run.handover = handover


def clock_origin_ns() -> int:
    """CLOCK_MONOTONIC (``time.monotonic_ns()``) at the running profile's timestamp 0."""
    import time

    m0 = time.monotonic_ns()
    raw = _native.stats() if _native is not None else None
    m1 = time.monotonic_ns()
    return (m0 + m1) // 2 - (raw["duration_ns"] if raw else 0)


def stop() -> Profile:
    """Stop profiling and return the profile (saved to ``output_path`` if ``start`` got one).

    A Ctrl-C while it runs is held until the profile is saved, then raised."""
    return _stop()


def _take_samples() -> Tuple[Any, _Run]:
    """Stop sampling (``_lifecycle`` held): this process's samples (``ProfileData``), and the
    start() call they answer."""
    global _run
    native = _ext.require()
    if not native.is_active():
        raise RuntimeError("Profiler not running: profiling is not active; call spprof.start() first")
    run = _run
    if run is not None and run.tasks is not None:
        run.tasks.close()  # while the sample count still runs: it closes the waits it saw
    data = native.stop()
    _run = None
    if run is not None and run.tasks is not None:
        data = run.tasks.apply(data, run.origin_ns)
    return data, run


def stop_samples() -> Any:
    """``stop()`` for a child process that hands its samples to its parent: the ``ProfileData``
    as it is, without the ``Profile`` (whose module the child would import for nothing)."""
    with _lifecycle:
        return _take_samples()[0]


def _stop(own: Optional[Callable[[Any], Any]] = None) -> Profile:
    """``stop()``, with ``own`` applied to this process's samples (``ProfileData``) before the
    children's are merged in: the CLI cuts its launcher from them."""
    with _ctrl_c_after(), _lifecycle:
        data, run = _take_samples()
        if own is not None:
            data = own(data)
        if run.children is not None:
            data = run.children.merge(data, run.origin_ns)
        from ._model import Profile

        profile = Profile._from_native(
            data,
            start_time=run.start_time,
            end_time=datetime.now().astimezone(),
            interval_ms=run.interval_ms,
            python_version=".".join(map(str, sys.version_info[:3])),
            platform=f"{os.uname().sysname}-{os.uname().machine}",
        )
        if run.output_path is not None:
            profile.save(run.output_path)
    return profile


@contextlib.contextmanager
def _ctrl_c_after() -> Iterator[None]:
    """Hold SIGINT's KeyboardInterrupt until the block is done (a profile half taken out of
    the sampler, or half saved, would be lost). Only in the main thread, and only while SIGINT
    has Python's default handler: an application's own handler is left alone."""
    if (threading.current_thread() is not threading.main_thread()
            or _signal.getsignal(_signal.SIGINT) is not _signal.default_int_handler):
        yield
        return
    pending: List[int] = []
    _signal.signal(_signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)
    if pending:
        raise KeyboardInterrupt


def is_active() -> bool:
    """Whether profiling is running."""
    return _native is not None and _native.is_active()


def stats() -> Optional[ProfilerStats]:
    """Counters of the running profile, or None when profiling is not active."""
    if _native is None:
        return None
    raw = _native.stats()
    if raw is None:
        return None
    duration_ns = max(raw["duration_ns"], 1)
    from ._model import ProfilerStats

    return ProfilerStats(
        collected_samples=raw["collected_samples"],
        dropped_samples=raw["dropped_samples"],
        duration_ms=raw["duration_ns"] / 1e6,
        threads_sampled=raw["threads_sampled"],
        overhead_pct=100.0 * raw["handler_ns"] / duration_ns,
        overhead_estimate_pct=100.0 * raw["handler_ns"] / duration_ns,
        memory_bytes=raw["memory_bytes"],
        mode=raw["mode"],
        fallback_reason=raw["fallback_reason"],
        signal=raw["signal"],
        threads_seen=raw["threads_seen"],
    )


def register_thread() -> bool:
    """Sample the calling thread. Every Python thread is sampled automatically; this only makes
    sure of it (e.g. right at a thread's start). Harmless if it already is; False when nothing
    changed (already sampled, or profiling not active)."""
    if _native is None or not _native.is_active():
        return False
    return _native.register_thread(threading.current_thread().name)


def unregister_thread() -> bool:
    """Stop sampling the calling thread (its samples so far are kept)."""
    return _native is not None and _native.unregister_thread()


class ThreadProfiler:
    """``with spprof.ThreadProfiler():`` samples the calling thread for the block."""

    def __enter__(self) -> ThreadProfiler:
        self._registered = register_thread()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._registered:
            unregister_thread()


class Profiler:
    """``with spprof.Profiler(interval_ms=5) as p: ...`` then ``p.profile``."""

    def __init__(self, interval_ms: float = 10, output_path: Optional[PathLike] = None,
                 memory_limit_mb: float = 100, *, mode: str = "cpu",
                 signum: Optional[int] = None, subprocesses: bool = False,
                 async_aware: bool = False) -> None:
        # Validate now, so a bad argument fails where it was written.
        check_interval_ms(interval_ms)
        _check_number("memory_limit_mb", memory_limit_mb, 0.25, MAX_MEMORY_LIMIT_MB, "MB")
        _check_output_path(output_path)
        _check_mode_and_signal(mode, signum)
        _check_subprocesses(subprocesses)
        _check_async_aware(async_aware, mode)
        self.interval_ms = interval_ms
        self.output_path = output_path
        self.memory_limit_mb = memory_limit_mb
        self.mode = mode
        self.signum = signum
        self.subprocesses = subprocesses
        self.async_aware = async_aware
        self.profile: Optional[Profile] = None

    def __enter__(self) -> Profiler:
        start(self.interval_ms, self.output_path, self.memory_limit_mb, mode=self.mode,
              signum=self.signum, subprocesses=self.subprocesses, async_aware=self.async_aware)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.profile = stop()


def profile(func: Optional[F] = None, *, interval_ms: float = 10,
            output_path: Optional[PathLike] = None, memory_limit_mb: float = 100,
            mode: str = "cpu", signum: Optional[int] = None,
            subprocesses: bool = False, async_aware: bool = False) -> Union[F, Callable[[F], F]]:
    """Decorator: profile every call of the function (``@spprof.profile`` or
    ``@spprof.profile(interval_ms=..., output_path=...)``). The latest call's profile is the
    wrapper's ``last_profile``. Inside an already running profile, calls just run (the outer
    profile sees them)."""
    options = dict(interval_ms=interval_ms, output_path=output_path,
                   memory_limit_mb=memory_limit_mb, mode=mode, signum=signum,
                   subprocesses=subprocesses, async_aware=async_aware)
    Profiler(**options)  # type: ignore[arg-type]  # validate arguments at decoration time

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def outer(*args: Any, **kwargs: Any) -> Any:
            if is_active():
                return fn(*args, **kwargs)
            p = Profiler(**options)  # type: ignore[arg-type]
            try:
                with p:
                    return fn(*args, **kwargs)
            finally:
                outer.last_profile = p.profile  # type: ignore[attr-defined]

        outer.last_profile = None  # type: ignore[attr-defined]
        return outer  # type: ignore[return-value]

    if func is not None:
        if not callable(func):
            raise TypeError("spprof.profile decorates a function; use @spprof.profile(...) "
                            "with keyword arguments")
        return decorate(func)
    return decorate


_native_unwinding = False


def native_unwinding_available() -> bool:
    """Whether samples can carry native (C, C++, Rust) frames merged with the Python frames:
    Linux on x86-64, with the native extension loaded."""
    return (_native is not None and hasattr(_native, "capture_native_stack")
            and sys.platform.startswith("linux") and os.uname().machine in ("x86_64", "AMD64"))


def set_native_unwinding(enabled: bool) -> None:
    """Turn native frame capture on or off for the next ``start()``. Each sample then carries the
    native frames of the sampled thread, with the eval loop's frames replaced by the Python frames
    they run (``Frame.is_native`` tells them apart)."""
    global _native_unwinding
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True or False, not {type(enabled).__name__}")
    if enabled and not native_unwinding_available():
        raise RuntimeError(
            "native stack unwinding is not available here (it needs Linux on x86-64); "
            "check spprof.native_unwinding_available() before enabling it")
    _native_unwinding = enabled


def native_unwinding_enabled() -> bool:
    """Whether the next ``start()`` captures native frames (``set_native_unwinding``)."""
    return _native_unwinding


def capture_native_stack() -> List[NativeFrame]:
    """The calling thread's native frames, innermost first (for debugging the unwinder);
    spprof's own frames are left out."""
    if not native_unwinding_available():
        raise RuntimeError("native stack unwinding is not available here (it needs Linux on x86-64)")
    from ._model import NativeFrame

    frames = [NativeFrame(*row) for row in _native.capture_native_stack()]
    own = os.path.realpath(_native.__file__)
    while frames and os.path.realpath(frames[0].filename) == own:
        frames = frames[1:]
    return frames


def _stop_at_exit() -> None:
    # The resolver thread must not outlive the interpreter; an auto-save path is honoured.
    if is_active():
        stop()


def _before_fork() -> None:
    # Waits out a resolver thread that is creating its Python thread state (see
    # rust/python/src/resolver_thread.rs): a fork then would hang the child on CPython 3.9.
    if _native is not None:
        _native.before_fork()


def _after_fork_in_child() -> None:
    global _run, _lifecycle
    _lifecycle = threading.Lock()  # another thread may have held it at the fork
    if _native is not None:
        _native.after_fork_in_child()
    if _run is not None and _run.tasks is not None:
        _run.tasks.close(end_waits=False)  # the child does not profile: its tasks are not traced
    _run = None


atexit.register(_stop_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)

