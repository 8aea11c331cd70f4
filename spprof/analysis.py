"""The first questions to ask of a profile, answered as Arrow tables.

Every function returns a table that implements the Arrow PyCapsule interface, so
``pyarrow.table(t)``, ``polars.DataFrame(t)`` and ``duckdb`` read it without a copy; it prints
its first rows, shows them in a notebook, and converts itself (``t.to_pandas()``,
``t.to_polars()``, ``t.to_pyarrow()``, ``t.rows()``).

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

from typing import Any, Optional

from ._model import GROUPS, ORDERS, Profile  # noqa: F401  (GROUPS, ORDERS: what the functions take)


def _check_profiles(**profiles: Any) -> None:
    for name, value in profiles.items():
        if not isinstance(value, Profile):
            raise TypeError(f"{name} must be a spprof.Profile (as spprof.stop() returns), "
                            f"not {type(value).__name__}")


def top(profile: Profile, n: Optional[int] = 20, by: str = "self", group: str = "function") -> Any:
    """The ``n`` heaviest functions (``group="line"``: lines, ``"file"``: files) by ``by`` time
    (``"self"`` or ``"total"``). Columns: function, filename, [lineno], self_ns, total_ns,
    self_pct, total_pct, samples. ``n=None`` returns every row."""
    _check_profiles(profile=profile)
    return profile.top(n, by, group)


def threads(profile: Profile) -> Any:
    """Time per thread, heaviest first. Columns: thread_id, thread_name, samples, weight_ns,
    on_cpu_ns (the part sampled while the thread ran), share_pct."""
    _check_profiles(profile=profile)
    return profile.threads()


def between(profile: Profile, start_ns: int, end_ns: int) -> Any:
    """The samples table (see ``Profile.to_arrow``) of the samples taken in
    ``[start_ns, end_ns)``, in nanoseconds since profiling started."""
    _check_profiles(profile=profile)
    return profile.between(start_ns, end_ns).to_arrow("samples")


def matching(profile: Profile, function: Optional[str] = None, file: Optional[str] = None) -> Any:
    """The samples table of the samples whose stack has a frame matching the patterns
    (``fnmatch`` globs on the qualified function name and on the file name)."""
    _check_profiles(profile=profile)
    return profile.filter(function=function, file=file).to_arrow("samples")


def diff(baseline: Profile, current: Profile, group: str = "function") -> Any:
    """Per function (or line, or file): baseline and current self and total time, their change
    (``delta_*``) and the change of their share of each profile (``*_pct``, percentage points),
    sorted by the largest growth of self time."""
    _check_profiles(baseline=baseline, current=current)
    return current.diff(baseline, group)
