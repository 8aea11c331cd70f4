"""The first questions to ask of a profile, answered as Arrow tables.

Every function returns an object that implements the Arrow PyCapsule interface, so
``pyarrow.table(t)``, ``polars.DataFrame(t)`` and ``duckdb`` read it without a copy
(``Profile.to_pandas``-style conversion: ``pyarrow.table(t).to_pandas()``).

- :func:`top` — functions (or lines, or files) by self or total time;
- :func:`threads` — time per thread;
- :func:`between`, :func:`matching` — the samples of a time window, or of the stacks that
  contain a function or file (``Profile.between`` / ``Profile.filter`` return profiles);
- :func:`diff` — per function, both profiles' times and shares and the change, the functions
  that got slower first: the core of regression reports.

Self time of a function is the weight of the samples where it is the innermost frame; total time
is the weight of the samples where it appears anywhere in the stack (once per sample).
Column names carry the unit: ``_ns`` for CPU and wall-clock profiles.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any, Optional

from . import _ext

if TYPE_CHECKING:
    from ._model import Profile

GROUPS = ("function", "line", "file")
ORDERS = ("self", "total")


def _check_profiles(**profiles: Any) -> None:
    from ._model import Profile  # _model imports this module

    for name, value in profiles.items():
        if not isinstance(value, Profile):
            raise TypeError(f"{name} must be a spprof.Profile (as spprof.stop() returns), "
                            f"not {type(value).__name__}")


def _check_group(group: Any) -> None:
    if group not in GROUPS:
        raise ValueError(f"group must be one of {', '.join(map(repr, GROUPS))}, not {group!r}")


def top(profile: Profile, n: Optional[int] = 20, by: str = "self", group: str = "function") -> Any:
    """The ``n`` heaviest functions (``group="line"``: lines, ``"file"``: files) by ``by`` time
    (``"self"`` or ``"total"``). Columns: function, filename, [lineno], self_ns, total_ns,
    self_pct, total_pct, samples. ``n=None`` returns every row."""
    if by not in ORDERS:
        raise ValueError(f"by must be 'self' or 'total', not {by!r}")
    _check_group(group)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ValueError(f"n must be a non-negative int or None, not {n!r}")
    return _ext.require().analysis_top(profile._native(), n, by == "total", group, profile._unit)


def threads(profile: Profile) -> Any:
    """Time per thread, heaviest first. Columns: thread_id, thread_name, samples, weight_ns,
    on_cpu_ns (the part sampled while the thread ran), share_pct."""
    return _ext.require().analysis_threads(profile._native(), profile._unit)


def between(profile: Profile, start_ns: int, end_ns: int) -> Any:
    """The samples table (see ``Profile.to_arrow``) of the samples taken in
    ``[start_ns, end_ns)``, in nanoseconds since profiling started."""
    return profile.between(start_ns, end_ns).to_arrow("samples")


def matching(profile: Profile, function: Optional[str] = None, file: Optional[str] = None) -> Any:
    """The samples table of the samples whose stack has a frame matching the patterns
    (``fnmatch`` globs on the qualified function name and on the file name)."""
    return profile.filter(function=function, file=file).to_arrow("samples")


def diff(baseline: Profile, current: Profile, group: str = "function") -> Any:
    """Per function (or line, or file): baseline and current self and total time, their change
    (``delta_*``) and the change of their share of each profile (``*_pct``, percentage points),
    sorted by the largest growth of self time."""
    _check_profiles(baseline=baseline, current=current)
    _check_group(group)
    if baseline._unit != current._unit:
        raise ValueError("cannot diff a CPU/wall profile with a memory profile")
    return _ext.require().analysis_diff(baseline._native(), current._native(), group, current._unit)


# -- used by Profile ---------------------------------------------------------------------------


def select_window(profile: Profile, start_ns: int, end_ns: int) -> Any:
    for name, value in (("start_ns", start_ns), ("end_ns", end_ns)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int (nanoseconds since profiling started), not {value!r}")
    if end_ns < start_ns:
        raise ValueError(f"end_ns ({end_ns}) is before start_ns ({start_ns})")
    # Times before the start or past 2**63 ns (292 years) hold no samples: clamp, do not overflow.
    start_ns, end_ns = (min(max(t, 0), 2**63 - 1) for t in (start_ns, end_ns))
    return _ext.require().select_window(profile._native(), start_ns, end_ns)


def select_matching(profile: Profile, function: Optional[str], file: Optional[str]) -> Any:
    if function is None and file is None:
        raise ValueError("give a function pattern, a file pattern, or both")
    data = profile._native()
    frames = _ext.require().frames_of(data)
    ids = [i for i, (fn, fname, _, _) in enumerate(frames)
           if (function is None or fnmatch.fnmatchcase(fn, function))
           and (file is None or fnmatch.fnmatchcase(fname, file))]
    return _ext.require().select_frames(data, ids)
