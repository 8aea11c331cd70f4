"""spprof_jupyter: the IPython extension of spprof.

::

    %load_ext spprof_jupyter

    %%spprof                      # profile a cell: inline flame graph + top functions
    work()

    %spprof -q work()             # one statement, no display; the result is in _spprof
    _spprof.to_pandas("frames")   # the samples as data (Arrow tables underneath)

``%%spprof?`` lists the options. The magic's value (also bound to ``_spprof``) is a
:class:`CellProfile`.
"""

from __future__ import annotations

from typing import Any

from ._magic import (
    DEFAULT_INTERVAL_MS,
    DEFAULT_MEMORY_RATE_KB,
    SpprofMagics,
    make_async_cell_transformer,
)
from ._magic import run_async_cell as _run_async_cell
from ._result import CellProfile

__all__ = ["DEFAULT_INTERVAL_MS", "DEFAULT_MEMORY_RATE_KB", "SpprofMagics", "CellProfile",
           "load_ipython_extension", "unload_ipython_extension", "_run_async_cell"]


def _remove_transformer(ipython: Any) -> None:
    ipython.input_transformers_cleanup[:] = [
        t for t in ipython.input_transformers_cleanup if not getattr(t, "spprof", False)]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext spprof_jupyter``: register ``%%spprof``/``%spprof`` and the input transformer
    that lets ``%%spprof`` cells use top-level ``await``."""
    ipython.register_magics(SpprofMagics)
    _remove_transformer(ipython)
    ipython.input_transformers_cleanup.append(make_async_cell_transformer(ipython))


def unload_ipython_extension(ipython: Any) -> None:
    _remove_transformer(ipython)
