"""The value of ``%%spprof``: a profile with an inline flame graph and its data as Arrow tables."""

from __future__ import annotations

import html
import re
from typing import Any, Dict, List, Optional, Tuple

from spprof import Profile, analysis
from spprof._units import fmt_bytes, fmt_ns

#: Rows of the top-functions table shown by default (``--top N`` changes it).
DEFAULT_TOP = 10

#: function, file, self weight, total weight, self %, total %, samples (``analysis.top``'s columns)
Row = Tuple[str, str, int, int, float, float, int]


def _top_rows(profile: Profile, n: Optional[int]) -> List[Row]:
    """The ``n`` functions with the most self weight, as ``spprof.analysis.top`` computes them."""
    return analysis.top(profile, n).rows()


def _svg_document(svg: str, title: str) -> str:
    """A small HTML page holding one flame graph SVG inline (for an iframe's ``srcdoc``): the
    XML declaration and DOCTYPE go, and inferno's ``init`` runs from a script at the end, since
    browsers do not all fire ``load`` on inline SVG (as ``Profile.to_html`` does)."""
    start = svg.find("<!--")  # the licence notice of the script, then the <svg> element
    start = start if start >= 0 else svg.find("<svg")
    body = svg[start:] if start >= 0 else svg
    body = re.sub(r'\sonload="[^"]*"', "", body, count=1)
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title>"
            "<style>body{margin:0;font-family:system-ui,sans-serif}</style></head><body>"
            f"{body}<script>if (typeof init === \"function\") init(null);</script></body></html>")


def _svg_height(svg: str) -> int:
    m = re.search(r'<svg[^>]*\sheight="(\d+)', svg)
    return int(m.group(1)) if m else 400


def _graph_iframe(svg: str, title: str) -> str:
    """The flame graph in a sandboxed ``<iframe srcdoc>``: self-contained (no file, no network),
    and isolated, so the element ids and script functions of several graphs in one notebook do
    not collide."""
    doc = _svg_document(svg, title)
    height = min(_svg_height(svg), 2000) + 24
    return (f'<iframe class="spprof-flamegraph" title="{html.escape(title)}" '
            f'sandbox="allow-scripts" srcdoc="{html.escape(doc, quote=True)}" '
            f'style="width:100%;height:{height}px;border:1px solid #ddd" frameborder="0"></iframe>')


class CellProfile:
    """What ``%%spprof`` / ``%spprof`` return (and bind to ``_spprof``).

    - ``profile``: the CPU (or wall-clock) :class:`spprof.Profile` of the cell, its stacks starting at
      the cell (the IPython frames below it are cut off; ``raw_profile`` keeps them); None when
      only memory was profiled.
    - ``memory``: the ``spprof.memprof.HeapSnapshot`` with ``--memory``, else None.
    - ``value``: the value of the cell's last expression (of the statement, in line mode).
    - ``samples`` / ``frames``: the profile as Arrow tables (``Profile.to_arrow``); ``to_pandas(kind)``,
      ``to_polars(kind)``, ``to_pyarrow(kind)`` convert them.
    - ``top(n, by, group)``, ``threads()``, ``diff(other)``: ``spprof.analysis`` tables.
    - ``save(path)``: ``Profile.save`` (format from the extension).

    In a notebook it displays as an inline flame graph plus the top functions; as text, the top
    functions.
    """

    def __init__(self, profile: Optional[Profile], memory: Any = None, *, raw_profile: Optional[Profile] = None,
                 value: Any = None, top_n: int = DEFAULT_TOP, interval_ms: Optional[float] = None,
                 memory_rate_kb: Optional[int] = None) -> None:
        self.profile = profile
        self.memory = memory
        self.raw_profile = raw_profile if raw_profile is not None else profile
        self.value = value
        self.top_n = top_n
        self.interval_ms = interval_ms
        self.memory_rate_kb = memory_rate_kb
        self._tables: Dict[str, Any] = {}

    # -- data -----------------------------------------------------------------------------------

    def _data(self) -> Any:
        """The profile the tables come from: the CPU profile, or the heap snapshot alone."""
        if self.profile is not None:
            return self.profile
        if self.memory is not None:
            return self.memory
        raise ValueError("this result holds no profile")

    def _profile(self) -> Profile:
        """A Profile to analyse: the CPU profile, or the heap snapshot as a profile in bytes."""
        data = self._data()
        return data if isinstance(data, Profile) else data.to_profile()

    def _cpu(self, what: str) -> Profile:
        if self.profile is None:
            raise ValueError(f"{what} needs a CPU profile; this cell was profiled with --memory only "
                             "(use --memory --cpu for both)")
        return self.profile

    def to_arrow(self, kind: str = "samples") -> Any:
        """``Profile.to_arrow(kind)``: ``"samples"`` or ``"frames"``."""
        if kind not in self._tables:
            self._tables[kind] = self._data().to_arrow(kind)
        return self._tables[kind]

    @property
    def samples(self) -> Any:
        """The samples table (a row per sample), an Arrow table (PyCapsule interface)."""
        return self.to_arrow("samples")

    @property
    def frames(self) -> Any:
        """The frames table (a row per frame of every sample, root first), an Arrow table."""
        return self.to_arrow("frames")

    def to_pandas(self, kind: str = "samples") -> Any:
        """The ``kind`` table as a pandas DataFrame (needs pandas and pyarrow)."""
        return self._data().to_pandas(kind)

    def to_polars(self, kind: str = "samples") -> Any:
        """The ``kind`` table as a polars DataFrame (needs polars)."""
        return self._data().to_polars(kind)

    def to_pyarrow(self, kind: str = "samples") -> Any:
        """The ``kind`` table as a ``pyarrow.Table`` (needs pyarrow)."""
        return self._data().to_pyarrow(kind)

    def top(self, n: Optional[int] = DEFAULT_TOP, by: str = "self", group: str = "function") -> Any:
        """``Profile.top``: Arrow table of the ``n`` heaviest functions (or lines, files)."""
        return self._profile().top(n, by, group)

    def threads(self) -> Any:
        """``Profile.threads``: Arrow table of the time per thread."""
        return self._cpu("threads()").threads()

    def diff(self, other: Any, group: str = "function") -> Any:
        """What changed from ``other`` (the baseline: another result, or a ``Profile``) to this
        result: ``Profile.diff``, the functions that got slower first."""
        baseline = other._profile() if isinstance(other, CellProfile) else other
        return self._profile().diff(baseline, group)

    def save(self, path: Any, format: Optional[str] = None) -> Any:
        """Write the profile (the heap snapshot if only memory was profiled) to ``path``; the format
        comes from ``format`` or the extension (.json speedscope, .collapsed, .svg, .html)."""
        return self._data().save(path, format)

    # -- display --------------------------------------------------------------------------------

    def _summary(self) -> str:
        parts = []
        p = self.profile
        if p is not None:
            what = "wall-clock time" if p.mode == "wall" else "CPU"
            interval = f", every {self.interval_ms:g} ms" if self.interval_ms is not None else ""
            parts.append(f"{len(p.samples)} samples{interval}, {fmt_ns(p.total_weight_ns)} of {what} "
                         f"in {p.duration_s:.3f} s" + (f", {p.dropped_count} dropped" if p.dropped_count else ""))
        m = self.memory
        if m is not None:
            heap = getattr(m, "estimated_heap_bytes", None)
            live = getattr(m, "live_samples", None)
            rate = f", sampling every {self.memory_rate_kb} KiB" if self.memory_rate_kb else ""
            parts.append("memory: " + (f"{fmt_bytes(heap)} live heap estimated" if heap is not None else "")
                         + (f" from {live} live samples" if live is not None else "") + rate)
        return "spprof: " + "; ".join(parts)

    def _empty_hint(self) -> str:
        if self.profile is not None and not self.profile.total_weight_ns:
            return ("no samples: the cell ran too briefly (CPU timers fire on the kernel tick, about "
                    "every 4 ms) or was waiting; try --wall, or a longer workload")
        return ""

    def __repr__(self) -> str:
        lines = [self._summary()]
        p = self.profile
        if p is not None:
            hint = self._empty_hint()
            if hint:
                lines.append("  " + hint)
            else:
                lines.append(f"  {'self %':>7} {'self':>9} {'total %':>8}  function (file)")
                for function, file, self_w, _, self_pct, total_pct, _ in _top_rows(p, self.top_n):
                    lines.append(f"  {self_pct:6.1f}% {fmt_ns(self_w):>9} "
                                 f"{total_pct:7.1f}%  {function} ({file})")
        return "\n".join(lines)

    def _top_table_html(self, p: Profile) -> str:
        cells = []
        for i, (function, file, self_w, total_w, self_pct, total_pct, _) in enumerate(_top_rows(p, self.top_n), 1):
            cells.append(
                f"<tr><td>{i}</td><td><code>{html.escape(function)}</code></td>"
                f"<td><code>{html.escape(file)}</code></td>"
                f"<td style=\"text-align:right\">{fmt_ns(self_w)}</td>"
                f"<td style=\"text-align:right\">{self_pct:.1f}%</td>"
                f"<td style=\"text-align:right\">{fmt_ns(total_w)}</td>"
                f"<td style=\"text-align:right\">{total_pct:.1f}%</td></tr>")
        return ("<table class=\"spprof-top\"><thead><tr><th>#</th><th>Function</th><th>File</th>"
                "<th>Self</th><th>Self %</th><th>Total</th><th>Total %</th></tr></thead>"
                f"<tbody>{''.join(cells)}</tbody></table>")

    def _repr_html_(self) -> str:
        out = ['<div class="spprof-result">', f"<p><b>{html.escape(self._summary())}</b></p>"]
        p = self.profile
        if p is not None:
            hint = self._empty_hint()
            if hint:
                out.append(f"<p>{html.escape(hint)}</p>")
            else:
                title = f"{'Wall-clock' if p.mode == 'wall' else 'CPU'} flame graph"
                out.append(_graph_iframe(p.to_flamegraph_svg(title=title), title))
                out.append(self._top_table_html(p))
        m = self.memory
        if m is not None and hasattr(m, "to_flamegraph_svg"):
            title = "Memory flame graph (live heap at the end of the cell)"
            out.append(f"<p><b>{html.escape(title)}</b></p>")
            try:
                svg = m.to_flamegraph_svg(title=title)
            except TypeError:
                svg = m.to_flamegraph_svg()
            out.append(_graph_iframe(svg, title))
        out.append("</div>")
        return "\n".join(out)
