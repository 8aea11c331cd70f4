"""Flame graphs beyond ``Profile.save("x.svg")`` / ``save("x.html")``: the differential graph.

::

    from spprof import flamegraph
    flamegraph.diff_svg(baseline_profile, current_profile, "regression.svg")

The differential graph has the current profile's shape (frame widths) and colours each function
by its change since the baseline: red where it grew, blue where it shrank, white where it did not
change. By default the baseline is first scaled to the current profile's total, so colours show
changes of *share*: a run that was slower everywhere does not turn all red. A stack that no
longer occurs in the current profile has no width, so it does not show.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from . import _ext

if TYPE_CHECKING:
    from ._model import PathLike, Profile


def diff_svg(baseline: Profile, current: Profile, path: Optional[PathLike] = None, *,
             title: Optional[str] = None, normalize: bool = True) -> str:
    """The differential flame graph (SVG text) of ``current`` against ``baseline``, also written
    to ``path`` when given. ``normalize=False`` compares absolute weights instead of shares."""
    if baseline._unit != current._unit:
        raise ValueError(f"cannot compare a profile in {baseline._unit} with one in {current._unit}")
    if title is None:
        title = f"Differential flame graph: {current._title()} vs. baseline {baseline._title()}"
    svg = _ext.require().diff_flamegraph_svg(baseline._native(), current._native(), title,
                                                current._unit, normalize)
    if path is not None:
        Path(os.fspath(path)).write_text(svg, encoding="utf-8")
    return svg
