"""The compiled extension, loaded once (a leaf: it imports no other spprof module at import time).

``native`` is ``spprof._native``, or None where it cannot be loaded; :func:`require` returns it or
raises the RuntimeError that says how to build it."""

from __future__ import annotations

import os
import sys

try:
    from . import _native as native
except ImportError as exc:  # pragma: no cover - only without a built extension
    native = None
    _ERROR: ImportError | None = exc
else:
    _ERROR = None


def require():  # -> the extension module
    if native is None:
        from ._source_tree import has_extension

        here = os.path.dirname(os.path.abspath(__file__))
        problem = (f"spprof's compiled extension in {here} cannot be loaded ({_ERROR})" if has_extension(here)
                   else f"spprof's compiled extension is not in {here}, and no installed spprof has one")
        raise RuntimeError(
            f"{problem}: run `pip install .` with this Python ({sys.executable}) in the folder that holds "
            f"pyproject.toml ({os.path.dirname(here)} if this is a checkout); it needs Rust and a C compiler")
    return native
