"""spprof: a sampling profiler for Python that runs inside the profiled process.

Quick start::

    import spprof
    spprof.start(interval_ms=10)
    do_work()
    profile = spprof.stop()
    profile.save("profile.json")  # open in https://www.speedscope.app
"""

from ._source_tree import installed_copy as _installed_copy

# From a source checkout without its compiled extension, every module below comes from the
# installed spprof (see _source_tree).
_installed = _installed_copy(__path__[0])
if _installed is not None:
    __path__[:] = [_installed]
del _installed, _installed_copy

from ._api import (
    Profiler,
    ThreadProfiler,
    capture_native_stack,
    is_active,
    native_unwinding_available,
    native_unwinding_enabled,
    profile,
    register_thread,
    set_native_unwinding,
    start,
    stats,
    stop,
    unregister_thread,
)
from ._ext import native as _native_module

#: Whether the native extension loaded (without it nothing can be profiled).
_HAS_NATIVE = _native_module is not None
del _native_module

# The data model is imported on first use: `import spprof` before start() stays cheap.
_LAZY = {"Frame": "_model", "NativeFrame": "_model", "Profile": "_model", "ProfilerStats": "_model",
         "Sample": "_model", "AggregatedProfile": "_aggregate", "AggregatedStack": "_aggregate"}


def __getattr__(name: str):  # PEP 562
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'spprof' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "AggregatedProfile",
    "AggregatedStack",
    "Frame",
    "NativeFrame",
    "Profile",
    "Profiler",
    "ProfilerStats",
    "Sample",
    "ThreadProfiler",
    "is_active",
    "capture_native_stack",
    "native_unwinding_available",
    "native_unwinding_enabled",
    "profile",
    "register_thread",
    "set_native_unwinding",
    "start",
    "stats",
    "stop",
    "unregister_thread",
]
