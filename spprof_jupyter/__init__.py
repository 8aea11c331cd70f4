"""spprof_jupyter: the IPython extension of spprof (``%load_ext spprof_jupyter``).

The ``%%spprof`` cell magic is not built yet; loading the extension says so instead of failing
silently.
"""

from __future__ import annotations

from typing import Any


def load_ipython_extension(ipython: Any) -> None:
    raise ImportError("spprof_jupyter: the %%spprof magic is not available in this version yet")
