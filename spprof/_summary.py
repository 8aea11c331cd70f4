"""A plain-text summary of where a profile's time went (used by the command line)."""

from __future__ import annotations

from typing import List, Tuple

from . import analysis
from ._model import Profile

Key = Tuple[str, str]  # (function, file)


def hottest(profile: Profile, n: int = 10) -> List[Tuple[Key, int, int]]:
    """The ``n`` functions with the most self time: ``((function, file), self_ns, total_ns)``,
    as ``spprof.analysis.top`` computes them."""
    return [((function, file), self_ns, total_ns)
            for function, file, self_ns, total_ns, *_ in analysis.top(profile, n).rows()]


def render(profile: Profile, n: int = 10) -> str:
    total = profile.total_weight_ns
    threads = profile.threads()
    pid = threads.column_names.index("pid")
    processes = len({row[pid] for row in threads.rows()})
    lines = [
        f"spprof: {len(profile.samples)} samples, {total / 1e9:.3f} s {'wall' if profile.mode == 'wall' else 'CPU'} "
        f"in {profile.duration_s:.3f} s"
        + (f" ({processes} processes)" if processes > 1 else "")
        + (f", {profile.dropped_count} dropped" if profile.dropped_count else ""),
    ]
    if not total:
        lines.append("  (no CPU samples: the program ran too briefly or was waiting)")
        return "\n".join(lines) + "\n"
    lines.append(f"  {'self %':>7} {'self s':>8} {'total %':>8}  function (file)")
    for (function, file), self_ns, total_ns in hottest(profile, n):
        lines.append(
            f"  {100 * self_ns / total:6.1f}% {self_ns / 1e9:8.3f} {100 * total_ns / total:7.1f}%"
            f"  {function} ({file})")
    return "\n".join(lines) + "\n"
