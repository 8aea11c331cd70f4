"""The CPU profiler API of the usage guide: start/stop, Profiler, @profile, thread registration."""

from __future__ import annotations

import atexit
import functools
import numbers
import os
import platform
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Optional, TypeVar, Union

from ._model import PathLike, Profile, ProfilerStats

try:
    from . import _native
except ImportError as exc:  # pragma: no cover - only without a built extension
    _native = None
    _NATIVE_ERROR: Optional[ImportError] = exc
else:
    _NATIVE_ERROR = None

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class _Run:
    start_time: datetime
    interval_ms: float
    output_path: Optional[PathLike]


_run: Optional[_Run] = None


def _require_native() -> Any:
    if _native is None:
        raise RuntimeError(
            f"spprof's native extension is not available ({_NATIVE_ERROR}); "
            "reinstall spprof for this Python (pip install spprof)")
    return _native


def _check_number(name: str, value: Any, minimum: float, unit: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of {unit}, not {type(value).__name__}")
    if not value >= minimum:  # also rejects NaN
        raise ValueError(f"{name} must be at least {minimum:g} {unit}, got {value!r}")
    return float(value)


def _check_output_path(output_path: Any) -> None:
    if output_path is not None and not isinstance(output_path, (str, os.PathLike)):
        raise TypeError(
            f"output_path must be a str or os.PathLike, not {type(output_path).__name__}")


def start(interval_ms: float = 10, output_path: Optional[PathLike] = None,
          memory_limit_mb: float = 100) -> None:
    """Start CPU profiling of the calling thread (and threads that call ``register_thread()``).

    Raises ``RuntimeError`` if profiling is already active, ``ValueError`` if ``interval_ms < 1``.
    """
    global _run
    interval = _check_number("interval_ms", interval_ms, 1, "milliseconds")
    limit = _check_number("memory_limit_mb", memory_limit_mb, 0.25, "MB")
    _check_output_path(output_path)
    native = _require_native()
    if native.is_active():
        raise RuntimeError(
            "profiling is already active; call spprof.stop() first (spprof.is_active() tells)")
    native.start(int(interval * 1_000_000), int(limit * 1024 * 1024),
                 threading.current_thread().name)
    _run = _Run(datetime.now().astimezone(), interval_ms, output_path)


def stop() -> Profile:
    """Stop profiling and return the profile (saved to ``output_path`` if ``start`` got one)."""
    global _run
    native = _require_native()
    if not native.is_active():
        raise RuntimeError("profiling is not active; call spprof.start() first")
    data = native.stop()
    run, _run = _run, None
    assert run is not None
    profile = Profile._from_native(
        data,
        start_time=run.start_time,
        end_time=datetime.now().astimezone(),
        interval_ms=run.interval_ms,
        python_version=platform.python_version(),
        platform=f"{platform.system()}-{platform.machine()}",
    )
    if run.output_path is not None:
        profile.save(run.output_path)
    return profile


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
    return ProfilerStats(
        collected_samples=raw["collected_samples"],
        dropped_samples=raw["dropped_samples"],
        duration_ms=raw["duration_ns"] / 1e6,
        threads_sampled=raw["threads_sampled"],
        overhead_pct=100.0 * raw["handler_ns"] / duration_ns,
        memory_bytes=raw["memory_bytes"],
    )


def register_thread() -> bool:
    """Sample the calling thread too. Harmless if it already is; False when nothing changed
    (already registered, or profiling not active)."""
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
                 memory_limit_mb: float = 100) -> None:
        # Validate now, so a bad argument fails where it was written.
        _check_number("interval_ms", interval_ms, 1, "milliseconds")
        _check_number("memory_limit_mb", memory_limit_mb, 0.25, "MB")
        _check_output_path(output_path)
        self.interval_ms = interval_ms
        self.output_path = output_path
        self.memory_limit_mb = memory_limit_mb
        self.profile: Optional[Profile] = None

    def __enter__(self) -> Profiler:
        start(self.interval_ms, self.output_path, self.memory_limit_mb)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.profile = stop()


def profile(func: Optional[F] = None, *, interval_ms: float = 10,
            output_path: Optional[PathLike] = None,
            memory_limit_mb: float = 100) -> Union[F, Callable[[F], F]]:
    """Decorator: profile every call of the function (``@spprof.profile`` or
    ``@spprof.profile(interval_ms=..., output_path=...)``). The latest call's profile is the
    wrapper's ``last_profile``. Inside an already running profile, calls just run (the outer
    profile sees them)."""
    Profiler(interval_ms, output_path, memory_limit_mb)  # validate arguments at decoration time

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def outer(*args: Any, **kwargs: Any) -> Any:
            if is_active():
                return fn(*args, **kwargs)
            p = Profiler(interval_ms, output_path, memory_limit_mb)
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


def native_unwinding_available() -> bool:
    """Whether C frames can be captured with Python frames (not yet in this build)."""
    return False


def set_native_unwinding(enabled: bool) -> None:
    """Turn native (C/C++) frame capture on or off."""
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True or False, not {type(enabled).__name__}")
    if enabled and not native_unwinding_available():
        raise RuntimeError(
            "native stack unwinding is not available in this build of spprof; "
            "check spprof.native_unwinding_available() before enabling it")


def _stop_at_exit() -> None:
    # The resolver thread must not outlive the interpreter; an auto-save path is honoured.
    if is_active():
        stop()


def _after_fork_in_child() -> None:
    global _run
    if _native is not None:
        _native.after_fork_in_child()
    _run = None


atexit.register(_stop_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

